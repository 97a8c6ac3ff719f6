//! Supervision of one generation: a plugin that keeps failing is quarantined (calls refused with
//! 503 at once, instead of each burning an instance and a deadline), with exponential backoff,
//! and released only by a successful canary.
//!
//! State machine per generation:
//! 1. **serving**: each plugin fault (trap, deadline, memory, output, permission) adds to a
//!    consecutive count; any success clears the count and the strikes.
//! 2. **quarantined**: the count reached `quarantine_after_failures`; strikes + 1, calls refused
//!    for `base × 2^(strikes-1)` (capped at `quarantine_max_ms`).
//! 3. **canary**: when the backoff ends, the host calls `describe()` (and `health()` for a
//!    meta agent) on a fresh instance: success → 1 (strikes kept, so a relapse backs off
//!    longer); failure → 2 with one more strike.
//!
//! Only a plugin's own faults count; overload and its own returned errors do not.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use evolve_core::backoff::{Backoff, Jitter};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::error::CallError;

/// `[runtime]` supervision keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Consecutive faults that quarantine a generation (0 = never quarantine).
    pub quarantine_after_failures: u32,
    /// First quarantine, ms; doubles with each strike.
    pub quarantine_base_ms: u64,
    /// Longest quarantine, ms.
    pub quarantine_max_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            quarantine_after_failures: 5,
            quarantine_base_ms: 1_000,
            quarantine_max_ms: 300_000,
        }
    }
}

impl SupervisionConfig {
    /// The quarantine after strike `strikes`: not jittered, since the operator is shown it.
    fn backoff(&self, strikes: u32) -> Duration {
        Backoff {
            base: Duration::from_millis(self.quarantine_base_ms),
            max: Duration::from_millis(self.quarantine_max_ms),
            jitter: Jitter::None,
        }
        .delay(strikes)
    }
}

/// A quarantine that just started.
#[derive(Debug, Clone)]
pub struct QuarantineStart {
    pub backoff: Duration,
    pub strikes: u32,
    pub reason: String,
}

/// What the API shows.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisionView {
    pub quarantined: bool,
    /// Remaining quarantine, ms.
    pub quarantine_remaining_ms: Option<u64>,
    pub strikes: u32,
    pub consecutive_failures: u32,
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    strikes: u32,
    until: Option<Instant>,
    reason: Option<String>,
    /// A quarantine started by a call, for the runtime to schedule its canary.
    started: Option<QuarantineStart>,
}

/// Per-generation supervision state.
#[derive(Debug, Default)]
pub struct Supervision {
    state: Mutex<State>,
    /// Notified on every counted fault (the reload watch window listens).
    pub fault: Notify,
}

/// Whether an error is the plugin's own fault.
pub fn is_fault(error: &CallError) -> bool {
    matches!(
        error,
        CallError::Trap { .. }
            | CallError::Exited { .. }
            | CallError::ProbeQuota { .. }
            | CallError::TooManyResources { .. }
            | CallError::DeadlineExceeded { .. }
            | CallError::MemoryLimit { .. }
            | CallError::OutputTooLarge { .. }
            | CallError::TooManyEntries { .. }
            | CallError::InvalidOutput { .. }
            | CallError::PermissionDenied { .. }
            | CallError::Instantiate { .. }
    )
}

impl Supervision {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        evolve_core::sync::lock(&self.state)
    }

    /// `Err((remaining, reason))` while quarantined.
    pub fn admit(&self) -> Result<(), (Duration, String)> {
        let state = self.lock();
        match state.until {
            Some(until) => {
                let remaining = until.saturating_duration_since(Instant::now());
                Err((remaining, state.reason.clone().unwrap_or_default()))
            }
            None => Ok(()),
        }
    }

    /// Records a served call's outcome.
    pub fn record(&self, outcome: Result<(), &CallError>, config: &SupervisionConfig) {
        let mut state = self.lock();
        match outcome {
            Ok(()) => {
                state.consecutive = 0;
                state.strikes = 0;
            }
            Err(error) if is_fault(error) => {
                state.consecutive += 1;
                let threshold = config.quarantine_after_failures;
                if threshold > 0 && state.consecutive >= threshold && state.until.is_none() {
                    state.strikes += 1;
                    let backoff = config.backoff(state.strikes);
                    let reason =
                        format!("{} consecutive failures, last: {error}", state.consecutive);
                    state.until = Some(Instant::now() + backoff);
                    state.reason = Some(reason.clone());
                    state.started = Some(QuarantineStart {
                        backoff,
                        strikes: state.strikes,
                        reason,
                    });
                }
                drop(state);
                self.fault.notify_waiters();
            }
            Err(_) => {}
        }
    }

    /// Takes a quarantine a call just started, if any (once).
    pub fn take_started(&self) -> Option<QuarantineStart> {
        self.lock().started.take()
    }

    /// The canary passed: serve again.
    pub fn release(&self) {
        let mut state = self.lock();
        state.until = None;
        state.consecutive = 0;
        state.reason = None;
    }

    /// The canary failed: one more strike, a longer quarantine; returns its length.
    pub fn extend(&self, config: &SupervisionConfig, reason: String) -> (Duration, u32) {
        let mut state = self.lock();
        state.strikes += 1;
        let backoff = config.backoff(state.strikes);
        state.until = Some(Instant::now() + backoff);
        state.reason = Some(reason);
        (backoff, state.strikes)
    }

    pub fn view(&self) -> SupervisionView {
        let state = self.lock();
        SupervisionView {
            quarantined: state.until.is_some(),
            quarantine_remaining_ms: state
                .until
                .map(|u| u.saturating_duration_since(Instant::now()).as_millis() as u64),
            strikes: state.strikes,
            consecutive_failures: state.consecutive,
            reason: state.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap() -> CallError {
        CallError::Trap {
            plugin: "p".into(),
            message: "boom".into(),
        }
    }

    #[test]
    fn consecutive_faults_quarantine_and_backoff_doubles_per_strike() {
        let config = SupervisionConfig {
            quarantine_after_failures: 3,
            quarantine_base_ms: 100,
            quarantine_max_ms: 250,
        };
        let s = Supervision::default();
        s.record(Err(&trap()), &config);
        s.record(Err(&trap()), &config);
        assert!(s.admit().is_ok());
        s.record(Err(&trap()), &config);
        assert!(s.admit().is_err());
        let started = s.take_started().expect("quarantine started");
        assert_eq!(
            (started.backoff, started.strikes),
            (Duration::from_millis(100), 1)
        );
        assert!(s.take_started().is_none(), "reported once");

        assert_eq!(
            s.extend(&config, "canary failed".into()),
            (Duration::from_millis(200), 2)
        );
        assert_eq!(
            s.extend(&config, "canary failed".into()).0,
            Duration::from_millis(250),
            "capped"
        );
        s.release();
        assert!(s.admit().is_ok());
    }

    #[test]
    fn overload_and_successes_do_not_count_as_faults() {
        let config = SupervisionConfig {
            quarantine_after_failures: 2,
            ..SupervisionConfig::default()
        };
        let s = Supervision::default();
        let overloaded = CallError::Overloaded {
            plugin: "p".into(),
            running: 1,
            queued: 0,
        };
        s.record(Err(&trap()), &config);
        s.record(Err(&overloaded), &config);
        s.record(Ok(()), &config);
        s.record(Err(&trap()), &config);
        assert!(s.admit().is_ok(), "a success in between resets the count");
    }
}
