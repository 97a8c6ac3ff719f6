//! The agent manager: registration, coordinated runs, and the views the API shows.
//!
//! A run goes through numbered steps:
//!
//! 1. **Admit**: the agent must be a loaded meta agent; unless its manifest says
//!    `[agent] overlap = true`, a run already in progress refuses the new one (409).
//! 2. **Record**: the run is written to the history as `running` (fsynced) and gets its id.
//! 3. **Attempt**: the runtime runs the task (the plugin's own deadline and limits apply).
//! 4. **Retry** when the agent answered an error it marked `retryable`, after an exponential,
//!    jittered backoff, up to `max_retries` extra attempts and never past the run's deadline.
//! 5. **Finish**: succeeded, failed (with the reason), or cancelled; the outcome is written
//!    (fsynced) before anyone waiting is answered, then `agent.run_finished` is published.
//!
//! The whole run is bounded by a deadline (`agents.run_deadline_s`, or shorter per request)
//! and can be cancelled by id; both drop the attempt in flight, which stops the guest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::health::{HealthLog, HealthSample};
use super::history::{Finish, RunHistory, RunOutcome, RunRecord, RunStats, Trigger};
use super::scheduler::{self, LoopClock, Plan};
use super::{AgentError, AgentsConfig};
use evolve_core::backoff::{Backoff, Jitter};
use evolve_core::events::{Event, EventBus, EventKind};
use evolve_core::sync::lock;
use evolve_runtime::bindings::inventory::AgentSummary;
use evolve_runtime::bindings::types::{HealthReport, PluginError, Task};
use evolve_runtime::manifest::{AgentSpec, MissedRuns};
use evolve_runtime::{CallError, CallReport, Description, Plugin, PluginKind, Runtime};

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

/// An agent as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub capabilities: Vec<String>,
    pub generation: u64,
    pub overlap: bool,
    pub max_retries: u32,
    pub retry_backoff_ms: u64,
    pub schedule: Option<ScheduleView>,
    /// Ids of runs in progress.
    pub running: Vec<i64>,
    pub health: Option<HealthSample>,
    pub stats: RunStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    /// `every 5m` or `cron */15 * * * *`.
    pub spec: String,
    pub task: String,
    pub jitter_s: u64,
    pub missed: MissedRuns,
    pub next_at: Option<DateTime<Utc>>,
}

/// A run in progress.
#[derive(Debug)]
struct RunControl {
    /// 0 until the history assigned the id.
    id: AtomicI64,
    started_at: DateTime<Utc>,
    cancel: watch::Sender<bool>,
}

/// Figures the inventory answers from memory.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    runs: u64,
    successes: u64,
    last_run_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct AgentState {
    running: Vec<Arc<RunControl>>,
    health: HealthLog,
    /// From the history: `None` until first read.
    counters: Option<Counters>,
    next_fire: Option<DateTime<Utc>>,
}

/// A schedule loop and the plugin generation it was built from.
#[derive(Debug)]
struct ScheduleTask {
    generation: u64,
    task: JoinHandle<()>,
}

struct Inner {
    runtime: Runtime,
    events: EventBus,
    history: RunHistory,
    config: AgentsConfig,
    agents: Mutex<BTreeMap<String, AgentState>>,
    schedules: Mutex<BTreeMap<String, ScheduleTask>>,
}

/// The manager; cheap to clone.
#[derive(Clone)]
pub struct AgentManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentManager").finish_non_exhaustive()
    }
}

/// The longest wait between two attempts of a run. Backoff doubles per attempt, so without a
/// cap a run with many retries would wait hours; a run's deadline (at most a day) cuts a wait
/// short anyway, and a retry an hour out helps no one who asked for retries.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3_600);

/// The effective run policy of an agent.
#[derive(Debug, Clone, Copy)]
struct Policy {
    overlap: bool,
    max_retries: u32,
    backoff: Duration,
}

