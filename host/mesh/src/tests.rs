//! Mesh tests against real in-process hyper backends on ephemeral loopback ports.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::catalog::{HealthCheckSpec, InstanceSpec, Protocol};
use super::config::{RouteConfig, RouteEntry};
use super::*;
use evolve_core::events::EventKind;

/// What a backend saw of the last request.
#[derive(Debug, Clone, Default)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
    deadline_ms: Option<u64>,
    version: String,
    authorization: bool,
}

/// A loopback backend answering `status` (switchable) after `delay_ms`, naming itself.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    last: Arc<Mutex<Seen>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        Backend::start_with(name, false).await
    }

    async fn start_with(name: &'static str, h2: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(Seen::default()));
        let (h, s, d, l) = (
            Arc::clone(&hits),
            Arc::clone(&status),
            Arc::clone(&delay_ms),
            Arc::clone(&last),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, s, d, l) = (
                    Arc::clone(&h),
                    Arc::clone(&s),
                    Arc::clone(&d),
                    Arc::clone(&l),
                );
                let service = service_fn(move |request: Request<Incoming>| {
                    let (h, s, d, l) = (
                        Arc::clone(&h),
                        Arc::clone(&s),
                        Arc::clone(&d),
                        Arc::clone(&l),
                    );
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .unwrap_or_default();
                        *l.lock().expect("lock") = Seen {
                            method: parts.method.to_string(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            body,
                            deadline_ms: parts
                                .headers
                                .get(proxy::HEADER_DEADLINE)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok()),
                            version: format!("{:?}", parts.version),
                            authorization: parts.headers.contains_key("authorization"),
                        };
                        let delay = d.load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let status = s.load(Ordering::SeqCst);
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(format!(
                                "{{\"backend\":\"{name}\",\"status\":{status}}}"
                            ))))
                            .expect("response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Backend {
            name,
            addr,
            hits,
            status,
            delay_ms,
            last,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn last(&self) -> Seen {
        self.last.lock().expect("lock").clone()
    }

    fn instance(&self, weight: u32) -> InstanceSpec {
        InstanceSpec {
            id: Some(self.name.to_string()),
            endpoint: self.url(),
            weight,
            protocol: Protocol::Http1,
            metadata: BTreeMap::new(),
        }
    }
}

/// Checks answered from a table the test controls: instance endpoint → healthy?
#[derive(Default)]
struct ScriptedChecks {
    healthy: Mutex<HashMap<String, bool>>,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl CheckRunner for ScriptedChecks {
    fn has_checker(&self, name: &str) -> bool {
        name == "scripted"
    }

    async fn check(&self, _checker: &str, target: InstanceRecord) -> CheckOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let healthy = self
            .healthy
            .lock()
            .expect("lock")
            .get(&target.endpoint)
            .copied()
            .unwrap_or(true);
        CheckOutcome::Report(CheckReport {
            status: if healthy {
                CheckVerdict::Healthy
            } else {
                CheckVerdict::Unhealthy
            },
            latency_us: 10,
            detail: "scripted".into(),
            checked_at_ms: 0,
        })
    }
}

struct Fixture {
    mesh: Mesh,
    events: EventBus,
    _dir: tempfile::TempDir,
    checks: Arc<ScriptedChecks>,
}

fn fixture(config: MeshConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = EventBus::new();
    let checks = Arc::new(ScriptedChecks::default());
    let mesh = Mesh::new(
        config,
        dir.path().join("catalog.json"),
        Arc::clone(&checks) as Arc<dyn CheckRunner>,
        events.clone(),
    )
    .expect("mesh");
    Fixture {
        mesh,
        events,
        _dir: dir,
        checks,
    }
}

fn service(name: &str, capability: &str, instances: Vec<InstanceSpec>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        service_type: "model-server".into(),
        capabilities: vec![capability.into()],
        instances,
        health: None,
        lb: None,
        max_in_flight: None,
        max_pending: None,
    }
}

fn post(path: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Body::empty())
        .expect("request")
}

