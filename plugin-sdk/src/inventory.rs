//! A read-only view of the running system, through the `evolve:plugin/inventory` import.
//!
//! Every function answers from a snapshot the host takes when the current call starts, so the
//! answers of one call are consistent with each other. Parts of the system that are not running
//! answer with empty lists.
//!
//! ```no_run
//! use evolve_plugin_sdk::inventory;
//!
//! for plugin in inventory::plugins() {
//!     println!("{} {} ({}): {}", plugin.name, plugin.version, plugin.kind, plugin.state);
//! }
//! ```

use std::fmt;

use crate::bindings::meta_agent::evolve::plugin::inventory as imports;

pub use imports::{
    AgentSummary, ApiEndpoint, GrantedDir, HostSummary, ModelChoice, ModelSummary, PluginKind,
    PluginLimits, PluginPermissions, PluginSource, PluginSummary, SecurityPosture, ServiceStatus,
};

/// The daemon itself: version, API address, uptime.
pub fn host() -> HostSummary {
    imports::host()
}

/// How the daemon guards itself: token names (never secrets), whether reads need a token,
/// whether the cluster is authenticated, and the roots and env vars plugins may be granted.
pub fn security() -> SecurityPosture {
    imports::security()
}

/// Every loaded plugin, including this one.
pub fn plugins() -> Vec<PluginSummary> {
    imports::plugins()
}

/// Every registered service instance with its latest health and circuit state.
pub fn services() -> Vec<ServiceStatus> {
    imports::services()
}

/// Every registered model.
pub fn models() -> Vec<ModelSummary> {
    imports::models()
}

/// The model the host would pick for each task type, with its score and reason.
pub fn best_models() -> Vec<ModelChoice> {
    imports::best_models()
}

/// Every meta agent with its schedule and run counts.
pub fn agents() -> Vec<AgentSummary> {
    imports::agents()
}

/// Where each loaded plugin came from and whether its manifest pins the component's sha256.
pub fn plugin_sources() -> Vec<PluginSource> {
    imports::plugin_sources()
}

/// Every route of the daemon's HTTP API.
pub fn api_endpoints() -> Vec<ApiEndpoint> {
    imports::api_endpoints()
}

impl PluginKind {
    /// The WIT name: `meta-agent` or `health-checker`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::MetaAgent => "meta-agent",
            PluginKind::HealthChecker => "health-checker",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PluginSummary {
    /// The first 12 hex digits of the component's sha256, for display.
    pub fn short_sha256(&self) -> &str {
        // `get` rather than slicing: the host promises hex, but a short or non-ASCII value
        // must not panic a plugin that only wants to print it.
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }
}
