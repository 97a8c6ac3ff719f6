//! Steps 4-6 of a case: load the plugin into a fresh kit with the case's setup, make the call,
//! and compare, collecting every mismatch.

// ---------------------------------------------------------------------------------------------
// Running.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Call, Case, Expect, HttpFailure, ProbeKindSpec, SetupSpec, StatusSpec};
use crate::kit::{Kit, KitBuilder};
use crate::mock::{FakeHttp, FakeResponse, Inventory, ProbeKind, service};
use evolve_runtime::bindings::types::HealthReport;

/// What one case came to.
#[derive(Debug)]
pub enum CaseResult {
    Passed,
    /// Every expectation that did not hold, as `key: expected …, got …`.
    Failed(Vec<String>),
}

impl Case {
    /// Steps 4-6: loads the plugin dir `plugin` into a fresh kit with this case's setup, makes
    /// the call and compares. Must not run inside an async runtime (the kit owns one).
    pub fn run(&self, plugin: &Path, cache_dir: Option<&Path>) -> CaseResult {
        let mut builder = Kit::builder(plugin);
        if let Some(dir) = cache_dir {
            builder = builder.cache_dir(dir);
        }
        let kit = match self.setup.apply(builder).load() {
            Ok(kit) => kit,
            Err(e) => return CaseResult::Failed(vec![format!("load: {e}")]),
        };
        kit.clear_logs();
        let mut failures = Vec::new();
        let expect = &self.expect;
        match &self.call {
            Call::Run { task, input } => match kit.run(task, input.clone()) {
                Err(call_error) => {
                    call_failed(expect, call_error.code(), &call_error, &mut failures)
                }
                Ok(Err(plugin_error)) => plugin_failed(
                    expect,
                    plugin_error.code.as_str(),
                    &plugin_error.message,
                    &mut failures,
                ),
                Ok(Ok(outcome)) => {
                    succeeded(expect, &mut failures);
                    if let Some(summary) = &expect.summary
                        && *summary != outcome.summary
                    {
                        failures.push(format!(
                            "summary: expected {summary:?}, got {:?}",
                            outcome.summary
                        ));
                    }
                    if let Some(output) = &expect.output {
                        compare_output(output, &outcome.output, &mut failures);
                    }
                }
            },
            Call::Health => match kit.health() {
                Err(call_error) => {
                    call_failed(expect, call_error.code(), &call_error, &mut failures)
                }
                Ok(report) => {
                    succeeded(expect, &mut failures);
                    compare_report(expect, &report, &mut failures);
                }
            },
            Call::Check(target) => match kit.check(target.clone()) {
                Err(call_error) => {
                    call_failed(expect, call_error.code(), &call_error, &mut failures)
                }
                Ok(Err(plugin_error)) => plugin_failed(
                    expect,
                    plugin_error.code.as_str(),
                    &plugin_error.message,
                    &mut failures,
                ),
                Ok(Ok(report)) => {
                    succeeded(expect, &mut failures);
                    compare_report(expect, &report, &mut failures);
                }
            },
        }
        if let Some(expected) = &expect.logs {
            let logged: Vec<String> = kit.logs().into_iter().map(|r| r.message).collect();
            let mut rest = logged.iter();
            if let Some(missing) = expected.iter().find(|want| !rest.any(|line| line == *want)) {
                failures.push(format!(
                    "logs: expected {missing:?} (in order after the lines before it), got {logged:?}"
                ));
            }
        }
        if let Some(expected) = &expect.http_requests {
            let made = kit.http_requests();
            if *expected != made {
                failures.push(format!(
                    "http_requests: expected {expected:?}, got {made:?}"
                ));
            }
        }
        if failures.is_empty() {
            CaseResult::Passed
        } else {
            CaseResult::Failed(failures)
        }
    }
}