async fn text(response: Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn header(response: &Response<Body>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Quiet outlier detection and breakers so a test sees only what it turns on.
fn calm() -> MeshConfig {
    let mut config = MeshConfig::default();
    config.outlier.consecutive_errors = 0;
    config.breaker.consecutive_failures = 0;
    config.breaker.failure_rate_pct = 0;
    config.retry.max_retries = 0;
    config.slow_start_ms = 0;
    config
}

#[tokio::test]
async fn route_forwards_to_a_service_offering_the_capability() {
    let a = Backend::start("a").await;
    let mut config = calm();
    config.routes.insert(
        "predict".into(),
        RouteEntry::Full(RouteConfig {
            path: Some("/v2/forecast".into()),
            timeout_ms: Some(4_000),
            ..RouteConfig::for_type("forecast")
        }),
    );
    let f = fixture(config);
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    f.mesh
        .register(
            service(
                "other",
                "audit",
                vec![Backend::start("x").await.instance(100)],
            ),
            false,
        )
        .await
        .expect("register");

    let response = f
        .mesh
        .route(
            "predict",
            post("/v1/route/predict?h=24", "{\"x\":1}"),
            false,
        )
        .await
        .expect("routed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, proxy::HEADER_SERVICE), "fc");
    assert_eq!(header(&response, proxy::HEADER_INSTANCE), "a");
    assert_eq!(header(&response, proxy::HEADER_ATTEMPTS), "1");
    assert!(text(response).await.contains("\"backend\":\"a\""));
    let seen = a.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v2/forecast?h=24");
    assert_eq!(seen.body, b"{\"x\":1}");
    // The instance learns the remaining budget, at most the route's timeout.
    let deadline = seen.deadline_ms.expect("deadline header");
    assert!(deadline <= 4_000 && deadline > 3_000, "{deadline}");

    // An unmapped type falls back to the capability of its own name.
    let response = f
        .mesh
        .route("forecast", post("/v1/route/forecast", "{}"), false)
        .await
        .expect("routed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.last().path, "/forecast");

    let err = f
        .mesh
        .route("weather", post("/v1/route/weather", "{}"), false)
        .await
        .expect_err("nobody offers weather");
    assert!(matches!(err, MeshError::NoRoute { .. }), "{err}");
}

#[tokio::test]
async fn named_proxy_streams_bodies_and_honours_a_shorter_caller_deadline() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    // A body of unknown length streams (no buffering, no retry).
    let body = Body::new(Chunks(
        vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")].into(),
    ));
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/services/fc/proxy/items/7?full=1")
        .header(proxy::HEADER_DEADLINE, "1500")
        .header("authorization", "Bearer daemon-token")
        .body(body)
        .expect("request");
    let response = f
        .mesh
        .proxy("fc", "/items/7?full=1".into(), request, true)
        .await
        .expect("proxied");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = a.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PUT", "/items/7?full=1")
    );
    assert_eq!(seen.body, b"hello world");
    assert!(seen.deadline_ms.expect("deadline") <= 1_500);
    assert!(
        !seen.authorization,
        "the daemon's token must not reach the instance"
    );
    assert_eq!(seen.version, "HTTP/1.1");
}

/// A body of unknown length, sent in chunks.
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tokio::test]
async fn h2c_instances_are_reached_over_http2() {
    let a = Backend::start_with("a", true).await;
    let f = fixture(calm());
    let mut instance = a.instance(100);
    instance.protocol = Protocol::H2c;
    f.mesh
        .register(service("fc", "forecast", vec![instance]), false)
        .await
        .expect("register");
    for _ in 0..3 {
        let response = f
            .mesh
            .proxy("fc", "/x".into(), get("/v1/services/fc/proxy/x"), false)
            .await
            .expect("proxied");
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
    }
    assert_eq!(a.last().version, "HTTP/2.0");
    assert_eq!(a.hits(), 3);
}

/// Moves tokio's clock forward by `by` without sleeping: pause, advance, resume. Only for
/// waits the mesh measures on tokio time (breaker and ejection periods, slow start).
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

async fn send(mesh: &Mesh, name: &str) -> Result<Response<Body>, MeshError> {
    mesh.proxy(
        name,
        "/work".into(),
        get("/v1/services/x/proxy/work"),
        false,
    )
    .await
}

/// Waits for the next bus event of `kind` (an observed event, not a sleep).
async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<evolve_core::events::Event>,
    kind: EventKind,
) -> evolve_core::events::Event {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Ok(event) if event.kind == kind => return event,
                Ok(_) => {}
                Err(e) => panic!("event bus: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {} event", kind.as_str()))
}

