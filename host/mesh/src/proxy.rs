//! The data path: forwards one request to an instance chosen by the balancer, over the
//! instance's pooled keep-alive connections ([`super::pool`]; HTTP/1.1, or h2c with prior
//! knowledge), streaming both bodies, and retries within the rules of [`super::retry`].
//!
//! Per request:
//! 1. The deadline is now + the route's timeout, or sooner if the caller sent
//!    `x-evolve-deadline-ms` (its remaining budget, raised to [`MIN_CALLER_DEADLINE_MS`]); the
//!    instance gets the remainder in the same header, so deadlines propagate down a call chain.
//!    A timeout at a deadline the caller set below the route's own ([`Budget`]) ends that
//!    caller's wait with a 504 but is no verdict on the instance: it is recorded as
//!    [`AttemptOutcome::CallerDeadline`], neither a failure (breaker, outlier detection) nor a
//!    latency sample (EWMA). Only the route's own timeout judges an instance. Before anything
//!    is sent, a request with more than one `Host` is refused (400, RFC 9112 §3.2) and the
//!    path's dot-segments are removed ([`remove_dot_segments`]).
//! 2. The body is buffered only when it may be retried and is at most `retry_buffer_kb`;
//!    otherwise it streams and the request gets exactly one attempt.
//! 3. Per attempt: choose an instance (not one already tried), take a slot of the service's
//!    concurrency limit (or shed with 503), send, and wait for response headers until the
//!    deadline; record the outcome (latency, breaker, outlier detection).
//! 4. A failed attempt (5xx, connect error, reset, timeout) is retried when allowed; the last
//!    response or error is returned otherwise.
//! 5. The response streams back with `x-evolve-service`, `x-evolve-instance` and
//!    `x-evolve-attempts`; the instance's in-flight count and the service slot are released when
//!    the response body ends or is dropped, and the connection goes back to the instance's pool
//!    when the body ended.
//!
//! Header policy, the same on every data path (this one, which serves the API's routes and
//! proxy and the listener's hyper fallback, and the listener's fast path in [`super::h1`]):
//! - `X-Forwarded-For`: the client's values are kept and the address of the peer that sent the
//!   request is appended (`client, proxy1, <peer>`), as nginx's `$proxy_add_x_forwarded_for`;
//! - `X-Forwarded-Host` and `X-Forwarded-Proto` are the mesh's own, whatever the client sent:
//!   the request's `Host` (removed when it had none) and `http` (the daemon's listeners speak
//!   plain HTTP); `Forwarded` (RFC 7239) passes unchanged;
//! - a response with both `Transfer-Encoding` and `Content-Length` loses `Content-Length`
//!   before it is forwarded (RFC 9112 §6.3: the transfer coding decides the length, and an
//!   intermediary must remove the other), so no client sees two conflicting framings.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::MeshError;
use super::breaker::Admission;
use super::catalog::Protocol;
use super::config::MeshConfig;
use super::instance::InstanceState;
use super::lb::Balancer;
use super::pool::Lease;
use super::retry::{backoff, is_idempotent};
use super::service::{AttemptOutcome, Pick, ServiceState, choose, record};
use evolve_core::events::EventBus;

/// Names the service that answered.
pub const HEADER_SERVICE: &str = "x-evolve-service";
/// Names the instance (its id) that answered.
pub const HEADER_INSTANCE: &str = "x-evolve-instance";
/// Attempts made (1 = no retry).
pub const HEADER_ATTEMPTS: &str = "x-evolve-attempts";
/// Remaining time budget of a request, ms: read from callers, set for instances.
pub const HEADER_DEADLINE: &str = "x-evolve-deadline-ms";

