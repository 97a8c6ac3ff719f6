//! The run state machine. A run goes through numbered steps:
//!
//! 1. **Admit**: the agent must be a loaded meta agent; unless its manifest says
//!    `[agent] overlap = true`, a run already in progress refuses the new one (409).
//! 2. **Record**: the run is written to the history as `running` (fsynced) and gets its id.
//! 3. **Attempt**: the runner runs the task (the plugin's own deadline and limits apply).
//! 4. **Retry** when the agent answered an error it marked `retryable`, after an exponential,
//!    jittered backoff, up to `max_retries` extra attempts and never past the run's deadline.
//! 5. **Finish**: succeeded, failed (with the reason), or cancelled; the outcome is written
//!    (fsynced) before anyone waiting is answered, then `agent.run_finished` is published.
//!    An agent whose kept history has grown [`PRUNE_SLACK`] runs past `agents.runs_kept` is
//!    pruned back to it in the same step.
//!
//! The whole run is bounded by a deadline (`agents.run_deadline_s`, or shorter per request)
//! and can be cancelled by id; both drop the attempt in flight, which stops the guest.
//!
//! Steps 1–2 run in the caller's task ([`AgentManager::start_run`]); steps 3–5 in a task of
//! their own, so a caller that stops waiting does not stop the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::AgentManager;
use super::policy::Policy;
use crate::agents::AgentError;
use crate::agents::history::{Finish, HistoryError, RunOutcome, RunRecord, Trigger};
use evolve_core::events::{Event, EventKind};
use evolve_core::sync::lock;
use evolve_runtime::CallError;
use evolve_runtime::bindings::types::{PluginError, Task, TaskOutcome};

/// Finished runs an agent may keep beyond `agents.runs_kept` before it is pruned back: pruning
/// is amortised (one delete per this many of the agent's own runs, not one per run), and it is
/// counted per agent, so every agent is bounded however the runs of all agents interleave.
pub(crate) const PRUNE_SLACK: u64 = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub task: String,
    pub input: Value,
    /// Shortens the run deadline (never lengthens it).
    pub deadline: Option<Duration>,
    pub trigger: Trigger,
    /// The API token's name, when auth is on.
    pub caller: Option<String>,
}

/// Why a finished run did not succeed, for callers that map it to a status.
#[derive(Debug)]
pub enum Failure {
    /// The call into the plugin failed (trap, its own deadline, limits, ...).
    Call(CallError),
    /// The agent answered with an error.
    Plugin(PluginError),
    /// The run as a whole passed its deadline.
    Deadline {
        deadline_ms: u64,
    },
    Cancelled,
}

/// A finished run: its record (as persisted) and what only the caller needs.
#[derive(Debug)]
pub struct RunResult {
    pub record: RunRecord,
    pub artifacts: Vec<String>,
    pub logs_dropped: u64,
    /// Time inside the plugin on the last attempt, µs.
    pub duration_us: u64,
    pub failure: Option<Failure>,
    /// Whether the outcome reached the history (it is answered either way).
    pub persisted: bool,
}

/// A run that was admitted and recorded.
#[derive(Debug)]
pub struct StartedRun {
    pub id: i64,
    pub done: oneshot::Receiver<RunResult>,
}

/// A run in progress, as its agent's state holds it.
#[derive(Debug)]
pub(super) struct RunControl {
    /// 0 until the history assigned the id.
    pub(super) id: AtomicI64,
    pub(super) started_at: DateTime<Utc>,
    cancel: watch::Sender<bool>,
}

impl RunControl {
    /// The id, or `None` while the run is still being recorded.
    pub(super) fn recorded_id(&self) -> Option<i64> {
        Some(self.id.load(Ordering::SeqCst)).filter(|id| *id > 0)
    }
}

/// What steps 3–4 hand to step 5.
struct Attempted {
    outcome: Result<TaskOutcome, Failure>,
    /// Why the run stopped retrying early, appended to its error.
    note: Option<String>,
    attempts: u32,
    /// Of the plugin that served the last attempt.
    generation: Option<u64>,
    logs_dropped: u64,
    duration_us: u64,
}