#[tokio::test]
async fn weights_are_honoured_over_real_backends_and_weight_zero_drains() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let f = fixture(calm());
    let mut spec = service(
        "fc",
        "forecast",
        vec![a.instance(500), b.instance(300), c.instance(200)],
    );
    spec.lb = Some(LbKind::Weighted);
    f.mesh
        .register(spec.clone(), false)
        .await
        .expect("register");
    for _ in 0..1_000 {
        let response = send(&f.mesh, "fc").await.expect("proxied");
        text(response).await;
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (500, 300, 200));

    // Weight 0 drains c; a and b keep their state (same instance objects).
    let uid_a = f.mesh.service("fc").expect("fc").instances[0].uid;
    spec.instances[2].weight = 0;
    f.mesh.register(spec, true).await.expect("replace");
    assert_eq!(f.mesh.service("fc").expect("fc").instances[0].uid, uid_a);
    for _ in 0..800 {
        text(send(&f.mesh, "fc").await.expect("proxied")).await;
    }
    assert_eq!(c.hits(), 200, "a drained instance got traffic");
    assert_eq!((a.hits(), b.hits()), (1_000, 600));
}

#[tokio::test]
async fn a_failing_instance_gets_only_the_single_half_open_probe_then_slow_starts_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.breaker.consecutive_failures = 3;
    config.breaker.open_base_ms = 1_000;
    config.breaker.jitter_pct = 0;
    config.slow_start_ms = 60_000;
    let f = fixture(config);
    let mut rx = f.events.subscribe();
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::Weighted);
    f.mesh.register(spec, false).await.expect("register");

    a.set_status(500);
    // Weighted alternates a, b: a's third failure opens its circuit.
    for _ in 0..6 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let opened = next_event(&mut rx, EventKind::CircuitOpened).await;
    assert_eq!(opened.data["instance"], "a");
    assert_eq!(a.hits(), 3);
    for _ in 0..20 {
        let response = send(&f.mesh, "fc").await.expect("answer");
        assert_eq!(header(&response, proxy::HEADER_INSTANCE), "b");
        text(response).await;
    }
    assert_eq!(a.hits(), 3, "an open circuit let traffic through");

    // The open period ends: of 10 concurrent requests exactly one (the probe) reaches a.
    a.delay_ms.store(200, Ordering::SeqCst);
    skip(Duration::from_millis(1_000)).await;
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let mesh = f.mesh.clone();
            tokio::spawn(async move { text(send(&mesh, "fc").await.expect("answer")).await })
        })
        .collect();
    for request in burst {
        request.await.expect("join");
    }
    assert_eq!(a.hits(), 4, "half-open must admit exactly one probe");
    // The probe failed: open again, for twice as long.
    let reopened = next_event(&mut rx, EventKind::CircuitOpened).await;
    assert_eq!(reopened.data["open_ms"], 2_000);
    assert_eq!(reopened.data["openings"], 2);

    // Recovered: after the period, one probe succeeds and closes the circuit.
    a.set_status(200);
    a.delay_ms.store(0, Ordering::SeqCst);
    skip(Duration::from_millis(2_000)).await;
    for _ in 0..2 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let closed = next_event(&mut rx, EventKind::CircuitClosed).await;
    assert_eq!(closed.data["instance"], "a");
    assert_eq!(a.hits(), 5);

    // Slow start: a comes back at 10 % of its weight (10 vs 100: 1 in 11 requests)...
    let before = a.hits();
    for _ in 0..110 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let share = a.hits() - before;
    assert!((9..=12).contains(&share), "slow start share {share} of 110");
    // ...and at full weight once the window has passed.
    skip(Duration::from_millis(60_000)).await;
    let before = a.hits();
    for _ in 0..100 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert_eq!(a.hits() - before, 50);
}

#[tokio::test]
async fn consecutive_errors_eject_within_the_max_share_and_the_instance_returns() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.outlier.consecutive_errors = 2;
    config.outlier.base_ejection_ms = 5_000;
    config.outlier.max_ejected_pct = 50;
    let f = fixture(config);
    let mut rx = f.events.subscribe();
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    f.mesh.register(spec, false).await.expect("register");
    a.set_status(502);
    b.set_status(502);
    for _ in 0..4 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    // Both reached the threshold, but only half the instances may be ejected.
    let ejected = next_event(&mut rx, EventKind::InstanceEjected).await;
    assert_eq!(ejected.data["ejected_ms"], 5_000);
    let service = f.mesh.service("fc").expect("fc");
    let now = tokio::time::Instant::now();
    let ejected_now = service
        .instances
        .iter()
        .filter(|i| i.lock().outlier.is_ejected(now))
        .count();
    assert_eq!(ejected_now, 1);
    let (out, kept) = if ejected.data["instance"] == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let (out_hits, kept_hits) = (out.hits(), kept.hits());
    for _ in 0..10 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert_eq!(out.hits(), out_hits, "an ejected instance got traffic");
    assert_eq!(kept.hits(), kept_hits + 10);
    skip(Duration::from_millis(5_000)).await;
    out.set_status(200);
    kept.set_status(200);
    for _ in 0..10 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert!(out.hits() > out_hits, "the instance never came back");
}