// The same names as `HeaderName`s, so the data path neither parses nor validates them per
// request.
pub(super) const SERVICE_NAME: HeaderName = HeaderName::from_static(HEADER_SERVICE);
pub(super) const INSTANCE_NAME: HeaderName = HeaderName::from_static(HEADER_INSTANCE);
pub(super) const ATTEMPTS_NAME: HeaderName = HeaderName::from_static(HEADER_ATTEMPTS);
const DEADLINE_NAME: HeaderName = HeaderName::from_static(HEADER_DEADLINE);
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Proto` of every forwarded request: no listener of the daemon speaks TLS.
pub(super) const FORWARDED_PROTO_VALUE: &str = "http";

/// The least budget a caller's `x-evolve-deadline-ms` gives a request, ms: a smaller value (0
/// included) is raised to this. Below it hardly any instance can answer, so the header would
/// only manufacture timeouts; 10 ms still lets a nearby instance answer a caller in a hurry.
pub const MIN_CALLER_DEADLINE_MS: u64 = 10;

/// How long a request may wait for response headers, and who chose that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub total: Duration,
    /// The caller's deadline (raised to [`MIN_CALLER_DEADLINE_MS`]) is shorter than the
    /// route's timeout: reaching it is the caller's choice, not the instance's failure.
    pub caller_bound: bool,
}

impl Budget {
    /// The route's `timeout`, or the caller's `x-evolve-deadline-ms` value (`caller_ms`) when
    /// that is shorter once raised to [`MIN_CALLER_DEADLINE_MS`].
    pub fn new(caller_ms: Option<u64>, timeout: Duration) -> Budget {
        let caller = caller_ms.map(|ms| Duration::from_millis(ms.max(MIN_CALLER_DEADLINE_MS)));
        match caller {
            Some(caller) if caller < timeout => Budget {
                total: caller,
                caller_bound: true,
            },
            _ => Budget {
                total: timeout,
                caller_bound: false,
            },
        }
    }

    /// How an attempt still waiting at the deadline is recorded.
    pub fn timeout_outcome(self) -> AttemptOutcome {
        if self.caller_bound {
            AttemptOutcome::CallerDeadline
        } else {
            AttemptOutcome::Timeout
        }
    }
}

/// An `x-evolve-deadline-ms` value: decimal ms, surrounding spaces allowed; anything else is
/// ignored (the route's timeout applies).
pub fn parse_deadline_ms(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); never forwarded.
/// Names, not strings, so removing them costs no parsing per request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// `x-evolve-attempts` values for every attempt count the retry limit allows (at most 10
/// retries), so the header costs no formatting.
pub(super) const ATTEMPTS: [HeaderValue; 11] = [
    HeaderValue::from_static("1"),
    HeaderValue::from_static("2"),
    HeaderValue::from_static("3"),
    HeaderValue::from_static("4"),
    HeaderValue::from_static("5"),
    HeaderValue::from_static("6"),
    HeaderValue::from_static("7"),
    HeaderValue::from_static("8"),
    HeaderValue::from_static("9"),
    HeaderValue::from_static("10"),
    HeaderValue::from_static("11"),
];

/// What to forward where: the pool of services, how to balance and how long to try.
pub struct Plan<'a> {
    pub services: &'a [Arc<ServiceState>],
    pub balancer: &'a Balancer,
    /// Path (and query) on the instance (after its endpoint's prefix), starting with `/`.
    pub path_and_query: PathAndQuery,
    pub method: Option<Method>,
    pub timeout: Duration,
    pub retries: u32,
    pub retry_non_idempotent: bool,
    /// Instances (uids) this request must not use: a fan-out part pins its instance by
    /// excluding the service's others.
    pub exclude: Vec<u64>,
    /// Strip `Authorization`: it carried the caller's token for this daemon, not for the instance.
    pub strip_authorization: bool,
}

/// Shared parts of the mesh the data path needs.
pub struct DataPath<'a> {
    pub config: &'a MeshConfig,
    pub events: &'a EventBus,
}

/// `text` as the path and query of a request to an instance.
pub fn path_and_query(text: String) -> Result<PathAndQuery, MeshError> {
    PathAndQuery::try_from(text.as_str())
        .map_err(|_| MeshError::BadRequest(format!("\"{text}\" is not a valid path")))
}

/// Why a path is refused rather than normalised by [`remove_dot_segments`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    #[error(
        "its segment \"{segment}\" joins a dot-segment to an encoded separator or a parameter (`%2F`, `%5C`, `\\`, `;`), which servers disagree on; write the path with plain `/` separators and without `.` or `..` segments"
    )]
    HiddenDotSegment { segment: String },
}

/// What a path segment is to [`remove_dot_segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Plain,
    /// `.`, or its percent-encoded spelling.
    Current,
    /// `..`, or a percent-encoded spelling (`%2e%2e`, `.%2E`).
    Parent,
}