impl AgentManager {
    /// Steps 1–2, then spawns steps 3–5. The run continues if the caller stops waiting.
    pub async fn start_run(
        &self,
        name: &str,
        request: RunRequest,
    ) -> Result<StartedRun, AgentError> {
        // Step 1: admit.
        let agent = self.inner.runner.agent(name)?;
        let policy = Policy::of(agent.spec.as_ref(), &self.inner.config);
        let started_at = Utc::now();
        let (cancel, _) = watch::channel(false);
        let control = Arc::new(RunControl {
            id: AtomicI64::new(0),
            started_at,
            cancel,
        });
        {
            let mut agents = lock(&self.inner.agents);
            let state = agents.entry(name.to_string()).or_default();
            if !policy.overlap
                && let Some(busy) = state.running.first()
            {
                return Err(AgentError::AlreadyRunning {
                    agent: name.to_string(),
                    run_id: busy.recorded_id(),
                    started_at: busy.started_at,
                });
            }
            state.running.push(Arc::clone(&control));
        }
        // Step 2: record.
        let history = self.inner.history.clone();
        let (agent, task, trigger, caller) = (
            name.to_string(),
            request.task.clone(),
            request.trigger,
            request.caller.clone(),
        );
        let begun = tokio::task::spawn_blocking(move || {
            history.begin(&agent, &task, trigger, caller.as_deref(), started_at)
        })
        .await;
        let id = match begun {
            Ok(Ok(id)) => id,
            failed => {
                self.release(name, &control);
                return Err(match failed {
                    Ok(Err(e)) => AgentError::Store(e),
                    Err(e) => AgentError::StoreTask(e.to_string()),
                    Ok(Ok(_)) => AgentError::StoreTask("unreachable".into()),
                });
            }
        };
        control.id.store(id, Ordering::SeqCst);
        let (done_tx, done) = oneshot::channel();
        let manager = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let attempted = manager.attempt(&name, id, &control, &request, policy).await;
            let result = manager
                .finish(&name, id, &control, &request, attempted)
                .await;
            manager.release(&name, &control);
            // The caller may have stopped waiting; the run is recorded either way.
            let _ = done_tx.send(result);
        });
        Ok(StartedRun { id, done })
    }

    /// Starts a run and waits for it.
    pub async fn run(&self, name: &str, request: RunRequest) -> Result<RunResult, AgentError> {
        let started = self.start_run(name, request).await?;
        started
            .done
            .await
            .map_err(|_| AgentError::StoreTask("the run's task ended without an answer".into()))
    }

    fn release(&self, name: &str, control: &Arc<RunControl>) {
        if let Some(state) = lock(&self.inner.agents).get_mut(name) {
            state.running.retain(|c| !Arc::ptr_eq(c, control));
        }
    }

    /// Steps 3–4: attempts until one answers, a failure is not worth retrying, or the run is
    /// cancelled or past its deadline.
    async fn attempt(
        &self,
        name: &str,
        id: i64,
        control: &RunControl,
        request: &RunRequest,
        policy: Policy,
    ) -> Attempted {
        let limit = Duration::from_secs(self.inner.config.run_deadline_s);
        let deadline = request.deadline.map_or(limit, |d| d.min(limit));
        let deadline_at = tokio::time::Instant::now() + deadline;
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        let mut cancelled = control.cancel.subscribe();
        let input = request.input.to_string();
        let mut attempts = 0u32;
        let mut generation = None;
        let mut logs_dropped = 0;
        let mut duration_us = 0;
        let (outcome, note) = loop {
            attempts += 1;
            generation = self.inner.runner.generation(name).or(generation);
            let task = Task {
                name: request.task.clone(),
                input: input.clone(),
            };
            // Step 3: attempt.
            let answer = tokio::select! {
                answer = self.inner.runner.run(name, task) => answer,
                _ = cancelled.wait_for(|c| *c) => break (Err(Failure::Cancelled), None),
                _ = tokio::time::sleep_until(deadline_at) => {
                    break (Err(Failure::Deadline { deadline_ms }), None)
                }
            };
            let (failure, retryable) = match answer {
                Ok(report) => {
                    generation = Some(report.generation);
                    logs_dropped += report.logs_dropped;
                    duration_us = report.duration_us;
                    match report.value {
                        Ok(outcome) => break (Ok(outcome), None),
                        Err(error) => {
                            let retryable = error.retryable;
                            (Failure::Plugin(error), retryable)
                        }
                    }
                }
                // Host-side failures (trap, deadline, limits, overload) are not retried: only
                // the agent knows whether trying again can help.
                Err(error) => (Failure::Call(error), false),
            };
            // Step 4: retry?
            if !retryable || attempts > policy.max_retries {
                break (Err(failure), None);
            }
            let backoff = policy.backoff_after(attempts);
            if tokio::time::Instant::now() + backoff >= deadline_at {
                break (
                    Err(failure),
                    Some("no retry: the backoff would pass the run's deadline".to_string()),
                );
            }
            tracing::info!(
                agent = name,
                run_id = id,
                attempt = attempts,
                backoff_ms = backoff.as_millis() as u64,
                "retrying agent run"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancelled.wait_for(|c| *c) => break (Err(Failure::Cancelled), None),
            }
        };
        Attempted {
            outcome,
            note,
            attempts,
            generation,
            logs_dropped,
            duration_us,
        }
    }

    /// Step 5: records the outcome, then publishes it.
    async fn finish(
        &self,
        name: &str,
        id: i64,
        control: &RunControl,
        request: &RunRequest,
        attempted: Attempted,
    ) -> RunResult {
        let Attempted {
            outcome,
            note,
            attempts,
            generation,
            logs_dropped,
            duration_us,
        } = attempted;
        let mut finish = Finish {
            finished_at: Utc::now(),
            outcome: RunOutcome::Succeeded,
            summary: None,
            output: None,
            error_code: None,
            error: None,
            generation,
            attempts,
        };
        let mut artifacts = Vec::new();
        let failure = match outcome {
            Ok(outcome) => {
                finish.summary = Some(outcome.summary);
                finish.output = Some(outcome.output);
                artifacts = outcome.artifacts;
                None
            }
            Err(failure) => {
                let (outcome, code, message) = describe_failure(&failure);
                finish.outcome = outcome;
                finish.error_code = Some(code);
                finish.error = Some(match &note {
                    Some(note) => format!("{message} ({note})"),
                    None => message,
                });
                Some(failure)
            }
        };
        let history = self.inner.history.clone();
        let stored = finish.clone();
        let agent = name.to_string();
        let keep = self.inner.config.runs_kept;
        let persisted = tokio::task::spawn_blocking(move || {
            history.finish(id, &stored)?;
            let mut stats = history.stats(&agent)?;
            if stats.runs > u64::from(keep) + PRUNE_SLACK {
                match history.prune(&agent, keep) {
                    Ok(_) => stats = history.stats(&agent)?,
                    // The run itself is recorded; the next finish tries the prune again.
                    Err(error) => {
                        tracing::warn!(agent = %agent, %error, "pruning the agent's run history failed");
                    }
                }
            }
            Ok::<_, HistoryError>((history.get(id)?, stats))
        })
        .await;
        let (record, persisted) = match persisted {
            Ok(Ok((Some(record), stats))) => {
                self.set_counters(name, &stats);
                (record, true)
            }
            other => {
                let reason = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => "the run's row is gone".to_string(),
                };
                tracing::error!(agent = name, run_id = id, %reason, "cannot record the run's outcome");
                (
                    fallback_record(id, name, request, control.started_at, &finish),
                    false,
                )
            }
        };
        let data = json!({
            "run_id": id,
            "outcome": record.outcome,
            "trigger": record.trigger,
            "attempts": attempts,
            "duration_ms": record.duration_ms,
            "generation": generation,
            "error_code": record.error_code,
        });
        if record.outcome == RunOutcome::Succeeded {
            tracing::info!(
                agent = name,
                run_id = id,
                attempts,
                duration_ms = record.duration_ms,
                "agent run succeeded"
            );
        } else {
            tracing::warn!(
                agent = name,
                run_id = id,
                attempts,
                outcome = record.outcome.as_str(),
                error = record.error.as_deref().unwrap_or(""),
                "agent run failed"
            );
        }
        self.inner
            .events
            .publish(Event::new(EventKind::AgentRunFinished, name, data));
        RunResult {
            record,
            artifacts,
            logs_dropped,
            duration_us,
            failure,
            persisted,
        }
    }

    /// Cancels a run in progress.
    pub fn cancel(&self, name: &str, run_id: i64) -> Result<(), AgentError> {
        let agents = lock(&self.inner.agents);
        let control = agents.get(name).and_then(|s| {
            s.running
                .iter()
                // Id 0 is a run still being recorded; it cannot be named yet.
                .find(|c| run_id > 0 && c.id.load(Ordering::SeqCst) == run_id)
        });
        match control {
            Some(control) => {
                control.cancel.send_replace(true);
                Ok(())
            }
            None => Err(AgentError::RunNotFound {
                agent: name.to_string(),
                run_id,
            }),
        }
    }
}

