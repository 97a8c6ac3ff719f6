//! `echo`: a well-behaved meta agent for tests. `run` answers with the task's own input as
//! output and `echo <task name>` as summary, so tests can prove a plugin (or the daemon) still
//! answers after a hostile neighbour misbehaved.

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

struct Echo;

impl MetaAgent for Echo {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Returns the task input as output",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        // The host passes `{}` for "no input"; an empty string would not be a JSON document.
        let output = if task.input.trim().is_empty() {
            "null".to_owned()
        } else {
            task.input
        };
        Ok(TaskOutcome::new(format!("echo {}", task.name)).with_json_output(output))
    }
}

export_meta_agent!(Echo);
