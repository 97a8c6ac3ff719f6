//! `future-version`: the `echo` agent, but built against `evolve:plugin@0.2.0` (the bumped WIT
//! copy in this crate's `wit/`), so it imports and exports `...@0.2.0` interfaces. The host serves
//! 0.1.x and must refuse to load it, naming both versions.

// The generated canonical-ABI glue is `unsafe` by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    world: "meta-agent",
    path: "wit",
});

use evolve::plugin::types::{
    AgentInfo, HealthReport, HealthStatus, PluginError, Task, TaskOutcome,
};
use exports::evolve::plugin::agent::Guest;

struct FutureVersion;

impl Guest for FutureVersion {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Echo agent built against evolve:plugin@0.2.0".to_owned(),
            capabilities: vec!["testing".to_owned()],
            schedule: None,
        }
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        // Logging makes the component import `logging@0.2.0` too, not only export `agent@0.2.0`.
        evolve::plugin::logging::log(
            evolve::plugin::logging::Level::Info,
            &format!("echo {}", task.name),
            &[],
        );
        Ok(TaskOutcome {
            summary: format!("echo {}", task.name),
            output: task.input,
            artifacts: Vec::new(),
        })
    }

    fn health() -> HealthReport {
        HealthReport {
            status: HealthStatus::Healthy,
            latency_us: 0,
            detail: "ok".to_owned(),
            checked_at_ms: 0,
        }
    }
}

export!(FutureVersion);
