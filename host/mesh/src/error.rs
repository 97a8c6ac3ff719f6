//! The mesh's errors and how each answers over HTTP: one status and one stable `code` per kind,
//! and the JSON body `{"error": {"code", "message"}}` that the API's errors share. The API maps
//! [`MeshError`] through [`MeshError::status`] and [`MeshError::code`]; the data-plane listener,
//! which has no API above it, renders [`MeshError::json_body`] itself.

use http::StatusCode;
use serde_json::json;

use crate::breaker::Shed;
use crate::catalog::{CatalogFileError, CheckedSpecError, SpecError};
use crate::service::Unavailable;

/// What can go wrong in the mesh; each has one HTTP status and a stable code ([`MeshError::status`],
/// [`MeshError::code`]), which the API and the data-plane listener both answer with.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no service named \"{0}\" is registered; GET /v1/services lists them")]
    UnknownService(String),
    #[error(
        "no registered service offers capability \"{capability}\" (request type \"{request_type}\"); register one with that capability or map the type in [mesh.routes]"
    )]
    NoRoute {
        request_type: String,
        capability: String,
    },
    #[error("service {target}: {detail}")]
    Unavailable { target: String, detail: Unavailable },
    #[error("service {service} is shedding load: {reason}")]
    Shed { service: String, reason: Shed },
    #[error(
        "service {service}: instance {instance} gave no response headers within the deadline of {timeout_ms} ms ({attempts} attempts)"
    )]
    Timeout {
        service: String,
        instance: String,
        timeout_ms: u64,
        attempts: u32,
    },
    #[error("service {service}: instance {instance}: {message} ({attempts} attempts)")]
    Upstream {
        service: String,
        instance: String,
        message: String,
        attempts: u32,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "route \"{request_type}\" needs a model of task \"{task}\" and has none ({detail}); register a model version (and the route's alias), or set model_fallback = \"forward\""
    )]
    NoModel {
        request_type: String,
        task: String,
        detail: String,
    },
    #[error(
        "the request body is larger than {limit_kb} KiB, the most a route reads into memory ([mesh] route_body_kb)"
    )]
    BodyTooLarge { limit_kb: u64 },
    #[error(transparent)]
    Spec(#[from] CheckedSpecError),
    #[error("a service named \"{0}\" is already registered; PUT /v1/services/{0} replaces it")]
    Duplicate(String),
    #[error(
        "service \"{0}\" is defined in the config file ([[mesh.services]]); change it there and restart"
    )]
    ConfigOwned(String),
    #[error(
        "service \"{name}\" was registered on cluster node \"{node}\"; change or remove it through that node"
    )]
    RemoteOwned { name: String, node: String },
    #[error("the catalog holds {0} services, the most it may; remove one first")]
    TooManyServices(usize),
    #[error(transparent)]
    Store(#[from] CatalogFileError),
}

impl MeshError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The stable machine-readable code of this error (`error.code` in the JSON body).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            MeshError::UnknownService(_) => (StatusCode::NOT_FOUND, "not_found"),
            MeshError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            MeshError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_instance"),
            MeshError::Shed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            MeshError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            MeshError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "upstream_error"),
            MeshError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            MeshError::NoModel { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_model"),
            MeshError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            MeshError::Spec(CheckedSpecError::UnknownChecker(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_checker")
            }
            MeshError::Spec(CheckedSpecError::Spec(spec)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                match spec {
                    SpecError::BadUrl { .. } => "bad_url",
                    SpecError::WeightOutOfRange { .. } => "weight_out_of_range",
                    SpecError::BadName(_) => "bad_name",
                    SpecError::Invalid { .. } => "invalid_service",
                },
            ),
            MeshError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate"),
            MeshError::ConfigOwned(_) => (StatusCode::CONFLICT, "defined_in_config"),
            MeshError::RemoteOwned { .. } => (StatusCode::CONFLICT, "registered_on_another_node"),
            MeshError::TooManyServices(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too_many_services")
            }
            MeshError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        }
    }

    /// The JSON error body: `{"error": {"code": …, "message": …}}`.
    pub fn json_body(&self) -> Vec<u8> {
        json!({ "error": { "code": self.code(), "message": self.to_string() } })
            .to_string()
            .into_bytes()
    }

    /// Whether the answer carries `Retry-After: 1` (every 503: the condition is transient).
    pub fn retry_after(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }

    /// The whole answer, for a data path with no API above it.
    pub fn into_response(self) -> http::Response<axum::body::Body> {
        let mut builder = http::Response::builder()
            .status(self.status())
            .header(http::header::CONTENT_TYPE, "application/json");
        if self.retry_after() {
            builder = builder.header(http::header::RETRY_AFTER, "1");
        }
        let body = axum::body::Body::from(self.json_body());
        builder.body(body).unwrap_or_else(|_| {
            // The status and both header values are constants, so this cannot fail; answer a
            // bare 500 rather than panic if it ever did.
            let mut fallback = http::Response::new(axum::body::Body::empty());
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
    }
}
