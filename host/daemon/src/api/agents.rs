//! Meta-agent handlers: list, health, runs (start, wait, list, cancel), and the seed-style
//! system shortcuts (`/v1/system/...`) that run the bundled system agents by capability.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Caller, JsonBody};
use crate::agents::manager::{Failure, RunResult};
use crate::agents::{RunRequest, Trigger};

/// The system shortcuts: URL segment, capability the agent must offer, the bundled agent that
/// offers it, and the task it runs.
pub const SYSTEM_JOBS: &[(&str, &str, &str, &str)] = &[
    (
        "integration-tests",
        "integration-tests",
        "integration-tester",
        "run",
    ),
    ("log-analysis", "log-analysis", "log-analyzer", "analyze"),
    (
        "documentation",
        "documentation",
        "doc-generator",
        "generate",
    ),
    (
        "security-audit",
        "security-audit",
        "security-auditor",
        "audit",
    ),
];

/// Longest run deadline a request may ask for, ms (the config's `run_deadline_s` caps it
/// further).
const MAX_REQUEST_DEADLINE_MS: u64 = 86_400_000;

/// `POST /v1/agents/{name}/run` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// Task name the agent understands; empty for its default task.
    #[serde(default)]
    pub task: String,
    /// Task input, any JSON value (default `{}`).
    #[serde(default = "empty_object")]
    pub input: Value,
    /// Deadline of the whole run (attempts and backoffs), ms; at most `agents.run_deadline_s`.
    pub deadline_ms: Option<u64>,
    /// `false`: answer 202 with the run id at once instead of waiting for the outcome.
    #[serde(default = "yes")]
    pub wait: bool,
}

fn empty_object() -> Value {
    json!({})
}

fn yes() -> bool {
    true
}

impl RunBody {
    fn into_request(
        self,
        trigger: Trigger,
        caller: Option<Extension<Caller>>,
    ) -> Result<(RunRequest, bool), ApiError> {
        if let Some(ms) = self.deadline_ms
            && (ms == 0 || ms > MAX_REQUEST_DEADLINE_MS)
        {
            return Err(ApiError::bad_request(format!(
                "deadline_ms: {ms} is out of range 1-{MAX_REQUEST_DEADLINE_MS}"
            )));
        }
        Ok((
            RunRequest {
                task: self.task,
                input: self.input,
                deadline: self.deadline_ms.map(Duration::from_millis),
                trigger,
                caller: caller.map(|Extension(Caller(name))| name),
            },
            self.wait,
        ))
    }
}

pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let agents = state.agents.list().await?;
    Ok(Json(json!({ "agents": agents })))
}

/// Every agent's latest status and recent history, and the manager's own state.
pub(super) async fn health(State(state): State<ApiState>) -> Json<Value> {
    let history = state.agents.health();
    let agents: Vec<Value> = history
        .into_iter()
        .map(|(name, samples)| {
            json!({
                "name": name,
                "status": samples.last().map_or("unknown", |s| s.status),
                "latest": samples.last(),
                "history": samples,
            })
        })
        .collect();
    let unhealthy = agents.iter().filter(|a| a["status"] == "unhealthy").count();
    Json(json!({
        "manager": { "status": "running", "agents": agents.len(), "unhealthy": unhealthy },
        "agents": agents,
    }))
}

/// `GET /v1/agents/{name}/health`: asks the agent now (and records the sample).
pub(super) async fn agent_health(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Through the manager: the answer is also recorded in the agent's health history.
    let report = state.agents.check_health(&name).await?;
    Ok(Json(json!({
        "plugin": report.plugin,
        "generation": report.generation,
        "duration_us": report.duration_us,
        "report": super::plugins::health_json(&report.value),
    })))
}

pub(super) async fn run(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<RunBody>,
) -> Result<Response, ApiError> {
    let (request, wait) = body.into_request(Trigger::Api, caller)?;
    start_and_answer(&state, &name, request, wait).await
}

