//! Circuit breaking, two kinds kept apart:
//!
//! - [`ConcurrencyLimit`], per service: at most `max_in_flight` requests run; up to
//!   `max_pending` more wait for a slot (never past their deadline); beyond that a request is
//!   shed at once with 503 and a reason naming the limit.
//! - [`FailureAccrual`], per instance: a state machine that stops sending to an instance that
//!   keeps failing and lets exactly one probe find out whether it recovered.
//!
//! Failure accrual state machine (time is tokio's, so tests run it under paused time):
//! 1. **closed**: requests flow. Each outcome updates the consecutive-failure count and a
//!    rolling window of (successes, failures) in 1 s buckets. `consecutive_failures` in a row,
//!    or a failure rate ≥ `failure_rate_pct` over the window with at least `min_volume`
//!    outcomes → 2.
//! 2. **open**: no request is admitted until `open_base_ms × 2^(openings-1)` (capped at
//!    `open_max_ms`, ± `jitter_pct`) has passed. Then the next admission → 3.
//! 3. **half-open**: that one request is the probe and it alone is admitted; every other
//!    request is refused while it runs. Probe succeeds → 1 (openings reset). Probe fails → 2
//!    with the next, longer, period. A probe that never reports (cancelled) frees the slot for
//!    another probe.
//!
//! Outcomes of requests admitted before the circuit opened do not move states 2 and 3: only
//! the probe decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::BreakerConfig;
use evolve_core::backoff::{Backoff, Jitter};
use evolve_core::window::RollingWindow;

/// Circuit state as the API, metrics and inventory spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// What [`FailureAccrual::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal request (circuit closed).
    Allowed,
    /// The one half-open probe: its outcome decides the circuit.
    Probe,
    Refused,
}

/// A state change worth an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { for_: Duration, openings: u32 },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_running: bool },
}

/// Outcomes of one second, in the breaker's rolling window.
#[derive(Debug, Clone, Copy, Default)]
struct Outcomes {
    successes: u32,
    failures: u32,
}

#[derive(Debug, Clone)]
pub struct FailureAccrual {
    state: State,
    consecutive: u32,
    window: RollingWindow<Outcomes>,
    openings: u32,
}

impl FailureAccrual {
    pub fn new(config: &BreakerConfig, now: Instant) -> FailureAccrual {
        FailureAccrual {
            state: State::Closed,
            consecutive: 0,
            window: RollingWindow::new(config.window_s, now),
            openings: 0,
        }
    }

    /// The state as seen at `now` (an open circuit whose time is up reads as half-open: the
    /// next request will probe).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether [`FailureAccrual::admit`] would admit a request now (no state change).
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probe_running } => !probe_running,
        }
    }

    /// Admits or refuses one request.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            // Step 1.
            State::Closed => Admission::Allowed,
            // Step 2: still open.
            State::Open { until } if now < until => Admission::Refused,
            // Step 2 → 3: the period is over; this request is the probe.
            State::Open { .. }
            | State::HalfOpen {
                probe_running: false,
            } => {
                self.state = State::HalfOpen {
                    probe_running: true,
                };
                Admission::Probe
            }
            // Step 3: one probe at a time.
            State::HalfOpen {
                probe_running: true,
            } => Admission::Refused,
        }
    }

    /// Records the outcome of a request admitted as `admission`.
    pub fn record(
        &mut self,
        admission: Admission,
        failure: bool,
        config: &BreakerConfig,
        now: Instant,
    ) -> Option<Transition> {
        match (self.state, admission) {
            // Step 3 → 1 or 2: only the probe decides a half-open circuit.
            (State::HalfOpen { .. }, Admission::Probe) => {
                if failure {
                    Some(self.open(config, now))
                } else {
                    self.state = State::Closed;
                    self.consecutive = 0;
                    self.openings = 0;
                    self.window.clear();
                    Some(Transition::Closed)
                }
            }
            // Step 1: count, maybe open.
            (State::Closed, _) => {
                if let Some(outcomes) = self.window.current(now) {
                    if failure {
                        outcomes.failures += 1;
                    } else {
                        outcomes.successes += 1;
                    }
                }
                if !failure {
                    self.consecutive = 0;
                    return None;
                }
                self.consecutive += 1;
                let (total, failures) = self.window.fold(now, (0, 0), |(total, failures), o| {
                    (total + o.successes + o.failures, failures + o.failures)
                });
                let by_count = config.consecutive_failures > 0
                    && self.consecutive >= config.consecutive_failures;
                let by_rate = config.failure_rate_pct > 0
                    && total >= config.min_volume.max(1)
                    && u64::from(failures) * 100
                        >= u64::from(config.failure_rate_pct) * u64::from(total);
                (by_count || by_rate).then(|| self.open(config, now))
            }
            // Late outcomes of requests admitted before the circuit opened.
            _ => None,
        }
    }

    /// The probe was cancelled before it reported: let the next request probe.
    pub fn abandon_probe(&mut self) {
        if let State::HalfOpen {
            probe_running: true,
        } = self.state
        {
            self.state = State::HalfOpen {
                probe_running: false,
            };
        }
    }

    /// Step → 2.
    fn open(&mut self, config: &BreakerConfig, now: Instant) -> Transition {
        self.openings = self.openings.saturating_add(1);
        let period = Backoff {
            base: Duration::from_millis(config.open_base_ms),
            max: Duration::from_millis(config.open_max_ms),
            jitter: Jitter::Percent(config.jitter_pct),
        }
        .delay(self.openings);
        self.state = State::Open {
            until: now + period,
        };
        self.consecutive = 0;
        self.window.clear();
        Transition::Opened {
            for_: period,
            openings: self.openings,
        }
    }
}

