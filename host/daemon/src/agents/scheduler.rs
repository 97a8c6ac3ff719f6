//! Runs agents on their manifest schedules.
//!
//! One task per scheduled agent and plugin generation: a reload that changes the schedule
//! replaces the task. Each loop:
//!
//! 1. At start, applies the missed-run policy: with `missed = "run_once"`, if a fire was due
//!    since the agent's last scheduled run (read from the history), it runs once right away.
//! 2. Computes the next fire: `every` stays on the grid anchored at the last scheduled run (so
//!    run durations do not make it drift); cron takes the next matching minute (UTC).
//! 3. Sleeps until then plus a random `0..=jitter_s`, so agents sharing a schedule do not all
//!    start in the same second.
//! 4. Fires: asks the manager to start a run. A run still in progress (and overlap not allowed)
//!    makes this fire a logged skip; the schedule keeps going.
//!
//! Time comes from the tokio clock (anchored to the wall clock once at loop start), so the
//! loop is tested under paused time.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::history::Trigger;
use evolve_runtime::manifest::MissedRuns;
use evolve_runtime::schedule::Schedule;

/// Wall time derived from the tokio clock.
#[derive(Debug, Clone, Copy)]
pub struct LoopClock {
    wall: DateTime<Utc>,
    mono: tokio::time::Instant,
}

impl LoopClock {
    pub fn start() -> LoopClock {
        LoopClock {
            wall: Utc::now(),
            mono: tokio::time::Instant::now(),
        }
    }

    /// A clock whose "now" is `wall` (tests).
    pub fn at(wall: DateTime<Utc>) -> LoopClock {
        LoopClock {
            wall,
            mono: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.mono.elapsed()).unwrap_or_default();
        self.wall + elapsed
    }
}

/// One agent's schedule settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub schedule: Schedule,
    pub jitter: Duration,
    pub missed: MissedRuns,
    /// When the agent last started a scheduled run, from the history.
    pub last_scheduled: Option<DateTime<Utc>>,
}

/// Drives one schedule forever. `fire` starts a run (and should not wait for it); `planned`
/// is told each next fire time, for the API.
pub async fn drive<F, Fut>(
    plan: Plan,
    clock: LoopClock,
    mut fire: F,
    mut planned: impl FnMut(DateTime<Utc>),
) where
    F: FnMut(Trigger) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = clock.now();
    // Step 1: the missed-run policy.
    if let (MissedRuns::RunOnce, Some(last)) = (plan.missed, plan.last_scheduled)
        && plan
            .schedule
            .next_after(last, last)
            .is_some_and(|due| due <= start)
    {
        fire(Trigger::Missed).await;
    }
    let mut anchor = plan.last_scheduled.unwrap_or(start);
    loop {
        // Step 2: the next fire.
        let now = clock.now();
        let Some(next) = plan.schedule.next_after(now, anchor) else {
            tracing::warn!(schedule = %plan.schedule, "schedule has no next fire time; stopping it");
            return;
        };
        planned(next);
        // Step 3: sleep until it, plus jitter.
        let wait = (next - now).to_std().unwrap_or_default() + evolve_core::rng::up_to(plan.jitter);
        tokio::time::sleep(wait).await;
        anchor = next;
        // Step 4: fire.
        fire(Trigger::Schedule).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::{Arc, Mutex};

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0)
            .single()
            .expect("time")
    }

    /// Runs `drive` for `span` of paused time and returns the fires with their (loop) times.
    async fn fires(plan: Plan, span: Duration) -> Vec<(Trigger, DateTime<Utc>)> {
        let clock = LoopClock::at(noon());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(drive(
            plan,
            clock,
            move |trigger| {
                sink.lock().expect("lock").push((trigger, clock.now()));
                async {}
            },
            |_| {},
        ));
        tokio::time::sleep(span).await;
        task.abort();
        seen.lock().expect("lock").clone()
    }

    #[tokio::test(start_paused = true)]
    async fn every_fires_on_its_grid() {
        let plan = Plan {
            schedule: Schedule::every("10m").expect("valid"),
            jitter: Duration::ZERO,
            missed: MissedRuns::Skip,
            last_scheduled: None,
        };
        let seen = fires(plan, Duration::from_secs(35 * 60)).await;
        let minutes: Vec<i64> = seen
            .iter()
            .map(|(_, t)| (*t - noon()).num_minutes())
            .collect();
        assert_eq!(minutes, vec![10, 20, 30]);
        assert!(seen.iter().all(|(t, _)| *t == Trigger::Schedule));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_delays_each_fire_within_its_bound() {
        let plan = Plan {
            schedule: Schedule::every("10m").expect("valid"),
            jitter: Duration::from_secs(60),
            missed: MissedRuns::Skip,
            last_scheduled: None,
        };
        let seen = fires(plan, Duration::from_secs(45 * 60)).await;
        assert_eq!(seen.len(), 4, "{seen:?}");
        for (n, (_, at)) in seen.iter().enumerate() {
            let due = noon() + chrono::Duration::minutes(10 * (n as i64 + 1));
            let late = (*at - due).num_seconds();
            assert!((0..=60).contains(&late), "fire {n} was {late}s late");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn missed_run_once_catches_up_once_then_keeps_the_grid() {
        // Last scheduled run 95 minutes ago: nine fires were missed.
        let last = noon() - chrono::Duration::minutes(95);
        let plan = Plan {
            schedule: Schedule::every("10m").expect("valid"),
            jitter: Duration::ZERO,
            missed: MissedRuns::RunOnce,
            last_scheduled: Some(last),
        };
        let seen = fires(plan, Duration::from_secs(12 * 60)).await;
        let got: Vec<(Trigger, i64)> = seen
            .iter()
            .map(|(t, at)| (*t, (*at - noon()).num_minutes()))
            .collect();
        // One catch-up now, then the grid anchored at the last run: 12:05, 12:15 (beyond span).
        assert_eq!(got, vec![(Trigger::Missed, 0), (Trigger::Schedule, 5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn missed_skip_waits_for_the_next_fire() {
        let plan = Plan {
            schedule: Schedule::every("10m").expect("valid"),
            jitter: Duration::ZERO,
            missed: MissedRuns::Skip,
            last_scheduled: Some(noon() - chrono::Duration::minutes(95)),
        };
        let seen = fires(plan, Duration::from_secs(4 * 60)).await;
        assert!(seen.is_empty(), "{seen:?}");
    }
}