#[tokio::test]
async fn retries_go_to_another_instance_only_when_safe_and_stay_inside_the_budget() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.retry.max_retries = 1;
    config.retry.backoff_base_ms = 1;
    config.retry.backoff_max_ms = 2;
    config.retry.budget_pct = 20;
    // A floor of 1 retry/s over 10 s: 10 retries even before traffic earned any.
    config.retry.budget_min_per_s = 1;
    config.retry.budget_window_s = 10;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    f.mesh.register(spec, false).await.expect("register");
    a.set_status(503);

    // Round-robin starts at a: the GET fails there and is retried on b.
    let response = send(&f.mesh, "fc").await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, proxy::HEADER_INSTANCE), "b");
    assert_eq!(header(&response, proxy::HEADER_ATTEMPTS), "2");
    text(response).await;
    // A POST is not idempotent: its 503 comes back as is, after one attempt.
    let service = f.mesh.service("fc").expect("fc");
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = f
            .mesh
            .proxy("fc", "/work".into(), post("/work", "{}"), false)
            .await
            .expect("answer");
        answers.push((
            header(&response, proxy::HEADER_INSTANCE),
            response.status().as_u16(),
            header(&response, proxy::HEADER_ATTEMPTS),
        ));
        text(response).await;
    }
    assert!(
        answers.contains(&("a".into(), 503, "1".into())),
        "{answers:?}"
    );
    assert_eq!(service.stats.retries.load(Ordering::SeqCst), 1);

    // Everything fails: retries stop at 20 % of the requests.
    b.set_status(503);
    let service_retries = service.stats.retries.load(Ordering::SeqCst);
    let hits = a.hits() + b.hits();
    for _ in 0..100 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let retries = service.stats.retries.load(Ordering::SeqCst) - service_retries;
    // Budget: 10 (floor) + 20 % of 103 requests = 30 retries in the window; 1 was spent above.
    assert_eq!(retries, 29, "retries outside the budget");
    assert_eq!(a.hits() + b.hits() - hits, 100 + retries);
    assert_eq!(
        service
            .stats
            .retries_denied_by_budget
            .load(Ordering::SeqCst),
        100 - retries
    );
}

