//! The hysteresis of active health, per instance (state in [`ActiveHealth`]):
//! 1. **unknown** (just registered or daemon just started): routable; the first verdict decides
//!    at once (→ 2 or 3), so a restart neither blacks out a service nor trusts a dead one for
//!    long.
//! 2. **healthy**: `unhealthy_threshold` failing checks in a row → 3.
//! 3. **unhealthy**: not routable (unless the service is in panic); `healthy_threshold` passing
//!    checks in a row → 2, through slow start.
//!
//! Also the plain records a check produces and the views read ([`CheckReport`], [`LastCheck`],
//! [`InstanceRecord`]). Which verdicts pass and which move no state at all is the check loop's
//! to decide ([`super::check`]); this module only counts them.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::HealthCheckSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// One instance as a health checker (and the plugins' inventory) sees it: the fields of the WIT
/// `service` record, which the daemon converts to and from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub name: String,
    pub service_type: String,
    pub endpoint: String,
    pub capabilities: Vec<String>,
    /// Relative share of traffic, 0 (drained) to 1000.
    pub weight: u32,
    pub metadata: Vec<(String, String)>,
}

/// A checker's verdict on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    Healthy,
    Degraded,
    Unhealthy,
}

impl CheckVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckVerdict::Healthy => "healthy",
            CheckVerdict::Degraded => "degraded",
            CheckVerdict::Unhealthy => "unhealthy",
        }
    }
}

/// What a checker reported about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub status: CheckVerdict,
    /// How long the check took, µs.
    pub latency_us: u64,
    pub detail: String,
    /// When the check completed, ms since the Unix epoch.
    pub checked_at_ms: u64,
}

/// The most recent check of an instance.
#[derive(Debug, Clone, Serialize)]
pub struct LastCheck {
    /// `healthy`, `degraded`, `unhealthy`, or `error` (the check could not be made).
    pub result: &'static str,
    pub detail: String,
    pub latency_us: u64,
    pub at: DateTime<Utc>,
    /// The checker's report, for the inventory import.
    #[serde(skip)]
    pub report: Option<CheckReport>,
}

/// Hysteresis state of one instance; see the module docs.
#[derive(Debug, Clone)]
pub struct ActiveHealth {
    pub state: HealthState,
    passes: u32,
    failures: u32,
    pub last: Option<LastCheck>,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            state: HealthState::Unknown,
            passes: 0,
            failures: 0,
            last: None,
        }
    }
}

impl ActiveHealth {
    /// Records one verdict; returns `(from, to)` when the state changed.
    pub fn record(
        &mut self,
        passed: bool,
        spec: &HealthCheckSpec,
    ) -> Option<(HealthState, HealthState)> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        let from = self.state;
        let to = match (from, passed) {
            // Step 1 → 2 / 3.
            (HealthState::Unknown, true) => HealthState::Healthy,
            (HealthState::Unknown, false) => HealthState::Unhealthy,
            // Step 2 → 3.
            (HealthState::Healthy, false) if self.failures >= spec.unhealthy_threshold => {
                HealthState::Unhealthy
            }
            // Step 3 → 2.
            (HealthState::Unhealthy, true) if self.passes >= spec.healthy_threshold => {
                HealthState::Healthy
            }
            (state, _) => state,
        };
        self.state = to;
        (from != to).then_some((from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_give_hysteresis() {
        let spec = HealthCheckSpec {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheckSpec::default()
        };
        let mut health = ActiveHealth::default();
        assert_eq!(
            health.record(true, &spec),
            Some((HealthState::Unknown, HealthState::Healthy))
        );
        assert_eq!(health.record(false, &spec), None);
        assert_eq!(health.record(false, &spec), None);
        assert_eq!(health.record(true, &spec), None);
        assert_eq!(health.record(false, &spec), None);
        assert_eq!(health.record(false, &spec), None);
        assert_eq!(
            health.record(false, &spec),
            Some((HealthState::Healthy, HealthState::Unhealthy))
        );
        assert_eq!(health.record(true, &spec), None);
        assert_eq!(
            health.record(true, &spec),
            Some((HealthState::Unhealthy, HealthState::Healthy))
        );
    }
}
