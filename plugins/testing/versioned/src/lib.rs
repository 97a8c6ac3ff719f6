//! `versioned`: a meta agent for hot-reload tests. Every answer carries the `tag` from its
//! generation's config, so a test can tell which generation served a call.
//!
//! Tasks: `tag` answers at once; `slow` (input `{"ms": N}`) computes for N ms first, holding
//! the call open across a reload. Config `healthy = false` makes `health()` report unhealthy
//! (a reload canary must refuse it); `trap = true` makes every run trap (a bad version that
//! passes its canary).

use std::time::{Duration, Instant};

use evolve_plugin_sdk::{
    AgentInfo, HealthReport, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default)]
struct Config {
    tag: String,
    healthy: bool,
    trap: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag: "untagged".to_owned(),
            healthy: true,
            trap: false,
        }
    }
}

#[derive(Deserialize)]
struct SlowInput {
    ms: u64,
}

struct Versioned;

impl MetaAgent for Versioned {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Answers with its config tag",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        let config: Config = evolve_plugin_sdk::config::get()?;
        if config.trap {
            panic!("versioned {}: configured to trap", config.tag);
        }
        match task.name.as_str() {
            "" | "tag" => {}
            "slow" => {
                let input: SlowInput = task.input()?;
                let until = Instant::now() + Duration::from_millis(input.ms);
                // Compute rather than sleep: the call stays in guest code, as real work would.
                let mut spins = 0u64;
                while Instant::now() < until {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            other => {
                return Err(PluginError::invalid_input(format!(
                    "unknown task `{other}`; expected `tag` or `slow`"
                )));
            }
        }
        TaskOutcome::new(format!("tag {}", config.tag))
            .with_output(&serde_json::json!({ "tag": config.tag }))
    }

    fn health() -> HealthReport {
        match evolve_plugin_sdk::config::get::<Config>() {
            Ok(config) if config.healthy => HealthReport::healthy(format!("tag {}", config.tag)),
            Ok(config) => {
                HealthReport::unhealthy(format!("tag {} is configured unhealthy", config.tag))
            }
            Err(e) => HealthReport::unhealthy(e.message),
        }
    }
}

export_meta_agent!(Versioned);
