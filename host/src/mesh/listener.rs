//! The data-plane listener (`[mesh] listen`): a socket of its own on which every request, at any
//! path, is forwarded to one service (`listen_service`), as a plain reverse proxy would. It
//! carries no API routes and no API auth, so clients that cannot prefix paths (load generators,
//! legacy callers) use the mesh directly. It is served by hyper's HTTP/1.1 connection directly
//! (no router, no protocol sniffing) with `TCP_NODELAY`, since it is the mesh's hot path: per
//! request it copies nothing of the request line (the path is the request's own, shared).
//!
//! [`start`] runs it on a thread of its own with a current-thread tokio runtime: the
//! connections it accepts, the upstream connections the pool opens for them (their tasks are
//! spawned on the runtime that opens them) and their timers are all polled there, with no
//! work-stealing and no cross-thread wake-ups; the API stays on the daemon's multi-thread
//! runtime. The instance pools are shared: a connection opened on one runtime is only ever
//! polled by that runtime's task, while its sender may be checked out from either.

use std::convert::Infallible;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Mesh;

/// Starts [`serve`] on a thread named `evolve-mesh-listen` with its own current-thread
/// runtime. After `stop` turns true no connection is accepted; those open keep being served for
/// `grace` (the daemon's shutdown grace, as the API's are), then the runtime is dropped, which
/// closes them, and the thread ends.
pub fn start(
    listener: std::net::TcpListener,
    mesh: Mesh,
    service: String,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("evolve-mesh-listen".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Registered with this runtime's reactor, so accepts are polled here.
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "mesh listener: cannot use its socket");
                        return;
                    }
                };
                serve(listener, mesh, service, stop).await;
                tokio::time::sleep(grace).await;
            });
            // Dropping the runtime cancels the connections still open.
            drop(runtime);
        })
}

/// Accepts connections until `stop` turns true; each connection is served on its own task.
pub async fn serve(
    listener: TcpListener,
    mesh: Mesh,
    service: String,
    mut stop: watch::Receiver<bool>,
) {
    let service: Arc<str> = service.into();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: the next accept may succeed.
            Err(error) => {
                tracing::warn!(%error, "mesh listener: accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mesh, service) = (mesh.clone(), Arc::clone(&service));
        tokio::spawn(async move {
            let handler = service_fn(move |request: http::Request<Incoming>| {
                let (mesh, service) = (mesh.clone(), Arc::clone(&service));
                async move { Ok::<_, Infallible>(forward(&mesh, &service, request).await) }
            });
            // A client that goes away mid-request is its own business, not an error of ours.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}

async fn forward(mesh: &Mesh, service: &str, request: http::Request<Incoming>) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match mesh
        .proxy_to(service, path_and_query, request.map(Body::new), false)
        .await
    {
        Ok(response) => response,
        Err(error) => crate::api::ApiError::from(error).into_response(),
    }
}
