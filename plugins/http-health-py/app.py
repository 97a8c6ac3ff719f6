"""`http-health-py`: the Python port of the `http-health` checker (plugins/http-health).

Same behaviour, same config, same grading; the parity e2e test runs one test body against both.
The URL is the target's `endpoint` followed by its `health_path` metadata, or else the config
`path` (default `/health`). Grading:

| answer | status |
|---|---|
| 2xx within `degraded_ms` (default 250) | healthy |
| 2xx slower than that, or any 1xx/3xx/4xx | degraded |
| 5xx, connection failure, nothing within `timeout_ms` (default 2000) | unhealthy |

A destination the host refuses is a configuration error (`Err` with code `denied`), and so is a
target without a usable endpoint (`invalid-input`).

Built with componentize-py against the `health-checker-http` world (`health-checker` plus the
`wasi:http/outgoing-handler` import every checker may use): `cargo xtask build-plugins` or
`evolve plugin build`.
"""

import json
import time
from typing import Optional, Tuple

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import config, logging, monotonic_clock, outgoing_handler, poll
from wit_world.imports import wasi_http_types as http
from wit_world.imports.evolve_plugin_types import (
    CheckerInfo,
    ErrorCode,
    HealthReport,
    HealthStatus,
    PluginError,
    Service,
)

NAME = "http-health-py"
VERSION = "0.1.0"
# Service metadata key that overrides the configured path for one service.
HEALTH_PATH_KEY = "health_path"
DEFAULTS = {"path": "/health", "timeout_ms": 2000, "degraded_ms": 250}


class Checker(exports.Checker):
    def describe(self) -> CheckerInfo:
        return CheckerInfo(
            name=NAME,
            version=VERSION,
            description="GETs a service's health endpoint; grades by status code and latency",
            capabilities=["http"],
        )

    def check(self, target: Service) -> HealthReport:
        cfg = load_config()
        path = next(
            (value for key, value in target.metadata if key == HEALTH_PATH_KEY), cfg["path"]
        )
        url = health_url(target.endpoint, path)
        if url is None:
            raise Err(
                plugin_error(
                    ErrorCode.INVALID_INPUT,
                    f"service `{target.name}` has no usable endpoint (`{target.endpoint}`)",
                )
            )
        timeout_ms = cfg["timeout_ms"]
        logging.log(logging.Level.DEBUG, f"GET {url} (timeout {timeout_ms} ms)", [])

        start = time.monotonic()
        try:
            status = get_status(url, timeout_ms)
        except Denied as denied:
            raise Err(
                plugin_error(
                    ErrorCode.DENIED,
                    f"the host denied GET {url}: `{denied.authority}` is not an allowed destination",
                )
            )
        except InvalidUrl as bad:
            raise Err(plugin_error(ErrorCode.INVALID_INPUT, f"cannot check `{target.name}`: {bad}"))
        except Unreachable as failure:
            # Timeouts, connection and protocol failures: the target could not answer.
            return report(HealthStatus.UNHEALTHY, f"GET {url}: {failure}", time.monotonic() - start)
        return grade(status, time.monotonic() - start, cfg["degraded_ms"] / 1000)


class Denied(Exception):
    def __init__(self, authority: str):
        super().__init__(authority)
        self.authority = authority


class InvalidUrl(Exception):
    pass


class Unreachable(Exception):
    pass


def load_config() -> dict:
    """The `[config]` table over the defaults; unknown keys and wrong types are errors."""
    try:
        table = json.loads(config.get_all())
    except ValueError as err:
        raise Err(plugin_error(ErrorCode.INVALID_INPUT, f"config is not JSON: {err}"))
    cfg = dict(DEFAULTS)
    for key, value in table.items():
        if key not in DEFAULTS:
            raise Err(plugin_error(ErrorCode.INVALID_INPUT, f"config: unknown key `{key}`"))
        if type(value) is not type(DEFAULTS[key]) or (isinstance(value, int) and value < 0):
            raise Err(
                plugin_error(
                    ErrorCode.INVALID_INPUT, f"config: `{key}` has the wrong type or is negative"
                )
            )
        cfg[key] = value
    return cfg


