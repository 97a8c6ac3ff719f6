"""`{{name}}`: a health checker in Python. GETs the service's endpoint followed by `path` from
`[config]`: 2xx is healthy, 3xx/4xx degraded, 5xx or no answer within `timeout_ms` unhealthy.

Build: `evolve plugin build` (componentize-py against the `health-checker-http` world: the
checker world plus `wasi:http/outgoing-handler`) → `target/plugin/{{name}}/`; drop that dir into
the daemon's plugins dir. The host only lets it reach the checked service's own host:port and the
hosts in `permissions.http_hosts`.
"""

import json
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, monotonic_clock, outgoing_handler, poll
from wit_world.imports import wasi_http_types as http
from wit_world.imports.evolve_plugin_types import (
    CheckerInfo,
    ErrorCode,
    HealthReport,
    HealthStatus,
    PluginError,
    Service,
)


class Checker(exports.Checker):
    def describe(self) -> CheckerInfo:
        return CheckerInfo(
            name="{{name}}",
            version="0.1.0",
            description="GETs a service's health path",
            capabilities=["http"],
        )

    def check(self, target: Service) -> HealthReport:
        path = json.loads(config.get("path") or '"/health"')
        timeout_ms = json.loads(config.get("timeout_ms") or "2000")
        scheme, _, rest = target.endpoint.strip().rstrip("/").partition("://")
        if scheme not in ("http", "https") or not rest:
            raise Err(
                PluginError(
                    code=ErrorCode.INVALID_INPUT,
                    message=f"`{target.endpoint}` is not an http(s) URL",
                    retryable=False,
                )
            )
        authority, _, base = rest.partition("/")
        request = http.OutgoingRequest(http.Fields())
        request.set_scheme(http.Scheme_Https() if scheme == "https" else http.Scheme_Http())
        request.set_authority(authority)
        request.set_path_with_query(("/" + base if base else "") + path)
        start = time.monotonic()
        deadline = monotonic_clock.now() + timeout_ms * 1_000_000
        try:
            future = outgoing_handler.handle(request, None)
        except Err as err:
            return self.report(HealthStatus.UNHEALTHY, f"request refused: {err.value}", start)
        while (answer := future.get()) is None:
            if monotonic_clock.now() >= deadline:
                return self.report(HealthStatus.UNHEALTHY, f"no answer within {timeout_ms} ms", start)
            poll.poll([future.subscribe(), monotonic_clock.subscribe_instant(deadline)])
        if isinstance(answer, Err):
            return self.report(HealthStatus.UNHEALTHY, "the response was already taken", start)
        inner = answer.value
        if isinstance(inner, Err):
            # e.g. ErrorCode_ConnectionRefused; ErrorCode_HttpRequestDenied is the allow-list.
            name = type(inner.value).__name__.removeprefix("ErrorCode_")
            return self.report(HealthStatus.UNHEALTHY, f"no answer: {name}", start)
        code = inner.value.status()
        if 200 <= code <= 299:
            status = HealthStatus.HEALTHY
        elif 500 <= code <= 599:
            status = HealthStatus.UNHEALTHY
        else:
            status = HealthStatus.DEGRADED
        return self.report(status, f"HTTP {code}", start)

    def report(self, status: HealthStatus, detail: str, start: float) -> HealthReport:
        return HealthReport(
            status=status,
            latency_us=int((time.monotonic() - start) * 1_000_000),
            detail=detail,
            checked_at_ms=int(time.time() * 1000),
        )
