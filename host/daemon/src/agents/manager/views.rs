//! What the API and the plugins' inventory read of the agents: the agent list with policy,
//! schedule, health and stats; runs and stats from the history; the inventory from memory (it
//! is answered inside a plugin call, so it must not wait on SQLite).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AgentManager;
use super::policy::Policy;
use crate::agents::AgentError;
use crate::agents::health::HealthSample;
use crate::agents::history::{HistoryError, RunRecord, RunStats};
use crate::agents::runner::LoadedAgent;
use evolve_core::sync::lock;
use evolve_runtime::bindings::inventory::AgentSummary;
use evolve_runtime::manifest::MissedRuns;

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

impl AgentManager {
    /// The first loaded agent whose `describe()` lists `capability`.
    pub fn by_capability(
        &self,
        capability: &str,
        bundled: &'static str,
    ) -> Result<String, AgentError> {
        let mut agents = self.inner.runner.agents();
        // The bundled agent wins a tie, so replacing it means removing it.
        agents.sort_by_key(|a| (a.name != bundled, a.name.clone()));
        agents
            .iter()
            .find(|a| a.capabilities.iter().any(|c| c == capability))
            .map(|a| a.name.clone())
            .ok_or_else(|| AgentError::NoCapability {
                capability: capability.to_string(),
                bundled,
            })
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
        for agent in self.inner.runner.agents() {
            let stats = self.stats(&agent.name).await?;
            views.push(self.view(agent, stats));
        }
        Ok(views)
    }

    fn view(&self, agent: LoadedAgent, stats: RunStats) -> AgentView {
        let policy = Policy::of(agent.spec.as_ref(), &self.inner.config);
        let agents = lock(&self.inner.agents);
        let state = agents.get(&agent.name);
        AgentView {
            schedule: schedule_view(&agent, state.and_then(|s| s.next_fire)),
            running: state
                .map(|s| {
                    s.running
                        .iter()
                        .map(|c| c.id.load(Ordering::SeqCst))
                        .collect()
                })
                .unwrap_or_default(),
            health: state.and_then(|s| s.health.latest().cloned()),
            name: agent.name,
            version: agent.version,
            description: agent.description,
            capabilities: agent.capabilities,
            generation: agent.generation,
            overlap: policy.overlap,
            max_retries: policy.max_retries,
            retry_backoff_ms: u64::try_from(policy.backoff.as_millis()).unwrap_or(u64::MAX),
            stats,
        }
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
        let loaded = self.inner.runner.agents();
        let agents = lock(&self.inner.agents);
        loaded
            .iter()
            .map(|agent| {
                let state = agents.get(&agent.name);
                let counters = state.and_then(|s| s.counters).unwrap_or_default();
                AgentSummary {
                    name: agent.name.clone(),
                    version: agent.version.clone(),
                    schedule: schedule_view(agent, None).map(|s| s.spec),
                    health: state.and_then(|s| s.health.latest().map(HealthSample::to_report)),
                    runs: counters.runs,
                    successes: counters.successes,
                    last_run_ms: counters.last_run_ms,
                }
            })
            .collect()
    }
}

fn schedule_view(agent: &LoadedAgent, next_at: Option<DateTime<Utc>>) -> Option<ScheduleView> {
    let spec = agent.spec.as_ref()?.schedule.as_ref()?;
    Some(ScheduleView {
        spec: spec.parsed().map(|s| s.to_string()).unwrap_or_default(),
        task: spec.task.clone(),
        jitter_s: spec.jitter_s,
        missed: spec.missed,
        next_at,
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::StoreTask(e.to_string()))?
        .map_err(AgentError::Store)
}
