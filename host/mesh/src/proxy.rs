//! The data path: forwards one request to an instance chosen by the balancer, over the
//! instance's pooled keep-alive connections ([`super::pool`]; HTTP/1.1, or h2c with prior
//! knowledge), streaming both bodies, and retries within the rules of [`super::retry`].
//!
//! Per request:
//! 1. The deadline is now + the route's timeout, or sooner if the caller sent
//!    `x-evolve-deadline-ms` (its remaining budget); the instance gets the remainder in the same
//!    header, so deadlines propagate down a call chain.
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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
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

/// Forwards `request` per `plan`; see the module docs for the steps.
pub async fn forward(
    context: &DataPath<'_>,
    plan: Plan<'_>,
    request: Request<Body>,
) -> Result<Response<Body>, MeshError> {
    let config = context.config;
    let started = Instant::now();
    // Step 1.
    let caller_budget = request
        .headers()
        .get(&DEADLINE_NAME)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let budget = caller_budget.map_or(plan.timeout, |b| b.min(plan.timeout));
    let deadline = started + budget;

    let (parts, body) = request.into_parts();
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
    let mut headers = forwarded_headers(parts.headers, plan.strip_authorization);

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
            Err(_) => (AttemptOutcome::Timeout, Err(String::new())),
        };
        guard.finish(outcome, sent, config, context.events);

        let result = match answer {
            Ok((response, lease)) => Ok(respond(response, lease, &instance, attempt, in_flight)),
            Err(_) if outcome == AttemptOutcome::Timeout => Err(MeshError::Timeout {
                service: service.name().to_string(),
                instance: instance.id.clone(),
                timeout_ms: budget.as_millis() as u64,
                attempts: attempt,
            }),
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
/// `Host` (the client sets the instance's) and the caller's deadline (re-set per attempt) go.
fn forwarded_headers(mut headers: HeaderMap, strip_authorization: bool) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    let host = headers.remove(header::HOST);
    headers.remove(&DEADLINE_NAME);
    if strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(host) = host {
        headers.insert(FORWARDED_HOST, host);
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
        let out = forwarded_headers(headers.clone(), true);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(out["x-keep"], "yes");
        assert_eq!(out["x-forwarded-host"], "evolve:7070");
        assert!(forwarded_headers(headers, false).contains_key("authorization"));
    }
}
