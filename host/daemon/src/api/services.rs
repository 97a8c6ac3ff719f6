//! Service mesh endpoints: the catalog, health, capability routing and the named-service proxy.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/services` | every service with its instances' live state |
//! | `POST /v1/services` | register a service (409 if the name exists) |
//! | `GET /v1/services/health` | per service and instance: health, breaker, last check, EWMA latency |
//! | `GET/PUT/DELETE /v1/services/{name}` | show, replace (e.g. weight 0 to drain), remove |
//! | `POST /v1/services/{name}/probe` | one health-path request through the mesh |
//! | `* /v1/services/{name}/proxy/{*path}` | forward to the named service |
//! | `POST /v1/route/{type}` | forward to a service offering the type's capability |

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

use super::{ApiError, ApiState, Caller, JsonBody};
use evolve_mesh::{Mesh, MeshError, ServiceSpec};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/services", get(list).post(register))
        .route("/v1/services/health", get(health))
        .route("/v1/services/{name}", get(show).put(replace).delete(remove))
        .route("/v1/services/{name}/probe", post(probe))
        .route("/v1/services/{name}/proxy", any(proxy))
        .route("/v1/services/{name}/proxy/{*path}", any(proxy))
        .route("/v1/route/{request_type}", post(route))
}

impl From<MeshError> for ApiError {
    fn from(error: MeshError) -> ApiError {
        ApiError::new(error.status(), error.code(), error.to_string())
    }
}

fn mesh(state: &ApiState) -> Result<&Mesh, ApiError> {
    state.mesh.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh_disabled",
            "this daemon runs without the service mesh",
        )
    })
}

async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "services": mesh(&state)?.views() })))
}

async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = mesh(&state)?
        .views()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or(MeshError::UnknownService(name))?;
    Ok(Json(serde_json::to_value(view).unwrap_or(Value::Null)))
}

async fn register(
    State(state): State<ApiState>,
    JsonBody(spec): JsonBody<ServiceSpec>,
) -> Result<Response, ApiError> {
    let view = mesh(&state)?.register(spec, false).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn replace(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<ServiceSpec>,
) -> Result<Json<Value>, ApiError> {
    if spec.name != name {
        return Err(ApiError::bad_request(format!(
            "name: the body names \"{}\" but the URL names \"{name}\"; they must match",
            spec.name
        )));
    }
    let view = mesh(&state)?.register(spec, true).await?;
    Ok(Json(serde_json::to_value(view).unwrap_or(Value::Null)))
}

async fn remove(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    mesh(&state)?.remove(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

/// `GET /v1/services/health`: the operational summary (no specs).
async fn health(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let services: Vec<Value> = mesh(&state)?
        .views()
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "status": s.status,
                "in_flight": s.in_flight,
                "pending": s.pending,
                "instances": s.instances.iter().map(|i| json!({
                    "id": i.id,
                    "endpoint": i.endpoint,
                    "weight": i.weight,
                    "health": i.health,
                    "circuit": i.circuit,
                    "ejected": i.ejected,
                    "routable": i.routable,
                    "slow_start_factor": i.slow_start_factor,
                    "ewma_latency_us": i.ewma_latency_us,
                    "in_flight": i.in_flight,
                    "last_check": i.last_check,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "services": services })))
}

async fn probe(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let report = mesh(&state)?.probe_service(&name).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

async fn proxy(
    State(state): State<ApiState>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let rest = proxied_path(request.uri().path())
        .ok_or_else(|| MeshError::UnknownService(name.clone()))?;
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let strip = strips_authorization(&state, &request);
    let response = mesh(&state)?
        .proxy(&name, path_and_query, request, strip)
        .await?;
    Ok(response)
}

/// What follows `/v1/services/{name}/proxy` in the request's path, as the client wrote it: the
/// name segment is skipped however it is spelled (`Path` gave its percent-decoded value, which
/// a raw path need not contain), and the rest stays encoded, so the instance gets the path
/// the client sent (an encoded `/` stays one segment).
fn proxied_path(path: &str) -> Option<&str> {
    let (_name, rest) = path.strip_prefix("/v1/services/")?.split_once('/')?;
    rest.strip_prefix("proxy")
}

async fn route(
    State(state): State<ApiState>,
    Path(request_type): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let strip = strips_authorization(&state, &request);
    let response = mesh(&state)?.route(&request_type, request, strip).await?;
    Ok(response)
}

/// Whether `Authorization` is removed before forwarding: always while the daemon has tokens
/// (whatever the header says, it is a credential for this daemon or one a caller could use to
/// smuggle this daemon's token past the check in any spelling), and for a request that carried
/// a known token in any case.
fn strips_authorization(state: &ApiState, request: &Request) -> bool {
    !state.config.server.tokens.is_empty() || request.extensions().get::<Caller>().is_some()
}

#[cfg(test)]
mod tests {
    use super::proxied_path;

    #[test]
    fn the_proxied_path_follows_the_name_however_it_is_encoded() {
        assert_eq!(proxied_path("/v1/services/fc/proxy/work"), Some("/work"));
        // `%2E` is `.`: the router decoded the name to `fc.v2`, the raw path still says `%2E`.
        assert_eq!(
            proxied_path("/v1/services/fc%2Ev2/proxy/a%2Fb/c"),
            Some("/a%2Fb/c")
        );
        assert_eq!(proxied_path("/v1/services/%66c/proxy"), Some(""));
        assert_eq!(proxied_path("/v1/services/fc"), None);
    }
}
