//! Retries: which requests may be retried, the retry budget, and the backoff.
//!
//! A request is retried only when it failed in a way another instance may not (5xx, connect
//! error, timeout of the attempt), its method is idempotent or its route says retries are safe,
//! its body was buffered (small enough to replay), another instance is available, the
//! service's budget has room, and the jittered backoff ends before the deadline.
//!
//! The budget (Finagle's `RetryBudget`): over a rolling window, retries may be at most
//! `budget_pct` % of the requests plus `budget_min_per_s` per second. Under an outage this
//! caps the extra load retries add to `budget_pct` %, instead of multiplying traffic by
//! `max_retries + 1`.

use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use super::config::RetryConfig;
use evolve_core::backoff::{Backoff, Jitter};
use evolve_core::sync::lock;
use evolve_core::window::RollingWindow;

/// Whether `method` may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Full-jitter exponential backoff before retry number `retry` (1-based): uniform in
/// `[0, min(max, base × 2^(retry-1))]`.
pub fn backoff(config: &RetryConfig, retry: u32) -> Duration {
    Backoff {
        base: Duration::from_millis(config.backoff_base_ms),
        max: Duration::from_millis(config.backoff_max_ms),
        jitter: Jitter::Full,
    }
    .delay(retry)
}

/// What the budget counts in one second.
#[derive(Debug, Clone, Copy, Default)]
struct Spend {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct RetryBudget {
    window: Mutex<RollingWindow<Spend>>,
    pct: u64,
    min_per_s: u64,
    window_s: u64,
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> RetryBudget {
        let window_s = u64::from(config.budget_window_s.max(1));
        RetryBudget {
            window: Mutex::new(RollingWindow::new(config.budget_window_s, Instant::now())),
            pct: u64::from(config.budget_pct),
            min_per_s: u64::from(config.budget_min_per_s),
            window_s,
        }
    }

    /// Counts one original request, made at `now` (live traffic earns retry allowance).
    pub fn deposit(&self, now: Instant) {
        if let Some(spend) = lock(&self.window).current(now) {
            spend.requests += 1;
        }
    }

    /// Takes allowance for one retry; false when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let (pct, floor) = (self.pct, self.min_per_s * self.window_s);
        let now = Instant::now();
        let mut window = lock(&self.window);
        let (requests, retries) = window.fold(now, (0, 0), |(requests, retries), spend| {
            (requests + spend.requests, retries + spend.retries)
        });
        // retries + 1 ≤ floor + pct% of requests, in integers.
        let allowed = (retries + 1) * 100 <= floor * 100 + pct * requests;
        if allowed && let Some(spend) = window.current(now) {
            spend.retries += 1;
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_is_a_share_of_traffic_plus_a_floor_and_refills_with_the_window() {
        let config = RetryConfig {
            budget_pct: 20,
            budget_min_per_s: 1,
            budget_window_s: 10,
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&config);
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        // 10 (floor: 1/s over 10 s) + 20 % of 100.
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 30);
        // The window moves on: the old requests and retries no longer count.
        tokio::time::advance(Duration::from_secs(11)).await;
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deposit_read_a_window_ago_leaves_the_current_second_alone() {
        let config = RetryConfig {
            budget_pct: 0,
            budget_min_per_s: 1,
            budget_window_s: 10,
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&config);
        let long_ago = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        // The floor allows 10 retries per window; take them all in the current second.
        let granted = (0..20).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10);
        // A request whose clock was read 10 s ago maps to the same bucket: it must not empty it.
        budget.deposit(long_ago);
        assert!(!budget.try_withdraw(), "the spent retries still count");
    }

    #[test]
    fn backoff_is_full_jitter_under_the_cap() {
        let config = RetryConfig {
            backoff_base_ms: 10,
            backoff_max_ms: 35,
            ..RetryConfig::default()
        };
        for retry in 1..6 {
            let cap = Duration::from_millis((10u64 << (retry - 1)).min(35));
            for _ in 0..200 {
                assert!(backoff(&config, retry) <= cap);
            }
        }
        assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
    }
}