/// `path_and_query` (origin-form) with the dot-segments of its path removed as RFC 3986
/// §5.2.4 removes them, percent-encoded ones (`%2e`, `.%2E`) included, since servers decode
/// them: a `..` never climbs above `/`, so a request stays under the path it was sent to (the
/// named service's proxy suffix, an instance's endpoint prefix, which is prepended after).
/// The query is left as it is. `Ok(None)`: the path has no dot-segment (the common case,
/// without allocating). Refused: a segment that hides a dot-segment behind an encoded `/` or
/// `\`, a backslash or a `;` parameter (`..%2f`, `..;`), which some servers read as `..`.
pub fn remove_dot_segments(path_and_query: &str) -> Result<Option<String>, UnsafePath> {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    let Some(segments) = path.strip_prefix('/') else {
        // `*` (OPTIONS) and the like have no segments.
        return Ok(None);
    };
    let mut dotted = false;
    for segment in segments.split('/') {
        dotted |= classify(segment)? != Segment::Plain;
    }
    if !dotted {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let mut rest = segments.split('/').peekable();
    while let Some(segment) = rest.next() {
        let kind = classify(segment)?;
        match kind {
            Segment::Plain => out.push(segment),
            Segment::Current => {}
            Segment::Parent => {
                out.pop();
            }
        }
        // A trailing dot-segment leaves its directory's slash (`/a/b/..` is `/a/`).
        if kind != Segment::Plain && rest.peek().is_none() {
            out.push("");
        }
    }
    let mut normal = String::with_capacity(path_and_query.len());
    normal.push('/');
    normal.push_str(&out.join("/"));
    normal.push_str(query);
    Ok(Some(normal))
}

fn classify(segment: &str) -> Result<Segment, UnsafePath> {
    if !segment.contains(['.', '%']) {
        return Ok(Segment::Plain);
    }
    // Most segments with a dot are names (`x.json`) and have no escape to decode.
    let decoded: Cow<'_, [u8]> = if segment.contains('%') {
        Cow::Owned(percent_decoded(segment.as_bytes()))
    } else {
        Cow::Borrowed(segment.as_bytes())
    };
    match &*decoded {
        b"." => return Ok(Segment::Current),
        b".." => return Ok(Segment::Parent),
        _ => {}
    }
    // Not a dot-segment itself, so a dot part means a separator split it off: `..;x`,
    // `..%2fadmin`, `.%5c..`. `a;b` and `x.json` have none.
    let hidden = decoded
        .split(|&b| matches!(b, b'/' | b'\\' | b';'))
        .any(|part| part == b"." || part == b"..");
    if hidden {
        return Err(UnsafePath::HiddenDotSegment {
            segment: segment.to_string(),
        });
    }
    Ok(Segment::Plain)
}

/// `bytes` with each valid `%XX` decoded (others kept as they are).
fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[at] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(at + 1).copied().and_then(hex),
                bytes.get(at + 2).copied().and_then(hex),
            )
        {
            out.push((high * 16 + low) as u8);
            at += 3;
            continue;
        }
        out.push(bytes[at]);
        at += 1;
    }
    out
}

