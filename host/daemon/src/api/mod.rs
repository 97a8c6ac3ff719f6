//! The HTTP API (axum): routes, the access check ([`guard`]: hosts, origins, tokens and their
//! scopes), the audit log ([`audit`]), JSON errors.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `GET /readyz` | readiness: every plugin dir had its first load |
//! | `GET /v1/health` | the whole system's health: see [`crate::health`] |
//! | `GET /v1/plugins`, `GET /v1/plugins/{name}` | serving, draining, loading and failed plugins |
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
//! | `GET /v1/audit` | the audit log, newest first (scope `admin`) |

pub mod agents;
pub mod audit;
mod cluster;
mod error;
mod events;
pub mod guard;
mod health;
mod metrics;
pub mod models;
pub mod plugins;
pub mod services;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{get, post};

pub use self::error::{ApiError, JsonBody, optional_json};
pub use self::guard::Caller;
use crate::access::Scope;
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
    /// Tokens, scopes, hosts and origins, prepared from the config for the access check.
    pub access: Arc<guard::Access>,
    /// Where mutations and refusals are recorded; none in tests that need no trail.
    pub audit: Option<Arc<audit::AuditLog>>,
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
        let access = Arc::new(guard::Access::new(&config.server));
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
            access,
            audit: None,
        }
    }

    /// Adds the audit log (see [`audit`]).
    pub fn with_audit(mut self, audit: Arc<audit::AuditLog>) -> ApiState {
        self.audit = Some(audit);
        self
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

/// One route of the API, for the inventory, the generated docs and the access check.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The scope a token needs (with tokens configured; reads only when `server.auth_reads`).
    pub scope: Scope,
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

const fn endpoint(
    scope: Scope,
    method: &'static str,
    path: &'static str,
    summary: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        scope,
    }
}

/// An endpoint that shows state.
const fn read(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    endpoint(Scope::Read, method, path, summary)
}

/// An endpoint that acts: runs, reloads, probes, traffic through the API.
const fn operate(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    endpoint(Scope::Operate, method, path, summary)
}

/// An endpoint that changes what the daemon holds, or shows the audit trail.
const fn admin(method: &'static str, path: &'static str, summary: &'static str) -> Endpoint {
    endpoint(Scope::Admin, method, path, summary)
}

/// The endpoint a request is for: the first of [`ENDPOINTS`] whose method and path pattern
/// match (`{x}` is one segment; a last `{path}` is the rest). `None` for no known route.
pub fn endpoint_of(method: &str, path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| {
        (e.method == method || e.method == "ANY" || (method == "HEAD" && e.method == "GET"))
            && path_matches(e.path, path)
    })
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pattern = pattern.split('/');
    let mut path = path.split('/');
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some("{path}"), Some(_)) => return true,
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') && !s.is_empty() => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

