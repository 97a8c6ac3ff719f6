//! The rollback window: after a swap, the new generation is watched for `watch_window_s`.
//!
//! 1. **watch**: the window opens at the swap. Each fault of the new generation wakes the watch,
//!    which re-reads its failed-call count.
//! 2. **roll back** when that count reaches `rollback_failures` within the window, or when
//!    supervision quarantines the generation first (a quarantine is a verdict of its own: the
//!    count may never get there while calls are refused).
//! 3. **keep** when the window closes short of that: faults after it are supervision's to
//!    handle, not the reload's. `rollback_failures = 0` keeps at once.
//!
//! A generation that stops serving during the window (replaced by the next reload, or
//! unloaded) ends the watch: there is nothing to roll back from any more.
//!
//! The window reads the generation through [`WatchedGeneration`], so it runs under paused time
//! against a scripted generation in tests; the pipeline's is [`ServingGeneration`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use evolve_runtime::{Plugin, Runtime};

/// What the window reads of the generation it watches.
pub(crate) trait WatchedGeneration {
    /// Whether it still serves its name.
    fn serving(&self) -> bool;
    /// Its failed calls so far.
    fn faults(&self) -> u64;
    /// Whether supervision has quarantined it.
    fn quarantined(&self) -> bool;
    /// Notified (`notify_waiters`) at each fault.
    fn fault_signal(&self) -> &Notify;
    /// Notified (`notify_waiters`) when it stops serving.
    fn replaced_signal(&self) -> &Notify;
}

/// A window's settings, from `[reload]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) length: Duration,
    /// Faults within the window that roll back; 0 never does.
    pub(crate) rollback_failures: u64,
}

/// How a window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowVerdict {
    /// Step 2: enough faults (or a quarantine) within the window.
    RollBack,
    /// Step 3: the window closed short of that, or rollback is off.
    Keep,
    /// It stopped serving before the window closed.
    NoLongerServing,
}

/// Watches `generation` from now until the window closes or a verdict is reached earlier.
pub(crate) async fn watch(generation: &impl WatchedGeneration, window: Window) -> WindowVerdict {
    if window.rollback_failures == 0 {
        return WindowVerdict::Keep;
    }
    let closes_at = tokio::time::Instant::now() + window.length;
    loop {
        // Register before reading the state, so a change in between still wakes us.
        let fault = generation.fault_signal().notified();
        let replaced = generation.replaced_signal().notified();
        tokio::pin!(fault, replaced);
        fault.as_mut().enable();
        replaced.as_mut().enable();
        if !generation.serving() {
            return WindowVerdict::NoLongerServing;
        }
        if generation.faults() >= window.rollback_failures || generation.quarantined() {
            return WindowVerdict::RollBack;
        }
        tokio::select! {
            _ = &mut fault => {}
            _ = &mut replaced => {}
            _ = tokio::time::sleep_until(closes_at) => return WindowVerdict::Keep,
        }
    }
}

/// The pipeline's [`WatchedGeneration`]: a plugin generation and the runtime it serves in.
pub(crate) struct ServingGeneration<'a> {
    pub(crate) runtime: &'a Runtime,
    pub(crate) plugin: &'a Arc<Plugin>,
}

