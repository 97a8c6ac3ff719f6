//! The agent manager: registration, coordinated runs, and the views the API shows.
//!
//! | module | concern |
//! |---|---|
//! | `run` | the run state machine: admit → record → attempt → retry → finish, and cancel |
//! | `policy` | an agent's effective run policy (overlap, retries, backoff) |
//! | `registration` | per-agent state, inventory counters and schedule loops following the runner |
//! | `checks` | `health()` calls and the samples they leave |
//! | `views` | what the API and the inventory read: agents, runs, stats, health |
//!
//! This file holds the state they share. The manager reaches plugins only through an
//! [`AgentRunner`] (the daemon's is [`RuntimeAgents`]), asking by name on every run, so a hot
//! reload between runs is picked up and each run records the generation that served it.

mod checks;
mod policy;
mod registration;
mod run;
#[cfg(test)]
mod tests;
mod views;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use self::run::RunControl;
pub use self::run::{Failure, RunRequest, RunResult, StartedRun};
pub use self::views::{AgentView, ScheduleView};
use super::AgentsConfig;
use super::health::HealthLog;
use super::history::RunHistory;
use super::runner::{AgentRunner, RuntimeAgents};
use evolve_core::events::EventBus;
use evolve_runtime::Runtime;

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
    runner: Arc<dyn AgentRunner>,
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

impl AgentManager {
    /// Builds the manager over the runtime and an opened history. Call
    /// [`AgentManager::start`] to begin health monitoring, schedules and registration
    /// tracking.
    pub fn new(
        runtime: Runtime,
        events: EventBus,
        history: RunHistory,
        config: AgentsConfig,
    ) -> AgentManager {
        AgentManager::with_runner(
            Arc::new(RuntimeAgents::new(runtime)),
            events,
            history,
            config,
        )
    }

    /// Builds the manager over any [`AgentRunner`] (tests script one).
    pub fn with_runner(
        runner: Arc<dyn AgentRunner>,
        events: EventBus,
        history: RunHistory,
        config: AgentsConfig,
    ) -> AgentManager {
        AgentManager {
            inner: Arc::new(Inner {
                runner,
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
                    // Missed events: resync from the runner's state, which is the truth.
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
}