/// Every route [`router`] serves (an end-to-end test requests each one).
pub const ENDPOINTS: &[Endpoint] = &[
    read("GET", "/healthz", "liveness: status, version, uptime"),
    read(
        "GET",
        "/readyz",
        "readiness: 200 once every plugin dir had its first load, else 503 and what is loading",
    ),
    read(
        "GET",
        "/v1/health",
        "the whole system's health: plugins, services, registry, agents, cluster",
    ),
    read("GET", "/metrics", "Prometheus metrics (text format)"),
    read(
        "GET",
        "/v1/plugins",
        "serving, draining, loading and failed plugins",
    ),
    read(
        "GET",
        "/v1/plugins/{name}",
        "one plugin: limits, permissions, calls, reloads",
    ),
    operate(
        "POST",
        "/v1/plugins/{name}/reload",
        "reconcile one plugin directory now",
    ),
    read(
        "GET",
        "/v1/events",
        "recent events of the internal bus (?kind=; ?follow=true streams them as JSON lines)",
    ),
    read(
        "GET",
        "/v1/runtime",
        "instance pool, AOT cache, default limits and ceilings",
    ),
    read(
        "GET",
        "/v1/agents",
        "meta agents with policy, schedule, health and run stats",
    ),
    read("GET", "/v1/agents/health", "every agent's health history"),
    operate(
        "POST",
        "/v1/agents/{name}/run",
        "run a task on a meta agent (recorded)",
    ),
    read(
        "GET",
        "/v1/agents/{name}/health",
        "ask a meta agent for its health now",
    ),
    read(
        "GET",
        "/v1/agents/{name}/runs",
        "an agent's run history and stats",
    ),
    read("GET", "/v1/agents/{name}/runs/{id}", "one run"),
    operate(
        "POST",
        "/v1/agents/{name}/runs/{id}/cancel",
        "cancel a run in progress",
    ),
    operate(
        "POST",
        "/v1/system/integration-tests",
        "run the integration tester",
    ),
    operate("POST", "/v1/system/log-analysis", "run the log analyzer"),
    operate("POST", "/v1/system/documentation", "run the doc generator"),
    operate(
        "POST",
        "/v1/system/security-audit",
        "run the security auditor",
    ),
    read(
        "GET",
        "/v1/services",
        "services with instances, balancer, health, circuits, latency",
    ),
    admin("POST", "/v1/services", "register a service"),
    read(
        "GET",
        "/v1/services/health",
        "per service and instance health, breaker state, last check, EWMA latency",
    ),
    read("GET", "/v1/services/{name}", "one service"),
    admin("PUT", "/v1/services/{name}", "replace a service's spec"),
    admin("DELETE", "/v1/services/{name}", "remove a service"),
    operate(
        "POST",
        "/v1/services/{name}/probe",
        "one request of its health path through the mesh",
    ),
    operate(
        "ANY",
        "/v1/services/{name}/proxy/{path}",
        "forward a request to the named service",
    ),
    operate(
        "POST",
        "/v1/route/{type}",
        "forward a request to a service offering the type's capability",
    ),
    read(
        "GET",
        "/v1/models",
        "models: list and search by task, tag, name",
    ),
    admin("POST", "/v1/models", "register a model"),
    read(
        "GET",
        "/v1/models/best",
        "the best model of a task type under a scoring policy, explained",
    ),
    read(
        "GET",
        "/v1/models/{name}",
        "one model with its versions and aliases",
    ),
    read("GET", "/v1/models/{name}/versions", "a model's versions"),
    admin(
        "POST",
        "/v1/models/{name}/versions",
        "create the next version",
    ),
    read("GET", "/v1/models/{name}/versions/{version}", "one version"),
    admin(
        "POST",
        "/v1/models/{name}/versions/{version}/status",
        "set a version's status",
    ),
    read("GET", "/v1/models/{name}/aliases", "a model's aliases"),
    read("GET", "/v1/models/{name}/aliases/{alias}", "one alias"),
    admin(
        "PUT",
        "/v1/models/{name}/aliases/{alias}",
        "point an alias at a version (promotion)",
    ),
    admin(
        "DELETE",
        "/v1/models/{name}/aliases/{alias}",
        "delete an alias",
    ),
    admin(
        "POST",
        "/v1/models/{name}/aliases/{alias}/rollback",
        "move an alias back to its previous target",
    ),
    read(
        "GET",
        "/v1/models/{name}/aliases/{alias}/history",
        "an alias's append-only history of moves",
    ),
    read(
        "GET",
        "/v1/models/{name}/performance",
        "performance history and aggregates",
    ),
    admin(
        "POST",
        "/v1/models/{name}/performance",
        "record performance points (one or a batch)",
    ),
    read(
        "GET",
        "/v1/registry",
        "the registry's health: counts, integrity, backups",
    ),
    read("GET", "/v1/registry/policies", "the named scoring policies"),
    read("GET", "/v1/registry/backups", "the registry's backups"),
    admin("POST", "/v1/registry/backups", "take an online backup now"),
    admin(
        "POST",
        "/v1/registry/restore",
        "restore the registry from a backup",
    ),
    read("GET", "/v1/registry/export", "the whole registry as JSON"),
    admin("POST", "/v1/registry/import", "import a JSON export"),
    read(
        "GET",
        "/v1/cluster",
        "cluster: Redis connection, peers with last-seen, last sync and lag, buffered and dropped events",
    ),
    operate(
        "POST",
        "/v1/checkers/{name}/check",
        "check a service instance with a health checker",
    ),
    admin(
        "GET",
        "/v1/audit",
        "the audit log: every mutation and refusal, newest first (?limit=, ?caller=)",
    ),
];

/// The API router.
pub fn router(state: ApiState) -> Router {
    let body_limit = usize::try_from(state.config.server.body_limit_kb << 10).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(plugins::healthz))
        .route("/readyz", get(plugins::readyz))
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
        .route("/v1/audit", get(audit::list))
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
            guard::guard,
        ))
        .with_state(state)
}
