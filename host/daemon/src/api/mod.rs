//! The HTTP API (axum): routes, bearer-token auth for mutating calls, JSON errors.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `GET /v1/health` | the whole system's health: see [`crate::health`] |
//! | `GET /v1/plugins`, `GET /v1/plugins/{name}` | serving, draining and failed plugins |
//! | `POST /v1/plugins/{name}/reload` | reconcile one plugin's dir now (`?force=true`: even if unchanged) |
//! | `GET /v1/events` | recent events of the internal bus; `?follow=true` streams them (see [`events`]) |
//! | `GET /v1/runtime` | pool, AOT cache, limits |
//! | `POST /v1/checkers/{name}/check` | check a service with a health checker |
//! | `GET /metrics` | Prometheus text format |
//! | `/v1/agents...`, `/v1/system/...` | meta agents: see [`agents`] and [`ENDPOINTS`] |
//!
//! [`ENDPOINTS`] lists every route for the inventory (the doc-generator documents it); an
//! end-to-end test checks each one is routed.
//! | `/v1/models…`, `/v1/registry…` | the model registry: see [`models`] |
//! | `/v1/services…`, `POST /v1/route/{type}` | the service mesh, see [`services`] |
//! | `GET /v1/cluster` | cluster membership over Redis |

pub mod agents;
mod cluster;
mod error;
mod events;
mod health;
mod metrics;
pub mod models;
pub mod plugins;
pub mod services;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

pub use self::error::{ApiError, JsonBody, optional_json};
use crate::agents::AgentManager;
use crate::config::HostConfig;
use crate::reload::Reloader;
use evolve_core::events::EventBus;
use evolve_registry::Registry;
use evolve_runtime::Runtime;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub runtime: Runtime,
    pub reloader: Arc<Reloader>,
    pub events: EventBus,
    pub config: Arc<HostConfig>,
    pub agents: AgentManager,
    pub started: Instant,
    metrics: Arc<prometheus_client::registry::Registry>,
    /// The model registry; its routes answer 503 without one.
    pub registry: Option<Arc<Registry>>,
    /// The service mesh, when the daemon runs one.
    pub mesh: Option<evolve_mesh::Mesh>,
    /// Cluster membership; `GET /v1/cluster` says `disabled` without one.
    pub cluster: Option<evolve_cluster::Cluster>,
    /// Turns true when the daemon stops, so never-ending answers (event follows) end and the
    /// graceful shutdown is not held for its whole grace.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl ApiState {
    pub fn new(
        runtime: Runtime,
        reloader: Arc<Reloader>,
        events: EventBus,
        config: Arc<HostConfig>,
        agents: AgentManager,
    ) -> ApiState {
        let metrics = Arc::new(metrics::registry(runtime.clone()));
        ApiState {
            runtime,
            reloader,
            events,
            config,
            agents,
            started: Instant::now(),
            metrics,
            registry: None,
            mesh: None,
            cluster: None,
            stop: None,
        }
    }

    /// Adds the daemon's stop signal (see [`ApiState::stop`]).
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> ApiState {
        self.stop = Some(stop);
        self
    }

    pub fn with_registry(mut self, registry: Arc<Registry>) -> ApiState {
        self.registry = Some(registry);
        self
    }

    /// Adds the cluster: `GET /v1/cluster` and its metrics (call after [`ApiState::with_mesh`]:
    /// the metrics registry is rebuilt with the mesh's collector too).
    pub fn with_cluster(mut self, cluster: evolve_cluster::Cluster) -> ApiState {
        let mut registry = metrics::registry(self.runtime.clone());
        if let Some(mesh) = &self.mesh {
            metrics::register_mesh(&mut registry, mesh.clone());
            metrics::register_routing(&mut registry, mesh.clone());
        }
        metrics::register_cluster(&mut registry, cluster.clone());
        self.metrics = Arc::new(registry);
        self.cluster = Some(cluster);
        self
    }

    /// Adds the service mesh: its endpoints answer and its metrics are scraped.
    pub fn with_mesh(mut self, mesh: evolve_mesh::Mesh) -> ApiState {
        let mut registry = metrics::registry(self.runtime.clone());
        metrics::register_mesh(&mut registry, mesh.clone());
        metrics::register_routing(&mut registry, mesh.clone());
        self.metrics = Arc::new(registry);
        self.mesh = Some(mesh);
        self
    }
}

