//! `security-auditor`: a meta agent that audits the running system's configuration.
//!
//! Task `audit` (also the default) reads the inventory and reports findings, most severe
//! first, each with the rule, its subject, what is wrong and how to fix it:
//!
//! | rule | severity |
//! |---|---|
//! | `api.public-without-auth`: the API listens beyond loopback with no token | critical |
//! | `plugin.wildcard-host`: an outbound-HTTP allow-list entry with `*` | high |
//! | `service.plain-http`: a service instance reached over `http://` beyond loopback | high |
//! | `plugin.writable-dir`: a directory granted writable | medium |
//! | `plugin.unpinned`: a manifest without a `sha256` pin | medium |
//! | `api.public`: the API listens beyond loopback (with auth) | low |
//! | `plugin.limit-above-ceiling`: a limit above the recommended ceiling (config) | low |
//!
//! The run succeeds whatever it finds; `output.findings` and the counts by severity carry
//! the verdict.

mod audit;

use evolve_plugin_sdk::{
    AgentInfo, HealthReport, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent,
    inventory, warn,
};

use crate::audit::{Ceilings, System};

struct SecurityAuditor;

impl MetaAgent for SecurityAuditor {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Audits plugin permissions, API exposure, service transport and limits",
        )
        .with_capabilities(["security-audit"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "" | "audit" => audit(),
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; security-auditor knows `audit`"
            ))),
        }
    }

    fn health() -> HealthReport {
        match evolve_plugin_sdk::config::get::<Ceilings>() {
            Ok(_) => HealthReport::healthy("ceilings configured; the inventory answers"),
            Err(err) => HealthReport::unhealthy(err.message),
        }
    }
}

fn audit() -> Result<TaskOutcome, PluginError> {
    let ceilings: Ceilings = evolve_plugin_sdk::config::get()?;
    let system = System {
        host: inventory::host(),
        security: inventory::security(),
        plugins: inventory::plugins(),
        sources: inventory::plugin_sources(),
        services: inventory::services(),
    };
    let report = system.audit(&ceilings);
    for finding in report.findings.iter().filter(|f| f.severity.is_serious()) {
        warn!(
            "security finding [{}] {} {}: {}",
            finding.severity.as_str(),
            finding.rule,
            finding.subject,
            finding.message
        );
    }
    TaskOutcome::new(report.summary()).with_output(&report.to_json())
}

export_meta_agent!(SecurityAuditor);