/// Per-service concurrency cap with a bounded wait line.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    max_in_flight: u32,
    max_pending: u32,
    pending: AtomicU32,
}

/// Why a request was shed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Shed {
    #[error(
        "{in_flight} requests in flight and {pending} waiting (limits max_in_flight = {max_in_flight}, max_pending = {max_pending})"
    )]
    Full {
        in_flight: u32,
        pending: u32,
        max_in_flight: u32,
        max_pending: u32,
    },
    #[error(
        "no in-flight slot freed before the request's deadline (max_in_flight = {max_in_flight})"
    )]
    WaitedPastDeadline { max_in_flight: u32 },
}

impl ConcurrencyLimit {
    pub fn new(max_in_flight: u32, max_pending: u32) -> ConcurrencyLimit {
        ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            max_pending,
            pending: AtomicU32::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.max_in_flight
            .saturating_sub(self.slots.available_permits() as u32)
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// A slot, waiting in line until `deadline` if all are taken and the line has room.
    pub async fn acquire(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        let _leave_line = DecrementOnDrop(&self.pending);
        if waiting >= self.max_pending {
            return Err(Shed::Full {
                in_flight: self.in_flight(),
                pending: waiting,
                max_in_flight: self.max_in_flight,
                max_pending: self.max_pending,
            });
        }
        match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Closed semaphores are never produced here; treat as "no slot" all the same.
            _ => Err(Shed::WaitedPastDeadline {
                max_in_flight: self.max_in_flight,
            }),
        }
    }
}