/// One route of the API, for the inventory and the generated docs.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
}

/// [`ENDPOINTS`] as the plugins' inventory lists them.
pub fn inventory_endpoints() -> Vec<evolve_runtime::bindings::inventory::ApiEndpoint> {
    ENDPOINTS
        .iter()
        .map(|e| evolve_runtime::bindings::inventory::ApiEndpoint {
            method: e.method.to_string(),
            path: e.path.to_string(),
            summary: e.summary.to_string(),
        })
        .collect()
}

const fn endpoint(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
    }
}

/// Every route [`router`] serves (an end-to-end test requests each one).
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint(
        "GET",
        "/healthz",
        "liveness and a summary of loaded plugins",
    ),
    endpoint(
        "GET",
        "/v1/health",
        "the whole system's health: plugins, services, registry, agents, cluster",
    ),
    endpoint("GET", "/metrics", "Prometheus metrics (text format)"),
    endpoint("GET", "/v1/plugins", "serving, draining and failed plugins"),
    endpoint(
        "GET",
        "/v1/plugins/{name}",
        "one plugin: limits, permissions, calls, reloads",
    ),
    endpoint(
        "POST",
        "/v1/plugins/{name}/reload",
        "reconcile one plugin directory now",
    ),
    endpoint(
        "GET",
        "/v1/events",
        "recent events of the internal bus (?kind=; ?follow=true streams them as JSON lines)",
    ),
    endpoint(
        "GET",
        "/v1/runtime",
        "instance pool, AOT cache, default limits and ceilings",
    ),
    endpoint(
        "GET",
        "/v1/agents",
        "meta agents with policy, schedule, health and run stats",
    ),
    endpoint("GET", "/v1/agents/health", "every agent's health history"),
    endpoint(
        "POST",
        "/v1/agents/{name}/run",
        "run a task on a meta agent (recorded)",
    ),
    endpoint(
        "GET",
        "/v1/agents/{name}/health",
        "ask a meta agent for its health now",
    ),
    endpoint(
        "GET",
        "/v1/agents/{name}/runs",
        "an agent's run history and stats",
    ),
    endpoint("GET", "/v1/agents/{name}/runs/{id}", "one run"),
    endpoint(
        "POST",
        "/v1/agents/{name}/runs/{id}/cancel",
        "cancel a run in progress",
    ),
    endpoint(
        "POST",
        "/v1/system/integration-tests",
        "run the integration tester",
    ),
    endpoint("POST", "/v1/system/log-analysis", "run the log analyzer"),
    endpoint("POST", "/v1/system/documentation", "run the doc generator"),
    endpoint(
        "POST",
        "/v1/system/security-audit",
        "run the security auditor",
    ),
    endpoint(
        "GET",
        "/v1/services",
        "services with instances, balancer, health, circuits, latency",
    ),
    endpoint("POST", "/v1/services", "register a service"),
    endpoint(
        "GET",
        "/v1/services/health",
        "per service and instance health, breaker state, last check, EWMA latency",
    ),
    endpoint("GET", "/v1/services/{name}", "one service"),
    endpoint("PUT", "/v1/services/{name}", "replace a service's spec"),
    endpoint("DELETE", "/v1/services/{name}", "remove a service"),
    endpoint(
        "POST",
        "/v1/services/{name}/probe",
        "one request of its health path through the mesh",
    ),
    endpoint(
        "ANY",
        "/v1/services/{name}/proxy/{path}",
        "forward a request to the named service",
    ),
    endpoint(
        "POST",
        "/v1/route/{type}",
        "forward a request to a service offering the type's capability",
    ),
    endpoint(
        "GET",
        "/v1/models",
        "models: list and search by task, tag, name",
    ),
    endpoint("POST", "/v1/models", "register a model"),
    endpoint(
        "GET",
        "/v1/models/best",
        "the best model of a task type under a scoring policy, explained",
    ),
    endpoint(
        "GET",
        "/v1/models/{name}",
        "one model with its versions and aliases",
    ),
    endpoint("GET", "/v1/models/{name}/versions", "a model's versions"),
    endpoint(
        "POST",
        "/v1/models/{name}/versions",
        "create the next version",
    ),
    endpoint("GET", "/v1/models/{name}/versions/{version}", "one version"),
    endpoint(
        "POST",
        "/v1/models/{name}/versions/{version}/status",
        "set a version's status",
    ),
    endpoint("GET", "/v1/models/{name}/aliases", "a model's aliases"),
    endpoint("GET", "/v1/models/{name}/aliases/{alias}", "one alias"),
    endpoint(
        "PUT",
        "/v1/models/{name}/aliases/{alias}",
        "point an alias at a version (promotion)",
    ),
    endpoint(
        "DELETE",
        "/v1/models/{name}/aliases/{alias}",
        "delete an alias",
    ),
    endpoint(
        "POST",
        "/v1/models/{name}/aliases/{alias}/rollback",
        "move an alias back to its previous target",
    ),
    endpoint(
        "GET",
        "/v1/models/{name}/aliases/{alias}/history",
        "an alias's append-only history of moves",
    ),
    endpoint(
        "GET",
        "/v1/models/{name}/performance",
        "performance history and aggregates",
    ),
    endpoint(
        "POST",
        "/v1/models/{name}/performance",
        "record performance points (one or a batch)",
    ),
    endpoint(
        "GET",
        "/v1/registry",
        "the registry's health: counts, integrity, backups",
    ),
    endpoint("GET", "/v1/registry/policies", "the named scoring policies"),
    endpoint("GET", "/v1/registry/backups", "the registry's backups"),
    endpoint("POST", "/v1/registry/backups", "take an online backup now"),
    endpoint(
        "POST",
        "/v1/registry/restore",
        "restore the registry from a backup",
    ),
    endpoint("GET", "/v1/registry/export", "the whole registry as JSON"),
    endpoint("POST", "/v1/registry/import", "import a JSON export"),
    endpoint(
        "GET",
        "/v1/cluster",
        "cluster: Redis connection, peers with last-seen, last sync and lag, buffered and dropped events",
    ),
    endpoint(
        "POST",
        "/v1/checkers/{name}/check",
        "check a service instance with a health checker",
    ),
];

