//! `GET /metrics`: runtime counters in the Prometheus text format, read at scrape time so the
//! call path carries no metrics bookkeeping of its own.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{ApiError, ApiState};
use evolve_mesh::Mesh;
use evolve_mesh::instance::LATENCY_BUCKETS_S;
use evolve_runtime::Runtime;

pub(super) fn registry(runtime: Runtime) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RuntimeCollector { runtime }));
    registry
}

pub(super) async fn scrape(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            "metrics could not be encoded",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

#[derive(Debug)]
struct RuntimeCollector {
    runtime: Runtime,
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let plugins = self.runtime.plugins();
        let stats = self.runtime.cache_stats();

        let calls = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "evolve_plugin_calls",
            "Calls into plugins by outcome",
            None,
            calls.metric_type(),
        )?;
        for plugin in &plugins {
            for (outcome, value) in [
                ("ok", &plugin.stats.ok),
                ("failed", &plugin.stats.failed),
                ("overloaded", &plugin.stats.overloaded),
            ] {
                let labels = [
                    ("plugin", plugin.name().to_string()),
                    ("outcome", outcome.to_string()),
                ];
                ConstCounter::new(value.load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "evolve_plugin_in_flight",
            "Calls running in a plugin now",
            None,
            gauge.metric_type(),
        )?;
        for plugin in &plugins {
            let labels = [("plugin", plugin.name().to_string())];
            ConstGauge::new(i64::from(plugin.in_flight()))
                .encode(family.encode_family(&labels)?)?;
        }

        for (name, help, value) in [
            (
                "evolve_aot_cache_hits",
                "Components mapped from the AOT cache",
                stats.hits,
            ),
            (
                "evolve_aot_cache_misses",
                "Components compiled because the AOT cache had none",
                stats.misses,
            ),
            (
                "evolve_aot_rejected",
                "Cached AOT artifacts refused (missing or wrong tag) and recompiled, never mapped",
                stats.rejected,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "evolve_plugins_loaded",
                "Plugins serving",
                plugins.len() as i64,
            ),
            (
                "evolve_plugins_failed",
                "Plugin directories that failed to load",
                self.runtime.failures().len() as i64,
            ),
            (
                "evolve_pool_slots_in_use",
                "Instance pool slots in use",
                i64::from(self.runtime.pool_in_use()),
            ),
            (
                "evolve_memory_budget_reserved_mb",
                "MiB of the host memory budget reserved by calls in flight",
                i64::try_from(self.runtime.memory_budget().reserved_mb()).unwrap_or(i64::MAX),
            ),
            (
                "evolve_memory_budget_mb",
                "The host memory budget (runtime.max_total_memory_mb), MiB",
                i64::try_from(self.runtime.memory_budget().total_mb()).unwrap_or(i64::MAX),
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// The mesh's metrics, read from its counters at scrape time (the data path only bumps atomics).
pub(super) fn register_mesh(registry: &mut Registry, mesh: Mesh) {
    registry.register_collector(Box::new(MeshCollector { mesh }));
}

#[derive(Debug)]
struct MeshCollector {
    mesh: Mesh,
}

/// A histogram read from the mesh's own per-instance buckets.
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for MeshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use evolve_mesh::instance::InstanceState;
        let services = self.mesh.services();
        let instances: Vec<&InstanceState> = services
            .values()
            .flat_map(|s| s.instances.iter().map(|i| &**i))
            .collect();
        let labels =
            |i: &InstanceState| vec![("service", i.service.clone()), ("instance", i.id.clone())];
        let counter_type = ConstCounter::new(0u64).metric_type();
        let gauge_type = ConstGauge::new(0i64).metric_type();

        type Read = fn(&InstanceState) -> u64;
        let per_instance_counters: [(&str, &str, Read); 4] = [
            (
                "evolve_mesh_requests",
                "Attempts sent to an instance",
                |i| i.stats.requests.load(Ordering::Relaxed),
            ),
            (
                "evolve_mesh_ejections",
                "Times outlier detection ejected an instance",
                |i| i.stats.ejections.load(Ordering::Relaxed),
            ),
            (
                "evolve_mesh_upstream_connections_opened",
                "Connections the mesh opened to an instance (connected and handshaken)",
                |i| i.pool.stats.opened.load(Ordering::Relaxed),
            ),
            (
                "evolve_mesh_upstream_requests_reused",
                "Attempts sent on an idle pooled connection instead of a new one",
                |i| i.pool.stats.reused.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in per_instance_counters {
            let mut family = encoder.encode_descriptor(name, help, None, counter_type)?;
            for i in &instances {
                ConstCounter::new(read(i)).encode(family.encode_family(&labels(i))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "evolve_mesh_errors",
            "Failed or error answers by class: 4xx, 5xx, connect, reset, timeout",
            None,
            counter_type,
        )?;
        for i in &instances {
            let s = &i.stats;
            for (class, value) in [
                ("4xx", &s.responses_4xx),
                ("5xx", &s.responses_5xx),
                ("connect", &s.connect_errors),
                ("reset", &s.resets),
                ("timeout", &s.timeouts),
            ] {
                let mut l = labels(i);
                l.push(("class", class.to_string()));
                ConstCounter::new(value.load(Ordering::Relaxed))
                    .encode(family.encode_family(&l)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "evolve_mesh_health_checks",
            "Active health checks by result: pass, fail, error (the check could not be made)",
            None,
            counter_type,
        )?;
        for i in &instances {
            let s = &i.stats;
            for (result, value) in [
                ("pass", &s.checks_passed),
                ("fail", &s.checks_failed),
                ("error", &s.checks_errored),
            ] {
                let mut l = labels(i);
                l.push(("result", result.to_string()));
                ConstCounter::new(value.load(Ordering::Relaxed))
                    .encode(family.encode_family(&l)?)?;
            }
        }

        let histogram_type = MetricType::Histogram;
        let mut family = encoder.encode_descriptor(
            "evolve_mesh_request_duration_seconds",
            "Time from sending a request to an instance to its response headers",
            None,
            histogram_type,
        )?;
        for i in &instances {
            let counts: Vec<u64> = i
                .stats
                .latency_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_S
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(counts.iter().copied())
                .collect();
            ConstHistogram {
                sum: i.stats.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                count: counts.iter().sum(),
                buckets,
            }
            .encode(family.encode_family(&labels(i))?)?;
        }

        let now = tokio::time::Instant::now();
        let mut family = encoder.encode_descriptor(
            "evolve_mesh_in_flight",
            "Requests in flight to an instance",
            None,
            gauge_type,
        )?;
        for i in &instances {
            ConstGauge::new(i64::from(i.in_flight.load(Ordering::Relaxed)))
                .encode(family.encode_family(&labels(i))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "evolve_mesh_circuit_state",
            "Circuit breaker state of an instance: 0 closed, 1 open, 2 half-open",
            None,
            gauge_type,
        )?;
        for i in &instances {
            let state = i.lock().breaker.state(now).as_gauge();
            ConstGauge::new(state).encode(family.encode_family(&labels(i))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "evolve_mesh_instance_healthy",
            "Active health of an instance: 1 healthy, 0 unhealthy, -1 not checked yet",
            None,
            gauge_type,
        )?;
        for i in &instances {
            let value = match i.lock().health.state {
                evolve_mesh::health::HealthState::Healthy => 1,
                evolve_mesh::health::HealthState::Unhealthy => 0,
                evolve_mesh::health::HealthState::Unknown => -1,
            };
            ConstGauge::new(value).encode(family.encode_family(&labels(i))?)?;
        }

        type ReadService = fn(&evolve_mesh::service::ServiceState) -> u64;
        let per_service: [(&str, &str, ReadService); 4] = [
            (
                "evolve_mesh_shed",
                "Requests shed by a service's concurrency limit (503)",
                |s| s.stats.shed.load(Ordering::Relaxed),
            ),
            ("evolve_mesh_retries", "Retries sent", |s| {
                s.stats.retries.load(Ordering::Relaxed)
            }),
            (
                "evolve_mesh_retries_denied",
                "Retries the retry budget refused",
                |s| s.stats.retries_denied_by_budget.load(Ordering::Relaxed),
            ),
            (
                "evolve_mesh_no_instance",
                "Requests refused because no instance could take them (503)",
                |s| s.stats.no_instance.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in per_service {
            let mut family = encoder.encode_descriptor(name, help, None, counter_type)?;
            for s in services.values() {
                let l = [("service", s.name().to_string())];
                ConstCounter::new(read(s)).encode(family.encode_family(&l)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "evolve_mesh_pending",
            "Requests waiting for a service's in-flight slot",
            None,
            gauge_type,
        )?;
        for s in services.values() {
            let l = [("service", s.name().to_string())];
            ConstGauge::new(i64::from(s.limit.pending())).encode(family.encode_family(&l)?)?;
        }
        Ok(())
    }
}

/// Model-aware routing and fan-out: selections by route and source, outcomes by
/// result, fan-out parts by route and result; read from the mesh's counters at scrape time.
pub(super) fn register_routing(registry: &mut Registry, mesh: Mesh) {
    registry.register_collector(Box::new(RoutingCollector { mesh }));
}

#[derive(Debug)]
struct RoutingCollector {
    mesh: Mesh,
}

impl Collector for RoutingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.mesh.route_stats();
        let counter_type = ConstCounter::new(0u64).metric_type();
        type Labelled = std::collections::HashMap<(String, &'static str), u64>;
        let snapshot = |map: &std::sync::Mutex<Labelled>| {
            let mut rows: Vec<((String, &'static str), u64)> = map
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            rows.sort();
            rows
        };
        for (name, help, label, map) in [
            (
                "evolve_route_model_selections",
                "Model-aware route requests by route and model source: alias, best, none (fell back), rejected",
                "source",
                &stats.selections,
            ),
            (
                "evolve_route_fanout_parts",
                "Fan-out parts by route and result: ok, error_status, timeout, failed",
                "result",
                &stats.fanout_parts,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, counter_type)?;
            for ((route, value), count) in snapshot(map) {
                let labels = vec![("route", route), (label, value.to_string())];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "evolve_route_outcomes",
            "Outcome metrics from backends: recorded, rejected (malformed), dropped (queue full), failed (the registry refused)",
            None,
            counter_type,
        )?;
        for (result, counter) in [
            ("recorded", &stats.outcomes_recorded),
            ("rejected", &stats.outcomes_rejected),
            ("dropped", &stats.outcomes_dropped),
            ("failed", &stats.outcomes_failed),
        ] {
            ConstCounter::new(counter.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// Registers the cluster's metrics.
pub(super) fn register_cluster(registry: &mut Registry, cluster: evolve_cluster::Cluster) {
    registry.register_collector(Box::new(ClusterCollector { cluster }));
}

#[derive(Debug)]
struct ClusterCollector {
    cluster: evolve_cluster::Cluster,
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use evolve_cluster::ConnectionState;
        let status = self.cluster.status();
        let counter_type = ConstCounter::new(0u64).metric_type();
        let gauge_type = ConstGauge::new(0i64).metric_type();
        let gauges: [(&str, &str, i64); 6] = [
            (
                "evolve_cluster_connected",
                "1 while this node is connected to Redis, 0 otherwise (also 0 when the cluster is disabled)",
                i64::from(status.state == ConnectionState::Connected),
            ),
            (
                "evolve_cluster_peers",
                "Other nodes seen alive",
                status.peers.len() as i64,
            ),
            (
                "evolve_cluster_remote_services",
                "Services of other nodes merged into the routing table",
                status.catalog.remote_services as i64,
            ),
            (
                "evolve_cluster_announced_services",
                "Local services announced to the cluster",
                status.catalog.announced as i64,
            ),
            (
                "evolve_cluster_events_buffered",
                "Events waiting for Redis",
                status.events.buffered as i64,
            ),
            (
                "evolve_cluster_sync_lag_milliseconds",
                "Time since the last full sync, ms (-1 before the first)",
                status.sync_lag_ms.unwrap_or(-1),
            ),
        ];
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, gauge_type)?;
            ConstGauge::new(value).encode(family)?;
        }
        let counters: [(&str, &str, u64); 10] = [
            (
                "evolve_cluster_events_published",
                "Events published to Redis",
                status.events.published,
            ),
            (
                "evolve_cluster_events_dropped",
                "Events lost: the buffer overflowed while Redis was unreachable",
                status.events.dropped,
            ),
            (
                "evolve_cluster_connects",
                "Successful connections to Redis",
                status.connects,
            ),
            (
                "evolve_cluster_full_syncs",
                "Full syncs of the peers' registrations",
                status.catalog.full_syncs,
            ),
            (
                "evolve_cluster_updates_sent",
                "Catalog updates published",
                status.catalog.updates_sent,
            ),
            (
                "evolve_cluster_updates_received",
                "Catalog updates received from peers",
                status.catalog.updates_received,
            ),
            (
                "evolve_cluster_rejected",
                "Peer messages or registrations skipped as malformed or refused",
                status.catalog.rejected,
            ),
            (
                "evolve_cluster_refused",
                "Peer records and messages refused by the shared key: unsigned, bad signature, node id mismatch, replayed or stale (by reason in GET /v1/cluster)",
                status.auth.refused,
            ),
            (
                "evolve_cluster_capped",
                "Peer registrations dropped by a cap (nodes, services per node, instances per service, remote services)",
                status.catalog.capped,
            ),
            (
                "evolve_cluster_peers_expired",
                "Peers whose heartbeat lapsed or that left",
                status.catalog.peers_expired,
            ),
        ];
        for (name, help, value) in counters {
            let family = encoder.encode_descriptor(name, help, None, counter_type)?;
            ConstCounter::new(value).encode(family)?;
        }
        Ok(())
    }
}