impl Policy {
    fn of(spec: Option<&AgentSpec>, config: &AgentsConfig) -> Policy {
        Policy {
            overlap: spec.is_some_and(|s| s.overlap),
            max_retries: spec
                .and_then(|s| s.max_retries)
                .unwrap_or(config.max_retries),
            backoff: Duration::from_millis(
                spec.and_then(|s| s.retry_backoff_ms)
                    .unwrap_or(config.retry_backoff_ms),
            ),
        }
    }

    /// Backoff before attempt `attempt + 1`: base × 2^(attempt-1), capped at
    /// [`MAX_RETRY_BACKOFF`], the upper half jittered.
    fn backoff_after(&self, attempt: u32) -> Duration {
        Backoff {
            base: self.backoff,
            max: MAX_RETRY_BACKOFF,
            jitter: Jitter::UpperHalf,
        }
        .delay(attempt)
    }
}

impl AgentManager {
    /// Builds the manager over an opened history. Call [`AgentManager::start`] to begin
    /// health monitoring, schedules and registration tracking.
    pub fn new(
        runtime: Runtime,
        events: EventBus,
        history: RunHistory,
        config: AgentsConfig,
    ) -> AgentManager {
        AgentManager {
            inner: Arc::new(Inner {
                runtime,
                events,
                history,
                config,
                agents: Mutex::default(),
                schedules: Mutex::default(),
            }),
        }
    }

