//! The manager in-process: a scripted [`AgentRunner`], a temp-dir SQLite history and paused
//! time. Waits are on the runner's watch channels or on paused time, never on sleeps.
//!
//! | module | what it shows |
//! |---|---|
//! | `runs` | the run lifecycle: retries, deadlines, cancel, overlap, history and events |
//! | `upkeep` | health samples and registration following the runner |
//!
//! This file holds the scripted runner and the harness they share.

mod runs;
mod upkeep;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AgentManager, Failure, RunRequest, RunResult};
use crate::agents::runner::{AgentRunner, LoadedAgent, RunAnswer};
use crate::agents::{AgentError, AgentsConfig, RunHistory, RunOutcome, Trigger};
use evolve_core::events::{Event, EventBus, EventKind};
use evolve_core::sync::lock;
use evolve_runtime::bindings::types::{
    ErrorCode, HealthReport, HealthStatus, PluginError, Task, TaskOutcome,
};
use evolve_runtime::manifest::AgentSpec;
use evolve_runtime::{CallError, CallReport};

/// What one scripted attempt does. Delays are paused time.
#[derive(Debug, Clone)]
enum Attempt {
    Succeed {
        after: Duration,
    },
    /// The agent answers with its own error.
    Refuse {
        after: Duration,
        code: ErrorCode,
        retryable: bool,
    },
    /// The call itself fails (host side).
    Trap {
        after: Duration,
    },
    /// Never answers: only the run's deadline or a cancel ends it.
    Hang,
}

/// An attempt as the runner saw it start.
#[derive(Debug, Clone)]
struct StartedAttempt {
    at: Instant,
    task: String,
    input: String,
    generation: u64,
}

/// Counts attempts dropped before they answered: the deadline or a cancel stopped the guest.
struct DropWatch<'a> {
    dropped: &'a AtomicU32,
    answered: bool,
}

impl Drop for DropWatch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// An [`AgentRunner`] that answers from per-agent scripts and logs what it was asked.
struct ScriptedAgents {
    agents: Mutex<BTreeMap<String, LoadedAgent>>,
    /// Loaded plugins that are not meta agents, with their kind.
    others: BTreeMap<String, &'static str>,
    scripts: Mutex<BTreeMap<String, VecDeque<Attempt>>>,
    health: Mutex<VecDeque<Result<HealthStatus, CallError>>>,
    attempts: Mutex<Vec<StartedAttempt>>,
    /// Attempts started / answered so far, to wait on.
    started: watch::Sender<usize>,
    answered: watch::Sender<usize>,
    dropped: AtomicU32,
}

impl ScriptedAgents {
    fn new(agents: Vec<LoadedAgent>) -> ScriptedAgents {
        ScriptedAgents {
            agents: Mutex::new(agents.into_iter().map(|a| (a.name.clone(), a)).collect()),
            others: BTreeMap::from([("pinger".to_string(), "health-checker")]),
            scripts: Mutex::default(),
            health: Mutex::default(),
            attempts: Mutex::default(),
            started: watch::Sender::new(0),
            answered: watch::Sender::new(0),
            dropped: AtomicU32::new(0),
        }
    }

    fn script(&self, agent: &str, attempts: impl IntoIterator<Item = Attempt>) {
        lock(&self.scripts)
            .entry(agent.to_string())
            .or_default()
            .extend(attempts);
    }

    fn unused(&self, agent: &str) -> usize {
        lock(&self.scripts).get(agent).map_or(0, VecDeque::len)
    }

    fn attempts(&self) -> Vec<StartedAttempt> {
        lock(&self.attempts).clone()
    }

    fn dropped(&self) -> u32 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// A hot reload: the agent is served by its next generation.
    fn reload(&self, agent: &str) {
        if let Some(loaded) = lock(&self.agents).get_mut(agent) {
            loaded.generation += 1;
        }
    }

    fn unload(&self, agent: &str) {
        lock(&self.agents).remove(agent);
    }

    async fn wait_started(&self, count: usize) {
        let mut started = self.started.subscribe();
        started
            .wait_for(|n| *n >= count)
            .await
            .expect("runner alive");
    }

    async fn wait_answered(&self, count: usize) {
        let mut answered = self.answered.subscribe();
        answered
            .wait_for(|n| *n >= count)
            .await
            .expect("runner alive");
    }

    fn report<T>(&self, name: &str, generation: u64, value: T) -> CallReport<T> {
        CallReport {
            plugin: name.to_string(),
            generation,
            duration_us: 1_000,
            logs_dropped: 1,
            value,
        }
    }
}

#[async_trait::async_trait]
impl AgentRunner for ScriptedAgents {
    fn agents(&self) -> Vec<LoadedAgent> {
        lock(&self.agents).values().cloned().collect()
    }

