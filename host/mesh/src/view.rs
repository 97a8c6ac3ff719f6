//! Read-only views of the mesh: what `GET /v1/services`, `GET /v1/services/health`, the
//! inventory import and [`super::Mesh::probe_service`] answer with.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::catalog::ServiceSpec;
use super::health::LastCheck;
use super::health::{CheckReport, InstanceRecord};
use super::instance::InstanceState;
use super::service::{ServiceState, Source};

/// A service with the live state of its instances.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub source: Source,
    /// The cluster node that registered it, for `source: "remote"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub lb: &'static str,
    /// `healthy` when every instance with weight is routable, `degraded` when some are,
    /// `unavailable` when none is.
    pub status: &'static str,
    pub in_flight: u32,
    pub pending: u32,
    pub spec: ServiceSpec,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub endpoint: String,
    pub weight: u32,
    /// Active health: `unknown`, `healthy`, `unhealthy`.
    pub health: &'static str,
    /// `closed`, `open`, `half-open`.
    pub circuit: &'static str,
    pub ejected: bool,
    /// Milliseconds until an ejection ends.
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
    /// Whether the instance takes traffic now (weight, health, ejection, breaker).
    pub routable: bool,
    /// Weight share during slow start, 0.1-1.
    pub slow_start_factor: f64,
    pub in_flight: u32,
    pub ewma_latency_us: u64,
    pub requests: u64,
    pub last_check: Option<LastCheck>,
}

impl ServiceView {
    /// `slow_start` is the mesh's ramp window (`slow_start_ms`).
    pub fn of(service: &ServiceState, slow_start: Duration) -> ServiceView {
        let instances: Vec<InstanceView> = service
            .instances
            .iter()
            .map(|i| InstanceView::of(i, slow_start))
            .collect();
        let weighted = instances.iter().filter(|i| i.weight > 0).count();
        let routable = instances.iter().filter(|i| i.routable).count();
        let status = if routable == 0 {
            "unavailable"
        } else if routable < weighted {
            "degraded"
        } else {
            "healthy"
        };
        ServiceView {
            name: service.spec.name.clone(),
            source: service.source,
            origin: service.origin.clone(),
            lb: service.balancer.kind().as_str(),
            status,
            in_flight: service.limit.in_flight(),
            pending: service.limit.pending(),
            spec: service.spec.clone(),
            instances,
        }
    }
}

impl InstanceView {
    fn of(instance: &InstanceState, slow_start: Duration) -> InstanceView {
        let now = Instant::now();
        let status = instance.lock();
        let weight = instance.weight.load(Ordering::Relaxed);
        let ejected = status.outlier.is_ejected(now);
        let circuit = status.breaker.state(now);
        let health = status.health.state;
        InstanceView {
            id: instance.id.clone(),
            endpoint: instance.spec.endpoint.clone(),
            weight,
            health: health.as_str(),
            circuit: circuit.as_str(),
            ejected,
            ejected_for_ms: status
                .outlier
                .ejected_until()
                .filter(|until| *until > now)
                .map(|until| until.saturating_duration_since(now).as_millis() as u64),
            ejections: status.outlier.ejections(),
            routable: weight > 0
                && health != super::health::HealthState::Unhealthy
                && !ejected
                && status.breaker.would_admit(now),
            slow_start_factor: status.slow_start_factor(slow_start, now),
            in_flight: instance.in_flight.load(Ordering::Relaxed),
            ewma_latency_us: status.ewma.get(now) as u64,
            requests: instance.stats.requests.load(Ordering::Relaxed),
            last_check: status.health.last.clone(),
        }
    }
}

/// What [`super::Mesh::probe_service`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub service: String,
    /// Id of the instance that answered.
    pub instance: String,
    pub path: String,
    pub status: u16,
    /// A 2xx answer.
    pub healthy: bool,
    pub latency_us: u64,
}

/// One instance in the plugins' inventory (the daemon converts it to the WIT `service-status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryEntry {
    pub service: InstanceRecord,
    /// The most recent checker report, if the instance was checked.
    pub health: Option<CheckReport>,
    /// `closed`, `open`, `half-open`.
    pub circuit: &'static str,
}

/// One inventory entry per instance (the WIT `service` record describes one instance).
pub fn inventory(services: &[std::sync::Arc<ServiceState>]) -> Vec<InventoryEntry> {
    let now = Instant::now();
    let mut out = Vec::new();
    for service in services {
        for instance in &service.instances {
            let status = instance.lock();
            out.push(InventoryEntry {
                service: InstanceRecord {
                    name: service.spec.name.clone(),
                    service_type: service.spec.service_type.clone(),
                    endpoint: instance.spec.endpoint.clone(),
                    capabilities: service.spec.capabilities.clone(),
                    weight: instance.weight.load(Ordering::Relaxed),
                    metadata: instance
                        .spec
                        .metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .chain(std::iter::once((
                            "instance".to_string(),
                            instance.id.clone(),
                        )))
                        .collect(),
                },
                health: status.health.last.as_ref().and_then(|l| l.report.clone()),
                circuit: status.breaker.state(now).as_str(),
            });
        }
    }
    out
}
