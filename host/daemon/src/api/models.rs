//! Model registry endpoints: models, versions, aliases, performance, best model, backups.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/models?task=&tag=&name=&limit=&offset=` | list / search models |
//! | `POST /v1/models` | register a model |
//! | `GET /v1/models/best?task=&policy=` | best model of a task type, explained |
//! | `GET /v1/models/{name}` | one model with its aliases |
//! | `GET, POST /v1/models/{name}/versions` | list / create versions |
//! | `GET /v1/models/{name}/versions/{version}` | one version (a number or an alias) |
//! | `POST /v1/models/{name}/versions/{version}/status` | change a version's status |
//! | `GET /v1/models/{name}/aliases` | a model's aliases |
//! | `GET, PUT, DELETE /v1/models/{name}/aliases/{alias}` | resolve / move / remove an alias |
//! | `POST /v1/models/{name}/aliases/{alias}/rollback` | move an alias back one move |
//! | `GET /v1/models/{name}/aliases/{alias}/history` | every move of an alias |
//! | `GET, POST /v1/models/{name}/performance` | metric history and aggregates / record |
//! | `GET /v1/registry` | registry health with `integrity_check` (at most 60 s old, see [`evolve_registry::status::INTEGRITY_CHECK_MAX_AGE`]) |
//! | `GET /v1/registry/policies` | scoring policies |
//! | `GET, POST /v1/registry/backups` | list / write a backup now |
//! | `POST /v1/registry/restore` | restore a backup by file name |
//! | `GET /v1/registry/export`, `POST /v1/registry/import` | whole-registry JSON (the export streamed) |
//!
//! Registry calls run on a blocking thread (SQLite); a write is answered only after it
//! committed. The export is read on a blocking thread of its own and streamed in chunks
//! ([`ExportBody`]), so its size costs the daemon a few chunks of memory, not the registry; at
//! most [`MAX_EXPORTS`] run at once (the route is open to anonymous readers on a loopback
//! listen), one more is refused with `503 too_many_exports`.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{ApiError, ApiState, Caller, JsonBody};
use evolve_core::events::{Event, EventKind};
use evolve_registry::performance::MetricValue;
use evolve_registry::{
    DatabaseError, HistoryQuery, ModelFilter, MoveContext, NewModel, NewPoint, NewVersion,
    Registry, RegistryError, RegistryExport, VersionStatus,
};

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let status = match &error {
            RegistryError::Invalid { .. } | RegistryError::NonFinite { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RegistryError::ModelNotFound(_)
            | RegistryError::VersionNotFound { .. }
            | RegistryError::AliasNotFound { .. }
            | RegistryError::PolicyNotFound { .. }
            | RegistryError::NoEligibleModel { .. }
            | RegistryError::BackupNotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::ModelExists(_)
            | RegistryError::NothingToRollBack { .. }
            | RegistryError::NotEmpty { .. } => StatusCode::CONFLICT,
            // Only a file offered for restore is checked at run time: the client chose it.
            RegistryError::Store(
                DatabaseError::Foreign { .. }
                | DatabaseError::Corrupt { .. }
                | DatabaseError::TooNew { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "registry store error");
        }
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// The registry routes; `state` gives the import body limit.
pub fn routes(state: &ApiState) -> Router<ApiState> {
    let import_limit =
        usize::try_from(state.config.registry.import_limit_mb << 20).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/models", get(list_models).post(register_model))
        .route("/v1/models/best", get(best_model))
        .route("/v1/models/{name}", get(show_model))
        .route(
            "/v1/models/{name}/versions",
            get(list_versions).post(create_version),
        )
        .route("/v1/models/{name}/versions/{version}", get(show_version))
        .route(
            "/v1/models/{name}/versions/{version}/status",
            post(set_status),
        )
        .route("/v1/models/{name}/aliases", get(list_aliases))
        .route(
            "/v1/models/{name}/aliases/{alias}",
            get(show_alias).put(set_alias).delete(delete_alias),
        )
        .route(
            "/v1/models/{name}/aliases/{alias}/rollback",
            post(rollback_alias),
        )
        .route(
            "/v1/models/{name}/aliases/{alias}/history",
            get(alias_history),
        )
        .route(
            "/v1/models/{name}/performance",
            get(performance_history).post(record_performance),
        )
        .route("/v1/registry", get(health))
        .route("/v1/registry/policies", get(policies))
        .route("/v1/registry/backups", get(list_backups).post(backup_now))
        .route("/v1/registry/restore", post(restore))
        .route("/v1/registry/export", get(export))
        .route(
            "/v1/registry/import",
            post(import).layer(DefaultBodyLimit::max(import_limit)),
        )
}

/// Runs `call` on the registry on a blocking thread.
async fn with_registry<T: Send + 'static>(
    state: &ApiState,
    call: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(registry) = state.registry.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "this daemon runs without a model registry",
        ));
    };
    tokio::task::spawn_blocking(move || call(&registry))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("registry task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

fn query<T: DeserializeOwned>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|rejection| {
        ApiError::bad_request(format!("query string: {}", rejection.body_text()))
    })
}

