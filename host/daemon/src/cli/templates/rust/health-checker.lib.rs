//! `{{name}}`: a health checker. GETs the service's endpoint followed by `path` from `[config]`:
//! 2xx is healthy, 3xx/4xx degraded, 5xx or no answer within `timeout_ms` unhealthy.
//!
//! Build: `evolve plugin build` → `target/plugin/{{name}}/` (drop that dir into the daemon's
//! plugins dir). Test: `cargo test --release` (tests/plugin.rs runs the built component in a
//! mocked host) and `evolve plugin test` (the scenarios in tests/*.toml).

use std::time::Duration;

use evolve_plugin_sdk::http::{self, HttpError};
use evolve_plugin_sdk::{
    CheckerInfo, HealthChecker, HealthReport, PluginError, Service, debug, export_health_checker,
};
use serde::Deserialize;

/// The `[config]` table of plugin.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
    timeout_ms: u64,
}

struct Checker;

impl HealthChecker for Checker {
    fn describe() -> CheckerInfo {
        CheckerInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "GETs a service's health path",
        )
        .with_capabilities(["http"])
    }

    fn check(target: Service) -> Result<HealthReport, PluginError> {
        let config: Config = evolve_plugin_sdk::config::get()?;
        let url = format!("{}{}", target.endpoint.trim_end_matches('/'), config.path);
        debug!("GET {url}");
        match http::get(&url, Duration::from_millis(config.timeout_ms)) {
            Ok(response) => {
                let detail = format!("HTTP {}", response.status);
                let report = match response.status {
                    200..=299 => HealthReport::healthy(detail),
                    500..=599 => HealthReport::unhealthy(detail),
                    _ => HealthReport::degraded(detail),
                };
                Ok(report.with_latency(response.elapsed))
            }
            // The host refused the destination: a configuration error, not a health fact.
            Err(err @ HttpError::Denied { .. }) => Err(err.into()),
            Err(err) => Ok(HealthReport::unhealthy(format!("GET {url}: {err}"))),
        }
    }
}

export_health_checker!(Checker);
