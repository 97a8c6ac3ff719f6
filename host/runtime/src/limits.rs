//! Per-plugin limits: resolution against host defaults and ceilings, the call gate (concurrency +
//! bounded queue), and the store's resource limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{CallError, LoadError};
use super::manifest::LimitsSpec;

/// Largest table (funcref) a guest may grow to. Tables live in host memory and a guest controls
/// their growth, so they get a hard cap like linear memory does. 100k entries is far above what
/// any Rust, Python or JS component needs (a few thousand).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// A full set of limit values, in the units of the manifest keys. Used for the host's defaults
/// and ceilings (`[runtime.defaults]`, `[runtime.ceilings]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitValues {
    /// Linear memory per instance, MiB.
    pub memory_mb: u64,
    /// Wall-clock deadline per call, ms.
    pub deadline_ms: u64,
    /// Calls running at once per plugin.
    pub max_concurrency: u64,
    /// Calls waiting for a slot per plugin.
    pub max_queue: u64,
    /// Result bytes per call, KiB.
    pub max_output_kb: u64,
    /// Log bytes (log import + stdout + stderr) per call, KiB.
    pub max_log_kb: u64,
    /// Requests through the `probes` import per call (0: the plugin probes nothing).
    pub max_probes: u64,
}

impl LimitValues {
    pub const DEFAULTS: LimitValues = LimitValues {
        memory_mb: 64,
        deadline_ms: 5_000,
        max_concurrency: 4,
        max_queue: 32,
        max_output_kb: 1_024,
        max_log_kb: 256,
        // An integration test probes every service and agent once or twice: tens, not
        // thousands, and each probe is a request to a real backend.
        max_probes: 64,
    };

    pub const CEILINGS: LimitValues = LimitValues {
        memory_mb: 1_024,
        deadline_ms: 300_000,
        max_concurrency: 64,
        max_queue: 1_024,
        max_output_kb: 16_384,
        max_log_kb: 4_096,
        max_probes: 4_096,
    };

