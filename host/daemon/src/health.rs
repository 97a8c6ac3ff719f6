//! One system health (`GET /v1/health`, `evolve health`): the overall status and the parts that
//! make it.
//!
//! | part | unhealthy when | degraded when |
//! |---|---|---|
//! | `plugins` | no plugin serves (none loaded, or every one quarantined), whether or not some are still loading | a plugin failed to load, is quarantined, or its first load is under way |
//! | `services` | never (the daemon still answers its own API) | a service has no routable instance, or an instance is unhealthy, ejected, or its circuit is open |
//! | `registry` | the store is unusable: no registry, file gone, a read failed, or the last integrity check failed | never |
//! | `agents` | never | an agent's latest `health()` said `unhealthy` or `degraded` |
//! | `cluster` | as the cluster reports (see [`ClusterHealth`]) | as the cluster reports |
//!
//! The overall status is the worst part's. Everything is read from memory except one
//! `PRAGMA user_version` on the registry's connection (skipped while a writer holds it), so a
//! request costs microseconds and never runs a full `integrity_check`.
//!
//! Gathering ([`gather`]) is kept apart from the rules ([`plugins_part`], [`services_part`],
//! [`registry_part`], [`agents_part`]), which take plain inputs so they are tested directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

pub use evolve_core::health::{ClusterHealth, Part, Status};

use crate::agents::AgentManager;
use evolve_mesh::Mesh;
use evolve_mesh::view::ServiceView;
use evolve_registry::{Registry, StoreStatus};
use evolve_runtime::Runtime;

/// The answer of `GET /v1/health`.
#[derive(Debug, Clone, Serialize)]
pub struct SystemHealth {
    pub status: Status,
    pub checked_at: DateTime<Utc>,
    /// Every part's reasons, prefixed with the part's name.
    pub reasons: Vec<String>,
    pub parts: BTreeMap<&'static str, Part>,
}

impl SystemHealth {
    /// The worst part decides.
    pub fn of(parts: BTreeMap<&'static str, Part>) -> SystemHealth {
        let status = parts
            .values()
            .map(|p| p.status)
            .max()
            .unwrap_or(Status::Healthy);
        let reasons = parts
            .iter()
            .flat_map(|(name, part)| part.reasons.iter().map(move |r| format!("{name}: {r}")))
            .collect();
        SystemHealth {
            status,
            checked_at: Utc::now(),
            reasons,
            parts,
        }
    }
}

/// What the daemon has, for [`gather`].
pub struct Sources<'a> {
    pub runtime: &'a Runtime,
    pub mesh: Option<&'a Mesh>,
    pub registry: Option<&'a Arc<Registry>>,
    pub agents: &'a AgentManager,
    pub cluster: Option<&'a dyn ClusterHealth>,
}

/// Reads every part and applies the rules.
pub async fn gather(sources: Sources<'_>) -> SystemHealth {
    let plugins = PluginsInput {
        serving: sources
            .runtime
            .plugins()
            .iter()
            .filter(|p| !p.supervision.view().quarantined)
            .map(|p| p.name().to_string())
            .collect(),
        quarantined: sources
            .runtime
            .plugins()
            .iter()
            .filter(|p| p.supervision.view().quarantined)
            .map(|p| p.name().to_string())
            .collect(),
        failed: sources
            .runtime
            .failures()
            .iter()
            .map(|f| (f.name.clone(), f.code.to_string(), f.error.clone()))
            .collect(),
        loading: sources
            .runtime
            .loading()
            .into_iter()
            .map(|l| (l.name, l.since))
            .collect(),
    };
    let services: Vec<ServiceInput> = sources
        .mesh
        .map(|mesh| mesh.views().iter().map(ServiceInput::of).collect())
        .unwrap_or_default();
    let store = match sources.registry {
        Some(registry) => {
            let registry = Arc::clone(registry);
            tokio::task::spawn_blocking(move || registry.store_status())
                .await
                .ok()
        }
        None => None,
    };
    let agents: BTreeMap<String, Option<AgentInput>> = sources
        .agents
        .health()
        .into_iter()
        .map(|(name, samples)| {
            let latest = samples.last().map(|s| AgentInput {
                status: s.status,
                detail: s.detail.clone(),
                at: s.at,
            });
            (name, latest)
        })
        .collect();
    let cluster = match sources.cluster {
        Some(cluster) => cluster.part().await,
        None => Part {
            status: Status::Healthy,
            reasons: Vec::new(),
            detail: json!({ "configured": false, "summary": "not configured (single node)" }),
        },
    };
    let mut parts = BTreeMap::new();
    parts.insert("plugins", plugins_part(&plugins));
    parts.insert("services", services_part(&services, sources.mesh.is_some()));
    parts.insert(
        "registry",
        registry_part(store.as_ref(), sources.registry.is_some()),
    );
    parts.insert("agents", agents_part(&agents));
    parts.insert("cluster", cluster);
    SystemHealth::of(parts)
}

