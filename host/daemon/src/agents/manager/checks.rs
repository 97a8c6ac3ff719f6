//! `health()` calls into the agents and the samples they leave (the monitor that calls them
//! periodically is [`crate::agents::health::monitor`]). A status change publishes
//! `agent.health_changed`.

use chrono::Utc;
use serde_json::json;

use super::AgentManager;
use crate::agents::health::HealthSample;
use evolve_core::events::{Event, EventKind};
use evolve_core::sync::lock;
use evolve_runtime::bindings::types::HealthReport;
use evolve_runtime::{CallError, CallReport};

impl AgentManager {
    /// Calls `health()` on every agent once and records the samples.
    pub async fn check_all_health(&self) {
        for agent in self.inner.runner.agents() {
            // Recorded as a sample either way; the monitor needs nothing more.
            let _ = self.check_health(&agent.name).await;
        }
    }

    /// Calls one agent's `health()` and records the sample.
    ///
    /// The call's own result is returned too, for callers that answer with it. A name that is
    /// not a loaded meta agent records nothing.
    pub async fn check_health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError> {
        let started = std::time::Instant::now();
        let answer = self.inner.runner.health(name).await;
        let sample = match &answer {
            Err(
                CallError::NotFound { .. }
                | CallError::Loading { .. }
                | CallError::WrongKind { .. },
            ) => return answer,
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
                generation: self.inner.runner.generation(name),
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
}