/// Outcome, error code and message of a failure.
fn describe_failure(failure: &Failure) -> (RunOutcome, String, String) {
    match failure {
        Failure::Call(error) => (
            RunOutcome::Failed,
            error.code().to_string(),
            error.to_string(),
        ),
        Failure::Plugin(error) => (
            RunOutcome::Failed,
            format!("plugin:{}", error.code.as_str()),
            error.message.clone(),
        ),
        Failure::Deadline { deadline_ms } => (
            RunOutcome::Failed,
            "run_deadline_exceeded".into(),
            format!(
                "the run exceeded its deadline of {deadline_ms} ms (attempts and backoffs together)"
            ),
        ),
        Failure::Cancelled => (
            RunOutcome::Cancelled,
            "cancelled".into(),
            "the run was cancelled".into(),
        ),
    }
}

/// The record as it would have been stored, when the store failed.
fn fallback_record(
    id: i64,
    name: &str,
    request: &RunRequest,
    started_at: DateTime<Utc>,
    finish: &Finish,
) -> RunRecord {
    RunRecord {
        id,
        agent: name.to_string(),
        task: request.task.clone(),
        trigger: request.trigger,
        caller: request.caller.clone(),
        started_at,
        finished_at: Some(finish.finished_at),
        duration_ms: u64::try_from((finish.finished_at - started_at).num_milliseconds()).ok(),
        outcome: finish.outcome,
        summary: finish.summary.clone(),
        output: finish
            .output
            .as_deref()
            .and_then(|o| evolve_runtime::output::parse(o).ok()),
        error_code: finish.error_code.clone(),
        error: finish.error.clone(),
        generation: finish.generation,
        attempts: finish.attempts,
    }
}
