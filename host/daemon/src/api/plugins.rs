//! Plugin, agent-run and checker-check handlers, and the JSON views they answer with.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, ApiState, JsonBody};
use crate::reload::ReloadOutcome;
use evolve_runtime::bindings::types::{HealthReport, Service};
use evolve_runtime::plugin::LastError;
use evolve_runtime::sandbox::ResolvedDir;
use evolve_runtime::supervision::SupervisionView;
use evolve_runtime::{
    Description, Limits, LoadFailure, LoadingPlugin, Plugin, PluginKind, ReloadRecord,
};

/// A loaded plugin as the API shows it.
#[derive(Debug, Serialize)]
pub struct PluginView {
    pub name: String,
    pub state: &'static str,
    pub version: String,
    pub kind: PluginKind,
    pub description: String,
    pub wit_version: String,
    pub sha256: String,
    pub sha256_pinned: bool,
    pub generation: u64,
    pub dir: String,
    pub wasm: String,
    pub loaded_at: DateTime<Utc>,
    pub aot: evolve_runtime::aot::CacheOutcome,
    pub limits: Limits,
    pub permissions: PermissionsView,
    pub calls: CallsView,
    pub last_error: Option<LastError>,
    pub last_reload: Option<ReloadRecord>,
    pub supervision: SupervisionView,
    pub info: Option<Description>,
    /// The name `describe()` gave when it was not the manifest's (escaped): shown only as
    /// this warning; `name` and `info.name` are the manifest's everywhere.
    pub claimed_name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PermissionsView {
    pub http_hosts: Vec<String>,
    pub env: Vec<String>,
    pub dirs: Vec<ResolvedDir>,
}

#[derive(Debug, Serialize)]
pub struct CallsView {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub overloaded: u64,
    pub in_flight: u32,
    pub queued: u32,
    pub busy_ms: u64,
}

impl PluginView {
    /// `state` is `serving` for the current generation, `draining` for a replaced one still
    /// finishing calls.
    pub fn of(
        plugin: &Plugin,
        state: &'static str,
        last_reload: Option<ReloadRecord>,
    ) -> PluginView {
        let stats = &plugin.stats;
        PluginView {
            name: plugin.name().to_string(),
            state,
            version: plugin.manifest.version.clone(),
            kind: plugin.kind(),
            description: plugin.manifest.description.clone(),
            wit_version: plugin.wit_version.clone(),
            sha256: plugin.sha256.clone(),
            sha256_pinned: plugin.manifest.sha256.is_some(),
            generation: plugin.generation,
            dir: plugin.dir.display().to_string(),
            wasm: plugin.wasm_path.display().to_string(),
            loaded_at: plugin.loaded_at,
            aot: plugin.cache,
            limits: plugin.limits,
            permissions: PermissionsView {
                http_hosts: plugin.grants.http_host_patterns.clone(),
                env: plugin.grants.env_names.clone(),
                dirs: plugin.grants.dirs.clone(),
            },
            calls: CallsView {
                total: stats.calls.load(Ordering::Relaxed),
                ok: stats.ok.load(Ordering::Relaxed),
                failed: stats.failed.load(Ordering::Relaxed),
                overloaded: stats.overloaded.load(Ordering::Relaxed),
                in_flight: plugin.in_flight(),
                queued: plugin.queued(),
                busy_ms: stats.busy_us.load(Ordering::Relaxed) / 1_000,
            },
            last_error: stats.last_error(),
            last_reload,
            supervision: plugin.supervision.view(),
            info: plugin.description().cloned(),
            claimed_name: plugin.claimed_name().map(str::to_string),
        }
    }
}

/// A plugin directory that did not load.
#[derive(Debug, Serialize)]
pub struct FailedView {
    pub name: String,
    pub state: &'static str,
    pub dir: String,
    pub last_error: LastError,
}

impl FailedView {
    fn of(failure: &LoadFailure) -> FailedView {
        FailedView {
            name: failure.name.clone(),
            state: "failed",
            dir: failure.dir.display().to_string(),
            last_error: LastError {
                at: failure.at,
                code: failure.code,
                message: failure.error.clone(),
            },
        }
    }
}

/// A plugin directory whose first load is under way.
#[derive(Debug, Serialize)]
pub struct LoadingView {
    pub name: String,
    pub state: &'static str,
    pub dir: String,
    pub since: DateTime<Utc>,
}

impl LoadingView {
    fn of(loading: &LoadingPlugin) -> LoadingView {
        LoadingView {
            name: loading.name.clone(),
            state: "loading",
            dir: loading.dir.display().to_string(),
            since: loading.since,
        }
    }
}

/// `GET /readyz`: 200 once every plugin dir has had its first load (whether it serves or
/// failed); 503 before, with the ones still loading. Liveness is `/healthz`.
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    if state.reloader.is_ready() {
        return (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response();
    }
    let loading: Vec<LoadingView> = state
        .runtime
        .loading()
        .iter()
        .map(LoadingView::of)
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "loading", "loading": loading })),
    )
        .into_response()
}

