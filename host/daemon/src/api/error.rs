//! JSON errors: every failure is `{"error": {"code", "message", ...}}` with a fitting status.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::agents::AgentError;
use evolve_runtime::CallError;
use evolve_runtime::bindings::types::PluginError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Fields added beside `code` and `message`.
    pub extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    /// Adds a field to the error body.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> ApiError {
        self.extra.push((key, value.into()));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// A plugin answered with its own error.
    pub fn plugin(plugin: &str, error: &PluginError) -> ApiError {
        let detail = error.to_json();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "plugin_error",
            message: format!("plugin '{plugin}' returned an error: {}", error.message),
            extra: vec![("plugin_error", detail)],
        }
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> ApiError {
        let status = match &error {
            CallError::NotFound { .. } => StatusCode::NOT_FOUND,
            CallError::WrongKind { .. } => StatusCode::CONFLICT,
            CallError::Loading { .. }
            | CallError::MemoryBudget { .. }
            | CallError::Overloaded { .. }
            | CallError::Quarantined { .. } => StatusCode::SERVICE_UNAVAILABLE,
            CallError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            // The plugin, not the client, failed: a bad gateway in HTTP terms.
            CallError::MemoryLimit { .. }
            | CallError::Trap { .. }
            | CallError::Exited { .. }
            | CallError::ProbeQuota { .. }
            | CallError::TooManyResources { .. }
            | CallError::OutputTooLarge { .. }
            | CallError::TooManyEntries { .. }
            | CallError::InvalidOutput { .. }
            | CallError::PermissionDenied { .. }
            | CallError::Instantiate { .. } => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> ApiError {
        let (status, code) = match &error {
            AgentError::NotFound { .. } | AgentError::RunNotFound { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            AgentError::Loading { .. } => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
            AgentError::NotAnAgent { .. } => (StatusCode::CONFLICT, "wrong_kind"),
            AgentError::AlreadyRunning { .. } => (StatusCode::CONFLICT, "already_running"),
            AgentError::RunFinished { .. } => (StatusCode::CONFLICT, "run_finished"),
            AgentError::NoCapability { .. } => (StatusCode::NOT_FOUND, "no_agent_for_capability"),
            AgentError::Store(_) | AgentError::StoreTask(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "history_unavailable")
            }
        };
        let api = ApiError::new(status, code, error.to_string());
        match error {
            AgentError::AlreadyRunning { run_id, .. } => api.with("running_run_id", run_id),
            _ => api,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(map) = body.as_object_mut() {
            for (key, value) in self.extra {
                map.insert(key.to_string(), value);
            }
        }
        let mut response = (self.status, Json(json!({ "error": body }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON body that may be absent: empty (or only white space) is `None`; anything else must
/// parse as `T`, and `expected` tells the caller what to send when it does not.
pub fn optional_json<T: DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("body: {e}; send {expected}")))
}

/// `Json<T>` whose rejections are [`ApiError`]s that say what was wrong with the body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with `Content-Type: application/json`",
                ),
                JsonRejection::JsonSyntaxError(_) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    rejection.body_text(),
                ),
                JsonRejection::JsonDataError(_) => ApiError::bad_request(rejection.body_text()),
                _ => ApiError::new(rejection.status(), "bad_body", rejection.body_text()),
            }),
        }
    }
}
