//! Passive outlier detection from live traffic (Envoy's consecutive-5xx detector).
//!
//! Per instance:
//! 1. **in rotation**: each 5xx, connect error or timeout adds to a consecutive count; any
//!    other answer clears it. At `consecutive_errors` → 2, unless the service already has
//!    `max_ejected_pct` of its instances ejected (then the count stays and the next error asks
//!    again).
//! 2. **ejected** for `base_ejection_ms × ejections` (capped at `max_ejection_ms`): no traffic.
//!    When the time is up it returns → 1, through slow start. The multiplier resets after an
//!    instance stayed in rotation for `max_ejection_ms`.
//!
//! The panic threshold lives with the candidate selection ([`crate::service`]): when too
//! few instances are healthy, ejection and health are ignored and all instances take traffic.

use std::time::Duration;

use tokio::time::Instant;

use super::config::OutlierConfig;

#[derive(Debug, Clone, Default)]
pub struct OutlierState {
    consecutive_errors: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    returned_at: Option<Instant>,
}

/// What an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierVerdict {
    Nothing,
    /// The count reached the threshold: eject if the service's share allows.
    WantsEjection,
}

impl OutlierState {
    /// `(ejected, returned)` at `now`. An ejection whose time is up ends here and is reported
    /// as `returned` so the caller can start slow start.
    pub fn check(&mut self, now: Instant) -> (bool, bool) {
        match self.ejected_until {
            Some(until) if now < until => (true, false),
            Some(_) => {
                self.ejected_until = None;
                self.consecutive_errors = 0;
                self.returned_at = Some(now);
                (false, true)
            }
            None => (false, false),
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records one outcome (`error` = 5xx, connect error or timeout).
    pub fn record(&mut self, error: bool, config: &OutlierConfig) -> OutlierVerdict {
        if !error {
            self.consecutive_errors = 0;
            return OutlierVerdict::Nothing;
        }
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
        if config.consecutive_errors > 0
            && self.consecutive_errors >= config.consecutive_errors
            && self.ejected_until.is_none()
        {
            OutlierVerdict::WantsEjection
        } else {
            OutlierVerdict::Nothing
        }
    }

    /// Step 1 → 2. Returns how long.
    pub fn eject(&mut self, config: &OutlierConfig, now: Instant) -> Duration {
        let max = Duration::from_millis(config.max_ejection_ms);
        if self
            .returned_at
            .is_some_and(|at| now.saturating_duration_since(at) >= max)
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let period = Duration::from_millis(
            config
                .base_ejection_ms
                .saturating_mul(u64::from(self.ejections)),
        )
        .min(max);
        self.ejected_until = Some(now + period);
        self.consecutive_errors = 0;
        period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_with_count_and_is_capped() {
        let config = OutlierConfig {
            consecutive_errors: 2,
            base_ejection_ms: 100,
            max_ejection_ms: 250,
            ..OutlierConfig::default()
        };
        let mut state = OutlierState::default();
        assert_eq!(state.record(true, &config), OutlierVerdict::Nothing);
        assert_eq!(state.record(false, &config), OutlierVerdict::Nothing);
        assert_eq!(state.record(true, &config), OutlierVerdict::Nothing);
        assert_eq!(state.record(true, &config), OutlierVerdict::WantsEjection);
        let mut periods = Vec::new();
        for _ in 0..3 {
            let period = state.eject(&config, Instant::now());
            periods.push(period.as_millis());
            assert_eq!(state.check(Instant::now()), (true, false));
            tokio::time::advance(period).await;
            assert_eq!(state.check(Instant::now()), (false, true));
        }
        assert_eq!(periods, [100, 200, 250]);
        // In rotation for max_ejection_ms: the multiplier starts over.
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(state.eject(&config, Instant::now()).as_millis(), 100);
    }
}