#[tokio::test]
async fn concurrency_cap_sheds_with_503_and_the_reason_and_deadlines_time_out() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let mut spec = service("fc", "forecast", vec![a.instance(100)]);
    spec.max_in_flight = Some(1);
    spec.max_pending = Some(0);
    f.mesh.register(spec, false).await.expect("register");
    a.delay_ms.store(300, Ordering::SeqCst);
    let first = {
        let mesh = f.mesh.clone();
        tokio::spawn(async move { text(send(&mesh, "fc").await.expect("answer")).await })
    };
    let service = f.mesh.service("fc").expect("fc");
    while service.limit.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let err = send(&f.mesh, "fc").await.expect_err("over the cap");
    assert!(matches!(err, MeshError::Shed { .. }), "{err}");
    assert!(err.to_string().contains("max_in_flight = 1"), "{err}");
    first.await.expect("join");

    // The caller's deadline (100 ms) is shorter than the instance's 300 ms.
    let request = Request::builder()
        .uri("/work")
        .header(proxy::HEADER_DEADLINE, "100")
        .body(Body::empty())
        .expect("request");
    let err = f
        .mesh
        .proxy("fc", "/work".into(), request, false)
        .await
        .expect_err("too slow");
    assert!(
        matches!(
            err,
            MeshError::Timeout {
                timeout_ms: 100,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn active_checks_drive_health_with_thresholds_and_panic_routes_to_all() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.outlier.panic_threshold_pct = 50;
    let f = fixture(config);
    let mut rx = f.events.subscribe();
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.health = Some(HealthCheckSpec {
        checker: "scripted".into(),
        interval_ms: 100,
        jitter_pct: 0,
        healthy_threshold: 2,
        unhealthy_threshold: 1,
        ..HealthCheckSpec::default()
    });
    f.mesh.register(spec, false).await.expect("register");
    f.checks
        .healthy
        .lock()
        .expect("lock")
        .insert(a.url(), false);
    f.mesh.start_health_checks();
    loop {
        let event = next_event(&mut rx, EventKind::HealthChanged).await;
        if event.data["instance"] == "a" {
            assert_eq!(event.data["to"], "unhealthy");
            break;
        }
    }
    let a_hits = a.hits();
    for _ in 0..10 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert_eq!(a.hits(), a_hits, "an unhealthy instance got traffic");

    // Both unhealthy: below the panic threshold the mesh routes to all instead of failing.
    f.checks
        .healthy
        .lock()
        .expect("lock")
        .insert(b.url(), false);
    loop {
        let event = next_event(&mut rx, EventKind::HealthChanged).await;
        if event.data["instance"] == "b" && event.data["to"] == "unhealthy" {
            break;
        }
    }
    let response = send(&f.mesh, "fc").await.expect("panic mode routes");
    assert_eq!(response.status(), StatusCode::OK);
    text(response).await;

    f.checks.healthy.lock().expect("lock").clear();
    let mut recovered = std::collections::BTreeSet::new();
    while recovered.len() < 2 {
        let event = next_event(&mut rx, EventKind::HealthChanged).await;
        assert_eq!(event.data["to"], "healthy");
        recovered.insert(event.data["instance"].as_str().unwrap_or("").to_string());
    }
    assert!(f.checks.calls.load(Ordering::SeqCst) >= 6);
    let view = f.mesh.views();
    assert_eq!(view[0].status, "healthy");
    assert!(view[0].instances.iter().all(|i| i.last_check.is_some()));
}

#[tokio::test]
async fn registrations_are_validated_persisted_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh/catalog.json");
    let runner: Arc<dyn CheckRunner> = Arc::new(ScriptedChecks::default());
    let mut config = calm();
    config.services = vec![service(
        "from-config",
        "audit",
        vec![Backend::start("c").await.instance(100)],
    )];
    let mesh = Mesh::new(
        config.clone(),
        path.clone(),
        Arc::clone(&runner),
        EventBus::new(),
    )
    .expect("mesh");
    let a = Backend::start("a").await;
    mesh.register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");

    let err = mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, MeshError::Duplicate(_)), "{err}");
    let mut bad = service("bad", "x", vec![a.instance(100)]);
    bad.instances[0].endpoint = "not a url".into();
    assert!(matches!(
        mesh.register(bad.clone(), false).await,
        Err(MeshError::Spec(CheckedSpecError::Spec(
            SpecError::BadUrl { .. }
        )))
    ));
    bad.instances[0] = a.instance(5_000);
    assert!(matches!(
        mesh.register(bad.clone(), false).await,
        Err(MeshError::Spec(CheckedSpecError::Spec(
            SpecError::WeightOutOfRange { .. }
        )))
    ));
    bad.instances[0] = a.instance(1);
    bad.health = Some(HealthCheckSpec {
        checker: "no-such-checker".into(),
        ..HealthCheckSpec::default()
    });
    assert!(matches!(
        mesh.register(bad, false).await,
        Err(MeshError::Spec(CheckedSpecError::UnknownChecker(_)))
    ));
    assert!(matches!(
        mesh.remove("from-config").await,
        Err(MeshError::ConfigOwned(_))
    ));
    drop(mesh);

    // A new daemon reads the catalog back.
    let mesh = Mesh::new(
        config.clone(),
        path.clone(),
        Arc::clone(&runner),
        EventBus::new(),
    )
    .expect("restart");
    let names: Vec<String> = mesh.services().keys().cloned().collect();
    assert_eq!(names, ["fc", "from-config"]);
    let report = mesh.probe_service("fc").await.expect("probe");
    assert_eq!((report.status, report.healthy), (200, true));
    assert_eq!(report.instance, "a");
    assert_eq!(a.last().path, "/health");
    mesh.remove("fc").await.expect("remove");
    drop(mesh);
    let mesh = Mesh::new(config, path, runner, EventBus::new()).expect("restart");
    assert_eq!(mesh.services().len(), 1);
}

#[tokio::test]
async fn a_retry_with_nowhere_to_go_returns_the_original_answer_and_frees_its_slot() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.retry.max_retries = 1;
    config.retry.backoff_base_ms = 1;
    config.retry.backoff_max_ms = 1;
    config.breaker.consecutive_failures = 1;
    config.breaker.jitter_pct = 0;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    spec.max_in_flight = Some(1);
    f.mesh.register(spec, false).await.expect("register");
    // b fails once: its circuit opens, so a retry of a's failure has nowhere to go.
    b.set_status(500);
    a.set_status(200);
    text(send(&f.mesh, "fc").await.expect("answer")).await; // a
    text(send(&f.mesh, "fc").await.expect("answer")).await; // b: opens
    a.set_status(503);
    let response = send(&f.mesh, "fc").await.expect("the original answer");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, proxy::HEADER_INSTANCE), "a");
    assert!(text(response).await.contains("\"backend\":\"a\""));
    assert_eq!(f.mesh.service("fc").expect("fc").limit.in_flight(), 0);
}