def health_url(endpoint: str, path: str) -> Optional[str]:
    """Joins endpoint and path with exactly one `/`; None for an empty endpoint."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        return None
    path = path.strip()
    if not path:
        return endpoint
    return endpoint + path if path.startswith("/") else f"{endpoint}/{path}"


def split_url(url: str) -> Tuple[http.Scheme, str, str]:
    """`http[s]://authority/path?query` into its parts."""
    scheme_text, sep, rest = url.partition("://")
    if not sep:
        raise InvalidUrl(f"`{url}` has no scheme")
    if scheme_text == "http":
        scheme = http.Scheme_Http()
    elif scheme_text == "https":
        scheme = http.Scheme_Https()
    else:
        raise InvalidUrl(f"`{url}`: only http and https are supported")
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if not authority:
        raise InvalidUrl(f"`{url}` has no host")
    return scheme, authority, path


def get_status(url: str, timeout_ms: int) -> int:
    """GET `url`; the response's status code. Waits at most `timeout_ms` for the answer."""
    scheme, authority, path = split_url(url)
    request = http.OutgoingRequest(http.Fields())
    request.set_method(http.Method_Get())
    request.set_scheme(scheme)
    request.set_authority(authority)
    request.set_path_with_query(path)
    options = http.RequestOptions()
    timeout_ns = timeout_ms * 1_000_000
    # A host may refuse a timeout; the poll below still bounds the wait.
    for setter in (
        options.set_connect_timeout,
        options.set_first_byte_timeout,
        options.set_between_bytes_timeout,
    ):
        try:
            setter(timeout_ns)
        except Err:
            pass
    try:
        future = outgoing_handler.handle(request, options)
    except Err as err:
        raise map_error(err.value, authority, timeout_ms)
    # Wait for the answer or the deadline, whichever comes first.
    deadline_ns = monotonic_clock.now() + timeout_ns
    while (answer := future.get()) is None:
        if monotonic_clock.now() >= deadline_ns:
            raise Unreachable(f"no answer within {timeout_ms} ms")
        poll.poll([future.subscribe(), monotonic_clock.subscribe_instant(deadline_ns)])
    if isinstance(answer, Err):
        raise Unreachable("the response was already taken")
    inner = answer.value
    if isinstance(inner, Err):
        raise map_error(inner.value, authority, timeout_ms)
    response = inner.value
    return response.status()


def map_error(code, authority: str, timeout_ms: int) -> Exception:
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return Denied(authority)
    if isinstance(
        code,
        (
            http.ErrorCode_ConnectionTimeout,
            http.ErrorCode_ConnectionReadTimeout,
            http.ErrorCode_HttpResponseTimeout,
            http.ErrorCode_DnsTimeout,
        ),
    ):
        return Unreachable(f"no answer within {timeout_ms} ms")
    name = type(code).__name__.removeprefix("ErrorCode_")
    return Unreachable(f"cannot reach `{authority}` ({name})")


def grade(status: int, elapsed_s: float, degraded_after_s: float) -> HealthReport:
    """Grades an answer by status class and latency."""
    ms = int(elapsed_s * 1000)
    if 200 <= status <= 299 and elapsed_s <= degraded_after_s:
        return report(HealthStatus.HEALTHY, f"HTTP {status} in {ms} ms", elapsed_s)
    if 200 <= status <= 299:
        slower = int(degraded_after_s * 1000)
        return report(
            HealthStatus.DEGRADED, f"HTTP {status} in {ms} ms (slower than {slower} ms)", elapsed_s
        )
    if 500 <= status <= 599:
        return report(HealthStatus.UNHEALTHY, f"HTTP {status} in {ms} ms", elapsed_s)
    return report(HealthStatus.DEGRADED, f"HTTP {status} in {ms} ms", elapsed_s)


def report(status: HealthStatus, detail: str, elapsed_s: float) -> HealthReport:
    return HealthReport(
        status=status,
        latency_us=int(elapsed_s * 1_000_000),
        detail=detail,
        checked_at_ms=int(time.time() * 1000),
    )


def plugin_error(code: ErrorCode, message: str) -> PluginError:
    return PluginError(code=code, message=message, retryable=False)
