//! `flaky`: a test guest for the agent manager's retries.
//!
//! - `flaky` with input `{"fail_times": N}`: the first N calls answer a retryable
//!   `unavailable` error, later ones succeed with `{"calls": <count>}`. Calls are counted in
//!   `/state/calls` (each call runs in a fresh instance).
//! - `fatal`: a non-retryable `invalid-input` error.

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

struct Flaky;

const COUNTER: &str = "/state/calls";

impl MetaAgent for Flaky {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Fails retryably a set number of times",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "fatal" => Err(PluginError::invalid_input("fatal: this input never works")),
            _ => {
                let fail_times = task
                    .input
                    .split("\"fail_times\":")
                    .nth(1)
                    .and_then(|rest| {
                        rest.trim_start()
                            .split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                let calls = std::fs::read_to_string(COUNTER)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                std::fs::write(COUNTER, calls.to_string())
                    .map_err(|e| PluginError::internal(format!("cannot write {COUNTER}: {e}")))?;
                if calls <= fail_times {
                    return Err(PluginError::unavailable(format!(
                        "call {calls} of {fail_times} planned failures"
                    ))
                    .with_retryable(true));
                }
                Ok(TaskOutcome::new(format!("succeeded on call {calls}"))
                    .with_json_output(format!("{{\"calls\":{calls}}}")))
            }
        }
    }
}

export_meta_agent!(Flaky);