#[tokio::test]
async fn the_data_plane_listener_forwards_any_path_to_its_service() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(listener::serve(
        socket,
        f.mesh.clone(),
        "fc".into(),
        stop_rx,
    ));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::builder()
                .method(Method::POST)
                .uri(format!("http://{addr}/forecast?x=1"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[proxy::HEADER_SERVICE], "fc");
    let seen = a.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/forecast?x=1")
    );
    // An unknown service answers with the API's JSON error, not a dropped connection.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let other = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let other_addr = other.local_addr().expect("addr");
    tokio::spawn(listener::serve(other, f.mesh.clone(), "nobody".into(), rx));
    let response = client
        .request(
            Request::builder()
                .uri(format!("http://{other_addr}/"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    stop_tx.send(true).expect("stop");
    served.await.expect("listener stops");
}

#[tokio::test]
async fn the_listener_thread_serves_then_stops_and_its_connections_do_not_outlive_it() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let thread = listener::start(socket, f.mesh.clone(), "fc".into(), stop_rx, Duration::ZERO)
        .expect("start");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::builder()
                .uri(format!("http://{addr}/forecast"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");
    // The client keeps its connection open: the thread ends all the same.
    stop_tx.send(true).expect("stop");
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join task")
        .expect("the listener thread ends without a panic");
    // The upstream connection the listener's runtime opened and pooled died with it; a request
    // on this runtime discards it and opens its own.
    let response = f
        .mesh
        .proxy_to(
            "fc",
            http::uri::PathAndQuery::from_static("/after"),
            Request::new(Body::empty()),
            false,
        )
        .await
        .expect("proxied after the listener stopped");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.last().path, "/after");
}

#[tokio::test]
async fn the_inventory_lists_each_instance_with_its_health_and_circuit() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.breaker.consecutive_failures = 1;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(0)]);
    spec.lb = Some(LbKind::RoundRobin);
    spec.health = Some(HealthCheckSpec {
        checker: "scripted".into(),
        interval_ms: 100,
        jitter_pct: 0,
        ..HealthCheckSpec::default()
    });
    f.mesh.register(spec, false).await.expect("register");
    let mut rx = f.events.subscribe();
    f.mesh.start_health_checks();
    for _ in 0..2 {
        next_event(&mut rx, EventKind::HealthChanged).await;
    }
    a.set_status(500);
    text(send(&f.mesh, "fc").await.expect("answer")).await;
    let inventory = f.mesh.inventory();
    assert_eq!(inventory.len(), 2);
    let entry_a = &inventory[0];
    assert_eq!(entry_a.service.name, "fc");
    assert_eq!(entry_a.service.endpoint, a.url());
    assert_eq!(entry_a.service.capabilities, ["forecast"]);
    assert_eq!(entry_a.circuit, "open");
    assert_eq!(
        entry_a.health.as_ref().map(|h| h.status),
        Some(CheckVerdict::Healthy)
    );
    assert!(
        entry_a
            .service
            .metadata
            .contains(&("instance".to_string(), "a".to_string()))
    );
    assert_eq!(inventory[1].service.weight, 0);
    assert_eq!(inventory[1].circuit, "closed");
}

/// A model-aware route in a mesh with no registry attached (an embedding without one): the
/// route's stated fallback, never a 500.
#[tokio::test]
async fn a_model_route_without_a_registry_takes_its_fallback() {
    let a = Backend::start("a").await;
    let mut config = calm();
    for (name, fallback) in [
        ("forward", config::ModelFallback::Forward),
        ("reject", config::ModelFallback::Reject),
    ] {
        config.routes.insert(
            name.into(),
            RouteEntry::Full(RouteConfig {
                path: Some("/forecast".into()),
                task: Some("forecast".into()),
                model: Some("champion".into()),
                model_fallback: Some(fallback),
                ..RouteConfig::for_type("forecast")
            }),
        );
    }
    let f = fixture(config);
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");

    let response = f
        .mesh
        .route("forward", post("/v1/route/forward", "{\"x\":1}"), false)
        .await
        .expect("forwarded without a model");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, model::HEADER_MODEL_SOURCE), "none");
    assert_eq!(
        header(&response, model::HEADER_MODEL_FALLBACK),
        "no_registry"
    );
    assert_eq!(a.last().body, b"{\"x\":1}", "the body goes as it came");

    let hits = a.hits.load(Ordering::SeqCst);
    let err = f
        .mesh
        .route("reject", post("/v1/route/reject", "{}"), false)
        .await
        .expect_err("reject answers no_model");
    assert!(matches!(err, MeshError::NoModel { .. }), "{err}");
    assert_eq!(a.hits.load(Ordering::SeqCst), hits, "nothing was sent");
}

