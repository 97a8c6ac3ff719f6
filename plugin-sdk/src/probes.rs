//! Active checks of the running system, through the `evolve:plugin/probes` import (meta agents
//! only).
//!
//! Unlike [`inventory`](crate::inventory), every probe does real work — a request through the
//! mesh, a call into another plugin, a registry query — and its time counts against the calling
//! agent's deadline. A probe never traps: a failure comes back as `ok: false` with the reason.
//!
//! ```no_run
//! use evolve_plugin_sdk::{inventory, probes};
//!
//! for status in inventory::services() {
//!     let result = probes::service(&status.service.name);
//!     println!("{}: {} ({} us)", status.service.name, result.detail, result.latency_us);
//! }
//! ```

use crate::bindings::meta_agent::evolve::plugin::probes as imports;

pub use imports::ProbeResult;

/// One request through the mesh to the named service (its health path, else `/`); passes on any
/// answer below 500.
pub fn service(name: &str) -> ProbeResult {
    imports::probe_service(name)
}

/// Runs the named health checker against the first instance of a service that uses it, else
/// calls its `describe()`.
pub fn checker(name: &str) -> ProbeResult {
    imports::probe_checker(name)
}

/// Asks the model registry for the best model of `task_type`.
pub fn best_model(task_type: &str) -> ProbeResult {
    imports::probe_best_model(task_type)
}

/// Asks another meta agent for its health; passes unless it reports unhealthy.
pub fn agent(name: &str) -> ProbeResult {
    imports::probe_agent(name)
}
