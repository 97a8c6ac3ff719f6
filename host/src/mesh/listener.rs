//! The data-plane listener (`[mesh] listen`): a socket of its own on which every request, at any
//! path, is forwarded to one service (`listen_service`), as a plain reverse proxy would. It
//! carries no API routes and no API auth, so clients that cannot prefix paths (load generators,
//! legacy callers) use the mesh directly. It is served by hyper's HTTP/1.1 connection directly
//! (no router, no protocol sniffing) with `TCP_NODELAY`, since it is the mesh's hot path: per
//! request it copies nothing of the request line (the path is the request's own, shared).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Mesh;

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
