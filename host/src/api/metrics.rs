//! `GET /metrics`: runtime counters in the Prometheus text format, read at scrape time so the
//! call path carries no metrics bookkeeping of its own.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{ApiError, ApiState};
use crate::runtime::Runtime;

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
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
