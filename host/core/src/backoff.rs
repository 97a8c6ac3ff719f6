//! Exponential backoff, the one implementation every retry and quarantine in Evolve uses: the
//! plugin quarantine, agent run retries, the cluster's Redis reconnects, the mesh's request
//! retries and its circuit breaker's open periods.
//!
//! A [`Backoff`] is `base × 2^(step-1)` capped at `max` (step 1 is the first failure), varied by
//! one of the [`Jitter`] styles. Each caller picks the style that fits what it spreads:
//! - [`Jitter::None`]: the quarantine, whose period is reported to the operator as is;
//! - [`Jitter::UpperHalf`]: reconnects and run retries, which must wait at least half the
//!   period (so a storm still backs off) but not all in step;
//! - [`Jitter::Full`]: request retries, where spreading matters more than a floor (AWS's "full
//!   jitter");
//! - [`Jitter::Percent`]: the breaker's open period, `±pct %` around the period.

use std::time::Duration;

use crate::rng::{jitter, with_thread_rng};

/// The most doublings a backoff applies: 2^30 × any sane base is past every cap, and it keeps
/// the factor within a `u32`.
const MAX_DOUBLINGS: u32 = 30;

/// How a [`Backoff`] varies the capped period `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly `p`.
    None,
    /// Uniform in `[p/2, p]`.
    UpperHalf,
    /// Uniform in `[0, p]`.
    Full,
    /// Uniform in `[p × (1 - pct/100), p × (1 + pct/100)]`; may exceed the cap by `pct` %.
    Percent(u32),
}

/// An exponential backoff policy: config only, no state (callers count their own steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The period after the first failure.
    pub base: Duration,
    /// The longest period, before jitter.
    pub max: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    /// The period for failure number `step` (1-based; 0 counts as 1) before jitter:
    /// `base × 2^(step-1)`, at most `max`.
    pub fn ceiling(&self, step: u32) -> Duration {
        let doublings = step.saturating_sub(1).min(MAX_DOUBLINGS);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The period to wait after failure number `step`, jittered.
    pub fn delay(&self, step: u32) -> Duration {
        let ceiling = self.ceiling(step);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::UpperHalf => {
                let half = ceiling / 2;
                half + (ceiling - half).mul_f64(with_thread_rng(|rng| rng.next_f64()))
            }
            Jitter::Full => ceiling.mul_f64(with_thread_rng(|rng| rng.next_f64())),
            Jitter::Percent(pct) => jitter(ceiling, pct),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_millis(10_000),
            jitter,
        }
    }

    #[test]
    fn the_ceiling_doubles_per_step_up_to_the_cap() {
        let backoff = policy(Jitter::None);
        assert_eq!(backoff.ceiling(0), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(400));
        assert_eq!(backoff.ceiling(6), Duration::from_millis(6_400));
        assert_eq!(backoff.ceiling(7), Duration::from_millis(10_000));
        // No overflow however many failures.
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(10_000));
        assert_eq!(backoff.delay(3), Duration::from_millis(800));
    }

    #[test]
    fn each_jitter_style_stays_in_its_band() {
        for step in 1..40 {
            let ceiling = policy(Jitter::None).ceiling(step);
            for _ in 0..50 {
                let upper = policy(Jitter::UpperHalf).delay(step);
                assert!(
                    upper >= ceiling / 2 && upper <= ceiling,
                    "{step}: {upper:?}"
                );
                let full = policy(Jitter::Full).delay(step);
                assert!(full <= ceiling, "{step}: {full:?}");
                let spread = policy(Jitter::Percent(20)).delay(step);
                assert!(
                    spread >= ceiling.mul_f64(0.8) && spread <= ceiling.mul_f64(1.2),
                    "{step}: {spread:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_actually_varies_the_period() {
        let samples: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| policy(Jitter::Full).delay(5)).collect();
        assert!(samples.len() > 1, "{samples:?}");
    }
}
