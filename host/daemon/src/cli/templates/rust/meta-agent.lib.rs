//! `{{name}}`: a meta agent. Task `hello` (the default) answers `{"greeting": "<greeting>, <who>"}`
//! with `greeting` from `[config]` and `who` from the task input (default `world`).
//!
//! Build: `evolve plugin build` → `target/plugin/{{name}}/` (drop that dir into the daemon's
//! plugins dir). Test: `cargo test --release` (tests/plugin.rs runs the built component in a
//! mocked host) and `evolve plugin test` (the scenarios in tests/*.toml).

use evolve_plugin_sdk::{
    AgentInfo, HealthReport, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent, info,
};
use serde::Deserialize;

/// The `[config]` table of plugin.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    greeting: String,
}

/// The task input.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Input {
    who: Option<String>,
}

struct Agent;

impl MetaAgent for Agent {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Answers task `hello` with a greeting",
        )
        .with_capabilities(["example"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        if !(task.name.is_empty() || task.name == "hello") {
            return Err(PluginError::invalid_input(format!(
                "unknown task `{}`; this agent runs `hello`",
                task.name
            )));
        }
        let config: Config = evolve_plugin_sdk::config::get()?;
        let input: Input = task.input()?;
        let greeting = format!(
            "{}, {}",
            config.greeting,
            input.who.as_deref().unwrap_or("world")
        );
        info!("greeted: {greeting}");
        TaskOutcome::new(greeting.clone()).with_output(&serde_json::json!({ "greeting": greeting }))
    }

    fn health() -> HealthReport {
        HealthReport::healthy("ready")
    }
}

export_meta_agent!(Agent);
