//! An agent's effective run policy: the manifest's `[agent]` table over the `[agents]` config,
//! and the backoff between attempts it implies. Pure, so tested without a run.

use std::time::Duration;

use crate::agents::AgentsConfig;
use evolve_core::backoff::{Backoff, Jitter};
use evolve_runtime::manifest::AgentSpec;

/// The longest wait between two attempts of a run. Backoff doubles per attempt, so without a
/// cap a run with many retries would wait hours; a run's deadline (at most a day) cuts a wait
/// short anyway, and a retry an hour out helps no one who asked for retries.
pub(super) const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3_600);

/// The effective run policy of an agent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) overlap: bool,
    pub(super) max_retries: u32,
    pub(super) backoff: Duration,
}

impl Policy {
    pub(super) fn of(spec: Option<&AgentSpec>, config: &AgentsConfig) -> Policy {
        Policy {
            overlap: spec.is_some_and(|s| s.overlap),
            max_retries: spec
                .and_then(|s| s.max_retries)
                .unwrap_or(config.max_retries),
            backoff: Duration::from_millis(
                spec.and_then(|s| s.retry_backoff_ms)
                    .unwrap_or(config.retry_backoff_ms),
            ),
        }
    }

    /// Backoff before attempt `attempt + 1`: base × 2^(attempt-1), capped at
    /// [`MAX_RETRY_BACKOFF`], the upper half jittered.
    pub(super) fn backoff_after(&self, attempt: u32) -> Duration {
        Backoff {
            base: self.backoff,
            max: MAX_RETRY_BACKOFF,
            jitter: Jitter::UpperHalf,
        }
        .delay(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_overrides_the_config_field_by_field() {
        let config = AgentsConfig::default();
        let silent = Policy::of(None, &config);
        assert!(!silent.overlap);
        assert_eq!(silent.max_retries, config.max_retries);
        assert_eq!(
            silent.backoff,
            Duration::from_millis(config.retry_backoff_ms)
        );

        let spec = AgentSpec {
            overlap: true,
            max_retries: Some(7),
            retry_backoff_ms: None,
            schedule: None,
        };
        let policy = Policy::of(Some(&spec), &config);
        assert!(policy.overlap);
        assert_eq!(policy.max_retries, 7);
        assert_eq!(
            policy.backoff,
            Duration::from_millis(config.retry_backoff_ms),
            "a field the manifest leaves out comes from the config"
        );
    }

    #[test]
    fn backoff_doubles_per_attempt_within_its_upper_half_and_is_capped() {
        let policy = Policy {
            overlap: false,
            max_retries: 10,
            backoff: Duration::from_millis(400),
        };
        for attempt in 1..=4u32 {
            let ceiling = Duration::from_millis(400 * 2u64.pow(attempt - 1));
            for _ in 0..50 {
                let delay = policy.backoff_after(attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "attempt {attempt}: {delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
        let far = policy.backoff_after(40);
        assert!(far <= MAX_RETRY_BACKOFF && far >= MAX_RETRY_BACKOFF / 2);
    }
}