struct DecrementOnDrop<'a>(&'a AtomicU32);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate_pct: 0,
            open_base_ms: 1_000,
            open_max_ms: 8_000,
            jitter_pct: 0,
            ..BreakerConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open_closed_with_exponential_periods() {
        let config = config();
        let mut breaker = FailureAccrual::new(&config, Instant::now());
        // Step 1: two failures and a success keep it closed; three in a row open it.
        for failure in [true, true, false, true, true] {
            assert_eq!(breaker.admit(Instant::now()), Admission::Allowed);
            assert_eq!(
                breaker.record(Admission::Allowed, failure, &config, Instant::now()),
                None
            );
        }
        assert_eq!(breaker.admit(Instant::now()), Admission::Allowed);
        let opened = breaker.record(Admission::Allowed, true, &config, Instant::now());
        assert_eq!(
            opened,
            Some(Transition::Opened {
                for_: Duration::from_millis(1_000),
                openings: 1
            })
        );
        // Step 2: refused until the period ends.
        assert_eq!(breaker.state(Instant::now()), CircuitState::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(breaker.admit(Instant::now()), Admission::Refused);
        tokio::time::advance(Duration::from_millis(1)).await;
        // Step 3: exactly one probe.
        assert_eq!(breaker.admit(Instant::now()), Admission::Probe);
        assert_eq!(breaker.admit(Instant::now()), Admission::Refused);
        assert!(!breaker.would_admit(Instant::now()));
        // A failed probe reopens for twice as long.
        assert_eq!(
            breaker.record(Admission::Probe, true, &config, Instant::now()),
            Some(Transition::Opened {
                for_: Duration::from_millis(2_000),
                openings: 2
            })
        );
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(breaker.admit(Instant::now()), Admission::Refused);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.admit(Instant::now()), Admission::Probe);
        // A late failure of a request admitted before the opening does not decide anything.
        assert_eq!(
            breaker.record(Admission::Allowed, true, &config, Instant::now()),
            None
        );
        assert_eq!(
            breaker.record(Admission::Probe, false, &config, Instant::now()),
            Some(Transition::Closed)
        );
        assert_eq!(breaker.state(Instant::now()), CircuitState::Closed);
        // Openings were reset: the next opening is the base period again.
        for _ in 0..2 {
            breaker.record(Admission::Allowed, true, &config, Instant::now());
        }
        assert_eq!(
            breaker.record(Admission::Allowed, true, &config, Instant::now()),
            Some(Transition::Opened {
                for_: Duration::from_millis(1_000),
                openings: 1
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_period_is_capped_and_jittered() {
        let mut config = config();
        config.consecutive_failures = 1;
        config.jitter_pct = 20;
        let mut breaker = FailureAccrual::new(&config, Instant::now());
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            let admission = breaker.admit(Instant::now());
            let Some(Transition::Opened { for_, .. }) =
                breaker.record(admission, true, &config, Instant::now())
            else {
                panic!("a failure must open");
            };
            assert!(for_ <= Duration::from_millis(9_600), "{for_:?}");
            last = for_;
            tokio::time::advance(for_).await;
        }
        assert!(last >= Duration::from_millis(6_400), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_needs_the_minimum_volume() {
        let config = BreakerConfig {
            consecutive_failures: 0,
            failure_rate_pct: 50,
            min_volume: 10,
            window_s: 10,
            jitter_pct: 0,
            ..BreakerConfig::default()
        };
        let mut breaker = FailureAccrual::new(&config, Instant::now());
        // Alternating: 50 % failures, but only from the 10th outcome on does the rate count.
        for i in 0..9 {
            assert_eq!(
                breaker.record(Admission::Allowed, i % 2 == 0, &config, Instant::now()),
                None,
                "outcome {i}"
            );
        }
        assert!(matches!(
            breaker.record(Admission::Allowed, true, &config, Instant::now()),
            Some(Transition::Opened { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        let config = BreakerConfig {
            consecutive_failures: 0,
            failure_rate_pct: 50,
            min_volume: 4,
            window_s: 2,
            jitter_pct: 0,
            ..BreakerConfig::default()
        };
        let mut breaker = FailureAccrual::new(&config, Instant::now());
        for _ in 0..3 {
            breaker.record(Admission::Allowed, true, &config, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        // The three failures are out of the window: one more failure is 1 of 1, below volume.
        assert_eq!(
            breaker.record(Admission::Allowed, true, &config, Instant::now()),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_limit_queues_then_sheds_with_the_numbers() {
        let limit = ConcurrencyLimit::new(1, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        let held = limit.acquire(deadline).await.expect("free slot");
        assert_eq!(limit.in_flight(), 1);
        let limit = Arc::new(limit);
        let waiter = {
            let limit = Arc::clone(&limit);
            tokio::spawn(async move { limit.acquire(deadline).await.map(|_| ()) })
        };
        while limit.pending() == 0 {
            tokio::task::yield_now().await;
        }
        let shed = limit.acquire(deadline).await.expect_err("line is full");
        assert!(
            matches!(
                shed,
                Shed::Full {
                    in_flight: 1,
                    pending: 1,
                    ..
                }
            ),
            "{shed}"
        );
        drop(held);
        waiter.await.expect("join").expect("slot freed");
        assert_eq!(limit.pending(), 0);
        // A wait that outlives the deadline gives up.
        let _held = limit.acquire(deadline).await.expect("free again");
        let late = limit
            .acquire(Instant::now() + Duration::from_millis(10))
            .await;
        assert!(matches!(late, Err(Shed::WaitedPastDeadline { .. })));
    }
}