fn actor(caller: Option<Extension<Caller>>) -> Option<String> {
    caller.map(|Extension(Caller(name))| name)
}

fn ok<T: serde::Serialize>(value: T) -> Response {
    Json(value).into_response()
}

fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

async fn list_models(
    State(state): State<ApiState>,
    filter: Result<Query<ModelFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = query(filter)?;
    let models = with_registry(&state, move |r| r.models(&filter)).await?;
    Ok(ok(json!({ "models": models })))
}

async fn register_model(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    JsonBody(model): JsonBody<NewModel>,
) -> Result<Response, ApiError> {
    let actor = actor(caller);
    let model = with_registry(&state, move |r| r.register_model(model, actor.as_deref())).await?;
    state.events.publish(Event::new(
        EventKind::ModelRegistered,
        &model.name,
        json!({ "task_type": model.task_type, "by": model.created_by }),
    ));
    Ok(created(model))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BestQuery {
    task: String,
    policy: Option<String>,
}

async fn best_model(
    State(state): State<ApiState>,
    best: Result<Query<BestQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let best = query(best)?;
    let answer = with_registry(&state, move |r| {
        r.best_for_task(&best.task, best.policy.as_deref())
    })
    .await?;
    Ok(ok(answer))
}

async fn show_model(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(with_registry(&state, move |r| r.model(&name)).await?))
}

async fn list_versions(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let versions = with_registry(&state, move |r| r.versions(&name)).await?;
    Ok(ok(json!({ "versions": versions })))
}

async fn create_version(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    JsonBody(version): JsonBody<NewVersion>,
) -> Result<Response, ApiError> {
    let actor = actor(caller);
    let version = with_registry(&state, move |r| {
        r.create_version(&name, version, actor.as_deref())
    })
    .await?;
    state.events.publish(Event::new(
        EventKind::ModelVersionCreated,
        &version.model,
        json!({ "version": version.version, "status": version.status, "by": version.created_by }),
    ));
    Ok(created(version))
}

/// A version path segment: a number, or an alias resolved to one.
fn resolve_version(registry: &Registry, model: &str, segment: &str) -> Result<u32, RegistryError> {
    match segment.parse::<u32>() {
        Ok(number) => Ok(number),
        Err(_) => Ok(registry.alias(model, segment)?.version),
    }
}

async fn show_version(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let found = with_registry(&state, move |r| {
        let number = resolve_version(r, &name, &version)?;
        r.version(&name, number)
    })
    .await?;
    Ok(ok(found))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: VersionStatus,
}

async fn set_status(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
    JsonBody(body): JsonBody<StatusBody>,
) -> Result<Response, ApiError> {
    let updated = with_registry(&state, move |r| {
        let number = resolve_version(r, &name, &version)?;
        r.set_version_status(&name, number, body.status)
    })
    .await?;
    Ok(ok(updated))
}

async fn list_aliases(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let aliases = with_registry(&state, move |r| r.aliases(&name)).await?;
    Ok(ok(json!({ "aliases": aliases })))
}

