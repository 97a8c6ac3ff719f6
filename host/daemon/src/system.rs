//! What plugins see of the whole daemon: the [`SystemInventory`] (read-only snapshot parts
//! outside the runtime) and the [`SystemProbes`] (active checks for meta agents).
//!
//! Both are assembled here, at the top of the data flow, so the runtime never depends on the
//! agents, mesh or registry: the daemon installs them into the runtime at start.
//!
//! This is also the one place where the mesh's and the registry's plain types meet the
//! plugins' WIT types: [`wit_service`], [`wit_report`], [`mesh_report`], the inventory
//! conversions, and [`PluginChecks`], the mesh's [`CheckRunner`] that runs health-checker
//! plugins.

use std::sync::Arc;
use std::time::Instant;

use crate::agents::AgentManager;
use evolve_mesh::config::ModelWanted;
use evolve_mesh::{
    CheckOutcome, CheckReport, CheckRunner, CheckVerdict, InstanceRecord, InventoryEntry,
};
use evolve_mesh::{Mesh, ModelSelector, NoModel, Selection};
use evolve_registry::performance::MetricValue;
use evolve_registry::{ModelFilter, NewPoint, Registry, RegistryError};
use evolve_runtime::PluginKind;
use evolve_runtime::bindings::inventory::{
    AgentSummary, ApiEndpoint, HostSummary, ModelChoice, ModelSummary, SecurityPosture,
    ServiceStatus,
};
use evolve_runtime::bindings::probes::ProbeResult;
use evolve_runtime::bindings::types::{HealthReport, HealthStatus, Service};
use evolve_runtime::{ProbeTimer, Runtime, SystemInventory, SystemProbes};

/// The daemon's part of the plugin inventory.
pub struct DaemonInventory {
    pub listen: String,
    pub auth: bool,
    pub started: Instant,
    pub agents: AgentManager,
    pub registry: Option<Arc<Registry>>,
    pub mesh: Option<Mesh>,
    /// The HTTP API's routes, as the API lists them (handed in by whoever serves the API).
    pub api_endpoints: Vec<ApiEndpoint>,
    /// How the daemon guards itself (fixed at start: it comes from the config).
    pub security: SecurityPosture,
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

    fn security(&self) -> SecurityPosture {
        self.security.clone()
    }

    fn services(&self) -> Vec<ServiceStatus> {
        self.mesh.as_ref().map_or_else(Vec::new, |mesh| {
            mesh.inventory()
                .into_iter()
                .map(wit_service_status)
                .collect()
        })
    }

    fn models(&self) -> Vec<ModelSummary> {
        self.registry.as_ref().map_or_else(Vec::new, |registry| {
            registry
                .inventory_models()
                .into_iter()
                .map(wit_model_summary)
                .collect()
        })
    }

    fn best_models(&self) -> Vec<ModelChoice> {
        self.registry.as_ref().map_or_else(Vec::new, |registry| {
            registry
                .inventory_best()
                .into_iter()
                .map(wit_model_choice)
                .collect()
        })
    }

    fn agents(&self) -> Vec<AgentSummary> {
        self.agents.inventory()
    }

    fn api_endpoints(&self) -> Vec<ApiEndpoint> {
        self.api_endpoints.clone()
    }
}

/// The mesh's instance as the plugins' WIT `service` record.
pub fn wit_service(instance: InstanceRecord) -> Service {
    Service {
        name: instance.name,
        service_type: instance.service_type,
        endpoint: instance.endpoint,
        capabilities: instance.capabilities,
        weight: instance.weight,
        metadata: instance.metadata,
    }
}

/// The mesh's check report as the plugins' WIT `health-report`.
pub fn wit_report(report: CheckReport) -> HealthReport {
    HealthReport {
        status: match report.status {
            CheckVerdict::Healthy => HealthStatus::Healthy,
            CheckVerdict::Degraded => HealthStatus::Degraded,
            CheckVerdict::Unhealthy => HealthStatus::Unhealthy,
        },
        latency_us: report.latency_us,
        detail: report.detail,
        checked_at_ms: report.checked_at_ms,
    }
}

/// A checker plugin's WIT `health-report` as the mesh's check report.
pub fn mesh_report(report: HealthReport) -> CheckReport {
    CheckReport {
        status: match report.status {
            HealthStatus::Healthy => CheckVerdict::Healthy,
            HealthStatus::Degraded => CheckVerdict::Degraded,
            HealthStatus::Unhealthy => CheckVerdict::Unhealthy,
        },
        latency_us: report.latency_us,
        detail: report.detail,
        checked_at_ms: report.checked_at_ms,
    }
}

fn wit_service_status(entry: InventoryEntry) -> ServiceStatus {
    ServiceStatus {
        service: wit_service(entry.service),
        health: entry.health.map(wit_report),
        circuit: entry.circuit.to_string(),
    }
}

