//! `bad-json`: a hostile meta agent for tests whose task output is JSON a lax check would pass
//! but no reader can serve as a document.
//!
//! - task `deep`: arrays nested 200 levels (`[[[...1...]]]`), well-formed but deeper than the
//!   host serves;
//! - task `surrogate`: `{"s": "\ud800"}`, a lone surrogate escape, which names no character;
//! - task `limit`: arrays nested exactly 64 levels, the most the host serves;
//! - task `fine`: `{"ok": [1, {"two": 2}]}`, a small valid document.

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

/// Levels of nesting of task `deep`: past any sane limit, far below what a guest's memory caps.
const DEEP_LEVELS: usize = 200;

/// Levels of nesting of task `limit`: the host's `MAX_OUTPUT_DEPTH`.
const LIMIT_LEVELS: usize = 64;

fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

struct BadJson;

impl MetaAgent for BadJson {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Returns output JSON nested too deep (`deep`) or with a lone surrogate (`surrogate`)",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        let output = match task.name.as_str() {
            "deep" => nested(DEEP_LEVELS),
            "limit" => nested(LIMIT_LEVELS),
            "surrogate" => r#"{"s": "\ud800"}"#.to_owned(),
            "fine" => r#"{"ok": [1, {"two": 2}]}"#.to_owned(),
            other => {
                return Err(PluginError::invalid_input(format!(
                    "unknown task `{other}`; expected `deep`, `surrogate`, `limit` or `fine`"
                )));
            }
        };
        Ok(TaskOutcome::new(format!("{} output", task.name)).with_json_output(output))
    }
}

export_meta_agent!(BadJson);
