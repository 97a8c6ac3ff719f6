//! Registration: the manager's per-agent state, inventory counters and schedule loops follow
//! what the runner has loaded. [`AgentManager::sync`] runs at start, on every `plugin.*`
//! event, and after a lagged event stream; the runner's state is the truth each time.
//!
//! A schedule loop belongs to one plugin generation: a reload replaces it (the new manifest may
//! have changed the schedule), an unload stops it.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::run::RunRequest;
use super::{AgentManager, Counters, ScheduleTask};
use crate::agents::history::RunStats;
use crate::agents::runner::LoadedAgent;
use crate::agents::scheduler::{self, LoopClock, Plan};
use evolve_core::sync::lock;
use evolve_runtime::manifest::ScheduleSpec;
use evolve_runtime::schedule::Schedule;

impl AgentManager {
    /// Brings registrations and schedule loops in line with the loaded agents.
    pub fn sync(&self) {
        let loaded = self.inner.runner.agents();
        {
            let mut agents = lock(&self.inner.agents);
            for agent in &loaded {
                agents.entry(agent.name.clone()).or_default();
            }
            // Keep state of agents with runs still finishing; forget the rest.
            agents.retain(|name, state| {
                !state.running.is_empty() || loaded.iter().any(|a| &a.name == name)
            });
        }
        self.load_counters();
        let mut schedules = lock(&self.inner.schedules);
        schedules.retain(|name, task| {
            let keep = loaded
                .iter()
                .any(|a| &a.name == name && a.generation == task.generation);
            if !keep {
                task.task.abort();
            }
            keep
        });
        if !self.inner.config.schedules {
            return;
        }
        for agent in loaded {
            if schedules.contains_key(&agent.name) {
                continue;
            }
            let Some(spec) = agent.spec.as_ref().and_then(|a| a.schedule.clone()) else {
                continue;
            };
            // Validated at load; a failure here means a bug, reported rather than panicked.
            let schedule = match spec.parsed() {
                Ok(schedule) => schedule,
                Err(error) => {
                    tracing::error!(agent = %agent.name, %error, "agent schedule is invalid");
                    continue;
                }
            };
            let task = self.spawn_schedule(&agent, spec, schedule);
            schedules.insert(
                agent.name,
                ScheduleTask {
                    generation: agent.generation,
                    task,
                },
            );
        }
    }

    /// Starts the schedule loop of one agent generation.
    fn spawn_schedule(
        &self,
        agent: &LoadedAgent,
        spec: ScheduleSpec,
        schedule: Schedule,
    ) -> JoinHandle<()> {
        let name = agent.name.clone();
        let manager = self.clone();
        tokio::spawn(async move {
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
                    if let Some(state) = lock(&planned_manager.inner.agents).get_mut(&planned_name)
                    {
                        state.next_fire = Some(next);
                    }
                },
            )
            .await;
        })
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
    pub(super) fn set_counters(&self, name: &str, stats: &RunStats) {
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
}