pub(super) async fn healthz(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
    }))
}

fn serving_view(state: &ApiState, plugin: &Plugin) -> Value {
    let last_reload = state.runtime.last_reload(plugin.name());
    let status = if plugin.supervision.view().quarantined {
        "quarantined"
    } else if last_reload
        .as_ref()
        .is_some_and(|r| r.outcome == "rolled_back")
    {
        // Serving, after the host rolled a bad version back; until the next good reload.
        "rolled_back"
    } else {
        "serving"
    };
    let view = PluginView::of(plugin, status, last_reload);
    serde_json::to_value(view).unwrap_or(Value::Null)
}

pub(super) async fn list(State(state): State<ApiState>) -> Json<Value> {
    let mut plugins: Vec<Value> = state
        .runtime
        .plugins()
        .iter()
        .map(|p| serving_view(&state, p))
        .collect();
    // A replaced generation: `draining` while calls it admitted finish, then `standby` (kept
    // as the rollback target for the watch window).
    plugins.extend(state.runtime.draining().iter().map(|p| {
        let status = if p.active_calls() > 0 {
            "draining"
        } else {
            "standby"
        };
        serde_json::to_value(PluginView::of(p, status, None)).unwrap_or(Value::Null)
    }));
    plugins.extend(
        state
            .runtime
            .failures()
            .iter()
            .map(|f| serde_json::to_value(FailedView::of(f)).unwrap_or(Value::Null)),
    );
    plugins.extend(
        state
            .runtime
            .loading()
            .iter()
            .map(|l| serde_json::to_value(LoadingView::of(l)).unwrap_or(Value::Null)),
    );
    Json(json!({
        "plugins": plugins,
        "aot_cache": state.runtime.cache_stats(),
    }))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(plugin) = state.runtime.get(&name) {
        return Ok(Json(serving_view(&state, &plugin)));
    }
    if let Some(failure) = state.runtime.failures().iter().find(|f| f.name == name) {
        return Ok(Json(
            serde_json::to_value(FailedView::of(failure)).unwrap_or(Value::Null),
        ));
    }
    if let Some(loading) = state.runtime.loading().iter().find(|l| l.name == name) {
        return Ok(Json(
            serde_json::to_value(LoadingView::of(loading)).unwrap_or(Value::Null),
        ));
    }
    Err(ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no plugin named '{name}' is loaded; GET /v1/plugins lists them"),
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct ReloadQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /v1/plugins/{name}/reload`: 200 with the outcome when the plugin serves afterwards
/// (reloaded, or unchanged), 422 when the reload failed (the previous generation still serves),
/// 404 for an unknown name.
pub(super) async fn reload(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<ReloadQuery>,
) -> Result<Json<Value>, ApiError> {
    let outcome = state
        .reloader
        .reload_plugin(&name, query.force)
        .await
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                format!("no plugin named '{name}' is loaded or failed to load"),
            )
        })?;
    let body = serde_json::to_value(&outcome).unwrap_or(Value::Null);
    match outcome {
        ReloadOutcome::Failed { code, reason, .. } => Err(ApiError {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            code: "reload_failed",
            message: format!("{reason} ({code}); the previous generation, if any, still serves"),
            extra: vec![("reload", body)],
        }),
        ReloadOutcome::Unloaded { .. } | ReloadOutcome::Absent => Err(ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("plugin '{name}' has no manifest in its dir any more; it was unloaded"),
            extra: vec![("reload", body)],
        }),
        ReloadOutcome::Quarantined { .. } => Err(ApiError {
            status: axum::http::StatusCode::CONFLICT,
            code: "quarantined",
            message: "these files were rolled back and stay quarantined until they change; reload with ?force=true to try them anyway".into(),
            extra: vec![("reload", body)],
        }),
        _ => Ok(Json(body)),
    }
}

/// `GET /v1/events`: the most recent events of the internal bus, oldest first.
pub(super) async fn runtime(State(state): State<ApiState>) -> Json<Value> {
    let config = state.runtime.config();
    Json(json!({
        "wit_version": evolve_runtime::bindings::WIT_VERSION,
        "pool_instances": config.pool_instances,
        "pool_in_use": state.runtime.pool_in_use(),
        "memory_budget": {
            "total_mb": state.runtime.memory_budget().total_mb(),
            "reserved_mb": state.runtime.memory_budget().reserved_mb(),
        },
        "epoch_tick_ms": evolve_runtime::engine::EPOCH_TICK.as_millis() as u64,
        "aot_cache": state.runtime.cache_stats(),
        "aot_cache_dir": config.cache_dir.display().to_string(),
        "plugins_dir": state.reloader.plugins_dir().display().to_string(),
        "defaults": config.defaults,
        "ceilings": config.ceilings,
    }))
}

/// `POST /v1/checkers/{name}/check` body: the service instance to check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub name: String,
    pub endpoint: String,
    #[serde(default)]
    pub service_type: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    100
}

/// Largest weight an instance may have (the WIT contract's range).
const MAX_WEIGHT: u32 = 1_000;

impl CheckRequest {
    fn into_service(self) -> Result<Service, ApiError> {
        if self.name.trim().is_empty() {
            return Err(ApiError::bad_request("name: must not be empty"));
        }
        validate_endpoint(&self.endpoint)?;
        if self.weight > MAX_WEIGHT {
            return Err(ApiError::bad_request(format!(
                "weight: {} is out of range 0-{MAX_WEIGHT}",
                self.weight
            )));
        }
        Ok(Service {
            name: self.name,
            service_type: self.service_type,
            endpoint: self.endpoint,
            capabilities: self.capabilities,
            weight: self.weight,
            metadata: self.metadata.into_iter().collect(),
        })
    }
}

/// An endpoint is an absolute `http://` or `https://` URL with a host.
pub fn validate_endpoint(endpoint: &str) -> Result<(), ApiError> {
    let uri: axum::http::Uri = endpoint.parse().map_err(|e| {
        ApiError::bad_request(format!("endpoint: \"{endpoint}\" is not a URL ({e})"))
    })?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "endpoint: \"{endpoint}\" must be an absolute http:// or https:// URL with a host, e.g. http://127.0.0.1:9000"
        ))),
    }
}

pub(super) async fn check_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<CheckRequest>,
) -> Result<Json<Value>, ApiError> {
    let service = request.into_service()?;
    let report = state.runtime.check_service(&name, service).await?;
    let health = report
        .value
        .map_err(|error| ApiError::plugin(&report.plugin, &error))?;
    Ok(Json(json!({
        "plugin": report.plugin,
        "generation": report.generation,
        "duration_us": report.duration_us,
        "report": health_json(&health),
    })))
}

pub(super) fn health_json(report: &HealthReport) -> Value {
    report.to_json()
}