impl SetupSpec {
    fn apply(&self, mut builder: KitBuilder) -> KitBuilder {
        for (key, value) in self.config.iter().flatten() {
            builder = builder.config(key, value.clone());
        }
        for (key, value) in self.limits.iter().flatten() {
            builder = builder.limit(key, *value);
        }
        if let Some(spec) = &self.inventory {
            let mut inventory = Inventory::new();
            for entry in &spec.services {
                let mut svc = service(&entry.name, &entry.endpoint);
                if let Some(service_type) = &entry.service_type {
                    svc.service_type = service_type.clone();
                }
                svc.capabilities = entry.capabilities.clone();
                inventory = inventory.service(svc, entry.health.map(StatusSpec::status));
            }
            for model in &spec.models {
                inventory = inventory.model(&model.name, &model.task_type, model.latest_version);
            }
            for agent in &spec.agents {
                inventory = inventory.agent(agent);
            }
            builder = builder.inventory(inventory);
        }
        for probe in self.probes.iter().flatten() {
            let kind = match probe.kind {
                ProbeKindSpec::Service => ProbeKind::Service,
                ProbeKindSpec::Checker => ProbeKind::Checker,
                ProbeKindSpec::BestModel => ProbeKind::BestModel,
                ProbeKindSpec::Agent => ProbeKind::Agent,
            };
            builder = builder.probe(kind, &probe.name, probe.ok, &probe.detail);
        }
        // Always fake: a scenario never reaches the real network.
        let mut http = FakeHttp::new();
        for (authority, spec) in self.http.iter().flatten() {
            let response = match (spec.status, spec.fail) {
                (_, Some(HttpFailure::Timeout)) => FakeResponse::Timeout,
                (_, Some(HttpFailure::Refused)) | (None, None) => FakeResponse::Refused,
                (Some(status), None) => {
                    FakeResponse::body(status, spec.body.clone().unwrap_or_default().into_bytes())
                        .delayed(Duration::from_millis(spec.delay_ms.unwrap_or(0)))
                }
            };
            http = http.route(authority, response);
        }
        builder.http(http)
    }
}

/// The call failed in the host (trap, deadline, ...).
fn call_failed(
    expect: &Expect,
    code: &str,
    error: &dyn std::fmt::Display,
    failures: &mut Vec<String>,
) {
    match &expect.call_error {
        Some(want) if want == code => {}
        Some(want) => failures.push(format!(
            "call_error: expected `{want}`, got `{code}`: {error}"
        )),
        None => failures.push(format!("the call failed: `{code}`: {error}")),
    }
}

/// The plugin returned its own error.
fn plugin_failed(expect: &Expect, code: &str, message: &str, failures: &mut Vec<String>) {
    match &expect.error {
        Some(want) if want == code => {
            if let Some(part) = &expect.error_message
                && !message.contains(part.as_str())
            {
                failures.push(format!(
                    "error_message: expected a message containing {part:?}, got {message:?}"
                ));
            }
        }
        Some(want) => failures.push(format!("error: expected `{want}`, got `{code}`: {message}")),
        None => failures.push(format!("the plugin returned an error: `{code}`: {message}")),
    }
}

/// The call succeeded: wrong if the case expects an error.
fn succeeded(expect: &Expect, failures: &mut Vec<String>) {
    if let Some(want) = &expect.error {
        failures.push(format!("error: expected `{want}`, but the call succeeded"));
    }
    if let Some(want) = &expect.call_error {
        failures.push(format!(
            "call_error: expected `{want}`, but the call succeeded"
        ));
    }
}

fn compare_output(expected: &toml::Value, got: &str, failures: &mut Vec<String>) {
    let expected = match serde_json::to_value(expected) {
        Ok(value) => value,
        Err(e) => {
            failures.push(format!("output: the expected value is not JSON: {e}"));
            return;
        }
    };
    match serde_json::from_str::<Value>(got) {
        Ok(value) if value == expected => {}
        Ok(value) => failures.push(format!("output: expected {expected}, got {value}")),
        Err(e) => failures.push(format!(
            "output: expected {expected}, got non-JSON {got:?} ({e})"
        )),
    }
}

fn compare_report(expect: &Expect, report: &HealthReport, failures: &mut Vec<String>) {
    if let Some(status) = expect.status
        && status.status() != report.status
    {
        failures.push(format!(
            "status: expected `{}`, got `{}` (detail {:?})",
            status.status().as_str(),
            report.status.as_str(),
            report.detail
        ));
    }
    if let Some(detail) = &expect.detail
        && *detail != report.detail
    {
        failures.push(format!(
            "detail: expected {detail:?}, got {:?}",
            report.detail
        ));
    }
    if let Some(part) = &expect.detail_contains
        && !report.detail.contains(part.as_str())
    {
        failures.push(format!(
            "detail_contains: expected a detail containing {part:?}, got {:?}",
            report.detail
        ));
    }
}
