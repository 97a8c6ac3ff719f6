//! The runtime as the source of what plugins read through their imports: the inventory
//! snapshot, with this runtime's own plugins in it, the probes, and the test kit's HTTP
//! transport.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use evolve_core::sync::read;

use crate::Shared;
use crate::bindings::inventory as inv;
use crate::inventory::Snapshot;
use crate::manifest::PluginKind;
use crate::plugin::Plugin;
use crate::probes::SystemProbes;
use crate::sandbox::HttpTransport;
use crate::state::SnapshotSource;

impl SnapshotSource for Shared {
    fn http_transport(&self) -> Option<Arc<dyn HttpTransport>> {
        self.http_transport.clone()
    }

    fn snapshot(&self) -> Snapshot {
        let system = Arc::clone(&read(&self.system).inventory);
        let plugins = read(&self.plugins)
            .values()
            .map(|slot| plugin_summary(&slot.current))
            .collect();
        Snapshot {
            host: system.host(),
            plugins,
            services: system.services(),
            models: system.models(),
            best_models: system.best_models(),
            agents: system.agents(),
            plugin_sources: read(&self.plugins)
                .values()
                .map(|slot| plugin_source(&slot.current))
                .collect(),
            api_endpoints: system.api_endpoints(),
            security: system.security(),
        }
    }

    fn probes(&self) -> Arc<dyn SystemProbes> {
        Arc::clone(&read(&self.system).probes)
    }
}

fn plugin_source(p: &Plugin) -> inv::PluginSource {
    inv::PluginSource {
        name: p.name().to_string(),
        dir: p.dir.display().to_string(),
        sha256_pinned: p.manifest.sha256.is_some(),
    }
}

fn plugin_summary(p: &Plugin) -> inv::PluginSummary {
    inv::PluginSummary {
        name: p.name().to_string(),
        version: p.manifest.version.clone(),
        kind: match p.kind() {
            PluginKind::MetaAgent => inv::PluginKind::MetaAgent,
            PluginKind::HealthChecker => inv::PluginKind::HealthChecker,
        },
        wit_version: p.wit_version.clone(),
        description: p.manifest.description.clone(),
        state: "serving".to_string(),
        sha256: p.sha256.clone(),
        generation: p.generation,
        permissions: inv::PluginPermissions {
            http_hosts: p.grants.http_host_patterns.clone(),
            env: p.grants.env_names.clone(),
            dirs: p
                .grants
                .dirs
                .iter()
                .map(|d| inv::GrantedDir {
                    guest_path: d.guest.clone(),
                    host_path: d.host.display().to_string(),
                    writable: d.write,
                })
                .collect(),
        },
        limits: inv::PluginLimits {
            memory_bytes: p.limits.memory_bytes,
            deadline_ms: p.limits.deadline_ms,
            max_concurrency: p.limits.max_concurrency,
            max_queue: p.limits.max_queue,
            max_output_bytes: p.limits.max_output_bytes,
            max_log_bytes: p.limits.max_log_bytes,
        },
        calls: p.stats.calls.load(Ordering::Relaxed),
        failures: p.stats.failed.load(Ordering::Relaxed),
    }
}