/// Fan-out reads the body into memory once, so it refuses a body over `route_body_kb` with
/// 413 before sending anything.
#[tokio::test]
async fn a_fan_out_body_over_the_route_body_cap_is_refused_before_sending() {
    let a = Backend::start("a").await;
    let mut config = calm();
    config.route_body_kb = 1;
    config.routes.insert(
        "spread".into(),
        RouteEntry::Full(RouteConfig {
            path: Some("/analysis".into()),
            fanout: config::Fanout::All,
            ..RouteConfig::for_type("analysis")
        }),
    );
    let f = fixture(config);
    f.mesh
        .register(service("an", "analysis", vec![a.instance(100)]), false)
        .await
        .expect("register");

    let big: &'static str = Box::leak("x".repeat(1025).into_boxed_str());
    let err = f
        .mesh
        .route("spread", post("/v1/route/spread", big), false)
        .await
        .expect_err("over the cap");
    assert!(
        matches!(err, MeshError::BodyTooLarge { limit_kb: 1 }),
        "{err}"
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "nothing was sent");

    let fits: &'static str = Box::leak("x".repeat(1024).into_boxed_str());
    let response = f
        .mesh
        .route("spread", post("/v1/route/spread", fits), false)
        .await
        .expect("at the cap");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}

/// Starts the data-plane listener for `service` on an ephemeral port; it stops when the
/// returned sender is dropped or sends `true`.
async fn listen(mesh: &Mesh, service: &str) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(listener::serve(
        socket,
        mesh.clone(),
        service.into(),
        stop_rx,
    ));
    (addr, stop_tx)
}

/// Registers service `name` (capability `c`) with `instances` and starts the data-plane
/// listener for it.
async fn listening(
    f: &Fixture,
    name: &str,
    instances: Vec<InstanceSpec>,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    f.mesh
        .register(service(name, "c", instances), false)
        .await
        .expect("register");
    listen(&f.mesh, name).await
}

/// Writes `request` (one or more pipelined requests) on a fresh connection to `addr` and
/// returns everything read until the listener closes it.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    // Bounded, so a listener that wrongly keeps the connection open fails the test instead of
    // hanging it.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the listener closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// What a hand-written backend does after its answers on one connection.
#[derive(Clone, Copy)]
enum AfterAnswers {
    /// Closes right after the last answer.
    Close,
    /// Reads the next request, then closes without answering it (as an instance closing an
    /// idle connection just as a request arrives does).
    DropNext,
}

/// A loopback backend speaking HTTP/1.1 by hand, so the test chooses every byte of the
/// response: per connection it answers `answers` requests (heads with an optional
/// `Content-Length` body) with `response`, then does `after`. Counts its connections.
async fn raw_backend(
    response: &'static str,
    answers: usize,
    after: AfterAnswers,
) -> (InstanceSpec, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    // One request: its head, then its body by Content-Length.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    if answered == answers {
                        // AfterAnswers::DropNext: the request was read; close unanswered.
                        return;
                    }
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    answered += 1;
                    if answered == answers && matches!(after, AfterAnswers::Close) {
                        return;
                    }
                }
            });
        }
    });
    let instance = InstanceSpec {
        id: Some("raw".into()),
        endpoint: format!("http://{addr}"),
        weight: 100,
        protocol: Protocol::Http1,
        metadata: BTreeMap::new(),
    };
    (instance, connections)
}

#[tokio::test]
async fn the_fast_path_serves_pipelined_requests_on_one_instance_connection() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    let answer = raw_exchange(
        addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /three?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    assert_eq!(answer.matches("x-evolve-service: fc\r\n").count(), 3);
    assert_eq!(answer.matches("x-evolve-instance: a\r\n").count(), 3);
    assert_eq!(answer.matches("x-evolve-attempts: 1\r\n").count(), 3);
    assert_eq!(answer.matches("connection: close\r\n").count(), 1);
    assert_eq!(
        answer.matches("{\"backend\":\"a\",\"status\":200}").count(),
        3
    );
    assert_eq!(a.hits(), 3);
    assert_eq!(a.last().path, "/three?q=1");
    let service = f.mesh.service("fc").expect("fc");
    let stats = &service.instances[0].pool.stats;
    assert_eq!(
        stats.opened.load(Ordering::SeqCst),
        1,
        "one instance connection"
    );
    assert_eq!(stats.reused.load(Ordering::SeqCst), 2);
    assert_eq!(service.limit.in_flight(), 0);
}