/// The plugins as the rules see them.
#[derive(Debug, Default)]
pub struct PluginsInput {
    pub serving: Vec<String>,
    pub quarantined: Vec<String>,
    /// (name, error code, message)
    pub failed: Vec<(String, String, String)>,
    /// (name, when its first load began)
    pub loading: Vec<(String, DateTime<Utc>)>,
}

pub fn plugins_part(input: &PluginsInput) -> Part {
    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();
    if input.serving.is_empty() {
        unhealthy.push(if !input.loading.is_empty() {
            format!(
                "no plugin serves yet: {} still loading",
                input.loading.len()
            )
        } else if input.quarantined.is_empty() {
            "no plugin serves: none is loaded (check plugins.dir)".to_string()
        } else {
            "no plugin serves: every loaded plugin is quarantined".to_string()
        });
    }
    for (name, since) in &input.loading {
        degraded.push(format!(
            "plugin {name} is still loading (since {})",
            since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ));
    }
    for (name, code, message) in &input.failed {
        degraded.push(format!("plugin {name} failed to load ({code}): {message}"));
    }
    for name in &input.quarantined {
        degraded.push(format!("plugin {name} is quarantined"));
    }
    Part::from_reasons(
        unhealthy,
        degraded,
        json!({
            "serving": input.serving.len(),
            "quarantined": input.quarantined,
            "loading": input.loading.iter().map(|(name, since)| json!({
                "name": name, "since": since,
            })).collect::<Vec<_>>(),
            "failed": input.failed.iter().map(|(name, code, message)| json!({
                "name": name, "code": code, "message": message,
            })).collect::<Vec<_>>(),
        }),
    )
}

/// One service as the rules see it.
#[derive(Debug, Clone)]
pub struct ServiceInput {
    pub name: String,
    pub instances: Vec<InstanceInput>,
}

#[derive(Debug, Clone)]
pub struct InstanceInput {
    pub id: String,
    pub weight: u32,
    /// `unknown`, `healthy`, `unhealthy`.
    pub health: &'static str,
    /// `closed`, `open`, `half-open`.
    pub circuit: &'static str,
    pub ejected: bool,
    pub routable: bool,
}

impl ServiceInput {
    pub fn of(view: &ServiceView) -> ServiceInput {
        ServiceInput {
            name: view.name.clone(),
            instances: view
                .instances
                .iter()
                .map(|i| InstanceInput {
                    id: i.id.clone(),
                    weight: i.weight,
                    health: i.health,
                    circuit: i.circuit,
                    ejected: i.ejected,
                    routable: i.routable,
                })
                .collect(),
        }
    }
}

