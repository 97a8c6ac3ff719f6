//! `GET /v1/health`: the whole system's health (see [`crate::health`] for the rules).
//! 200 when healthy or degraded (the daemon serves), 503 when unhealthy.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::health::{Sources, Status, gather};

pub(super) async fn health(State(state): State<ApiState>) -> Response {
    let health = gather(Sources {
        runtime: &state.runtime,
        mesh: state.mesh.as_ref(),
        registry: state.registry.as_ref(),
        agents: &state.agents,
        cluster: state
            .cluster
            .as_ref()
            .map(|cluster| cluster as &dyn crate::health::ClusterHealth),
    })
    .await;
    let status = match health.status {
        Status::Healthy | Status::Degraded => StatusCode::OK,
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(health)).into_response()
}