/// The API router.
pub fn router(state: ApiState) -> Router {
    let body_limit = usize::try_from(state.config.server.body_limit_kb << 10).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(plugins::healthz))
        .route("/v1/health", get(health::health))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/plugins/{name}", get(plugins::show))
        .route("/v1/plugins/{name}/reload", post(plugins::reload))
        .route("/v1/events", get(events::events))
        .route("/v1/runtime", get(plugins::runtime))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/health", get(agents::health))
        .route("/v1/agents/{name}/run", post(agents::run))
        .route("/v1/agents/{name}/health", get(agents::agent_health))
        .route("/v1/agents/{name}/runs", get(agents::runs))
        .route("/v1/agents/{name}/runs/{id}", get(agents::run_show))
        .route("/v1/agents/{name}/runs/{id}/cancel", post(agents::cancel))
        .route("/v1/system/{job}", post(agents::system))
        .route("/v1/checkers/{name}/check", post(plugins::check_service))
        .route("/v1/cluster", get(cluster::show))
        .merge(models::routes(&state))
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

/// With tokens configured: every method but GET/HEAD needs `Authorization: Bearer <token>`, and
/// every bearer token presented on any method, GET and HEAD included, must be one the daemon
/// knows. A request that carries a known token gets its [`Caller`]. (The proxy removes
/// `Authorization` from every forwarded request while tokens are configured, so the daemon's
/// token never reaches a backend, however it was spelled.)
async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.config.server.tokens;
    if tokens.is_empty() {
        return Ok(next.run(request).await);
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let presented = match bearer_credentials(request.headers()) {
        Ok(presented) => presented,
        Err(message) => return Err(ApiError::unauthorized(message)),
    };
    if presented.is_empty() {
        if reads {
            return Ok(next.run(request).await);
        }
        return Err(ApiError::unauthorized(
            "this endpoint changes state and needs `Authorization: Bearer <token>`",
        ));
    }
    // Every bearer credential presented must be known: a second header cannot vouch for a
    // first one.
    let mut caller = None;
    for token in &presented {
        match known_token(tokens, token) {
            Some(name) => caller = caller.or(Some(name)),
            None => {
                return Err(ApiError::unauthorized(
                    "the bearer token is not one this daemon knows",
                ));
            }
        }
    }
    if let Some(name) = caller {
        request.extensions_mut().insert(Caller(name.to_string()));
    }
    Ok(next.run(request).await)
}

