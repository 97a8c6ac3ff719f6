//! `output-flood`: a hostile meta agent for tests that produces far more than its limits allow.
//!
//! - task `output`: returns an outcome whose output is one JSON string of ~8 MiB;
//! - task `logs`: logs ~8 MiB through the log macros and another ~8 MiB to stdout (what
//!   `println!` writes to; written with `writeln!` so a host that closes or caps stdout does not
//!   turn the flood into a panic), then returns normally.
//!
//! - task `empty-artifacts`: returns an outcome listing `count` empty artifact paths;
//! - task `empty-fields`: logs `count` empty records, then one record with `count` empty
//!   fields: floods of elements that carry no text;
//! - task `probe-flood`: probes the service `nowhere` `count` times through the `probes`
//!   import and answers with how many probes were refused;
//! - config `describe_capabilities = N`: `describe()` claims N empty capabilities.
//!
//! The size is `{"mib": N}` in the task input (default 8), the element count `{"count": N}`
//! (default 1,000,000), so a test can also stay under a limit on purpose.

use std::io::Write as _;

use evolve_plugin_sdk::log::{Level, log, log_with_fields};
use evolve_plugin_sdk::{
    AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent, info,
};
use serde::Deserialize;

/// Bytes per log line / stdout line.
const LINE: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Input {
    /// MiB to produce per channel.
    mib: usize,
    /// Elements to produce for the element floods.
    count: usize,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            mib: 8,
            count: 1_000_000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Config {
    /// Empty capabilities `describe()` claims besides `testing`.
    describe_capabilities: usize,
}

struct OutputFlood;

impl MetaAgent for OutputFlood {
    fn describe() -> AgentInfo {
        let extra = evolve_plugin_sdk::config::get::<Config>()
            .map_or(0, |config| config.describe_capabilities);
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Returns ~8 MiB of output (task `output`) or logs ~8 MiB (task `logs`)",
        )
        .with_capabilities(std::iter::once("testing").chain(std::iter::repeat_n("", extra)))
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        let input: Input = task.input()?;
        let bytes = input.mib.saturating_mul(1 << 20);
        match task.name.as_str() {
            "output" => {
                let blob = "x".repeat(bytes);
                TaskOutcome::new(format!("{} bytes of output", blob.len())).with_output(&blob)
            }
            "logs" => {
                let line = "y".repeat(LINE);
                let lines = bytes / LINE;
                for i in 0..lines {
                    info!("{i:08} {line}");
                }
                // Lock once: `println!` would re-lock stdout for every line.
                let mut stdout = std::io::stdout().lock();
                for i in 0..lines {
                    // The host may close or cap stdout; the flood is the point, not its delivery.
                    if writeln!(stdout, "{i:08} {line}").is_err() {
                        break;
                    }
                }
                let _ = stdout.flush();
                Ok(TaskOutcome::new(format!(
                    "logged {lines} lines of {LINE} bytes to the log and to stdout"
                )))
            }
            "empty-artifacts" => {
                let mut outcome = TaskOutcome::new("empty artifacts");
                outcome.artifacts = vec![String::new(); input.count];
                Ok(outcome)
            }
            "probe-flood" => {
                let refused = (0..input.count)
                    .filter(|_| !evolve_plugin_sdk::probes::service("nowhere").ok)
                    .count();
                Ok(TaskOutcome::new(format!(
                    "{refused} of {} probes failed",
                    input.count
                )))
            }
            "empty-fields" => {
                for _ in 0..input.count {
                    log(Level::Info, "");
                }
                let fields = vec![("", ""); input.count];
                log_with_fields(Level::Info, "", &fields);
                Ok(TaskOutcome::new("logged empty records and fields"))
            }
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; expected `output`, `logs`, `empty-artifacts`, `empty-fields` or `probe-flood`"
            ))),
        }
    }
}

export_meta_agent!(OutputFlood);