    /// Registers the loaded agents, then keeps registrations and schedules in step with
    /// plugin loads and reloads, and monitors health.
    pub fn start(&self) {
        self.sync();
        let manager = self.clone();
        let mut events = self.inner.events.subscribe();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) if event.kind.as_str().starts_with("plugin.") => manager.sync(),
                    Ok(_) => {}
                    // Missed events: resync from the runtime's state, which is the truth.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => manager.sync(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(super::health::monitor(
            self.clone(),
            Duration::from_secs(self.inner.config.health_interval_s),
        ));
    }

    fn meta_agents(&self) -> Vec<Arc<Plugin>> {
        self.inner
            .runtime
            .plugins()
            .into_iter()
            .filter(|p| p.kind() == PluginKind::MetaAgent)
            .collect()
    }

    /// Brings registrations and schedule loops in line with the loaded plugins.
    pub fn sync(&self) {
        let plugins = self.meta_agents();
        {
            let mut agents = lock(&self.inner.agents);
            for plugin in &plugins {
                agents.entry(plugin.name().to_string()).or_default();
            }
            // Keep state of agents with runs still finishing; forget the rest.
            agents.retain(|name, state| {
                !state.running.is_empty() || plugins.iter().any(|p| p.name() == name)
            });
        }
        self.load_counters();
        let mut schedules = lock(&self.inner.schedules);
        schedules.retain(|name, task| {
            let keep = plugins
                .iter()
                .any(|p| p.name() == name && p.generation == task.generation);
            if !keep {
                task.task.abort();
            }
            keep
        });
        if !self.inner.config.schedules {
            return;
        }
        for plugin in plugins {
            if schedules.contains_key(plugin.name()) {
                continue;
            }
            let Some(spec) = plugin
                .manifest
                .agent
                .as_ref()
                .and_then(|a| a.schedule.clone())
            else {
                continue;
            };
            // Validated at load; a failure here means a bug, reported rather than panicked.
            let schedule = match spec.parsed() {
                Ok(schedule) => schedule,
                Err(error) => {
                    tracing::error!(agent = plugin.name(), %error, "agent schedule is invalid");
                    continue;
                }
            };
            let name = plugin.name().to_string();
            let manager = self.clone();
            let task = tokio::spawn(async move {
                let history = manager.inner.history.clone();
                let agent = name.clone();
                let last_scheduled =
                    tokio::task::spawn_blocking(move || history.last_scheduled_start(&agent))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten();
                let plan = Plan {
                    schedule,
                    jitter: Duration::from_secs(spec.jitter_s),
                    missed: spec.missed,
                    last_scheduled,
                };
                tracing::info!(agent = %name, schedule = %plan.schedule, "agent schedule started");
                let fire_manager = manager.clone();
                let fire_name = name.clone();
                let planned_manager = manager.clone();
                let planned_name = name.clone();
                scheduler::drive(
                    plan,
                    LoopClock::start(),
                    move |trigger| {
                        let manager = fire_manager.clone();
                        let name = fire_name.clone();
                        let request = RunRequest {
                            task: spec.task.clone(),
                            input: spec.input_json(),
                            deadline: None,
                            trigger,
                            caller: None,
                        };
                        async move {
                            match manager.start_run(&name, request).await {
                                Ok(started) => {
                                    tracing::info!(agent = %name, run_id = started.id, trigger = trigger.as_str(), "scheduled run started");
                                }
                                Err(error) => {
                                    tracing::warn!(agent = %name, %error, "scheduled run skipped");
                                }
                            }
                        }
                    },
                    move |next| {
                        if let Some(state) = lock(&planned_manager.inner.agents).get_mut(&planned_name) {
                            state.next_fire = Some(next);
                        }
                    },
                )
                .await;
            });
            schedules.insert(
                plugin.name().to_string(),
                ScheduleTask {
                    generation: plugin.generation,
                    task,
                },
            );
        }
    }

    /// Reads the inventory counters of newly registered agents from the history.
    fn load_counters(&self) {
        let pending: Vec<String> = lock(&self.inner.agents)
            .iter()
            .filter(|(_, s)| s.counters.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        if pending.is_empty() {
            return;
        }
        let manager = self.clone();
        tokio::spawn(async move {
            for name in pending {
                let history = manager.inner.history.clone();
                let agent = name.clone();
                if let Ok(Ok(stats)) =
                    tokio::task::spawn_blocking(move || history.stats(&agent)).await
                {
                    manager.set_counters(&name, &stats);
                }
            }
        });
    }

    /// The history is the truth for the counters: they are replaced, never incremented, so a
    /// run counted before the first read is not counted twice.
    fn set_counters(&self, name: &str, stats: &RunStats) {
        if let Some(state) = lock(&self.inner.agents).get_mut(name) {
            state.counters = Some(Counters {
                runs: stats.runs,
                successes: stats.succeeded,
                last_run_ms: stats
                    .last_started_at
                    .and_then(|t| u64::try_from(t.timestamp_millis()).ok()),
            });
        }
    }

    fn agent(&self, name: &str) -> Result<Arc<Plugin>, AgentError> {
        match self.inner.runtime.get(name) {
            Some(plugin) if plugin.kind() == PluginKind::MetaAgent => Ok(plugin),
            Some(plugin) => Err(AgentError::NotAnAgent {
                agent: name.to_string(),
                kind: plugin.kind().world(),
            }),
            None => Err(AgentError::NotFound {
                agent: name.to_string(),
            }),
        }
    }

    /// The first loaded agent whose `describe()` lists `capability`.
    pub fn by_capability(
        &self,
        capability: &str,
        bundled: &'static str,
    ) -> Result<String, AgentError> {
        let mut agents = self.meta_agents();
        // The bundled agent wins a tie, so replacing it means removing it.
        agents.sort_by_key(|p| (p.name() != bundled, p.name().to_string()));
        agents
            .iter()
            .find(|p| match p.description() {
                Some(Description::Agent(info)) => info.capabilities.iter().any(|c| c == capability),
                _ => false,
            })
            .map(|p| p.name().to_string())
            .ok_or_else(|| AgentError::NoCapability {
                capability: capability.to_string(),
                bundled,
            })
    }

    /// Steps 1–2, then spawns steps 3–5. The run continues if the caller stops waiting.
    pub async fn start_run(
        &self,
        name: &str,
        request: RunRequest,
    ) -> Result<StartedRun, AgentError> {
        // Step 1: admit.
        let plugin = self.agent(name)?;
        let policy = Policy::of(plugin.manifest.agent.as_ref(), &self.inner.config);
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
                    run_id: Some(busy.id.load(Ordering::SeqCst)).filter(|id| *id > 0),
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
            let result = manager.execute(&name, id, &control, request, policy).await;
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

    /// Steps 3–5.
    async fn execute(
        &self,
        name: &str,
        id: i64,
        control: &RunControl,
        request: RunRequest,
        policy: Policy,
    ) -> RunResult {
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
        let (outcome, failure_note): (Result<_, Failure>, Option<String>) = loop {
            attempts += 1;
            generation = self
                .inner
                .runtime
                .get(name)
                .map(|p| p.generation)
                .or(generation);
            let task = Task {
                name: request.task.clone(),
                input: input.clone(),
            };
            // Step 3: attempt.
            let answer = tokio::select! {
                answer = self.inner.runtime.run_agent(name, task) => answer,
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
        // Step 5: finish.
        let finished_at = Utc::now();
        let mut finish = Finish {
            finished_at,
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
                finish.error = Some(match &failure_note {
                    Some(note) => format!("{message} ({note})"),
                    None => message,
                });
                Some(failure)
            }
        };
        let history = self.inner.history.clone();
        let stored = finish.clone();
        let agent = name.to_string();
        let persisted = tokio::task::spawn_blocking(move || {
            history.finish(id, &stored)?;
            Ok::<_, super::HistoryError>((history.get(id)?, history.stats(&agent)?))
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
                    fallback_record(id, name, &request, control.started_at, &finish),
                    false,
                )
            }
        };
        if id % 64 == 0 {
            let history = self.inner.history.clone();
            let (agent, keep) = (name.to_string(), self.inner.config.runs_kept);
            tokio::task::spawn_blocking(move || history.prune(&agent, keep));
        }
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

    /// A run's record, checking it belongs to `name`.
    pub async fn get_run(&self, name: &str, run_id: i64) -> Result<RunRecord, AgentError> {
        let history = self.inner.history.clone();
        let record = blocking(move || history.get(run_id)).await?;
        record
            .filter(|r| r.agent == name)
            .ok_or_else(|| AgentError::RunNotFound {
                agent: name.to_string(),
                run_id,
            })
    }

    /// Newest first.
    pub async fn runs(
        &self,
        name: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<RunRecord>, AgentError> {
        let history = self.inner.history.clone();
        let agent = name.to_string();
        blocking(move || history.runs(&agent, limit, before)).await
    }

    pub async fn stats(&self, name: &str) -> Result<RunStats, AgentError> {
        let history = self.inner.history.clone();
        let agent = name.to_string();
        blocking(move || history.stats(&agent)).await
    }

    /// Every loaded agent with its policy, schedule, health and stats.
    pub async fn list(&self) -> Result<Vec<AgentView>, AgentError> {
        let mut views = Vec::new();
        for plugin in self.meta_agents() {
            let stats = self.stats(plugin.name()).await?;
            views.push(self.view(&plugin, stats));
        }
        Ok(views)
    }

    fn view(&self, plugin: &Plugin, stats: RunStats) -> AgentView {
        let policy = Policy::of(plugin.manifest.agent.as_ref(), &self.inner.config);
        let agents = lock(&self.inner.agents);
        let state = agents.get(plugin.name());
        let capabilities = match plugin.description() {
            Some(Description::Agent(info)) => info.capabilities.clone(),
            _ => Vec::new(),
        };
        AgentView {
            name: plugin.name().to_string(),
            version: plugin.manifest.version.clone(),
            description: plugin.manifest.description.clone(),
            capabilities,
            generation: plugin.generation,
            overlap: policy.overlap,
            max_retries: policy.max_retries,
            retry_backoff_ms: u64::try_from(policy.backoff.as_millis()).unwrap_or(u64::MAX),
            schedule: schedule_view(plugin, state.and_then(|s| s.next_fire)),
            running: state
                .map(|s| {
                    s.running
                        .iter()
                        .map(|c| c.id.load(Ordering::SeqCst))
                        .collect()
                })
                .unwrap_or_default(),
            health: state.and_then(|s| s.health.latest().cloned()),
            stats,
        }
    }

    /// Calls `health()` on every agent once and records the samples.
    pub async fn check_all_health(&self) {
        for plugin in self.meta_agents() {
            // Recorded as a sample either way; the monitor needs nothing more.
            let _ = self.check_health(plugin.name()).await;
        }
    }

    /// Calls one agent's `health()` and records the sample.
    ///
    /// The call's own result is returned too, for callers that answer with it. A name that is
    /// not a loaded meta agent records nothing.
    pub async fn check_health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError> {
        let started = std::time::Instant::now();
        let answer = self.inner.runtime.agent_health(name).await;
        let sample = match &answer {
            Err(CallError::NotFound { .. } | CallError::WrongKind { .. }) => return answer,
            Ok(report) => HealthSample {
                at: Utc::now(),
                status: report.value.status.as_str(),
                detail: report.value.detail.clone(),
                latency_us: report.duration_us,
                error_code: None,
                generation: Some(report.generation),
            },
            Err(error) => HealthSample {
                at: Utc::now(),
                status: "unhealthy",
                detail: error.to_string(),
                latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                error_code: Some(error.code()),
                generation: self.inner.runtime.get(name).map(|p| p.generation),
            },
        };
        let changed = {
            let mut agents = lock(&self.inner.agents);
            let state = agents.entry(name.to_string()).or_default();
            state
                .health
                .push(sample.clone(), self.inner.config.health_history)
        };
        if let Some(previous) = changed {
            self.inner.events.publish(Event::new(
                EventKind::AgentHealthChanged,
                name,
                json!({
                    "from": previous,
                    "to": sample.status,
                    "detail": sample.detail,
                }),
            ));
        }
        answer
    }

    /// Every agent's health history, oldest sample first.
    pub fn health(&self) -> BTreeMap<String, Vec<HealthSample>> {
        lock(&self.inner.agents)
            .iter()
            .map(|(name, state)| (name.clone(), state.health.samples().cloned().collect()))
            .collect()
    }

    /// The agents part of the plugin inventory (from memory).
    pub fn inventory(&self) -> Vec<AgentSummary> {
        let plugins = self.meta_agents();
        let agents = lock(&self.inner.agents);
        plugins
            .iter()
            .map(|plugin| {
                let state = agents.get(plugin.name());
                let counters = state.and_then(|s| s.counters).unwrap_or_default();
                AgentSummary {
                    name: plugin.name().to_string(),
                    version: plugin.manifest.version.clone(),
                    schedule: schedule_view(plugin, None).map(|s| s.spec),
                    health: state.and_then(|s| s.health.latest().map(HealthSample::to_report)),
                    runs: counters.runs,
                    successes: counters.successes,
                    last_run_ms: counters.last_run_ms,
                }
            })
            .collect()
    }
}

fn schedule_view(plugin: &Plugin, next_at: Option<DateTime<Utc>>) -> Option<ScheduleView> {
    let spec = plugin.manifest.agent.as_ref()?.schedule.as_ref()?;
    Some(ScheduleView {
        spec: spec.parsed().map(|s| s.to_string()).unwrap_or_default(),
        task: spec.task.clone(),
        jitter_s: spec.jitter_s,
        missed: spec.missed,
        next_at,
    })
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
            .and_then(|o| serde_json::from_str(o).ok()),
        error_code: finish.error_code.clone(),
        error: finish.error.clone(),
        generation: finish.generation,
        attempts: finish.attempts,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, super::HistoryError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::StoreTask(e.to_string()))?
        .map_err(AgentError::Store)
}