/// The checks of step 1 on a request from a client, before anything is sent: exactly one
/// `Host` at most, and the path with its dot-segments removed.
fn checked_request(
    headers: &HeaderMap,
    path_and_query: PathAndQuery,
) -> Result<PathAndQuery, MeshError> {
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(MeshError::BadRequest(
            "the request has more than one Host header (RFC 9112 §3.2); send exactly one".into(),
        ));
    }
    match remove_dot_segments(path_and_query.as_str()) {
        Ok(None) => Ok(path_and_query),
        Ok(Some(normal)) => PathAndQuery::try_from(normal.as_str()).map_err(|_| {
            MeshError::BadRequest(format!("\"{path_and_query}\" is not a valid path"))
        }),
        Err(why) => Err(MeshError::BadRequest(format!(
            "the path \"{path_and_query}\" is refused: {why}"
        ))),
    }
}

/// Forwards `request` per `plan`; see the module docs for the steps.
pub async fn forward(
    context: &DataPath<'_>,
    mut plan: Plan<'_>,
    request: Request<Body>,
) -> Result<Response<Body>, MeshError> {
    let config = context.config;
    let started = Instant::now();
    // Step 1.
    let caller_ms = request
        .headers()
        .get(&DEADLINE_NAME)
        .and_then(|v| parse_deadline_ms(v.as_bytes()));
    let budget = Budget::new(caller_ms, plan.timeout);
    let deadline = started + budget.total;
    plan.path_and_query = checked_request(request.headers(), plan.path_and_query)?;

    let (parts, body) = request.into_parts();
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_canonical());
    let method = plan.method.clone().unwrap_or(parts.method.clone());
    let may_retry = plan.retries > 0 && (is_idempotent(&method) || plan.retry_non_idempotent);
    // Step 2.
    let cap = config.retry_buffer_kb.saturating_mul(1024);
    let (replayable, mut streamed) = match body.size_hint().exact() {
        Some(0) => (Some(Bytes::new()), None),
        Some(len) if may_retry && len <= cap => {
            let limited = http_body_util::Limited::new(body, cap as usize);
            let collected = limited.collect().await.map_err(|e| {
                MeshError::BadRequest(format!("reading the request body failed: {e}"))
            })?;
            (Some(collected.to_bytes()), None)
        }
        _ => (None, Some(body)),
    };
    let mut headers = forwarded_headers(
        parts.headers,
        plan.strip_authorization,
        parts.uri.authority(),
        client,
    );

    let mut tried: Vec<u64> = plan.exclude.clone();
    let mut attempt = 0u32;
    // The failed attempt being retried: if no instance can take the retry, this is the answer.
    let mut previous: Option<Result<Response<Body>, MeshError>> = None;
    loop {
        attempt += 1;
        // Step 3.
        // Not `started`: the body may have been collected since.
        let chosen_at = Instant::now();
        let pick = match choose(plan.services, plan.balancer, &tried, config, chosen_at) {
            Ok(pick) => pick,
            Err(why) => {
                if let Some(answer) = previous {
                    return answer;
                }
                if let Some(service) = plan.services.first() {
                    service.stats.no_instance.fetch_add(1, Ordering::Relaxed);
                }
                return Err(MeshError::Unavailable {
                    target: pool_name(plan.services),
                    detail: why,
                });
            }
        };
        let mut guard = AttemptGuard::new(pick);
        let service = Arc::clone(&guard.pick.service);
        if attempt == 1 {
            service.budget.deposit(chosen_at);
        }
        let permit = match take_slot(&service, deadline).await {
            Ok(permit) => permit,
            Err(error) => {
                if let Some(answer) = previous {
                    return answer;
                }
                return Err(error);
            }
        };
        let instance = Arc::clone(&guard.pick.instance);
        instance.stats.requests.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight::enter(Arc::clone(&instance), permit);

        let body = match (&replayable, streamed.take()) {
            // An empty body boxes nothing (its type has no size).
            (Some(bytes), _) if bytes.is_empty() => Body::empty(),
            (Some(bytes), _) => Body::from(bytes.clone()),
            (None, Some(body)) => body,
            // A streamed body is sent once; `can_retry` below never loops back without a copy.
            (None, None) => Body::empty(),
        };
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = method.clone();
        *outgoing.uri_mut() = instance_uri(&instance, &plan.path_and_query)?;
        // The last possible attempt takes the headers; earlier ones copy them for a retry.
        *outgoing.headers_mut() = if attempt <= plan.retries && replayable.is_some() {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outgoing_headers = outgoing.headers_mut();
        outgoing_headers.insert(
            DEADLINE_NAME,
            HeaderValue::from(remaining.as_millis() as u64),
        );
        match instance.protocol() {
            Protocol::Http1 => {
                if let Some(host) = &instance.target.host_header {
                    outgoing_headers.insert(header::HOST, host.clone());
                }
            }
            Protocol::H2c => *outgoing.version_mut() = Version::HTTP_2,
        }
        let sent = Instant::now();
        let result = tokio::time::timeout_at(deadline, instance.pool.send(outgoing)).await;
        let (outcome, answer) = match result {
            Ok(Ok(response)) => (
                AttemptOutcome::Status(response.0.status().as_u16()),
                Ok(response),
            ),
            Ok(Err(error)) if error.is_connect() => {
                (AttemptOutcome::ConnectError, Err(error_chain(&error)))
            }
            Ok(Err(error)) => (
                AttemptOutcome::Reset,
                Err(format!(
                    "the connection failed before a response: {}",
                    error_chain(&error)
                )),
            ),
            Err(_) => (budget.timeout_outcome(), Err(String::new())),
        };
        guard.finish(outcome, sent, config, context.events);

        let result = match answer {
            Ok((response, lease)) => Ok(respond(response, lease, &instance, attempt, in_flight)),
            Err(_)
                if matches!(
                    outcome,
                    AttemptOutcome::Timeout | AttemptOutcome::CallerDeadline
                ) =>
            {
                Err(MeshError::Timeout {
                    service: service.name().to_string(),
                    instance: instance.id.clone(),
                    timeout_ms: budget.total.as_millis() as u64,
                    attempts: attempt,
                })
            }
            Err(message) => Err(MeshError::Upstream {
                service: service.name().to_string(),
                instance: instance.id.clone(),
                message,
                attempts: attempt,
            }),
        };

        // Step 4.
        let retry = retry_after(
            config,
            Retry {
                retries: plan.retries,
                may_retry,
                replayable: replayable.is_some(),
                services: plan.services,
                deadline,
            },
            outcome,
            attempt,
            &service,
            &instance,
            &tried,
        );
        if let Some(pause) = retry {
            tried.push(instance.uid);
            // Kept in memory (bounded) so it holds no connection or slot meanwhile.
            previous = Some(match result {
                Ok(response) => keep(response, cap, deadline).await,
                Err(error) => Err(error),
            });
            tokio::time::sleep(pause).await;
            continue;
        }

        // Step 5.
        return result;
    }
}

