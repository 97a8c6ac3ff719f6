//! Periodic `health()` of every agent, kept as a bounded history per agent.
//!
//! A failed health call (trap, deadline, quarantine) is itself an `unhealthy` sample whose
//! detail is the call's error: an agent that cannot answer is not healthy. Status changes
//! publish `agent.health_changed`.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use evolve_runtime::bindings::types::{HealthReport, HealthStatus};

/// One health observation.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSample {
    pub at: DateTime<Utc>,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: &'static str,
    pub detail: String,
    pub latency_us: u64,
    /// The call error's code when the agent could not answer.
    pub error_code: Option<&'static str>,
    /// Generation of the plugin that answered.
    pub generation: Option<u64>,
}

impl HealthSample {
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy.as_str()
    }

    /// The WIT form, for the inventory.
    pub fn to_report(&self) -> HealthReport {
        let status = match self.status {
            "healthy" => HealthStatus::Healthy,
            "degraded" => HealthStatus::Degraded,
            _ => HealthStatus::Unhealthy,
        };
        HealthReport {
            status,
            latency_us: self.latency_us,
            detail: self.detail.clone(),
            checked_at_ms: u64::try_from(self.at.timestamp_millis()).unwrap_or(0),
        }
    }
}

/// A bounded ring of samples, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HealthLog {
    samples: VecDeque<HealthSample>,
}

impl HealthLog {
    /// Appends a sample, dropping the oldest beyond `keep`; returns the previous status when
    /// this one differs from it.
    pub fn push(&mut self, sample: HealthSample, keep: usize) -> Option<Option<&'static str>> {
        let previous = self.samples.back().map(|s| s.status);
        let changed = previous != Some(sample.status);
        self.samples.push_back(sample);
        while self.samples.len() > keep.max(1) {
            self.samples.pop_front();
        }
        changed.then_some(previous)
    }

    pub fn latest(&self) -> Option<&HealthSample> {
        self.samples.back()
    }

    pub fn samples(&self) -> impl Iterator<Item = &HealthSample> {
        self.samples.iter()
    }
}

/// Checks every agent each `interval`, forever. The first round is one interval after start:
/// every agent just passed its load canary.
pub async fn monitor(manager: super::AgentManager, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        manager.check_all_health().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(status: &'static str) -> HealthSample {
        HealthSample {
            at: Utc::now(),
            status,
            detail: String::new(),
            latency_us: 1,
            error_code: None,
            generation: Some(1),
        }
    }

    #[test]
    fn the_log_is_bounded_and_reports_changes_only() {
        let mut log = HealthLog::default();
        assert_eq!(log.push(sample("healthy"), 3), Some(None));
        assert_eq!(log.push(sample("healthy"), 3), None);
        assert_eq!(log.push(sample("unhealthy"), 3), Some(Some("healthy")));
        log.push(sample("unhealthy"), 3);
        log.push(sample("healthy"), 3);
        assert_eq!(log.samples().count(), 3);
        let statuses: Vec<_> = log.samples().map(|s| s.status).collect();
        assert_eq!(statuses, ["unhealthy", "unhealthy", "healthy"]);
        assert!(log.latest().is_some_and(HealthSample::is_healthy));
    }
}