pub fn services_part(services: &[ServiceInput], mesh_running: bool) -> Part {
    let mut degraded = Vec::new();
    let mut rows = Vec::new();
    let mut breakers_open = 0usize;
    for service in services {
        let routable = service.instances.iter().filter(|i| i.routable).count();
        let healthy = service
            .instances
            .iter()
            .filter(|i| i.health == "healthy")
            .count();
        if routable == 0 {
            degraded.push(format!(
                "service {} has no routable instance ({} instances)",
                service.name,
                service.instances.len()
            ));
        }
        for instance in &service.instances {
            if instance.health == "unhealthy" {
                degraded.push(format!(
                    "service {} instance {} is unhealthy",
                    service.name, instance.id
                ));
            }
            if instance.ejected {
                degraded.push(format!(
                    "service {} instance {} is ejected (consecutive errors)",
                    service.name, instance.id
                ));
            }
            if instance.circuit == "open" {
                breakers_open += 1;
                degraded.push(format!(
                    "service {} instance {} has its circuit open",
                    service.name, instance.id
                ));
            }
        }
        rows.push(json!({
            "name": service.name,
            "instances": service.instances.len(),
            "routable": routable,
            "healthy": healthy,
            "drained": service.instances.iter().filter(|i| i.weight == 0).count(),
            "breakers_open": service.instances.iter().filter(|i| i.circuit == "open").count(),
        }));
    }
    Part::from_reasons(
        Vec::new(),
        degraded,
        json!({
            "mesh": if mesh_running { "running" } else { "disabled" },
            "services": rows,
            "breakers_open": breakers_open,
        }),
    )
}

pub fn registry_part(store: Option<&StoreStatus>, configured: bool) -> Part {
    let Some(store) = store else {
        let reason = if configured {
            "the registry's status could not be read (its task failed)"
        } else {
            "this daemon has no model registry"
        };
        return Part::from_reasons(vec![reason.to_string()], Vec::new(), Value::Null);
    };
    let mut unhealthy = Vec::new();
    if !store.file_present {
        unhealthy.push(format!(
            "the registry file {} is gone; writes will be lost at the next start",
            store.path
        ));
    }
    if store.read_probe != "ok" && store.read_probe != "busy" {
        unhealthy.push(format!(
            "a read on the registry failed: {}",
            store.read_probe
        ));
    }
    if let Some(check) = store.last_integrity_check.as_ref().filter(|c| !c.ok) {
        unhealthy.push(format!(
            "the last integrity_check ({}) failed: {}; restore with `evolve model restore`",
            check.at.to_rfc3339(),
            check.first_problem.as_deref().unwrap_or("")
        ));
    }
    Part::from_reasons(
        unhealthy,
        Vec::new(),
        serde_json::to_value(store).unwrap_or(Value::Null),
    )
}

/// An agent's latest health sample.
#[derive(Debug, Clone)]
pub struct AgentInput {
    pub status: &'static str,
    pub detail: String,
    pub at: DateTime<Utc>,
}