#[tokio::test]
async fn chunked_and_close_delimited_responses_reach_the_client_whole() {
    let f = fixture(calm());
    let (chunked, chunked_connections) = raw_backend(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        usize::MAX,
        AfterAnswers::Close,
    )
    .await;
    let (addr, _stop) = listening(&f, "chunked", vec![chunked]).await;
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer
            .matches("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
            .count(),
        2,
        "both bodies, trailers included: {answer}"
    );
    assert_eq!(chunked_connections.load(Ordering::SeqCst), 1);

    let (until_close, _) = raw_backend(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        1,
        AfterAnswers::Close,
    )
    .await;
    let (addr, _stop) = listening(&f, "close", vec![until_close]).await;
    // The body ends with the connection, so the client's connection ends after it too and
    // the second request gets no answer.
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\n").await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 1, "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nuntil the end"), "{answer}");
}

#[tokio::test]
async fn a_reused_connection_the_instance_closed_is_replaced_only_for_an_idempotent_request() {
    let f = fixture(calm());
    let (instance, connections) = raw_backend(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        1,
        AfterAnswers::DropNext,
    )
    .await;
    let (addr, _stop) = listening(&f, "flaky", vec![instance]).await;
    // The second GET meets the first one's connection, which the instance closes unanswered:
    // it goes again on a fresh connection, which is no mesh retry.
    let answer = raw_exchange(
        addr,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert_eq!(answer.matches("x-evolve-attempts: 1\r\n").count(), 2);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    let service = f.mesh.service("flaky").expect("flaky");
    assert_eq!(service.stats.retries.load(Ordering::SeqCst), 0);
    // A POST the instance may have read is not sent twice: the client hears of the failure.
    let answer = raw_exchange(
        addr,
        b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("HTTP/1.1 502 Bad Gateway"), "{answer}");
    assert!(
        answer.contains("the connection failed before a response"),
        "{answer}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_fast_path_retries_a_5xx_elsewhere_or_returns_it_whole() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.retry.max_retries = 1;
    config.retry.backoff_base_ms = 1;
    config.retry.backoff_max_ms = 1;
    config.retry.budget_min_per_s = 10;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    f.mesh.register(spec, false).await.expect("register");
    a.set_status(503);
    let (addr, _stop) = listen(&f.mesh, "fc").await;
    // Round-robin starts at a: the GET fails there and is retried on b.
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("x-evolve-instance: b\r\n"), "{answer}");
    assert!(answer.contains("x-evolve-attempts: 2\r\n"), "{answer}");
    // b drained: the retry of a's 503 has nowhere to go, so a's answer comes back whole.
    let service = f.mesh.service("fc").expect("fc");
    service.instances[1].weight.store(0, Ordering::SeqCst);
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("x-evolve-instance: a\r\n"), "{answer}");
    assert!(
        answer.ends_with("{\"backend\":\"a\",\"status\":503}"),
        "{answer}"
    );
    assert_eq!(service.limit.in_flight(), 0);
}

#[tokio::test]
async fn requests_the_fast_path_does_not_take_are_served_by_hyper_on_the_same_connection() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    // A fast-path GET, then a chunked POST: hyper takes the connection from there.
    let answer = raw_exchange(
        addr,
        b"GET /first HTTP/1.1\r\n\r\n\
          POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert_eq!(
        answer.matches("x-evolve-service: fc").count(),
        2,
        "{answer}"
    );
    let seen = a.last();
    assert_eq!(
        (seen.path.as_str(), seen.body.as_slice()),
        ("/chunked", &b"abcde"[..])
    );
    // A malformed request gets hyper's 400, not a dropped connection.
    let answer = raw_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn a_body_larger_than_the_retry_buffer_streams_to_the_instance_intact() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /big HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for part in body.chunks(10_000) {
        stream.write_all(part).await.expect("body");
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let seen = a.last();
    assert_eq!(seen.path, "/big");
    assert!(
        seen.body == body,
        "the body arrived changed ({} bytes)",
        seen.body.len()
    );
}