async fn show_alias(
    State(state): State<ApiState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(ok(
        with_registry(&state, move |r| r.alias(&name, &alias)).await?
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAliasBody {
    version: u32,
    #[serde(default)]
    reason: String,
}

async fn set_alias(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((name, alias)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetAliasBody>,
) -> Result<Response, ApiError> {
    let model = name.clone();
    let outcome = move_alias(&state, caller, body.reason, move |r, context| {
        r.set_alias(&name, &alias, body.version, context)
    })
    .await?;
    publish_move(&state, &model, outcome.moved.as_ref());
    Ok(ok(outcome))
}

/// Runs one alias move on the registry with the caller as its actor, timestamped now.
async fn move_alias<T: Send + 'static>(
    state: &ApiState,
    caller: Option<Extension<Caller>>,
    reason: String,
    apply: impl FnOnce(&Registry, &MoveContext<'_>) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let actor = actor(caller);
    with_registry(state, move |r| {
        let context = MoveContext {
            reason: &reason,
            actor: actor.as_deref(),
            at: Utc::now(),
        };
        apply(r, &context)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

async fn delete_alias(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((name, alias)): Path<(String, String)>,
    reason: Result<Query<ReasonBody>, QueryRejection>,
) -> Result<Response, ApiError> {
    let reason = query(reason)?.reason;
    let model = name.clone();
    let moved = move_alias(&state, caller, reason, move |r, context| {
        r.delete_alias(&name, &alias, context)
    })
    .await?;
    publish_move(&state, &model, Some(&moved));
    Ok(ok(moved))
}

async fn rollback_alias(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((name, alias)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: no body is a rollback without a reason.
    let reason = super::optional_json::<ReasonBody>(&body, "{\"reason\": \"...\"} or nothing")?
        .map(|b| b.reason)
        .unwrap_or_default();
    let model = name.clone();
    let moved = move_alias(&state, caller, reason, move |r, context| {
        r.rollback_alias(&name, &alias, context)
    })
    .await?;
    publish_move(&state, &model, Some(&moved));
    Ok(ok(moved))
}

/// Publishes an alias move on the event bus.
fn publish_move(state: &ApiState, model: &str, moved: Option<&evolve_registry::AliasMove>) {
    if let Some(moved) = moved {
        state
            .events
            .publish(Event::new(EventKind::ModelAliasMoved, model, json!(moved)));
    }
}

async fn alias_history(
    State(state): State<ApiState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let history = with_registry(&state, move |r| r.alias_history(&name, &alias)).await?;
    Ok(ok(json!({ "history": history })))
}

async fn performance_history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    history: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let history = query(history)?;
    Ok(ok(with_registry(&state, move |r| {
        r.history(&name, &history)
    })
    .await?))
}

/// `POST /v1/models/{name}/performance`: a batch `{"points": [...]}`, one point
/// `{"version", "metric", "value", "timestamp"?}`, or one observation of several metrics
/// `{"version", "metrics": {"sharpe_ratio": 1.2, ...}, "timestamp"?}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordBody {
    points: Option<Vec<NewPoint>>,
    version: Option<u32>,
    metric: Option<String>,
    value: Option<MetricValue>,
    metrics: Option<BTreeMap<String, MetricValue>>,
    timestamp: Option<DateTime<Utc>>,
}

impl RecordBody {
    fn into_points(self) -> Result<Vec<NewPoint>, ApiError> {
        let shape = "send {\"points\": [...]}, {\"version\", \"metric\", \"value\"} or {\"version\", \"metrics\": {...}}";
        match self {
            RecordBody {
                points: Some(points),
                version: None,
                metric: None,
                value: None,
                metrics: None,
                timestamp: None,
            } => Ok(points),
            RecordBody {
                points: None,
                version: Some(version),
                metric: Some(metric),
                value: Some(value),
                metrics: None,
                timestamp,
            } => Ok(vec![NewPoint {
                version,
                metric,
                value,
                timestamp,
            }]),
            RecordBody {
                points: None,
                version: Some(version),
                metric: None,
                value: None,
                metrics: Some(metrics),
                timestamp,
            } => Ok(metrics
                .into_iter()
                .map(|(metric, value)| NewPoint {
                    version,
                    metric,
                    value,
                    timestamp,
                })
                .collect()),
            _ => Err(ApiError::bad_request(format!(
                "the body mixes or lacks fields; {shape}"
            ))),
        }
    }
}

async fn record_performance(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RecordBody>,
) -> Result<Response, ApiError> {
    let points = body.into_points()?;
    let receipt = with_registry(&state, move |r| r.record(&name, &points)).await?;
    Ok(created(receipt))
}

async fn health(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let health = with_registry(&state, |r| r.health()).await?;
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(health)).into_response())
}

async fn policies(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let policies = with_registry(&state, |r| {
        Ok(json!({
            "default": r.config().default_policy,
            "policies": r.policies(),
        }))
    })
    .await?;
    Ok(ok(policies))
}

async fn list_backups(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let backups = with_registry(&state, |r| r.backups()).await?;
    Ok(ok(json!({ "backups": backups })))
}

async fn backup_now(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let backup = with_registry(&state, |r| r.backup_now()).await?;
    state.events.publish(Event::new(
        EventKind::RegistryBackupWritten,
        &backup.file,
        json!({ "path": backup.path, "bytes": backup.bytes, "scheduled": false }),
    ));
    Ok(created(backup))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// File name of a backup in the backup directory.
    backup: String,
}

async fn restore(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<RestoreBody>,
) -> Result<Response, ApiError> {
    let backup = body.backup.clone();
    let saved = with_registry(&state, move |r| r.restore(&body.backup)).await?;
    state.events.publish(Event::new(
        EventKind::RegistryRestored,
        backup,
        json!({ "previous_saved_as": saved.file }),
    ));
    Ok(ok(json!({ "restored": true, "previous_saved_as": saved })))
}

/// Export chunks read ahead of a slow client before the reader waits for it.
const EXPORT_QUEUE: usize = 4;

/// Exports streaming at once. Each holds a blocking thread, a SQLite read transaction (which
/// keeps the WAL from being checkpointed past it) and [`EXPORT_QUEUE`] chunks for as long as its
/// client reads slowly; backups and migrations need one or two.
pub const MAX_EXPORTS: usize = 4;

/// Permits for exports, one daemon per process; a permit lives as long as its answer's body.
static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_EXPORTS);

/// A slot for one more export, or the refusal that says why there is none.
fn export_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    EXPORTS.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_exports",
            format!(
                "{MAX_EXPORTS} registry exports are already streaming; retry once one has finished"
            ),
        )
        .with("max_exports", MAX_EXPORTS)
    })
}

