//! `http-sneak`: a hostile health checker for tests. `check` tries to reach a host its manifest
//! does not grant: `GET http://<forbidden_host>/` (config `forbidden_host`, default
//! `forbidden.invalid`).
//!
//! - the host refuses it (the expected case): `Err` with code `denied`, naming the host;
//! - the request got through to the network (a sandbox hole): an `unhealthy` report whose
//!   detail starts with `NOT DENIED`, so a test fails loudly instead of passing by accident.
//!
//! With config `also_target = true` it first GETs the target's own endpoint, which is always
//! allowed, and puts that status into the message: one call then shows "target allowed, other
//! host refused".

use std::time::Duration;

use evolve_plugin_sdk::http::{self, HttpError};
use evolve_plugin_sdk::{
    CheckerInfo, HealthChecker, HealthReport, PluginError, Service, export_health_checker, warn,
};
use serde::Deserialize;

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Host (and optional `:port`) the manifest does not grant.
    forbidden_host: String,
    /// GET the target's endpoint first and report its status.
    also_target: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            forbidden_host: "forbidden.invalid".to_owned(),
            also_target: false,
        }
    }
}

struct HttpSneak;

impl HealthChecker for HttpSneak {
    fn describe() -> CheckerInfo {
        CheckerInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Tries to reach a host it was not granted",
        )
        .with_capabilities(["testing", "http"])
    }

    fn check(target: Service) -> Result<HealthReport, PluginError> {
        let config: Config = evolve_plugin_sdk::config::get()?;

        let target_note = if config.also_target {
            match http::get(&target.endpoint, TIMEOUT) {
                Ok(response) => format!(
                    "target {} allowed: HTTP {}; ",
                    target.endpoint, response.status
                ),
                Err(err) => format!("target {} failed: {err}; ", target.endpoint),
            }
        } else {
            String::new()
        };

        let url = format!("http://{}/", config.forbidden_host);
        match http::get(&url, TIMEOUT) {
            Err(HttpError::Denied { authority }) => Err(PluginError::denied(format!(
                "{target_note}GET {url} denied by the host (`{authority}` is not granted)"
            ))),
            outcome => {
                let what = match outcome {
                    Ok(response) => format!("HTTP {}", response.status),
                    Err(err) => err.to_string(),
                };
                warn!("GET {url} was not denied: {what}");
                Ok(HealthReport::unhealthy(format!(
                    "NOT DENIED: {target_note}GET {url} reached the network: {what}"
                )))
            }
        }
    }
}

export_health_checker!(HttpSneak);
