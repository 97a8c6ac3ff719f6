//! What plugins see of the whole daemon: the [`SystemInventory`] (read-only snapshot parts
//! outside the runtime) and the [`SystemProbes`] (active checks for meta agents).
//!
//! Both are assembled here, at the top of the data flow, so the runtime never depends on the
//! agents, mesh or registry: the daemon installs them into the runtime at start.

use std::sync::Arc;
use std::time::Instant;

use crate::agents::AgentManager;
use crate::api::ENDPOINTS;
use crate::mesh::Mesh;
use crate::registry::Registry;
use crate::runtime::bindings::inventory::{
    AgentSummary, ApiEndpoint, HostSummary, ModelChoice, ModelSummary, ServiceStatus,
};
use crate::runtime::bindings::probes::ProbeResult;
use crate::runtime::bindings::types::HealthStatus;
use crate::runtime::bindings::types::Service;
use crate::runtime::{ProbeTimer, Runtime, SystemInventory, SystemProbes};

/// The daemon's part of the plugin inventory.
pub struct DaemonInventory {
    pub listen: String,
    pub auth: bool,
    pub started: Instant,
    pub agents: AgentManager,
    pub registry: Option<Arc<Registry>>,
    pub mesh: Option<Mesh>,
}

impl SystemInventory for DaemonInventory {
    fn host(&self) -> HostSummary {
        HostSummary {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_listen: self.listen.clone(),
            api_auth: self.auth,
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    fn services(&self) -> Vec<ServiceStatus> {
        self.mesh.as_ref().map_or_else(Vec::new, Mesh::inventory)
    }

    fn models(&self) -> Vec<ModelSummary> {
        self.registry
            .as_ref()
            .map_or_else(Vec::new, |r| r.inventory_models())
    }

    fn best_models(&self) -> Vec<ModelChoice> {
        self.registry
            .as_ref()
            .map_or_else(Vec::new, |r| r.inventory_best())
    }

    fn agents(&self) -> Vec<AgentSummary> {
        self.agents.inventory()
    }

    fn api_endpoints(&self) -> Vec<ApiEndpoint> {
        ENDPOINTS
            .iter()
            .map(|e| ApiEndpoint {
                method: e.method.to_string(),
                path: e.path.to_string(),
                summary: e.summary.to_string(),
            })
            .collect()
    }
}

/// The daemon's probes.
pub struct DaemonProbes {
    pub runtime: Runtime,
    pub registry: Option<Arc<Registry>>,
    pub mesh: Option<Mesh>,
}

impl DaemonProbes {
    /// The first instance of a service whose health check uses `checker`, as the checker sees
    /// a target.
    fn checked_target(&self, checker: &str) -> Option<Service> {
        let mesh = self.mesh.as_ref()?;
        mesh.services().values().find_map(|state| {
            let spec = &state.spec;
            let health = spec.health.as_ref().filter(|h| h.checker == checker)?;
            let instance = spec.instances.first()?;
            let mut metadata: Vec<(String, String)> = instance
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            metadata.push(("health_path".into(), health.path.clone()));
            Some(Service {
                name: spec.name.clone(),
                service_type: spec.service_type.clone(),
                endpoint: instance.endpoint.clone(),
                capabilities: spec.capabilities.clone(),
                weight: instance.weight,
                metadata,
            })
        })
    }
}

#[async_trait::async_trait]
impl SystemProbes for DaemonProbes {
    async fn service(&self, name: &str) -> ProbeResult {
        let timer = ProbeTimer::start();
        let Some(mesh) = &self.mesh else {
            return timer.fail(format!(
                "service `{name}`: this daemon has no service mesh to reach it through"
            ));
        };
        match mesh.probe_service(name).await {
            Ok(report) if report.status < 500 => timer.pass(format!(
                "HTTP {} from instance {} at {}",
                report.status, report.instance, report.path
            )),
            Ok(report) => timer.fail(format!(
                "HTTP {} from instance {} at {}",
                report.status,
                if report.instance.is_empty() {
                    "(none)"
                } else {
                    &report.instance
                },
                report.path
            )),
            Err(error) => timer.fail(format!("service `{name}`: {error}")),
        }
    }

    async fn checker(&self, name: &str) -> ProbeResult {
        let timer = ProbeTimer::start();
        if let Some(target) = self.checked_target(name) {
            let (service, endpoint) = (target.name.clone(), target.endpoint.clone());
            return match self.runtime.check_service(name, target).await {
                Ok(report) => match report.value {
                    Ok(health) => timer.pass(format!(
                        "checker `{name}` checked {service} at {endpoint}: {} ({})",
                        health.status.as_str(),
                        health.detail
                    )),
                    // The checker worked and answered with its own error about the target:
                    // the checker itself is fine.
                    Err(error) => timer.pass(format!(
                        "checker `{name}` answered for {service} at {endpoint}: {}",
                        error.message
                    )),
                },
                Err(error) => timer.fail(format!("checker `{name}`: {error}")),
            };
        }
        match self.runtime.describe(name).await {
            Ok(report) => timer.pass(format!(
                "checker `{name}` (generation {}) answered describe()",
                report.generation
            )),
            Err(error) => timer.fail(format!("checker `{name}`: {error}")),
        }
    }

    async fn best_model(&self, task_type: &str) -> ProbeResult {
        let timer = ProbeTimer::start();
        let Some(registry) = self.registry.clone() else {
            return timer.fail(format!(
                "task `{task_type}`: this daemon has no model registry to ask"
            ));
        };
        let task = task_type.to_string();
        match tokio::task::spawn_blocking(move || registry.best_for_task(&task, None)).await {
            Ok(Ok(answer)) => timer.pass(format!(
                "best `{task_type}` model is {} v{} (score {:.3}, {} candidates, policy {})",
                answer.winner.model,
                answer.winner.version,
                answer.winner.score,
                answer.candidates.len(),
                answer.policy
            )),
            Ok(Err(error)) => timer.fail(format!("task `{task_type}`: {error}")),
            Err(error) => timer.fail(format!("task `{task_type}`: the query failed: {error}")),
        }
    }

    async fn agent(&self, caller: &str, name: &str) -> ProbeResult {
        let timer = ProbeTimer::start();
        if caller == name {
            return timer.fail(format!(
                "agent `{name}` cannot probe itself (its own health call would wait behind the running call)"
            ));
        }
        match self.runtime.agent_health(name).await {
            Ok(report) if report.value.status != HealthStatus::Unhealthy => timer.pass(format!(
                "agent `{name}` is {}: {}",
                report.value.status.as_str(),
                report.value.detail
            )),
            Ok(report) => timer.fail(format!(
                "agent `{name}` is unhealthy: {}",
                report.value.detail
            )),
            Err(error) => timer.fail(format!("agent `{name}`: {error}")),
        }
    }
}