/// `GET /v1/registry/export`: the document streamed as its chunks are read. An error before
/// the first chunk is a JSON error answer; one after it ends the body early (the client sees a
/// cut-off transfer, never a document that parses but misses models).
async fn export(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let Some(registry) = state.registry.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "this daemon runs without a model registry",
        ));
    };
    let permit = export_permit()?;
    let (chunks, mut queue) = tokio::sync::mpsc::channel(EXPORT_QUEUE);
    tokio::task::spawn_blocking(move || {
        let sender = chunks.clone();
        let read = registry.export_chunks(Utc::now(), &mut |chunk| {
            // Fails once the client is gone: the reader stops.
            sender.blocking_send(Ok(bytes::Bytes::from(chunk))).is_ok()
        });
        if let Err(error) = read {
            let _ = chunks.blocking_send(Err(error));
        }
    });
    let first = match queue.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(error)) => return Err(ApiError::from(error)),
        None => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the registry export task ended without an answer",
            ));
        }
    };
    let mut response = Response::new(axum::body::Body::new(ExportBody {
        first: Some(first),
        queue,
        _permit: permit,
    }));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The body of a streamed export: the chunks as the reader sends them; a read error ends it
/// with an error (logged), so the transfer is cut off rather than completed.
struct ExportBody {
    first: Option<bytes::Bytes>,
    queue: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, RegistryError>>,
    /// The export's slot, freed when the body is dropped (done, or the client went).
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl hyper::body::Body for ExportBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
        }
        self.queue.poll_recv(cx).map(|next| {
            next.map(|chunk| match chunk {
                Ok(chunk) => Ok(hyper::body::Frame::data(chunk)),
                Err(error) => {
                    tracing::error!(%error, "registry export failed mid-stream; the answer is cut off");
                    Err(std::io::Error::other(error.to_string()))
                }
            })
        })
    }
}

async fn import(
    State(state): State<ApiState>,
    JsonBody(document): JsonBody<RegistryExport>,
) -> Result<Response, ApiError> {
    let models = document.models.len();
    let points = with_registry(&state, move |r| r.import(&document)).await?;
    Ok(created(
        json!({ "imported_models": models, "imported_points": points }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_past_the_cap_are_refused_until_one_finishes() {
        let held: Vec<_> = (0..MAX_EXPORTS)
            .map(|n| export_permit().unwrap_or_else(|_| panic!("export {n} within the cap")))
            .collect();
        let refused = export_permit().expect_err("one export past the cap");
        assert_eq!(refused.code, "too_many_exports");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(export_permit().is_ok(), "a finished export frees its slot");
    }
}
