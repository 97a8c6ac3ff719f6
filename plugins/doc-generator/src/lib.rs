//! `doc-generator`: a meta agent that documents the running system.
//!
//! Task `generate` (also the default, for an empty task name) reads the whole inventory and
//! writes `inventory.md` into the granted output directory (config `output_dir`, default
//! `/out`): the daemon, every loaded plugin with its permissions, limits, pin and call counts,
//! then services with health, models with aliases and the best per task, agents with schedules
//! and run stats, and the API's endpoints. Each of the last three sections says "none registered" when
//! empty, so the file always has the same outline.
//!
//! `health` is healthy when the output directory is writable.

mod render;

use std::io;
use std::path::Path;

use evolve_plugin_sdk::{
    AgentInfo, HealthReport, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent, info,
    inventory, now_ms,
};
use serde::Deserialize;
use serde_json::json;

use crate::render::Snapshot;

/// Name of the generated file inside the output directory.
const FILE_NAME: &str = "inventory.md";

/// The `[config]` table of `plugin.toml`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Directory (as the plugin sees it) to write into; must be granted writable.
    output_dir: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            output_dir: "/out".to_owned(),
        }
    }
}

struct DocGenerator;

impl MetaAgent for DocGenerator {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Writes a markdown inventory of plugins, services, models and agents",
        )
        .with_capabilities(["documentation"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "" | "generate" => generate(),
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; doc-generator knows `generate`"
            ))),
        }
    }

    fn health() -> HealthReport {
        let config: Config = match evolve_plugin_sdk::config::get() {
            Ok(config) => config,
            Err(err) => return HealthReport::unhealthy(err.message),
        };
        match probe_writable(Path::new(&config.output_dir)) {
            Ok(()) => HealthReport::healthy(format!("{} is writable", config.output_dir)),
            Err(err) => {
                HealthReport::unhealthy(format!("cannot write to {}: {err}", config.output_dir))
            }
        }
    }
}

fn generate() -> Result<TaskOutcome, PluginError> {
    let config: Config = evolve_plugin_sdk::config::get()?;
    let snapshot = Snapshot {
        generator: concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
        generated_at_ms: now_ms(),
        host: inventory::host(),
        plugins: inventory::plugins(),
        services: inventory::services(),
        models: inventory::models(),
        best_models: inventory::best_models(),
        agents: inventory::agents(),
        sources: inventory::plugin_sources(),
        endpoints: inventory::api_endpoints(),
    };
    let markdown = snapshot.render();

    let dir = config.output_dir.trim_end_matches('/');
    let path = format!("{dir}/{FILE_NAME}");
    std::fs::write(&path, &markdown).map_err(|err| io_error(&path, &err))?;
    info!(
        "wrote {path} ({} bytes, {} plugins)",
        markdown.len(),
        snapshot.plugins.len()
    );

    TaskOutcome::new(format!(
        "wrote {path}: {} plugins, {} services, {} models, {} agents",
        snapshot.plugins.len(),
        snapshot.services.len(),
        snapshot.models.len(),
        snapshot.agents.len()
    ))
    .with_output(&json!({
        "path": path,
        "bytes": markdown.len(),
        "plugins": snapshot.plugins.len(),
        "services": snapshot.services.len(),
        "models": snapshot.models.len(),
        "best_models": snapshot.best_models.len(),
        "agents": snapshot.agents.len(),
    }))
    .map(|outcome| outcome.with_artifact(path))
}

/// Creates and removes a probe file: the only reliable test of writability through WASI, where
/// permission bits say nothing about whether the host granted the directory writable.
fn probe_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(".doc-generator-probe");
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

/// Maps a failed write to the WIT error the operator needs to see.
fn io_error(path: &str, err: &io::Error) -> PluginError {
    let message = format!("cannot write {path}: {err}");
    match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => PluginError::denied(
            format!("{message} (is the directory granted with write = true?)"),
        ),
        // Without a preopen for the directory, WASI reports the path as missing.
        io::ErrorKind::NotFound => {
            PluginError::not_found(format!("{message} (is the directory granted?)"))
        }
        _ => PluginError::internal(message),
    }
}

export_meta_agent!(DocGenerator);