/// `agents`: name → latest sample (`None` before the first health round).
pub fn agents_part(agents: &BTreeMap<String, Option<AgentInput>>) -> Part {
    let mut degraded = Vec::new();
    let mut rows = Vec::new();
    for (name, latest) in agents {
        let status = latest.as_ref().map_or("unknown", |l| l.status);
        if let Some(latest) = latest
            && latest.status != "healthy"
        {
            degraded.push(format!(
                "agent {name} is {}: {}",
                latest.status, latest.detail
            ));
        }
        rows.push(json!({
            "name": name,
            "status": status,
            "at": latest.as_ref().map(|l| l.at),
        }));
    }
    Part::from_reasons(Vec::new(), degraded, json!({ "agents": rows }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn instance(id: &str, health: &'static str, circuit: &'static str) -> InstanceInput {
        InstanceInput {
            id: id.into(),
            weight: 100,
            health,
            circuit,
            ejected: false,
            routable: health != "unhealthy" && circuit != "open",
        }
    }

    fn store(usable: bool) -> StoreStatus {
        StoreStatus {
            usable,
            path: "data/registry.db".into(),
            opened_at: Utc::now(),
            quick_check_at_open: "ok",
            last_integrity_check: None,
            read_probe: if usable {
                "ok".into()
            } else {
                "disk I/O error".into()
            },
            file_present: true,
            schema_version: Some(1),
        }
    }

    fn healthy_parts() -> BTreeMap<&'static str, Part> {
        let mut parts = BTreeMap::new();
        parts.insert(
            "plugins",
            plugins_part(&PluginsInput {
                serving: vec!["http-health".into()],
                ..Default::default()
            }),
        );
        parts.insert("registry", registry_part(Some(&store(true)), true));
        parts
    }

    #[test]
    fn all_parts_healthy_is_healthy() {
        let health = SystemHealth::of(healthy_parts());
        assert_eq!(health.status, Status::Healthy);
        assert!(health.reasons.is_empty());
    }

    #[test]
    fn no_serving_plugin_is_unhealthy() {
        let part = plugins_part(&PluginsInput::default());
        assert_eq!(part.status, Status::Unhealthy);
        let part = plugins_part(&PluginsInput {
            quarantined: vec!["a".into()],
            ..Default::default()
        });
        assert_eq!(part.status, Status::Unhealthy);
        assert!(
            part.reasons[0].contains("quarantined"),
            "{:?}",
            part.reasons
        );
    }

    #[test]
    fn a_failed_plugin_beside_a_serving_one_is_degraded() {
        let part = plugins_part(&PluginsInput {
            serving: vec!["ok".into()],
            quarantined: vec![],
            failed: vec![("bad".into(), "manifest".into(), "line 2".into())],
            ..Default::default()
        });
        assert_eq!(part.status, Status::Degraded);
        assert!(part.reasons[0].contains("bad"), "{:?}", part.reasons);
    }

    #[test]
    fn a_plugin_still_loading_degrades_and_is_named() {
        let since = Utc::now();
        let part = plugins_part(&PluginsInput {
            serving: vec!["ok".into()],
            loading: vec![("slow".into(), since)],
            ..Default::default()
        });
        assert_eq!(part.status, Status::Degraded);
        assert!(
            part.reasons[0].starts_with("plugin slow is still loading"),
            "{:?}",
            part.reasons
        );
        assert_eq!(part.detail["loading"][0]["name"], "slow");
        // Nothing serves yet: unhealthy, and the reason says the load is under way.
        let part = plugins_part(&PluginsInput {
            loading: vec![("slow".into(), since)],
            ..Default::default()
        });
        assert_eq!(part.status, Status::Unhealthy);
        assert_eq!(part.reasons[0], "no plugin serves yet: 1 still loading");
    }

    #[test]
    fn an_unusable_registry_makes_the_system_unhealthy() {
        let mut parts = healthy_parts();
        parts.insert("registry", registry_part(Some(&store(false)), true));
        let health = SystemHealth::of(parts);
        assert_eq!(health.status, Status::Unhealthy);
        assert!(
            health.reasons[0].starts_with("registry: a read"),
            "{:?}",
            health.reasons
        );
        assert_eq!(registry_part(None, false).status, Status::Unhealthy);
    }

    #[test]
    fn an_open_breaker_or_a_service_without_instances_degrades() {
        let open = services_part(
            &[ServiceInput {
                name: "forecast".into(),
                instances: vec![
                    instance("a", "healthy", "open"),
                    instance("b", "healthy", "closed"),
                ],
            }],
            true,
        );
        assert_eq!(open.status, Status::Degraded);
        assert_eq!(open.detail["breakers_open"], 1);
        let none = services_part(
            &[ServiceInput {
                name: "analysis".into(),
                instances: vec![instance("a", "unhealthy", "closed")],
            }],
            true,
        );
        assert_eq!(none.status, Status::Degraded);
        assert!(
            none.reasons
                .iter()
                .any(|r| r.contains("no routable instance"))
        );
        let fine = services_part(
            &[ServiceInput {
                name: "x".into(),
                instances: vec![instance("a", "unknown", "half-open")],
            }],
            true,
        );
        assert_eq!(fine.status, Status::Healthy, "{:?}", fine.reasons);
    }

    #[test]
    fn an_unhealthy_agent_degrades_and_an_unsampled_one_does_not() {
        let mut agents = BTreeMap::new();
        agents.insert("fresh".to_string(), None);
        assert_eq!(agents_part(&agents).status, Status::Healthy);
        agents.insert(
            "sick".to_string(),
            Some(AgentInput {
                status: "unhealthy",
                detail: "no logs".into(),
                at: Utc::now(),
            }),
        );
        let part = agents_part(&agents);
        assert_eq!(part.status, Status::Degraded);
        let mut parts = healthy_parts();
        parts.insert("agents", part);
        let health = SystemHealth::of(parts);
        assert_eq!(health.status, Status::Degraded);
        assert_eq!(
            health.reasons,
            vec!["agents: agent sick is unhealthy: no logs"]
        );
    }
}