/// Every bearer credential among the `Authorization` headers (the scheme is case-insensitive,
/// RFC 9110 §11.1). Other schemes are not credentials for this daemon and are ignored here (the
/// proxy strips them all the same); a header that is not visible ASCII is refused, since what
/// it holds cannot be checked.
fn bearer_credentials(headers: &HeaderMap) -> Result<Vec<&str>, &'static str> {
    let mut presented = Vec::new();
    for value in headers.get_all(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| "the Authorization header is not visible ASCII")?;
        if let Some((scheme, credential)) = value.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            presented.push(credential.trim());
        }
    }
    Ok(presented)
}

/// The name of the configured token equal to `presented`. Both sides are hashed first, so the
/// comparison always covers 32 bytes whatever the lengths, and every token is compared, so
/// neither a matching prefix, a length nor a token's place in the list shows in the time taken.
fn known_token<'a>(
    tokens: &'a std::collections::BTreeMap<String, String>,
    presented: &str,
) -> Option<&'a str> {
    use sha2::{Digest, Sha256};
    let presented = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for (name, token) in tokens {
        let token = Sha256::digest(token.as_bytes());
        if constant_time_eq(&token, &presented) && found.is_none() {
            found = Some(name.as_str());
        }
    }
    found
}

/// Compares equal-length byte strings without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{bearer_credentials, constant_time_eq, known_token};

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
    }

    #[test]
    fn a_presented_token_is_matched_by_value_whatever_its_length_or_place() {
        let tokens = std::collections::BTreeMap::from([
            ("ci".to_string(), "ci-token-0123456789abcdef".to_string()),
            ("ops".to_string(), "ops-token-0123456789abcdef".to_string()),
        ]);
        assert_eq!(
            known_token(&tokens, "ops-token-0123456789abcdef"),
            Some("ops")
        );
        assert_eq!(
            known_token(&tokens, "ci-token-0123456789abcdef"),
            Some("ci")
        );
        assert_eq!(known_token(&tokens, "ops-token-0123456789abcde"), None);
        assert_eq!(known_token(&tokens, ""), None);
    }

    #[test]
    fn every_bearer_header_is_a_credential_whatever_the_scheme_case() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpw"),
        );
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  one "),
        );
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER two"),
        );
        assert_eq!(bearer_credentials(&headers), Ok(vec!["one", "two"]));
        let mut opaque = HeaderMap::new();
        opaque.append(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text is a valid header value"),
        );
        assert!(bearer_credentials(&opaque).is_err());
    }
}
