//! Whose outcome reports are recorded: a model-aware mesh over the [`fake`](super::fake)
//! selector and real loopback backends that each report their own `mae` in `x-evolve-outcome`.
//!
//! The outcome worker records in queue order, so "nothing was recorded" is shown without
//! waiting on time: a later outcome that must be recorded (a sentinel) is the first or the
//! only one the selector sees.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

use super::fake::fake;
use super::routing::RoutedOutcome;
use crate::catalog::{InstanceSpec, Protocol, ServiceSpec};
use crate::config::{Fanout, RouteConfig, RouteEntry};
use crate::{CheckOutcome, CheckRunner, InstanceRecord, Mesh, MeshConfig};
use evolve_core::events::EventBus;

/// No checker is loaded: instances are routable from the start.
struct NoCheckers;

#[async_trait::async_trait]
impl CheckRunner for NoCheckers {
    fn has_checker(&self, _: &str) -> bool {
        false
    }
    async fn check(&self, _: &str, _: InstanceRecord) -> CheckOutcome {
        CheckOutcome::Error("no checker".into())
    }
}

/// A backend answering every request with `x-evolve-outcome: mae=<mae>` and a JSON body; the
/// endpoint it listens on.
async fn reporting_backend(mae: f64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service_fn(move |request: Request<Incoming>| async move {
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .header("x-evolve-outcome", format!("mae={mae}"))
                        .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                        .expect("response"),
                )
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn spec(name: &str, capability: &str, endpoint: String) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        service_type: "model-server".into(),
        capabilities: vec![capability.into()],
        instances: vec![InstanceSpec {
            id: Some(format!("{name}-1")),
            endpoint,
            weight: 100,
            protocol: Protocol::Http1,
            metadata: BTreeMap::new(),
        }],
        health: None,
        lb: None,
        max_in_flight: None,
        max_pending: None,
    }
}

/// A model-aware route to `capability` (task `forecast`), recording outcomes or not.
fn route(capability: &str, record_outcomes: bool, fanout: Fanout) -> RouteEntry {
    RouteEntry::Full(RouteConfig {
        path: Some("/forecast".into()),
        task: Some("forecast".into()),
        record_outcomes,
        fanout,
        ..RouteConfig::for_type(capability)
    })
}

/// Routes: `silent` (outcomes off, the default), `recorded` (on, local service), `peer` (on,
/// a remote service only), `everyone` (on, fan-out to the local and the remote service).
async fn mesh() -> (Mesh, UnboundedReceiver<RoutedOutcome>, tempfile::TempDir) {
    let mut config = MeshConfig::default();
    config.retry.max_retries = 0;
    config.slow_start_ms = 0;
    for (name, entry) in [
        ("silent", route("local", false, Fanout::None)),
        ("recorded", route("local", true, Fanout::None)),
        ("peer", route("remote", true, Fanout::None)),
        ("everyone", route("both", true, Fanout::All)),
    ] {
        config.routes.insert(name.into(), entry);
    }
    config.validate().expect("valid routes");
    let dir = tempfile::tempdir().expect("tempdir");
    let (selector, recorded) = fake();
    let mesh = Mesh::with_model_selector(
        config,
        dir.path().join("catalog.json"),
        Arc::new(NoCheckers),
        Some(selector),
        EventBus::new(),
    )
    .expect("mesh");
    let mut local = spec("fc", "local", reporting_backend(1.0).await);
    local.capabilities.push("both".into());
    mesh.register(local, false).await.expect("register");
    let mut remote = spec("peer-fc", "remote", reporting_backend(666.0).await);
    remote.capabilities.push("both".into());
    let merged = mesh.set_remote_node("node-b", vec![remote]).await;
    assert_eq!(merged.added, ["peer-fc"], "{merged:?}");
    (mesh, recorded, dir)
}

async fn send(mesh: &Mesh, route: &str) -> Response<Body> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/route/{route}"))
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .expect("request");
    let response = mesh.route(route, request, false).await.expect("routed");
    assert_eq!(response.status(), StatusCode::OK);
    // The whole body, so a body scan (were one running) has finished too.
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, Body::from(bytes))
}

/// The outcomes the selector saw, up to and including the first one from `route`.
async fn recorded_until(
    recorded: &mut UnboundedReceiver<RoutedOutcome>,
    route: &str,
) -> Vec<RoutedOutcome> {
    let mut seen = Vec::new();
    loop {
        let outcome = recorded.recv().await.expect("the outcome worker runs");
        let last = outcome.source == format!("route:{route}");
        seen.push(outcome);
        if last {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_route_without_record_outcomes_records_nothing_and_one_with_it_records() {
    let (mesh, mut recorded, _dir) = mesh().await;
    let silent = send(&mesh, "silent").await;
    assert_eq!(
        silent
            .headers()
            .get("x-evolve-outcome")
            .and_then(|v| v.to_str().ok()),
        Some("mae=1"),
        "the backend did report; the client still sees its answer"
    );
    send(&mesh, "recorded").await;
    let seen = recorded_until(&mut recorded, "recorded").await;
    assert_eq!(
        seen.len(),
        1,
        "only the recording route's outcome: {seen:?}"
    );
    assert_eq!(seen[0].metrics, vec![("mae".to_string(), 1.0)]);
    assert_eq!((seen[0].model.as_str(), seen[0].version), ("m", 1));
}

#[tokio::test]
async fn a_cluster_peers_backend_is_not_believed_even_on_a_recording_route() {
    let (mesh, mut recorded, _dir) = mesh().await;
    let peer = send(&mesh, "peer").await;
    assert_eq!(
        peer.headers()
            .get("x-evolve-service")
            .and_then(|v| v.to_str().ok()),
        Some("peer-fc")
    );
    // Fan-out: one part from each service; only the local part's outcome counts.
    send(&mesh, "everyone").await;
    send(&mesh, "recorded").await;
    let seen = recorded_until(&mut recorded, "recorded").await;
    let sources: Vec<(&str, f64)> = seen
        .iter()
        .map(|o| (o.source.as_str(), o.metrics[0].1))
        .collect();
    assert_eq!(
        sources,
        [("route:everyone", 1.0), ("route:recorded", 1.0)],
        "the remote backend's mae=666 is never recorded"
    );
}

#[test]
fn record_outcomes_needs_a_model_aware_route() {
    let mut config = MeshConfig::default();
    config.routes.insert(
        "plain".into(),
        RouteEntry::Full(RouteConfig {
            record_outcomes: true,
            ..RouteConfig::for_type("plain")
        }),
    );
    let (key, message) = config.validate().expect_err("no task");
    assert_eq!(key, "mesh.routes.plain");
    assert!(message.contains("record_outcomes needs task"), "{message}");
}
