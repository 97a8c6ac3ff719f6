//! `http-health`: a health checker that GETs a service instance's health endpoint.
//!
//! The URL is the target's `endpoint` followed by its `health_path` metadata, or else the config
//! `path` (default `/health`): the service knows its own health route best. Grading:
//!
//! | answer | status |
//! |---|---|
//! | 2xx within `degraded_ms` (default 250) | healthy |
//! | 2xx slower than that, or any 1xx/3xx/4xx | degraded |
//! | 5xx, connection failure, nothing within `timeout_ms` (default 2000) | unhealthy |
//!
//! A destination the host refuses is not a health fact but a configuration error, so it is
//! returned as `Err` with code `denied`; so is a target without a usable endpoint
//! (`invalid-input`).

use std::time::{Duration, Instant};

use evolve_plugin_sdk::http::{self, HttpError};
use evolve_plugin_sdk::{
    CheckerInfo, HealthChecker, HealthReport, PluginError, Service, debug, export_health_checker,
};
use serde::Deserialize;

/// The `[config]` table of `plugin.toml`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Path appended to the target's endpoint.
    path: String,
    /// Give up (unhealthy) after this long.
    timeout_ms: u64,
    /// A 2xx slower than this is degraded.
    degraded_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/health".to_owned(),
            timeout_ms: 2000,
            degraded_ms: 250,
        }
    }
}

struct HttpHealth;

impl HealthChecker for HttpHealth {
    fn describe() -> CheckerInfo {
        CheckerInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "GETs a service's health endpoint; grades by status code and latency",
        )
        .with_capabilities(["http"])
    }

    fn check(target: Service) -> Result<HealthReport, PluginError> {
        let config: Config = evolve_plugin_sdk::config::get()?;
        let path = target
            .metadata
            .iter()
            .find(|(key, _)| key == HEALTH_PATH_KEY)
            .map_or(config.path.as_str(), |(_, value)| value.as_str());
        let url = health_url(&target.endpoint, path).ok_or_else(|| {
            PluginError::invalid_input(format!(
                "service `{}` has no usable endpoint (`{}`)",
                target.name, target.endpoint
            ))
        })?;
        let timeout = Duration::from_millis(config.timeout_ms);
        debug!("GET {url} (timeout {} ms)", config.timeout_ms);

        let start = Instant::now();
        match http::get(&url, timeout) {
            Ok(response) => Ok(grade(
                response.status,
                response.elapsed,
                Duration::from_millis(config.degraded_ms),
            )),
            Err(HttpError::Denied { authority }) => Err(PluginError::denied(format!(
                "the host denied GET {url}: `{authority}` is not an allowed destination"
            ))),
            Err(err @ HttpError::InvalidRequest(_)) => Err(PluginError::invalid_input(format!(
                "cannot check `{}`: {err}",
                target.name
            ))),
            // Timeouts, connection and protocol failures: the target could not answer. Anything
            // `HttpError` grows later lands here too, which is the safe reading.
            Err(err) => {
                Ok(HealthReport::unhealthy(format!("GET {url}: {err}"))
                    .with_latency(start.elapsed()))
            }
        }
    }
}

/// Service metadata key that overrides the configured path for one service.
const HEALTH_PATH_KEY: &str = "health_path";

/// Joins endpoint and path with exactly one `/`; `None` for an empty endpoint.
fn health_url(endpoint: &str, path: &str) -> Option<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return None;
    }
    let path = path.trim();
    Some(if path.is_empty() {
        endpoint.to_owned()
    } else if path.starts_with('/') {
        format!("{endpoint}{path}")
    } else {
        format!("{endpoint}/{path}")
    })
}

/// Grades an answer by status class and latency.
fn grade(status: u16, elapsed: Duration, degraded_after: Duration) -> HealthReport {
    let ms = elapsed.as_millis();
    let report = match status {
        200..=299 if elapsed <= degraded_after => {
            HealthReport::healthy(format!("HTTP {status} in {ms} ms"))
        }
        200..=299 => HealthReport::degraded(format!(
            "HTTP {status} in {ms} ms (slower than {} ms)",
            degraded_after.as_millis()
        )),
        500..=599 => HealthReport::unhealthy(format!("HTTP {status} in {ms} ms")),
        _ => HealthReport::degraded(format!("HTTP {status} in {ms} ms")),
    };
    report.with_latency(elapsed)
}

export_health_checker!(HttpHealth);

#[cfg(test)]
mod tests {
    use super::*;
    use evolve_plugin_sdk::HealthStatus;

    #[test]
    fn joins_urls() {
        assert_eq!(
            health_url("http://a:1/", "/health").as_deref(),
            Some("http://a:1/health")
        );
        assert_eq!(
            health_url("http://a:1", "ready").as_deref(),
            Some("http://a:1/ready")
        );
        assert_eq!(health_url(" ", "/health"), None);
    }

    #[test]
    fn grades() {
        let fast = Duration::from_millis(10);
        let slow = Duration::from_millis(300);
        let limit = Duration::from_millis(250);
        assert_eq!(grade(200, fast, limit).status, HealthStatus::Healthy);
        assert_eq!(grade(204, slow, limit).status, HealthStatus::Degraded);
        assert_eq!(grade(404, fast, limit).status, HealthStatus::Degraded);
        assert_eq!(grade(302, fast, limit).status, HealthStatus::Degraded);
        assert_eq!(grade(503, fast, limit).status, HealthStatus::Unhealthy);
        assert_eq!(grade(200, fast, limit).latency_us, 10_000);
        assert_eq!(grade(200, fast, limit).detail, "HTTP 200 in 10 ms");
    }
}
