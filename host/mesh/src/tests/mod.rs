//! Mesh tests against real in-process hyper backends on ephemeral loopback ports.
//!
//! Shared here: the backends ([`Backend`], switchable status and delay, recording what it saw),
//! [`ScriptedChecks`] (a check runner answering from a table), the [`Fixture`] of a mesh over a
//! temporary catalog, spec and request builders, and waits on tokio time and bus events.
//!
//! | module | topic |
//! |---|---|
//! | [`routes`] | `POST /v1/route`: capability routes, model-aware routes without a registry, fan-out |
//! | [`named_proxy`] | `/v1/services/{name}/proxy`: streaming, deadlines, h2c |
//! | [`balancing`] | weights over real backends, draining |
//! | [`breakers`] | circuit breaking, outlier ejection, the concurrency cap |
//! | [`retries`] | retries, their budget, and a retry with nowhere to go |
//! | [`active_health`] | active checks, hysteresis, panic routing, the inventory |
//! | [`registration`] | validation, persistence, restart |
//! | [`data_plane`] | the data-plane listener: serving, stopping |
//! | [`fast_path`] | the listener's HTTP/1.1 fast path, against hand-written backends |
//! | [`edge`] | the network edge: caller deadlines that judge no instance, header hygiene on every data path |

mod active_health;
mod balancing;
mod breakers;
mod data_plane;
mod edge;
mod fast_path;
mod named_proxy;
mod registration;
mod retries;
mod routes;

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
    headers: http::HeaderMap,
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
                            headers: parts.headers.clone(),
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
