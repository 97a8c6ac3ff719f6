//! `integration-tester`: a meta agent that checks the running system end to end.
//!
//! Task `run` (also the default) makes one probe per thing the inventory lists, in a fixed
//! order so reports compare line by line:
//!
//! 1. every registered service (by name, once) answers a request through the mesh;
//! 2. every loaded health checker works;
//! 3. the registry answers best-model for every task type that has models;
//! 4. every other meta agent reports itself healthy.
//!
//! The report has one pass / fail line per check with its duration. The run itself succeeds
//! whenever it could check (a failed check is a finding, not a failure of the tester); the
//! output's `failed` count and `ok` flag carry the verdict.

mod report;

use std::collections::BTreeSet;

use evolve_plugin_sdk::inventory::{self, PluginKind};
use evolve_plugin_sdk::{
    AgentInfo, HealthReport, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent, info,
    probes, warn,
};

use crate::report::{Check, Report};

struct IntegrationTester;

impl MetaAgent for IntegrationTester {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Checks services, health checkers, the model registry and agents of the running system",
        )
        .with_capabilities(["integration-tests"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "" | "run" => run_checks(),
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; integration-tester knows `run`"
            ))),
        }
    }

    fn health() -> HealthReport {
        let plugins = inventory::plugins();
        HealthReport::healthy(format!(
            "ready: the inventory answers ({} plugins loaded)",
            plugins.len()
        ))
    }
}

fn run_checks() -> Result<TaskOutcome, PluginError> {
    let me = env!("CARGO_PKG_NAME");
    let mut report = Report::default();

    // Step 1: services, once per name (instances share a name).
    let services: BTreeSet<String> = inventory::services()
        .into_iter()
        .map(|s| s.service.name)
        .collect();
    for name in &services {
        report.push(Check::from_probe("service", name, probes::service(name)));
    }
    // Step 2: health checkers.
    let plugins = inventory::plugins();
    for checker in plugins
        .iter()
        .filter(|p| p.kind == PluginKind::HealthChecker)
    {
        report.push(Check::from_probe(
            "checker",
            &checker.name,
            probes::checker(&checker.name),
        ));
    }
    // Step 3: best model per task type that has models.
    let task_types: BTreeSet<String> = inventory::models()
        .into_iter()
        .map(|m| m.task_type)
        .collect();
    for task_type in &task_types {
        report.push(Check::from_probe(
            "best-model",
            task_type,
            probes::best_model(task_type),
        ));
    }
    // Step 4: every other agent.
    for agent in inventory::agents().iter().filter(|a| a.name != me) {
        report.push(Check::from_probe(
            "agent",
            &agent.name,
            probes::agent(&agent.name),
        ));
    }

    let (passed, failed) = report.counts();
    if failed == 0 {
        info!("integration tests: all {passed} checks passed");
    } else {
        for check in report.failures() {
            warn!(
                "integration check failed: {} {}: {}",
                check.kind, check.target, check.detail
            );
        }
    }
    TaskOutcome::new(report.summary()).with_output(&report.to_json())
}

export_meta_agent!(IntegrationTester);
