//! The read-only system view behind the `inventory` import.
//!
//! The runtime knows its plugins; the rest (services, models, agents, the host itself) comes from
//! a [`SystemInventory`] the daemon installs, so the mesh, registry and agents can fill their part
//! in without the runtime depending on them. A plugin sees one snapshot per call, taken lazily at
//! its first inventory call so calls that never ask pay nothing.

use std::sync::Arc;

use super::bindings::inventory::{
    AgentSummary, ApiEndpoint, HostSummary, ModelChoice, ModelSummary, PluginSource, PluginSummary,
    SecurityPosture, ServiceStatus,
};

/// Parts of the system outside the runtime. Every method answers from memory (no I/O): it runs
/// inside a guest call.
pub trait SystemInventory: Send + Sync {
    fn host(&self) -> HostSummary;
    /// How the daemon guards itself; by default, a host with no tokens, cluster or roots.
    fn security(&self) -> SecurityPosture {
        SecurityPosture {
            token_names: Vec::new(),
            auth_reads: false,
            cluster_enabled: false,
            cluster_authenticated: false,
            allowed_dir_roots: Vec::new(),
            allowed_env: Vec::new(),
        }
    }
    fn services(&self) -> Vec<ServiceStatus> {
        Vec::new()
    }
    fn models(&self) -> Vec<ModelSummary> {
        Vec::new()
    }
    fn best_models(&self) -> Vec<ModelChoice> {
        Vec::new()
    }
    fn agents(&self) -> Vec<AgentSummary> {
        Vec::new()
    }
    fn api_endpoints(&self) -> Vec<ApiEndpoint> {
        Vec::new()
    }
}

/// What plugins see of the rest of the system: the `inventory` they read and the `probes` meta
/// agents make. The daemon builds its own over its parts; the test kit scripts one.
#[derive(Clone)]
pub struct SystemView {
    pub inventory: Arc<dyn SystemInventory>,
    pub probes: Arc<dyn crate::probes::SystemProbes>,
}

impl SystemView {
    /// No system: an inventory with only the runtime's own plugins, probes that fail saying so.
    pub fn detached() -> SystemView {
        SystemView {
            inventory: Arc::new(DetachedInventory),
            probes: Arc::new(crate::probes::DetachedProbes),
        }
    }
}

impl std::fmt::Debug for SystemView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemView").finish_non_exhaustive()
    }
}

/// The inventory before the daemon installs its own: a host with no API.
#[derive(Debug, Default)]
pub struct DetachedInventory;

impl SystemInventory for DetachedInventory {
    fn host(&self) -> HostSummary {
        HostSummary {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_listen: String::new(),
            api_auth: false,
            uptime_s: 0,
        }
    }
}

/// One consistent view for the duration of a call.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub host: HostSummary,
    pub security: SecurityPosture,
    pub plugins: Vec<PluginSummary>,
    pub services: Vec<ServiceStatus>,
    pub models: Vec<ModelSummary>,
    pub best_models: Vec<ModelChoice>,
    pub agents: Vec<AgentSummary>,
    pub plugin_sources: Vec<PluginSource>,
    pub api_endpoints: Vec<ApiEndpoint>,
}
