//! `trapper`: a hostile meta agent for tests. `run` panics; on wasm a panic prints its message
//! to stderr and then executes `unreachable`, so the host sees a trap.

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

struct Trapper;

impl MetaAgent for Trapper {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Panics in run",
        )
        .with_capabilities(["testing"])
    }

    fn run(_task: Task) -> Result<TaskOutcome, PluginError> {
        panic!("trapper: deliberate panic")
    }
}

export_meta_agent!(Trapper);
