//! The HTTP API (axum): routes, bearer-token auth for mutating calls, JSON errors.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `GET /v1/plugins`, `GET /v1/plugins/{name}` | serving, draining and failed plugins |
//! | `POST /v1/plugins/{name}/reload` | reconcile one plugin's dir now (`?force=true`: even if unchanged) |
//! | `GET /v1/events` | recent events of the internal bus |
//! | `GET /v1/runtime` | pool, AOT cache, limits |
//! | `POST /v1/agents/{name}/run` | run a task on a meta agent |
//! | `GET /v1/agents/{name}/health` | a meta agent's own health |
//! | `POST /v1/checkers/{name}/check` | check a service with a health checker |
//! | `GET /metrics` | Prometheus text format |
//! | `/v1/services…`, `POST /v1/route/{type}` | the service mesh, see [`services`] |

mod error;
mod metrics;
pub mod plugins;
pub mod services;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

pub use self::error::{ApiError, JsonBody};
use crate::config::HostConfig;
use crate::events::EventBus;
use crate::reload::Reloader;
use crate::runtime::Runtime;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub runtime: Runtime,
    pub reloader: Arc<Reloader>,
    pub events: EventBus,
    pub config: Arc<HostConfig>,
    pub started: Instant,
    metrics: Arc<prometheus_client::registry::Registry>,
    /// The service mesh, when the daemon runs one.
    pub mesh: Option<crate::mesh::Mesh>,
}

impl ApiState {
    pub fn new(
        runtime: Runtime,
        reloader: Arc<Reloader>,
        events: EventBus,
        config: Arc<HostConfig>,
    ) -> ApiState {
        let metrics = Arc::new(metrics::registry(runtime.clone()));
        ApiState {
            runtime,
            reloader,
            events,
            config,
            started: Instant::now(),
            metrics,
            mesh: None,
        }
    }

    /// Adds the service mesh: its endpoints answer and its metrics are scraped.
    pub fn with_mesh(mut self, mesh: crate::mesh::Mesh) -> ApiState {
        let mut registry = metrics::registry(self.runtime.clone());
        metrics::register_mesh(&mut registry, mesh.clone());
        self.metrics = Arc::new(registry);
        self.mesh = Some(mesh);
        self
    }
}

/// The API router.
pub fn router(state: ApiState) -> Router {
    let body_limit = usize::try_from(state.config.server.body_limit_kb << 10).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(plugins::healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/plugins/{name}", get(plugins::show))
        .route("/v1/plugins/{name}/reload", post(plugins::reload))
        .route("/v1/events", get(plugins::events))
        .route("/v1/runtime", get(plugins::runtime))
        .route("/v1/agents/{name}/run", post(plugins::run_agent))
        .route("/v1/agents/{name}/health", get(plugins::agent_health))
        .route("/v1/checkers/{name}/check", post(plugins::check_service))
        .merge(services::routes())
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see the README for the API",
            )
        })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on this endpoint; see the README for the API"),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// The name of the token that authorised a request, for audit trails.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// With tokens configured, every method but GET/HEAD needs `Authorization: Bearer <token>`.
async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.config.server.tokens;
    if tokens.is_empty() || matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized(
            "this endpoint changes state and needs `Authorization: Bearer <token>`",
        ));
    };
    let caller = tokens
        .iter()
        .find(|(_, token)| constant_time_eq(token.as_bytes(), presented.as_bytes()))
        .map(|(name, _)| name.clone());
    match caller {
        Some(name) => {
            request.extensions_mut().insert(Caller(name));
            Ok(next.run(request).await)
        }
        None => Err(ApiError::unauthorized(
            "the bearer token is not one this daemon knows",
        )),
    }
}

/// Compares without an early exit, so response time does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
    }
}
