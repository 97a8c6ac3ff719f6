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
use evolve_core::rng::with_thread_rng;

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
    let factor = 1u64 << retry.saturating_sub(1).min(20);
    let ceiling = config
        .backoff_base_ms
        .saturating_mul(factor)
        .min(config.backoff_max_ms);
    let ms = with_thread_rng(|rng| rng.next_f64()) * ceiling as f64;
    Duration::from_micros((ms * 1_000.0) as u64)
}

/// Requests and retries per 1 s bucket.
#[derive(Debug)]
struct Buckets {
    /// (bucket second, requests, retries)
    slots: Vec<(u64, u64, u64)>,
}

#[derive(Debug)]
pub struct RetryBudget {
    buckets: Mutex<Buckets>,
    origin: Instant,
    pct: u64,
    min_per_s: u64,
    window_s: u64,
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> RetryBudget {
        let window_s = u64::from(config.budget_window_s.max(1));
        RetryBudget {
            buckets: Mutex::new(Buckets {
                slots: vec![(u64::MAX, 0, 0); window_s as usize],
            }),
            origin: Instant::now(),
            pct: u64::from(config.budget_pct),
            min_per_s: u64::from(config.budget_min_per_s),
            window_s,
        }
    }

    /// Counts one original request, made at `now` (live traffic earns retry allowance).
    pub fn deposit(&self, now: Instant) {
        let second = self.second(now);
        if let Ok(mut buckets) = self.buckets.lock()
            && let Some(slot) = self.slot(&mut buckets, second)
        {
            slot.1 += 1;
        }
    }

    /// Takes allowance for one retry; false when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let (pct, floor) = (self.pct, self.min_per_s * self.window_s);
        let second = self.second(Instant::now());
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let window = self.window_s;
        let (requests, retries) = buckets
            .slots
            .iter()
            .filter(|(s, _, _)| *s != u64::MAX && *s + window > second)
            .fold((0, 0), |(rq, rt), (_, q, t)| (rq + q, rt + t));
        // retries + 1 ≤ floor + pct% of requests, in integers.
        let allowed = (retries + 1) * 100 <= floor * 100 + pct * requests;
        if allowed && let Some(slot) = self.slot(&mut buckets, second) {
            slot.2 += 1;
        }
        allowed
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The bucket of `second`, emptied first when it still holds an older second: that second
    /// left the window (and was not counted in any total taken at `second`). `None` when it
    /// holds a newer one: a reading taken a window ago must not wipe the current second.
    fn slot<'a>(&self, buckets: &'a mut Buckets, second: u64) -> Option<&'a mut (u64, u64, u64)> {
        let slot = &mut buckets.slots[(second % self.window_s) as usize];
        if slot.0 != u64::MAX && slot.0 > second {
            return None;
        }
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        Some(slot)
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
