//! The data-plane listener (`[mesh] listen`): a socket of its own on which every request, at any
//! path, is forwarded to one service (`listen_service`), as a plain reverse proxy would. It
//! carries no API routes and no API auth, so clients that cannot prefix paths (load generators,
//! legacy callers) use the mesh directly and pay nothing for the API's routing.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::Request;

use super::Mesh;

#[derive(Clone)]
struct ListenerState {
    mesh: Mesh,
    service: String,
}

/// The listener's router: everything goes to `service`.
pub fn router(mesh: Mesh, service: String) -> Router {
    Router::new()
        .fallback(forward)
        .with_state(ListenerState { mesh, service })
}

async fn forward(State(state): State<ListenerState>, request: Request<Body>) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    match state
        .mesh
        .proxy(&state.service, path_and_query, request, false)
        .await
    {
        Ok(response) => response,
        Err(error) => crate::api::ApiError::from(error).into_response(),
    }
}
