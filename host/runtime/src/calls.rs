//! Served calls by plugin name: each typed entry point (run, health, check, describe) goes
//! through supervision, and a quarantine a call starts gets its canary loop.

use std::sync::Arc;
use std::time::Duration;

use evolve_core::events::{Event, EventKind};

use crate::Runtime;
use crate::bindings::types::{HealthReport, PluginError, Service, Task, TaskOutcome};
use crate::error::CallError;
use crate::manifest::PluginKind;
use crate::plugin::{Answer, Call, CallReport, Description, Plugin};
use crate::supervision::QuarantineStart;

impl Runtime {
    /// Why nothing serves under `name`: still loading, or no such plugin.
    fn not_serving(&self, name: &str) -> CallError {
        match self.loading_since(name) {
            Some(since) => CallError::Loading {
                plugin: name.to_string(),
                since,
            },
            None => CallError::NotFound {
                plugin: name.to_string(),
            },
        }
    }

    fn get_kind(&self, name: &str, kind: PluginKind) -> Result<Arc<Plugin>, CallError> {
        let plugin = self.get(name).ok_or_else(|| self.not_serving(name))?;
        if plugin.kind() != kind {
            return Err(CallError::WrongKind {
                plugin: name.to_string(),
                expected: kind.world(),
                actual: plugin.kind().world(),
            });
        }
        Ok(plugin)
    }

    /// Every served call: invoke under supervision; a quarantine it starts gets its canary
    /// scheduled.
    async fn call(
        &self,
        plugin: &Arc<Plugin>,
        call: Call,
    ) -> Result<CallReport<Answer>, CallError> {
        let result = plugin
            .invoke(&self.shared.capacity, call, &self.shared.config.supervision)
            .await;
        if let Some(start) = plugin.supervision.take_started() {
            self.supervise(Arc::clone(plugin), start);
        }
        result
    }

    /// Publishes a quarantine and runs its canary loop until released or replaced.
    fn supervise(&self, plugin: Arc<Plugin>, start: QuarantineStart) {
        let events = self.shared.events.clone();
        let publish_quarantine =
            move |plugin: &Plugin, backoff: Duration, strikes: u32, reason: &str| {
                events.publish(Event::new(
                    EventKind::PluginQuarantined,
                    plugin.name(),
                    serde_json::json!({
                        "generation": plugin.generation,
                        "sha256": plugin.sha256,
                        "backoff_ms": backoff.as_millis() as u64,
                        "strikes": strikes,
                        "reason": reason,
                    }),
                ));
            };
        publish_quarantine(&plugin, start.backoff, start.strikes, &start.reason);
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut backoff = start.backoff;
            loop {
                tokio::time::sleep(backoff).await;
                let serving = runtime
                    .get(plugin.name())
                    .is_some_and(|current| Arc::ptr_eq(&current, &plugin));
                if !serving {
                    return;
                }
                match runtime.canary(&plugin, true).await {
                    Ok(()) => {
                        plugin.supervision.release();
                        runtime.shared.events.publish(Event::new(
                            EventKind::PluginReleased,
                            plugin.name(),
                            serde_json::json!({ "generation": plugin.generation }),
                        ));
                        return;
                    }
                    Err(error) => {
                        let reason = format!("canary failed: {error}");
                        let (next, strikes) = plugin
                            .supervision
                            .extend(&runtime.shared.config.supervision, reason.clone());
                        publish_quarantine(&plugin, next, strikes, &reason);
                        backoff = next;
                    }
                }
            }
        });
    }

    /// Runs one task on a meta agent.
    pub async fn run_agent(
        &self,
        name: &str,
        task: Task,
    ) -> Result<CallReport<Result<TaskOutcome, PluginError>>, CallError> {
        let plugin = self.get_kind(name, PluginKind::MetaAgent)?;
        let report = self.call(&plugin, Call::Run(task)).await?;
        map_report(report, |answer| match answer {
            Answer::Ran(result) => Some(result),
            _ => None,
        })
    }

    /// Asks a meta agent for its health.
    pub async fn agent_health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError> {
        let plugin = self.get_kind(name, PluginKind::MetaAgent)?;
        let report = self.call(&plugin, Call::Health).await?;
        map_report(report, |answer| match answer {
            Answer::Health(report) => Some(report),
            _ => None,
        })
    }

    /// Checks one service instance with a health checker.
    pub async fn check_service(
        &self,
        name: &str,
        target: Service,
    ) -> Result<CallReport<Result<HealthReport, PluginError>>, CallError> {
        let plugin = self.get_kind(name, PluginKind::HealthChecker)?;
        let report = self.call(&plugin, Call::Check(target)).await?;
        map_report(report, |answer| match answer {
            Answer::Checked(result) => Some(result),
            _ => None,
        })
    }

    /// Calls `describe()` on a fresh instance.
    pub async fn describe(&self, name: &str) -> Result<CallReport<Description>, CallError> {
        let plugin = self.get(name).ok_or_else(|| self.not_serving(name))?;
        let report = self.call(&plugin, Call::Describe).await?;
        map_report(report, |answer| match answer {
            Answer::Described { description, .. } => Some(description),
            _ => None,
        })
    }
}

/// Narrows a report's answer to the variant its call produces. `dispatch` answers each call with
/// its own variant, so the fallback arm is unreachable in practice; it is still an error, not a
/// panic.
fn map_report<T>(
    report: CallReport<Answer>,
    pick: impl FnOnce(Answer) -> Option<T>,
) -> Result<CallReport<T>, CallError> {
    let value = pick(report.value).ok_or_else(|| CallError::Trap {
        plugin: report.plugin.clone(),
        message: "the plugin answered a different call than was made".into(),
    })?;
    Ok(CallReport {
        plugin: report.plugin,
        generation: report.generation,
        duration_us: report.duration_us,
        logs_dropped: report.logs_dropped,
        value,
    })
}