/// A slot of the service's concurrency limit, waited for until `deadline`; a shed request is
/// counted and named.
pub(super) async fn take_slot(
    service: &ServiceState,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, MeshError> {
    service.limit.acquire(deadline).await.map_err(|reason| {
        service.stats.shed.fetch_add(1, Ordering::Relaxed);
        MeshError::Shed {
            service: service.name().to_string(),
            reason,
        }
    })
}

/// What decides whether a failed attempt is retried, besides its outcome.
pub(super) struct Retry<'a> {
    /// Retries the route allows.
    pub retries: u32,
    /// The method is idempotent or the route retries any.
    pub may_retry: bool,
    /// The request body can be sent again (it was buffered, or there is none).
    pub replayable: bool,
    /// Where another instance may be found.
    pub services: &'a [Arc<ServiceState>],
    pub deadline: Instant,
}

/// Step 4's decision after attempt number `attempt` ended with `outcome`: the pause before the
/// next attempt, or `None` when this one's answer stands. A retry needs a failure, retries
/// left, a replayable body, an idempotent request (or a connect error, which sent nothing),
/// time before the deadline, an instance not tried yet, and the service's retry budget;
/// the budget's withdrawals and refusals are counted here.
pub(super) fn retry_after(
    config: &MeshConfig,
    rules: Retry<'_>,
    outcome: AttemptOutcome,
    attempt: u32,
    service: &ServiceState,
    instance: &InstanceState,
    tried: &[u64],
) -> Option<Duration> {
    let connect_only = outcome == AttemptOutcome::ConnectError;
    let can_retry = outcome.is_failure()
        && attempt <= rules.retries
        && rules.replayable
        && (rules.may_retry || (connect_only && rules.retries > 0));
    if !can_retry {
        return None;
    }
    let pause = backoff(&config.retry, attempt);
    let in_time = Instant::now() + pause < rules.deadline;
    let another = rules
        .services
        .iter()
        .flat_map(|s| s.instances.iter())
        .any(|i| i.uid != instance.uid && !tried.contains(&i.uid));
    if !(in_time && another) {
        return None;
    }
    if service.budget.try_withdraw() {
        service.stats.retries.fetch_add(1, Ordering::Relaxed);
        Some(pause)
    } else {
        service
            .stats
            .retries_denied_by_budget
            .fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A failed attempt's response, read into memory (up to `cap` bytes, until `deadline`) so the
/// retry does not wait on its connection or service slot; too large or too slow to read, it
/// becomes an error naming its status.
async fn keep(
    response: Response<Body>,
    cap: u64,
    deadline: Instant,
) -> Result<Response<Body>, MeshError> {
    let (parts, body) = response.into_parts();
    let service = header_text(&parts.headers, HEADER_SERVICE);
    let instance = header_text(&parts.headers, HEADER_INSTANCE);
    let limited = http_body_util::Limited::new(body, cap as usize);
    match tokio::time::timeout_at(deadline, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Response::from_parts(
            parts,
            Body::from(collected.to_bytes()),
        )),
        _ => Err(MeshError::Upstream {
            service,
            instance,
            message: format!(
                "answered HTTP {} with a body that could not be kept for the retry",
                parts.status.as_u16()
            ),
            attempts: 1,
        }),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub(super) fn pool_name(services: &[Arc<ServiceState>]) -> String {
    services
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The request headers an instance gets: hop-by-hop headers (and those `Connection` names),
/// `Host` (the client sets the instance's) and the caller's deadline (re-set per attempt) go;
/// the `X-Forwarded-*` fields follow the module's policy, with `authority` (an absolute-form
/// target's) standing in for a missing `Host` and `client` the peer's address when known.
fn forwarded_headers(
    mut headers: HeaderMap,
    strip_authorization: bool,
    authority: Option<&http::uri::Authority>,
    client: Option<IpAddr>,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    let host = headers
        .remove(header::HOST)
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    headers.remove(&DEADLINE_NAME);
    if strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    match host {
        Some(host) => {
            headers.insert(FORWARDED_HOST, host);
        }
        None => {
            headers.remove(FORWARDED_HOST);
        }
    }
    headers.insert(
        FORWARDED_PROTO,
        HeaderValue::from_static(FORWARDED_PROTO_VALUE),
    );
    if let Some(client) = client {
        let mut value = Vec::new();
        for earlier in headers.get_all(&FORWARDED_FOR) {
            let earlier = earlier.as_bytes().trim_ascii();
            if !earlier.is_empty() {
                value.extend_from_slice(earlier);
                value.extend_from_slice(b", ");
            }
        }
        value.extend_from_slice(client.to_string().as_bytes());
        // Made of valid values, `, ` and an address: always a valid value.
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(FORWARDED_FOR, value);
        }
    }
    headers
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names instead of eight removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request target: origin-form (`/path?query`) for HTTP/1.1, whose `Host` names the
/// instance; absolute for h2c, whose `:authority` does.
fn instance_uri(instance: &InstanceState, path_and_query: &PathAndQuery) -> Result<Uri, MeshError> {
    let target = &instance.target;
    let invalid = || MeshError::BadRequest(format!("\"{path_and_query}\" is not a valid path"));
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(if target.prefix.is_empty() {
        path_and_query.clone()
    } else {
        PathAndQuery::try_from(format!("{}{path_and_query}", target.prefix))
            .map_err(|_| invalid())?
    });
    if instance.protocol() == Protocol::H2c {
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = target.authority.clone();
    }
    Uri::from_parts(parts).map_err(|_| invalid())
}

fn respond(
    response: Response<Incoming>,
    lease: Lease,
    instance: &InstanceState,
    attempts: u32,
    in_flight: InFlight,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let headers = &mut parts.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(value) = &instance.service_header {
        headers.insert(SERVICE_NAME, value.clone());
    }
    if let Some(value) = &instance.id_header {
        headers.insert(INSTANCE_NAME, value.clone());
    }
    let attempts_value = ATTEMPTS
        .get(attempts.saturating_sub(1) as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(attempts));
    headers.insert(ATTEMPTS_NAME, attempts_value);
    Response::from_parts(
        parts,
        Body::new(TrackedBody {
            inner: body,
            lease,
            ended: false,
            in_flight,
        }),
    )
}

/// Counts a request in flight on its instance and holds its service slot until dropped.
pub(super) struct InFlight {
    instance: Arc<InstanceState>,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    pub(super) fn enter(instance: Arc<InstanceState>, permit: OwnedSemaphorePermit) -> InFlight {
        instance.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            instance,
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes sure a chosen half-open probe is released when the request is dropped before it
/// reported (the caller went away): otherwise the circuit would wait for it forever.
pub(super) struct AttemptGuard {
    pub(super) pick: Pick,
    finished: bool,
}

impl AttemptGuard {
    pub(super) fn new(pick: Pick) -> AttemptGuard {
        AttemptGuard {
            pick,
            finished: false,
        }
    }

    /// Records the attempt sent at `sent` as ended now; returns when that was.
    pub(super) fn finish(
        &mut self,
        outcome: AttemptOutcome,
        sent: Instant,
        config: &MeshConfig,
        events: &EventBus,
    ) -> Instant {
        self.finished = true;
        let ended = Instant::now();
        record(&self.pick, outcome, ended - sent, ended, config, events);
        ended
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.finished && self.pick.admission == Admission::Probe {
            self.pick.instance.lock().breaker.abandon_probe();
        }
    }
}

/// The instance's response body, streamed, releasing the in-flight count when it ends and
/// giving the connection back to the instance's pool when it ended (a body dropped before its
/// end leaves its connection in an unknown state: hyper closes it).
struct TrackedBody {
    inner: Incoming,
    lease: Lease,
    ended: bool,
    in_flight: InFlight,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if self.ended || self.inner.is_end_stream() {
            let lease = std::mem::take(&mut self.lease);
            self.in_flight.instance.pool.check_in(lease);
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("host", HeaderValue::from_static("evolve:7070"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert(HEADER_DEADLINE, HeaderValue::from_static("50"));
        headers.insert("x-keep", HeaderValue::from_static("yes"));
        let out = forwarded_headers(headers.clone(), true, None, None);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(out["x-keep"], "yes");
        assert_eq!(out["x-forwarded-host"], "evolve:7070");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert!(forwarded_headers(headers, false, None, None).contains_key("authorization"));
    }

    #[test]
    fn forwarded_for_is_appended_to_and_forwarded_host_and_proto_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("evolve:7070"));
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        headers.append("x-forwarded-for", HeaderValue::from_static(" 10.0.0.1 "));
        headers.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let client = Some(IpAddr::from([127, 0, 0, 1]));
        let out = forwarded_headers(headers.clone(), false, None, client);
        let all = |name: &str| -> Vec<&str> {
            out.get_all(name)
                .iter()
                .map(|v| v.to_str().expect("text"))
                .collect()
        };
        assert_eq!(all("x-forwarded-for"), ["203.0.113.7, 10.0.0.1, 127.0.0.1"]);
        assert_eq!(all("x-forwarded-host"), ["evolve:7070"]);
        assert_eq!(all("x-forwarded-proto"), ["http"]);
        // No Host: the client's X-Forwarded-Host goes rather than passing as ours.
        headers.remove("host");
        let out = forwarded_headers(headers, false, None, None);
        assert!(!out.contains_key("x-forwarded-host"), "{out:?}");
        assert_eq!(
            out.get_all("x-forwarded-for").iter().count(),
            2,
            "unknown peer: unchanged"
        );
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says_and_never_climb_above_the_root() {
        for (path, normal) in [
            // RFC 3986 §5.4's examples, as absolute paths.
            ("/a/b/c/./../../g", Some("/a/g")),
            ("/mid/content=5/../6", Some("/mid/6")),
            ("/a/b/..", Some("/a/")),
            ("/a/./", Some("/a/")),
            ("/a//../b", Some("/a/b")),
            ("/../admin", Some("/admin")),
            ("/../../../etc/passwd", Some("/etc/passwd")),
            ("/..", Some("/")),
            ("/.", Some("/")),
            // Percent-encoded dots are dots to the servers that decode them.
            ("/%2e%2e/admin", Some("/admin")),
            ("/%2E%2e/admin", Some("/admin")),
            ("/x/.%2e/y", Some("/y")),
            ("/x/%2e/y", Some("/x/y")),
            ("/x/../y?q=/../z", Some("/y?q=/../z")),
            // Nothing to remove: no allocation.
            ("/", None),
            ("/forecast?x=1", None),
            ("/files/x.json", None),
            ("/a/.../b", None),
            ("/a;b/c", None),
            ("/a%2Fb/c", None),
            ("/%2e%2e%2e", None),
            ("*", None),
        ] {
            assert_eq!(
                remove_dot_segments(path).as_ref().map(|n| n.as_deref()),
                Ok(normal),
                "{path}"
            );
        }
        for path in [
            "/..%2fadmin",
            "/..%2Fadmin",
            "/a/%2e%2e%5cadmin",
            "/..;/admin",
            "/.;x/a",
            "/a/..\\b",
        ] {
            assert!(
                matches!(
                    remove_dot_segments(path),
                    Err(UnsafePath::HiddenDotSegment { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn a_request_with_two_hosts_or_a_hidden_dot_segment_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append("host", HeaderValue::from_static("a"));
        let path = PathAndQuery::from_static("/x/../y");
        assert_eq!(
            checked_request(&headers, path.clone())
                .expect("one host")
                .as_str(),
            "/y"
        );
        headers.append("host", HeaderValue::from_static("b"));
        let err = checked_request(&headers, path).expect_err("two hosts");
        assert!(err.to_string().contains("more than one Host"), "{err}");
        let err = checked_request(&HeaderMap::new(), PathAndQuery::from_static("/..;/admin"))
            .expect_err("hidden");
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_caller_deadline_is_floored_and_only_a_shorter_one_binds_the_caller() {
        let route = Duration::from_millis(15_000);
        let floor = Duration::from_millis(MIN_CALLER_DEADLINE_MS);
        for ms in [0, 1, MIN_CALLER_DEADLINE_MS] {
            assert_eq!(
                Budget::new(Some(ms), route),
                Budget {
                    total: floor,
                    caller_bound: true
                },
                "{ms}"
            );
        }
        assert_eq!(
            Budget::new(Some(250), route).timeout_outcome(),
            AttemptOutcome::CallerDeadline
        );
        for caller in [None, Some(15_000), Some(99_999)] {
            let budget = Budget::new(caller, route);
            assert_eq!(
                (budget.total, budget.caller_bound),
                (route, false),
                "{caller:?}"
            );
            assert_eq!(budget.timeout_outcome(), AttemptOutcome::Timeout);
        }
        // A route timeout below the floor is the route's own.
        let short = Budget::new(Some(0), Duration::from_millis(5));
        assert_eq!(
            (short.total, short.caller_bound),
            (Duration::from_millis(5), false)
        );
        assert_eq!(parse_deadline_ms(b" 250 "), Some(250));
        assert_eq!(parse_deadline_ms(b"-1"), None);
    }
}