    fn agent(&self, name: &str) -> Result<LoadedAgent, AgentError> {
        if let Some(kind) = self.others.get(name) {
            return Err(AgentError::NotAnAgent {
                agent: name.to_string(),
                kind,
            });
        }
        lock(&self.agents)
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::NotFound {
                agent: name.to_string(),
            })
    }

    fn generation(&self, name: &str) -> Option<u64> {
        lock(&self.agents).get(name).map(|a| a.generation)
    }

    async fn run(&self, name: &str, task: Task) -> RunAnswer {
        let Some(generation) = self.generation(name) else {
            return Err(CallError::NotFound {
                plugin: name.to_string(),
            });
        };
        let step = lock(&self.scripts)
            .get_mut(name)
            .and_then(VecDeque::pop_front);
        let Some(step) = step else {
            return Err(CallError::Trap {
                plugin: name.to_string(),
                message: "the test scripted no further attempt".into(),
            });
        };
        lock(&self.attempts).push(StartedAttempt {
            at: Instant::now(),
            task: task.name,
            input: task.input,
            generation,
        });
        self.started.send_modify(|n| *n += 1);
        let mut guard = DropWatch {
            dropped: &self.dropped,
            answered: false,
        };
        let answer = match step {
            Attempt::Succeed { after } => {
                tokio::time::sleep(after).await;
                Ok(self.report(
                    name,
                    generation,
                    Ok(TaskOutcome {
                        summary: format!("done by generation {generation}"),
                        output: json!({ "generation": generation }).to_string(),
                        artifacts: vec!["/data/report.md".into()],
                    }),
                ))
            }
            Attempt::Refuse {
                after,
                code,
                retryable,
            } => {
                tokio::time::sleep(after).await;
                Ok(self.report(
                    name,
                    generation,
                    Err(PluginError {
                        code,
                        message: format!("{} from generation {generation}", code.as_str()),
                        retryable,
                    }),
                ))
            }
            Attempt::Trap { after } => {
                tokio::time::sleep(after).await;
                Err(CallError::Trap {
                    plugin: name.to_string(),
                    message: "unreachable executed".into(),
                })
            }
            Attempt::Hang => std::future::pending().await,
        };
        guard.answered = true;
        self.answered.send_modify(|n| *n += 1);
        answer
    }

    async fn health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError> {
        let Some(generation) = self.generation(name) else {
            return Err(CallError::NotFound {
                plugin: name.to_string(),
            });
        };
        let next = lock(&self.health)
            .pop_front()
            .unwrap_or(Ok(HealthStatus::Healthy));
        next.map(|status| {
            self.report(
                name,
                generation,
                HealthReport {
                    status,
                    latency_us: 10,
                    detail: format!("{} at generation {generation}", status.as_str()),
                    checked_at_ms: 0,
                },
            )
        })
    }
}

fn agent(name: &str, overlap: bool) -> LoadedAgent {
    LoadedAgent {
        name: name.to_string(),
        version: "1.0.0".into(),
        description: format!("{name} agent"),
        generation: 1,
        spec: Some(AgentSpec {
            overlap,
            max_retries: None,
            retry_backoff_ms: None,
            schedule: None,
        }),
        capabilities: vec!["docs".into()],
    }
}

/// A manager over a scripted runner with agents `doc` (no overlap) and `fleet` (overlap).
struct Harness {
    manager: AgentManager,
    runner: Arc<ScriptedAgents>,
    history: RunHistory,
    events: EventBus,
    _dir: tempfile::TempDir,
}

fn harness(config: AgentsConfig) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let (history, _) = RunHistory::open(&dir.path().join("agents.db")).expect("open history");
    let runner = Arc::new(ScriptedAgents::new(vec![
        agent("doc", false),
        agent("fleet", true),
    ]));
    let events = EventBus::new();
    let manager = AgentManager::with_runner(
        Arc::clone(&runner) as Arc<dyn AgentRunner>,
        events.clone(),
        history.clone(),
        config,
    );
    Harness {
        manager,
        runner,
        history,
        events,
        _dir: dir,
    }
}

/// Retries with a 1 s base backoff and a 60 s run deadline; no schedules.
fn config() -> AgentsConfig {
    AgentsConfig {
        max_retries: 2,
        retry_backoff_ms: 1_000,
        run_deadline_s: 60,
        schedules: false,
        ..AgentsConfig::default()
    }
}

fn request(deadline: Option<Duration>) -> RunRequest {
    RunRequest {
        task: "generate".into(),
        input: json!({ "topic": "rollback" }),
        deadline,
        trigger: Trigger::Api,
        caller: Some("ops".into()),
    }
}

fn run_finished(events: &EventBus) -> Vec<Event> {
    events
        .recent()
        .into_iter()
        .filter(|e| e.kind == EventKind::AgentRunFinished)
        .collect()
}

/// Paused time moves to timers in whole ticks of the timer wheel.
const TICK: Duration = Duration::from_millis(1);

/// `elapsed` is `expected`, to the timer tick.
#[track_caller]
fn assert_elapsed(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed <= expected + TICK,
        "elapsed {elapsed:?}, expected {expected:?}"
    );
}

fn error_code(result: &RunResult) -> Option<&str> {
    result.record.error_code.as_deref()
}

const SHORT: Duration = Duration::from_millis(100);