fn wit_model_summary(model: evolve_registry::ModelSummary) -> ModelSummary {
    ModelSummary {
        name: model.name,
        task_type: model.task_type,
        latest_version: model.latest_version,
        aliases: model.aliases.into_iter().collect(),
        tags: model.tags,
    }
}

fn wit_model_choice(choice: evolve_registry::ModelChoice) -> ModelChoice {
    ModelChoice {
        task_type: choice.task_type,
        name: choice.name,
        version: choice.version,
        score: choice.score,
        reason: choice.reason,
    }
}

/// The mesh's [`CheckRunner`]: each check is one call of a health-checker plugin.
pub struct PluginChecks(pub Runtime);

#[async_trait::async_trait]
impl CheckRunner for PluginChecks {
    fn has_checker(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|p| p.kind() == PluginKind::HealthChecker)
    }

    async fn check(&self, checker: &str, target: InstanceRecord) -> CheckOutcome {
        match self.0.check_service(checker, wit_service(target)).await {
            Ok(report) => match report.value {
                Ok(health) => CheckOutcome::Report(mesh_report(health)),
                Err(error) => CheckOutcome::Error(format!(
                    "checker '{checker}' could not check: {} ({})",
                    error.message,
                    error.code.as_str()
                )),
            },
            Err(error) => CheckOutcome::Error(error.to_string()),
        }
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

/// The registry as the mesh's [`ModelSelector`]: model-aware routes ask it which model to send
/// and record what backends reported. Kept here so the mesh never depends on the
/// registry.
pub struct RegistrySelector {
    pub registry: Arc<Registry>,
}

impl RegistrySelector {
    /// Registry errors that mean "no model" rather than "the registry failed".
    fn no_model(error: RegistryError) -> NoModel {
        let reason = match &error {
            RegistryError::NoEligibleModel { .. } => "no_model",
            RegistryError::PolicyNotFound { .. } => "unknown_policy",
            RegistryError::Invalid { .. } => "invalid_task",
            _ => "registry_error",
        };
        NoModel {
            reason,
            detail: error.to_string(),
        }
    }

    /// Every model of `task` carrying `alias`, as (model, version); several are ranked by
    /// `policy` (ranked candidates first in rank order, then the rest by name).
    fn by_alias(
        &self,
        task: &str,
        alias: &str,
        policy: Option<&str>,
    ) -> Result<Selection, NoModel> {
        let models = self
            .registry
            .models(&ModelFilter {
                task: Some(task.to_string()),
                limit: Some(evolve_registry::models::MAX_LIST_LIMIT),
                ..Default::default()
            })
            .map_err(Self::no_model)?;
        // The list is in name order, so ties below keep name order.
        let holders: Vec<(String, u32)> = models
            .into_iter()
            .filter_map(|m| m.aliases.get(alias).map(|v| (m.name, *v)))
            .collect();
        let source = format!("alias:{alias}");
        let chosen = match holders.len() {
            0 => {
                return Err(NoModel {
                    reason: "alias_not_set",
                    detail: format!("no model of task type '{task}' has the alias '{alias}'"),
                });
            }
            1 => holders.into_iter().next(),
            _ => {
                let ranked = self
                    .registry
                    .best_for_task(task, policy)
                    .map(|answer| answer.candidates)
                    .unwrap_or_default();
                let rank = |(model, version): &(String, u32)| {
                    ranked
                        .iter()
                        .position(|c| &c.model == model && c.version == *version)
                        .unwrap_or(usize::MAX)
                };
                holders.into_iter().min_by_key(|h| rank(h))
            }
        };
        let (name, version) = chosen.ok_or_else(|| NoModel {
            reason: "alias_not_set",
            detail: format!("no model of task type '{task}' has the alias '{alias}'"),
        })?;
        Ok(Selection {
            name,
            version,
            source,
        })
    }
}

impl ModelSelector for RegistrySelector {
    fn select(
        &self,
        task: &str,
        wanted: &ModelWanted,
        policy: Option<&str>,
    ) -> Result<Selection, NoModel> {
        match wanted {
            ModelWanted::Alias(alias) => self.by_alias(task, alias, policy),
            ModelWanted::Best => {
                let answer = self
                    .registry
                    .best_for_task(task, policy)
                    .map_err(Self::no_model)?;
                Ok(Selection {
                    name: answer.winner.model,
                    version: answer.winner.version,
                    source: format!("best:{}", answer.policy),
                })
            }
        }
    }

    fn record_outcome(
        &self,
        model: &str,
        version: u32,
        metrics: &[(String, f64)],
        source: &str,
    ) -> Result<(), String> {
        let points: Vec<NewPoint> = metrics
            .iter()
            .map(|(metric, value)| NewPoint {
                version,
                metric: metric.clone(),
                value: MetricValue(*value),
                timestamp: None,
            })
            .collect();
        self.registry
            .record(model, &points)
            .map(|_| ())
            .map_err(|e| format!("{source}: {e}"))
    }
}