    fn entries(&self) -> [(&'static str, u64); 7] {
        [
            ("memory_mb", self.memory_mb),
            ("deadline_ms", self.deadline_ms),
            ("max_concurrency", self.max_concurrency),
            ("max_queue", self.max_queue),
            ("max_output_kb", self.max_output_kb),
            ("max_log_kb", self.max_log_kb),
            ("max_probes", self.max_probes),
        ]
    }

    /// Checks that defaults sit under ceilings and nothing that must be positive is zero.
    pub fn check_against(&self, ceilings: &LimitValues) -> Result<(), String> {
        for ((key, value), (_, ceiling)) in self.entries().into_iter().zip(ceilings.entries()) {
            if value > ceiling {
                return Err(format!(
                    "runtime.defaults.{key} = {value} is above runtime.ceilings.{key} = {ceiling}"
                ));
            }
            if value == 0 && !may_be_zero(key) {
                return Err(format!("runtime.defaults.{key} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Limits where 0 means "none of it" rather than nothing works: no queue, no probes.
fn may_be_zero(key: &str) -> bool {
    matches!(key, "max_queue" | "max_probes")
}

impl Default for LimitValues {
    fn default() -> Self {
        LimitValues::DEFAULTS
    }
}

/// Limits in force for one plugin, in runtime units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory_bytes: u64,
    pub deadline_ms: u64,
    pub max_concurrency: u32,
    pub max_queue: u32,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    pub max_probes: u32,
}

impl Limits {
    /// Manifest values over host defaults, each checked against its ceiling.
    pub fn resolve(
        plugin: &str,
        spec: &LimitsSpec,
        defaults: &LimitValues,
        ceilings: &LimitValues,
    ) -> Result<Limits, LoadError> {
        let pick = |key: &'static str, asked: Option<u64>, default: u64, ceiling: u64| {
            let value = asked.unwrap_or(default);
            if value > ceiling {
                return Err(LoadError::LimitAboveCeiling {
                    plugin: plugin.to_string(),
                    key,
                    value,
                    ceiling,
                });
            }
            if value == 0 && !may_be_zero(key) {
                return Err(LoadError::Manifest {
                    file: super::manifest::MANIFEST_FILE.into(),
                    message: format!("plugin '{plugin}': limits.{key} must be at least 1"),
                });
            }
            Ok(value)
        };
        let d = defaults;
        let c = ceilings;
        // Ceilings for concurrency and queue are far below u32::MAX (config validation), so the
        // narrowing cannot truncate.
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Limits {
            memory_bytes: pick("memory_mb", spec.memory_mb, d.memory_mb, c.memory_mb)? << 20,
            deadline_ms: pick(
                "deadline_ms",
                spec.deadline_ms,
                d.deadline_ms,
                c.deadline_ms,
            )?,
            max_concurrency: narrow(pick(
                "max_concurrency",
                spec.max_concurrency,
                d.max_concurrency,
                c.max_concurrency,
            )?),
            max_queue: narrow(pick("max_queue", spec.max_queue, d.max_queue, c.max_queue)?),
            max_output_bytes: pick(
                "max_output_kb",
                spec.max_output_kb,
                d.max_output_kb,
                c.max_output_kb,
            )? << 10,
            max_log_bytes: pick("max_log_kb", spec.max_log_kb, d.max_log_kb, c.max_log_kb)? << 10,
            max_probes: narrow(pick(
                "max_probes",
                spec.max_probes,
                d.max_probes,
                c.max_probes,
            )?),
        })
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// `memory_mb`: what one call reserves of the host memory budget.
    pub fn memory_mb(&self) -> u64 {
        self.memory_bytes >> 20
    }
}

/// Admission control for one plugin: at most `max_concurrency` calls run, at most `max_queue`
/// wait; the next caller is refused at once with [`CallError::Overloaded`].
#[derive(Debug)]
pub struct CallGate {
    running: Arc<Semaphore>,
    max_concurrency: u32,
    max_queue: u32,
    waiting: AtomicU32,
}

/// Held for the duration of one call.
#[derive(Debug)]
pub struct CallPermit {
    _permit: OwnedSemaphorePermit,
}

impl CallGate {
    pub fn new(limits: &Limits) -> CallGate {
        CallGate {
            running: Arc::new(Semaphore::new(limits.max_concurrency as usize)),
            max_concurrency: limits.max_concurrency,
            max_queue: limits.max_queue,
            waiting: AtomicU32::new(0),
        }
    }

    pub async fn enter(&self, plugin: &str) -> Result<CallPermit, CallError> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(CallPermit { _permit: permit });
        }
        // Reserve a queue place atomically so concurrent callers cannot overshoot max_queue.
        let reserved = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.max_queue).then_some(w + 1)
            });
        if let Err(queued) = reserved {
            return Err(CallError::Overloaded {
                plugin: plugin.to_string(),
                running: self.max_concurrency,
                queued,
            });
        }
        // Leave the queue even if this future is dropped while waiting.
        struct LeaveQueue<'a>(&'a AtomicU32);
        impl Drop for LeaveQueue<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = LeaveQueue(&self.waiting);
        let permit = Arc::clone(&self.running)
            .acquire_owned()
            .await
            // The semaphore is owned by the gate and never closed.
            .map_err(|_| CallError::Overloaded {
                plugin: plugin.to_string(),
                running: self.max_concurrency,
                queued: self.max_queue,
            })?;
        Ok(CallPermit { _permit: permit })
    }

    /// Calls running now.
    pub fn in_flight(&self) -> u32 {
        self.max_concurrency - u32::try_from(self.running.available_permits()).unwrap_or(0)
    }

    /// Calls waiting now.
    pub fn queued(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Memory requested beyond the plugin's limit; carried as the trap's error so the call can be
/// reported as a memory-limit failure rather than a bare trap.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (asked for {requested})")]
pub struct MemoryLimitHit {
    pub limit: u64,
    pub requested: u64,
}

/// The store's [`wasmtime::ResourceLimiter`]: caps linear memory at the plugin's limit and tables
/// at [`MAX_TABLE_ELEMENTS`], remembering a memory refusal for the error report.
#[derive(Debug)]
pub struct StoreLimiter {
    memory_limit: u64,
    pub memory_hit: Option<MemoryLimitHit>,
}

impl StoreLimiter {
    pub fn new(memory_limit: u64) -> StoreLimiter {
        StoreLimiter {
            memory_limit,
            memory_hit: None,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_limit {
            let hit = MemoryLimitHit {
                limit: self.memory_limit,
                requested: desired,
            };
            self.memory_hit = Some(hit);
            // An error (not `Ok(false)`) traps at the growing instruction, so the guest cannot
            // swallow the refusal and the report says "memory limit" rather than "unreachable".
            return Err(wasmtime::Error::new(hit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_memory_budget_admits_up_to_its_total_then_waits_and_times_out() {
        let budget = MemoryBudget::new(64).expect("valid");
        let wait = Duration::from_millis(500);
        let first = budget.reserve(32, wait).await.expect("32 of 64");
        let second = budget.reserve(32, wait).await.expect("64 of 64");
        assert_eq!(budget.reserved_mb(), 64);
        // Full: the third waits its whole deadline (paused time jumps ahead) and is refused.
        let started = tokio::time::Instant::now();
        assert!(budget.reserve(1, wait).await.is_none());
        assert_eq!(started.elapsed(), wait);
        // A finished call frees its share for the next one.
        drop(first);
        assert_eq!(budget.reserved_mb(), 32);
        assert!(budget.reserve(32, wait).await.is_some());
        drop(second);
        // Past the whole budget can never be admitted; 0 and oversized budgets are refused.
        assert!(budget.reserve(65, wait).await.is_none());
        assert!(MemoryBudget::new(0).is_err());
        assert!(MemoryBudget::new(u64::from(u32::MAX) + 1).is_err());
    }

    fn limits(max_concurrency: u32, max_queue: u32) -> Limits {
        Limits {
            memory_bytes: 1 << 20,
            deadline_ms: 1_000,
            max_concurrency,
            max_queue,
            max_output_bytes: 1024,
            max_log_bytes: 1024,
            max_probes: 0,
        }
    }

    #[test]
    fn max_probes_may_be_zero_and_is_held_under_its_ceiling() {
        let resolve = |max_probes| {
            let spec = LimitsSpec {
                max_probes: Some(max_probes),
                ..LimitsSpec::default()
            };
            Limits::resolve("p", &spec, &LimitValues::DEFAULTS, &LimitValues::CEILINGS)
        };
        assert_eq!(resolve(0).expect("none at all").max_probes, 0);
        assert!(matches!(
            resolve(LimitValues::CEILINGS.max_probes + 1),
            Err(LoadError::LimitAboveCeiling {
                key: "max_probes",
                ..
            })
        ));
        let default = Limits::resolve(
            "p",
            &LimitsSpec::default(),
            &LimitValues::DEFAULTS,
            &LimitValues::CEILINGS,
        )
        .expect("defaults");
        assert_eq!(default.max_probes, 64);
    }

    #[test]
    fn manifest_values_override_defaults_and_ceiling_is_enforced() {
        let spec = LimitsSpec {
            memory_mb: Some(16),
            ..LimitsSpec::default()
        };
        let l = Limits::resolve("p", &spec, &LimitValues::DEFAULTS, &LimitValues::CEILINGS)
            .expect("within ceilings");
        assert_eq!(l.memory_bytes, 16 << 20);
        assert_eq!(l.deadline_ms, LimitValues::DEFAULTS.deadline_ms);

        let spec = LimitsSpec {
            deadline_ms: Some(LimitValues::CEILINGS.deadline_ms + 1),
            ..LimitsSpec::default()
        };
        let err = Limits::resolve("p", &spec, &LimitValues::DEFAULTS, &LimitValues::CEILINGS)
            .expect_err("above ceiling");
        assert!(
            matches!(
                err,
                LoadError::LimitAboveCeiling {
                    key: "deadline_ms",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn gate_queues_up_to_max_queue_then_refuses() {
        let gate = Arc::new(CallGate::new(&limits(1, 1)));
        let first = gate.enter("p").await.expect("slot free");
        let queued = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.enter("p").await.map(|_| ()) })
        };
        // Wait until the spawned call is in the queue (an event, not a sleep).
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = gate.enter("p").await.expect_err("queue full");
        assert!(
            matches!(refused, CallError::Overloaded { queued: 1, .. }),
            "{refused}"
        );
        drop(first);
        queued.await.expect("task").expect("queued call admitted");
        assert_eq!(gate.queued(), 0);
    }

    #[test]
    fn limiter_refuses_growth_past_limit_and_records_it() {
        use wasmtime::ResourceLimiter;
        let mut limiter = StoreLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).expect("at limit"));
        assert!(limiter.memory_growing(1 << 20, 2 << 20, None).is_err());
        assert_eq!(limiter.memory_hit.map(|h| h.requested), Some(2 << 20));
        assert!(
            !limiter
                .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
                .expect("no trap")
        );
    }
}

/// The host memory budget (`runtime.max_total_memory_mb`): each call reserves its plugin's
/// whole `memory_mb` (what its linear memory may grow to) while it runs, so the linear memory
/// all calls in flight may hold together never exceeds the budget, whatever each plugin's
/// limits times its concurrency would allow.
#[derive(Debug)]
pub struct MemoryBudget {
    total_mb: u64,
    /// One permit per MiB.
    free: Arc<Semaphore>,
}

/// Largest budget: a permit per MiB, and a call reserves at most `u32::MAX` of them at once.
const MAX_BUDGET_MB: u64 = u32::MAX as u64;

impl MemoryBudget {
    pub fn new(total_mb: u64) -> Result<MemoryBudget, String> {
        if total_mb == 0 || total_mb > MAX_BUDGET_MB {
            return Err(format!(
                "runtime.max_total_memory_mb must be between 1 and {MAX_BUDGET_MB} (MiB), not {total_mb}"
            ));
        }
        Ok(MemoryBudget {
            total_mb,
            free: Arc::new(Semaphore::new(total_mb as usize)),
        })
    }

    pub fn total_mb(&self) -> u64 {
        self.total_mb
    }

    /// MiB reserved by calls in flight now.
    pub fn reserved_mb(&self) -> u64 {
        self.total_mb
            .saturating_sub(self.free.available_permits() as u64)
    }

    /// Reserves `mb` for one call until the permit is dropped, waiting at most `wait` for
    /// calls in flight to release enough; `None` when they did not. Waiters are served in
    /// order, so a large reservation is not starved by a stream of small ones.
    pub async fn reserve(&self, mb: u64, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let mb = u32::try_from(mb).ok()?;
        match tokio::time::timeout(wait, Arc::clone(&self.free).acquire_many_owned(mb)).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }
}