impl WatchedGeneration for ServingGeneration<'_> {
    fn serving(&self) -> bool {
        self.runtime
            .get(self.plugin.name())
            .is_some_and(|current| Arc::ptr_eq(&current, self.plugin))
    }

    fn faults(&self) -> u64 {
        self.plugin.stats.failed.load(Ordering::Relaxed)
    }

    fn quarantined(&self) -> bool {
        self.plugin.supervision.view().quarantined
    }

    fn fault_signal(&self) -> &Notify {
        &self.plugin.supervision.fault
    }

    fn replaced_signal(&self) -> &Notify {
        &self.plugin.replaced
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::task::Poll;

    use super::*;

    /// A generation whose faults, quarantine and replacement the test drives.
    #[derive(Default)]
    struct ScriptedGeneration {
        replaced: AtomicBool,
        failed: AtomicU64,
        quarantined: AtomicBool,
        fault: Notify,
        replaced_signal: Notify,
    }

    impl ScriptedGeneration {
        fn fault(&self) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            self.fault.notify_waiters();
        }

        fn quarantine(&self) {
            self.quarantined.store(true, Ordering::SeqCst);
            self.fault.notify_waiters();
        }

        fn replace(&self) {
            self.replaced.store(true, Ordering::SeqCst);
            self.replaced_signal.notify_waiters();
        }
    }

    impl WatchedGeneration for ScriptedGeneration {
        fn serving(&self) -> bool {
            !self.replaced.load(Ordering::SeqCst)
        }
        fn faults(&self) -> u64 {
            self.failed.load(Ordering::SeqCst)
        }
        fn quarantined(&self) -> bool {
            self.quarantined.load(Ordering::SeqCst)
        }
        fn fault_signal(&self) -> &Notify {
            &self.fault
        }
        fn replaced_signal(&self) -> &Notify {
            &self.replaced_signal
        }
    }

    const WINDOW: Window = Window {
        length: Duration::from_secs(30),
        rollback_failures: 3,
    };

    /// Polls `watch` once in the test's own task: the watch registers for faults and opens its
    /// window (or reaches a verdict) before the test moves on, with no scheduling in between.
    async fn poll_once<F: Future + Unpin>(watch: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *watch).poll(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn faults_reaching_the_threshold_within_the_window_roll_back() {
        let generation = ScriptedGeneration::default();
        let started = tokio::time::Instant::now();
        let mut verdict = pin!(watch(&generation, WINDOW));
        assert!(poll_once(&mut verdict).await.is_pending());
        for _ in 0..WINDOW.rollback_failures {
            tokio::time::advance(Duration::from_secs(5)).await;
            generation.fault();
        }
        assert_eq!(verdict.await, WindowVerdict::RollBack);
        // Had the watch waited for the window's end, paused time would have jumped there.
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn faults_below_the_threshold_keep_the_new_generation_when_the_window_closes() {
        let generation = ScriptedGeneration::default();
        let started = tokio::time::Instant::now();
        let mut verdict = pin!(watch(&generation, WINDOW));
        assert!(poll_once(&mut verdict).await.is_pending());
        for _ in 1..WINDOW.rollback_failures {
            generation.fault();
            assert!(poll_once(&mut verdict).await.is_pending());
        }
        assert_eq!(verdict.await, WindowVerdict::Keep);
        assert_eq!(started.elapsed(), WINDOW.length);
    }

    #[tokio::test(start_paused = true)]
    async fn faults_after_the_window_do_not_roll_back() {
        let generation = ScriptedGeneration::default();
        let mut verdict = pin!(watch(&generation, WINDOW));
        assert!(poll_once(&mut verdict).await.is_pending());
        for _ in 1..WINDOW.rollback_failures {
            generation.fault();
            assert!(poll_once(&mut verdict).await.is_pending());
        }
        tokio::time::advance(WINDOW.length).await;
        assert_eq!(
            poll_once(&mut verdict).await,
            Poll::Ready(WindowVerdict::Keep)
        );
        // The fault that would have reached the threshold comes too late to count.
        generation.fault();
        assert!(generation.faults() >= WINDOW.rollback_failures);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_window_keeps_the_new_generation_once_it_closes() {
        let generation = ScriptedGeneration::default();
        let mut verdict = pin!(watch(&generation, WINDOW));
        assert!(poll_once(&mut verdict).await.is_pending());
        tokio::time::advance(WINDOW.length - Duration::from_millis(1)).await;
        assert!(
            poll_once(&mut verdict).await.is_pending(),
            "kept only once the window closes"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            poll_once(&mut verdict).await,
            Poll::Ready(WindowVerdict::Keep)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quarantine_within_the_window_rolls_back_before_the_threshold() {
        let generation = ScriptedGeneration::default();
        let mut verdict = pin!(watch(&generation, WINDOW));
        assert!(poll_once(&mut verdict).await.is_pending());
        generation.fault();
        assert!(poll_once(&mut verdict).await.is_pending());
        generation.quarantine();
        assert_eq!(
            poll_once(&mut verdict).await,
            Poll::Ready(WindowVerdict::RollBack)
        );
        assert!(generation.faults() < WINDOW.rollback_failures);
    }

    #[tokio::test(start_paused = true)]
    async fn a_generation_replaced_within_the_window_is_no_longer_watched() {
        let generation = ScriptedGeneration::default();
        let mut verdict = pin!(watch(&generation, WINDOW));
        assert!(poll_once(&mut verdict).await.is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        generation.replace();
        assert_eq!(
            poll_once(&mut verdict).await,
            Poll::Ready(WindowVerdict::NoLongerServing)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_rollback_failures_keeps_at_once_whatever_the_faults() {
        let generation = ScriptedGeneration::default();
        for _ in 0..10 {
            generation.fault();
        }
        let off = Window {
            length: WINDOW.length,
            rollback_failures: 0,
        };
        let mut verdict = pin!(watch(&generation, off));
        assert_eq!(
            poll_once(&mut verdict).await,
            Poll::Ready(WindowVerdict::Keep)
        );
    }
}
