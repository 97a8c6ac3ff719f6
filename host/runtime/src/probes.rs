//! The host side of the `probes` import: active checks a meta agent can make of the running
//! system (the integration tester's tools).
//!
//! Like [`SystemInventory`](super::SystemInventory), the runtime does not know the mesh or the
//! registry: the daemon installs a [`SystemProbes`] that does. Unlike the inventory, probes do
//! I/O, so they are async and their time counts against the calling plugin's deadline.

use std::time::Instant;

use super::bindings::probes::ProbeResult;

/// Active checks of the parts of the system outside the calling plugin. Implementations answer
/// every failure as `ok: false` with a reason; they never return an error that would trap the
/// guest.
#[async_trait::async_trait]
pub trait SystemProbes: Send + Sync {
    /// One request through the mesh to the named service.
    async fn service(&self, name: &str) -> ProbeResult;
    /// Exercises the named health checker.
    async fn checker(&self, name: &str) -> ProbeResult;
    /// Asks the registry for the best model of `task_type`.
    async fn best_model(&self, task_type: &str) -> ProbeResult;
    /// Asks the named meta agent for its health. `caller` is the plugin asking, which may not
    /// probe itself: its own call would wait for its own concurrency slot.
    async fn agent(&self, caller: &str, name: &str) -> ProbeResult;
}

/// The probes before the daemon installs its own: nothing outside the runtime is running.
#[derive(Debug, Default)]
pub struct DetachedProbes;

#[async_trait::async_trait]
impl SystemProbes for DetachedProbes {
    async fn service(&self, name: &str) -> ProbeResult {
        ProbeTimer::start().fail(format!("no mesh is running to reach service `{name}`"))
    }
    async fn checker(&self, name: &str) -> ProbeResult {
        ProbeTimer::start().fail(format!("no daemon is running to call checker `{name}`"))
    }
    async fn best_model(&self, task_type: &str) -> ProbeResult {
        ProbeTimer::start().fail(format!(
            "no model registry is running to answer for task `{task_type}`"
        ))
    }
    async fn agent(&self, _caller: &str, name: &str) -> ProbeResult {
        ProbeTimer::start().fail(format!("no daemon is running to call agent `{name}`"))
    }
}

/// Measures one probe and builds its result.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTimer(Instant);

impl ProbeTimer {
    pub fn start() -> ProbeTimer {
        ProbeTimer(Instant::now())
    }

    fn result(self, ok: bool, detail: String) -> ProbeResult {
        ProbeResult {
            ok,
            detail,
            latency_us: u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    pub fn pass(self, detail: impl Into<String>) -> ProbeResult {
        self.result(true, detail.into())
    }

    pub fn fail(self, detail: impl Into<String>) -> ProbeResult {
        self.result(false, detail.into())
    }
}