async fn start_and_answer(
    state: &ApiState,
    name: &str,
    request: RunRequest,
    wait: bool,
) -> Result<Response, ApiError> {
    let started = state.agents.start_run(name, request).await?;
    if !wait {
        let location = format!("/v1/agents/{name}/runs/{}", started.id);
        return Ok((
            StatusCode::ACCEPTED,
            [(axum::http::header::LOCATION, location.clone())],
            Json(json!({ "run_id": started.id, "outcome": "running", "location": location })),
        )
            .into_response());
    }
    let id = started.id;
    let result = started.done.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "run_lost",
            format!(
                "run {id} of '{name}' ended without an answer; see GET /v1/agents/{name}/runs/{id}"
            ),
        )
    })?;
    answer(name, result).map(IntoResponse::into_response)
}

/// A finished run as the API answers it: 200 with the outcome, or the failure's status with
/// the run id beside the error.
fn answer(name: &str, result: RunResult) -> Result<Json<Value>, ApiError> {
    let record = result.record;
    let id = record.id;
    let error = match result.failure {
        None => {
            return Ok(Json(json!({
                "run_id": id,
                "plugin": name,
                "generation": record.generation,
                "attempts": record.attempts,
                "duration_us": result.duration_us,
                "duration_ms": record.duration_ms,
                "logs_dropped": result.logs_dropped,
                "persisted": result.persisted,
                "outcome": {
                    "summary": record.summary,
                    "output": record.output,
                    "artifacts": result.artifacts,
                },
            })));
        }
        Some(Failure::Call(error)) => ApiError::from(error),
        Some(Failure::Plugin(error)) => ApiError::plugin(name, &error),
        Some(Failure::Deadline { .. }) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "run_deadline_exceeded",
            record.error.clone().unwrap_or_default(),
        ),
        Some(Failure::Cancelled) => ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            format!("run {id} of '{name}' was cancelled"),
        ),
    };
    Err(error.with("run_id", id).with("attempts", record.attempts))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Most runs to return (default 50, at most 1000).
    pub limit: Option<u32>,
    /// Runs older than this id (paging).
    pub before: Option<i64>,
}

pub(super) async fn runs(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let runs = state
        .agents
        .runs(&name, query.limit.unwrap_or(50), query.before)
        .await?;
    let stats = state.agents.stats(&name).await?;
    Ok(Json(json!({ "agent": name, "stats": stats, "runs": runs })))
}

pub(super) async fn run_show(
    State(state): State<ApiState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let record = state.agents.get_run(&name, id).await?;
    Ok(Json(json!(record)))
}

pub(super) async fn cancel(
    State(state): State<ApiState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    match state.agents.cancel(&name, id) {
        Ok(()) => Ok(Json(json!({ "run_id": id, "cancelling": true }))),
        Err(crate::agents::AgentError::RunNotFound { .. }) => {
            // Not running: finished (409 with its outcome) or unknown (404).
            let record = state.agents.get_run(&name, id).await?;
            Err(crate::agents::AgentError::RunFinished {
                agent: name,
                run_id: id,
                outcome: record.outcome.as_str(),
            }
            .into())
        }
        Err(other) => Err(other.into()),
    }
}

/// `POST /v1/system/{job}`: runs the agent offering the job's capability. The body is
/// optional: `{}` or a [`RunBody`] whose `task` defaults to the job's.
pub(super) async fn system(
    State(state): State<ApiState>,
    Path(job): Path<String>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some(&(_, capability, bundled, task)) = SYSTEM_JOBS.iter().find(|j| j.0 == job) else {
        let known: Vec<&str> = SYSTEM_JOBS.iter().map(|j| j.0).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no system job '{job}'; known: {}", known.join(", ")),
        ));
    };
    let name = state.agents.by_capability(capability, bundled)?;
    let mut body = super::optional_json::<RunBody>(
        &body,
        "nothing or {\"input\", \"task\", \"deadline_ms\", \"wait\"}",
    )?
    .unwrap_or(RunBody {
        task: String::new(),
        input: empty_object(),
        deadline_ms: None,
        wait: true,
    });
    if body.task.is_empty() {
        body.task = task.to_string();
    }
    let (request, wait) = body.into_request(Trigger::Api, caller)?;
    start_and_answer(&state, &name, request, wait).await
}
