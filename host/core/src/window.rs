//! A rolling window of per-second counters: the last `seconds` seconds of counts, one slot per
//! second in a ring, so recording and summing are O(window) with no allocation. The mesh's
//! circuit breaker counts outcomes in one, its retry budget requests and retries in another.
//!
//! Time is tokio's [`Instant`], so users test it under paused time.
//!
//! Stale readings: a caller may record with an `Instant` read a while ago (before waiting for a
//! lock or a body). Its second maps to the same slot as a second one window later; the slot is
//! then left alone ([`RollingWindow::current`] gives `None`) rather than wiped, so a late
//! reading never erases the current second's counts.

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Slot<C> {
    /// Seconds since the window's origin; `None` while the slot was never used (or cleared).
    second: Option<u64>,
    counts: C,
}

/// Counts of type `C` (a struct of named counters) over a window of whole seconds.
#[derive(Debug, Clone)]
pub struct RollingWindow<C> {
    slots: Vec<Slot<C>>,
    origin: Instant,
}

impl<C: Copy + Default> RollingWindow<C> {
    /// A window of `seconds` (at least 1) whose seconds count from `origin`.
    pub fn new(seconds: u32, origin: Instant) -> RollingWindow<C> {
        let empty = Slot {
            second: None,
            counts: C::default(),
        };
        RollingWindow {
            slots: vec![empty; seconds.max(1) as usize],
            origin,
        }
    }

    /// The window's length, s.
    pub fn seconds(&self) -> u64 {
        self.slots.len() as u64
    }

    fn second_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_secs()
    }

    /// The counters of `at`'s second, to add to. A slot that still holds an older second is
    /// emptied first (that second left the window). `None` when the slot already holds a newer
    /// second: `at` is a stale reading, see the module docs.
    pub fn current(&mut self, at: Instant) -> Option<&mut C> {
        let second = self.second_of(at);
        let len = self.seconds();
        let slot = &mut self.slots[(second % len) as usize];
        match slot.second {
            Some(held) if held > second => return None,
            Some(held) if held == second => {}
            _ => {
                *slot = Slot {
                    second: Some(second),
                    counts: C::default(),
                }
            }
        }
        Some(&mut slot.counts)
    }

    /// Folds the counters of every second within the window that ends at `now`.
    pub fn fold<T>(&self, now: Instant, init: T, mut f: impl FnMut(T, &C) -> T) -> T {
        let second = self.second_of(now);
        let len = self.seconds();
        self.slots
            .iter()
            .filter(|slot| slot.second.is_some_and(|held| held + len > second))
            .fold(init, |acc, slot| f(acc, &slot.counts))
    }

    /// Forgets every count.
    pub fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.second = None;
            slot.counts = C::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Clone, Copy, Default)]
    struct Hits {
        hits: u32,
    }

    fn total(window: &RollingWindow<Hits>) -> u32 {
        window.fold(Instant::now(), 0, |sum, c| sum + c.hits)
    }

    fn hit(window: &mut RollingWindow<Hits>, at: Instant) -> bool {
        window.current(at).map(|c| c.hits += 1).is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn counts_leave_the_window_as_it_moves() {
        let mut window = RollingWindow::new(3, Instant::now());
        assert!(hit(&mut window, Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(hit(&mut window, Instant::now()));
        assert!(hit(&mut window, Instant::now()));
        assert_eq!(total(&window), 3);
        // Second 0 leaves a 3 s window at second 3; second 1 at second 4.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(total(&window), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(total(&window), 0);
        // A reused slot starts from zero.
        assert!(hit(&mut window, Instant::now()));
        assert_eq!(total(&window), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_reading_leaves_the_current_second_alone() {
        let mut window = RollingWindow::new(10, Instant::now());
        let long_ago = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(hit(&mut window, Instant::now()));
        }
        // Read 10 s ago: the same slot as now. It must not wipe the five hits.
        assert!(!hit(&mut window, long_ago));
        assert_eq!(total(&window), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn clear_forgets_everything() {
        let mut window = RollingWindow::new(5, Instant::now());
        assert!(hit(&mut window, Instant::now()));
        window.clear();
        assert_eq!(total(&window), 0);
    }
}
