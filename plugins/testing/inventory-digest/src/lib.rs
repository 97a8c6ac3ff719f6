//! `inventory-digest`: the Rust twin of the JavaScript agent in `plugins/inventory-digest-js`.
//! The e2e parity tests run one test body against both, so the two must agree on every answer.
//!
//! - task `digest` (input `{}` or `{"unhealthy_only": bool}`): counts from the inventory, as
//!   `{"plugins", "plugins_by_kind": {"meta-agent", "health-checker"}, "services",
//!   "unhealthy_services": [sorted names], "models", "agents"}`, summary
//!   `<p> plugins, <s> services (<u> unhealthy), <m> models, <a> agents`; with
//!   `unhealthy_only` the output is just `{"unhealthy_services": [...]}`.
//! - any other task, or input that is not such an object: `invalid-input`, not retryable.
//! - `health()`: healthy, detail `ready`.

use evolve_plugin_sdk::inventory::{self, PluginKind};
use evolve_plugin_sdk::{
    AgentInfo, HealthReport, HealthStatus, MetaAgent, PluginError, Task, TaskOutcome,
    export_meta_agent, info,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DigestInput {
    unhealthy_only: bool,
}

struct InventoryDigest;

impl MetaAgent for InventoryDigest {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Counts what the inventory shows",
        )
        .with_capabilities(["inventory"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        if task.name != "digest" {
            return Err(PluginError::invalid_input(format!(
                "unknown task `{}`; this agent runs `digest`",
                task.name
            )));
        }
        let input: DigestInput = serde_json::from_str(&task.input).map_err(|err| {
            PluginError::invalid_input(format!(
                "input must be {{}} or {{\"unhealthy_only\": bool}}: {err}"
            ))
        })?;
        let mut unhealthy: Vec<String> = inventory::services()
            .into_iter()
            .filter(|s| {
                s.health
                    .as_ref()
                    .is_some_and(|h| h.status == HealthStatus::Unhealthy)
            })
            .map(|s| s.service.name)
            .collect();
        unhealthy.sort();
        unhealthy.dedup();
        if input.unhealthy_only {
            let summary = format!("{} unhealthy services", unhealthy.len());
            return TaskOutcome::new(summary)
                .with_output(&json!({"unhealthy_services": unhealthy}));
        }
        let plugins = inventory::plugins();
        let agents = plugins
            .iter()
            .filter(|p| p.kind == PluginKind::MetaAgent)
            .count();
        let checkers = plugins.len() - agents;
        let services = inventory::services().len();
        let models = inventory::models().len();
        let running_agents = inventory::agents().len();
        let summary = format!(
            "{} plugins, {services} services ({} unhealthy), {models} models, {running_agents} agents",
            plugins.len(),
            unhealthy.len()
        );
        info!("digest: {summary}");
        TaskOutcome::new(summary).with_output(&json!({
            "plugins": plugins.len(),
            "plugins_by_kind": {"meta-agent": agents, "health-checker": checkers},
            "services": services,
            "unhealthy_services": unhealthy,
            "models": models,
            "agents": running_agents,
        }))
    }

    fn health() -> HealthReport {
        HealthReport::healthy("ready")
    }
}

export_meta_agent!(InventoryDigest);
