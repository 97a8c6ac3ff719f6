//! The meta-agent manager: which agents exist, how they are, and running them.
//!
//! | module | concern |
//! |---|---|
//! | [`manager`] | registration from the runner, coordinated runs (no overlap, retries, deadlines, cancellation), the views |
//! | [`runner`] | the seam to the plugin runtime: [`AgentRunner`], and the daemon's over the runtime |
//! | [`health`] | periodic `health()` of every agent, with a status history |
//! | [`scheduler`] | runs agents on their manifest schedules, with jitter and the missed-run policy |
//! | [`history`] | the persisted run history and per-agent stats |
//!
//! `every` / cron parsing and next-fire arithmetic are the runtime's
//! ([`evolve_runtime::schedule`]), which validates a schedule when it loads the manifest.
//!
//! Data flows API/CLI → [`AgentManager`] → [`AgentRunner`] → runtime → plugin. The manager owns
//! no plugin: it asks the runner by name on every run, so a hot reload between runs is picked
//! up and each run records the generation that served it.

pub mod health;
pub mod history;
pub mod manager;
pub mod runner;
pub mod scheduler;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::history::{HistoryError, RunHistory, RunOutcome, RunRecord, RunStats, Trigger};
pub use self::manager::{AgentManager, AgentView, RunRequest, StartedRun};
pub use self::runner::{AgentRunner, LoadedAgent, RuntimeAgents};

/// `[agents]` in the daemon config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Run history database; default `<data_dir>/agents.db`.
    pub db: Option<PathBuf>,
    /// Seconds between `health()` calls to every agent.
    pub health_interval_s: u64,
    /// Health samples kept per agent.
    pub health_history: usize,
    /// Runs kept per agent in the history; older ones are pruned.
    pub runs_kept: u32,
    /// Extra attempts after a retryable failure, when the manifest's `[agent]` is silent.
    pub max_retries: u32,
    /// Base backoff between attempts when the manifest is silent, ms (doubles per attempt,
    /// jittered).
    pub retry_backoff_ms: u64,
    /// Longest a run may take across all its attempts and backoffs, s. A request's
    /// `deadline_ms` may only shorten it.
    pub run_deadline_s: u64,
    /// Whether manifest schedules run. Off, agents run only when asked.
    pub schedules: bool,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            db: None,
            health_interval_s: 30,
            health_history: 32,
            runs_kept: 1_000,
            max_retries: 2,
            retry_backoff_ms: 500,
            run_deadline_s: 600,
            schedules: true,
        }
    }
}

impl AgentsConfig {
    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid =
            |key: &str, message: &str| Err((format!("agents.{key}"), message.to_string()));
        if self.health_interval_s == 0 || self.health_interval_s > 86_400 {
            return invalid("health_interval_s", "must be between 1 and 86400");
        }
        if self.health_history == 0 || self.health_history > 10_000 {
            return invalid("health_history", "must be between 1 and 10000");
        }
        if self.runs_kept == 0 || self.runs_kept > 1_000_000 {
            return invalid("runs_kept", "must be between 1 and 1000000");
        }
        if self.max_retries > evolve_runtime::manifest::MAX_AGENT_RETRIES {
            return invalid("max_retries", "must be at most 10");
        }
        if self.retry_backoff_ms > evolve_runtime::manifest::MAX_RETRY_BACKOFF_MS {
            return invalid("retry_backoff_ms", "must be at most 60000");
        }
        if self.run_deadline_s == 0 || self.run_deadline_s > 86_400 {
            return invalid("run_deadline_s", "must be between 1 and 86400");
        }
        Ok(())
    }
}

/// Why the manager refused or could not do something. Each maps to one API status.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no meta agent named '{agent}' is loaded; see GET /v1/agents")]
    NotFound { agent: String },
    #[error(
        "agent '{agent}' is still loading (its first load began at {since}); retry once it serves: GET /v1/health lists the plugins still loading"
    )]
    Loading {
        agent: String,
        since: chrono::DateTime<chrono::Utc>,
    },
    #[error("plugin '{agent}' is a {kind}, not a meta-agent")]
    NotAnAgent { agent: String, kind: &'static str },
    #[error(
        "agent '{agent}' is already running (run {}, started {started_at}); wait for it, cancel it (POST /v1/agents/{agent}/runs/<id>/cancel), or set [agent] overlap = true in its plugin.toml",
        run_id.map_or_else(|| "being recorded".to_string(), |id| id.to_string())
    )]
    AlreadyRunning {
        agent: String,
        /// `None` while the run in progress is still being recorded.
        run_id: Option<i64>,
        started_at: chrono::DateTime<chrono::Utc>,
    },
    #[error("agent '{agent}' has no run {run_id}")]
    RunNotFound { agent: String, run_id: i64 },
    #[error("run {run_id} of agent '{agent}' already finished ({outcome})")]
    RunFinished {
        agent: String,
        run_id: i64,
        outcome: &'static str,
    },
    #[error(
        "no loaded meta agent offers the capability '{capability}'; install one (the bundled {bundled} does)"
    )]
    NoCapability {
        capability: String,
        bundled: &'static str,
    },
    #[error(transparent)]
    Store(#[from] HistoryError),
    #[error("the run history store is unavailable: {0}")]
    StoreTask(String),
}
