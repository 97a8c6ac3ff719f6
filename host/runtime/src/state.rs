//! The data of one call's `Store`, and the host side of the `logging`, `config` and `inventory`
//! imports.

use std::sync::{Arc, Weak};

use evolve_core::untrusted::{escape_untrusted, escape_untrusted_owned};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{config, inventory, logging, probes, types};
use super::inventory::Snapshot;
use super::limits::StoreLimiter;
use super::output::MAX_LOG_FIELDS;
use super::probes::{DetachedProbes, SystemProbes};
use super::sandbox::{CallLog, HttpPolicy};

/// Anything that can produce an inventory snapshot (the runtime).
pub trait SnapshotSource: Send + Sync {
    fn snapshot(&self) -> Snapshot;
    fn probes(&self) -> Arc<dyn SystemProbes>;
    /// What answers outbound HTTP in place of the network; `None` (the daemon) is the network.
    fn http_transport(&self) -> Option<Arc<dyn super::sandbox::HttpTransport>> {
        None
    }
}

/// Per-plugin data shared by all of its calls.
#[derive(Debug)]
pub struct PluginContext {
    pub name: Arc<str>,
    /// `[config]` as a JSON object.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The same, serialised once at load.
    pub config_text: String,
}

/// `T` of every plugin `Store`.
pub struct PluginState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_policy: HttpPolicy,
    pub(crate) limiter: StoreLimiter,
    pub(crate) log: Arc<CallLog>,
    pub(crate) plugin: Arc<PluginContext>,
    pub(crate) snapshot_source: Weak<dyn SnapshotSource>,
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    pub(crate) deadline_hit: bool,
    /// What this call may still ask through `probes`, and how many it was refused.
    pub(crate) probe_quota: ProbeQuota,
}

/// A call's `probes` budget: each probe is a request to a real backend or another plugin, so a
/// loop of them is bounded per call (`max_probes`), not only by the deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeQuota {
    pub(crate) left: u32,
    pub(crate) limit: u32,
    pub(crate) refused: u32,
}

impl ProbeQuota {
    pub(crate) fn new(limit: u32) -> ProbeQuota {
        ProbeQuota {
            left: limit,
            limit,
            refused: 0,
        }
    }

    /// Spends one probe; the refusal the guest sees once none is left.
    fn spend(&mut self) -> Option<probes::ProbeResult> {
        if self.left > 0 {
            self.left -= 1;
            return None;
        }
        self.refused = self.refused.saturating_add(1);
        Some(probes::ProbeResult {
            ok: false,
            detail: format!(
                "refused: this call already made its {} probes (limits.max_probes); the call fails with probe_quota",
                self.limit
            ),
            latency_us: 0,
        })
    }
}

impl PluginState {
    fn snapshot(&mut self) -> Arc<Snapshot> {
        if let Some(snapshot) = &self.snapshot {
            return Arc::clone(snapshot);
        }
        let snapshot = Arc::new(match self.snapshot_source.upgrade() {
            Some(source) => source.snapshot(),
            // The runtime is shutting down; answer with an empty system rather than trap.
            None => Snapshot {
                host: super::inventory::SystemInventory::host(&super::inventory::DetachedInventory),
                plugins: Vec::new(),
                services: Vec::new(),
                models: Vec::new(),
                best_models: Vec::new(),
                agents: Vec::new(),
                plugin_sources: Vec::new(),
                api_endpoints: Vec::new(),
                security: super::inventory::SystemInventory::security(
                    &super::inventory::DetachedInventory,
                ),
            },
        });
        self.snapshot = Some(Arc::clone(&snapshot));
        snapshot
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

impl types::Host for PluginState {}

impl logging::Host for PluginState {
    fn log(&mut self, level: logging::Level, message: String, fields: Vec<(String, String)>) {
        // The guest's text enters the daemon's log here: escaped, so a newline cannot end the
        // plugin's line and start one that looks like the daemon's own, in either log format.
        // The budget is charged for the escaped size, which is what the log receives.
        let message = escape_untrusted(&message);
        let dropped = fields.len().saturating_sub(MAX_LOG_FIELDS);
        let mut fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(key, value)| (escape_untrusted_owned(key), escape_untrusted_owned(value)))
            .collect();
        if dropped > 0 {
            fields.push(("fields_dropped".to_string(), dropped.to_string()));
        }
        self.log.record(level, &message, &fields);
    }
}

impl config::Host for PluginState {
    fn get_all(&mut self) -> String {
        self.plugin.config_text.clone()
    }

    fn get(&mut self, key: String) -> Option<String> {
        self.plugin.config.get(&key).map(|v| v.to_string())
    }
}

impl inventory::Host for PluginState {
    fn host(&mut self) -> inventory::HostSummary {
        self.snapshot().host.clone()
    }

    fn security(&mut self) -> inventory::SecurityPosture {
        self.snapshot().security.clone()
    }

    fn plugins(&mut self) -> Vec<inventory::PluginSummary> {
        self.snapshot().plugins.clone()
    }

    fn services(&mut self) -> Vec<inventory::ServiceStatus> {
        self.snapshot().services.clone()
    }

    fn models(&mut self) -> Vec<inventory::ModelSummary> {
        self.snapshot().models.clone()
    }

    fn best_models(&mut self) -> Vec<inventory::ModelChoice> {
        self.snapshot().best_models.clone()
    }

    fn agents(&mut self) -> Vec<inventory::AgentSummary> {
        self.snapshot().agents.clone()
    }

    fn plugin_sources(&mut self) -> Vec<inventory::PluginSource> {
        self.snapshot().plugin_sources.clone()
    }

    fn api_endpoints(&mut self) -> Vec<inventory::ApiEndpoint> {
        self.snapshot().api_endpoints.clone()
    }
}

impl PluginState {
    fn probes(&self) -> Arc<dyn SystemProbes> {
        match self.snapshot_source.upgrade() {
            Some(source) => source.probes(),
            None => Arc::new(DetachedProbes),
        }
    }
}

impl probes::Host for PluginState {
    async fn probe_service(&mut self, name: String) -> probes::ProbeResult {
        if let Some(refused) = self.probe_quota.spend() {
            return refused;
        }
        self.probes().service(&name).await
    }

    async fn probe_checker(&mut self, name: String) -> probes::ProbeResult {
        if let Some(refused) = self.probe_quota.spend() {
            return refused;
        }
        self.probes().checker(&name).await
    }

    async fn probe_best_model(&mut self, task_type: String) -> probes::ProbeResult {
        if let Some(refused) = self.probe_quota.spend() {
            return refused;
        }
        self.probes().best_model(&task_type).await
    }

    async fn probe_agent(&mut self, name: String) -> probes::ProbeResult {
        if let Some(refused) = self.probe_quota.spend() {
            return refused;
        }
        let caller = Arc::clone(&self.plugin.name);
        self.probes().agent(&caller, &name).await
    }
}
