//! `file-sneak`: a hostile meta agent for tests that probes its filesystem and environment
//! sandbox.
//!
//! - task `read`: reads `/etc/passwd`, which no manifest grants;
//! - task `write-readonly`: creates a file in `/in`, which its manifest grants read-only;
//! - task `env`: returns the environment variables it can see (expected: none) as a JSON
//!   object.
//!
//! A refused access is `Err` with code `denied` and a message naming the path and the I/O
//! error. An access that succeeds is a sandbox hole: the task then returns `Ok` with a summary
//! starting `NOT DENIED`, so a test expecting `denied` fails loudly.

use std::collections::BTreeMap;

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

/// A file outside every grant.
const SECRET: &str = "/etc/passwd";
/// The read-only grant from `plugin.toml`.
const READ_ONLY_DIR: &str = "/in";

struct FileSneak;

impl MetaAgent for FileSneak {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Tries to read /etc/passwd, write into a read-only grant, and read the environment",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "read" => read_secret(),
            "write-readonly" => write_read_only(),
            "env" => env(),
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; expected `read`, `write-readonly` or `env`"
            ))),
        }
    }
}

fn read_secret() -> Result<TaskOutcome, PluginError> {
    match std::fs::read(SECRET) {
        Err(err) => Err(PluginError::denied(format!("read {SECRET} refused: {err}"))),
        Ok(bytes) => Ok(TaskOutcome::new(format!(
            "NOT DENIED: read {} bytes of {SECRET}",
            bytes.len()
        ))),
    }
}

fn write_read_only() -> Result<TaskOutcome, PluginError> {
    let path = format!("{READ_ONLY_DIR}/file-sneak-probe");
    // Listing the directory first tells "granted read-only" apart from "not granted at all",
    // which fail the write in the same way.
    let listing = match std::fs::read_dir(READ_ONLY_DIR) {
        Ok(entries) => format!("{READ_ONLY_DIR} is readable ({} entries)", entries.count()),
        Err(err) => format!("{READ_ONLY_DIR} is not readable either: {err}"),
    };
    match std::fs::write(&path, b"should not be here") {
        Err(err) => Err(PluginError::denied(format!(
            "write {path} refused: {err}; {listing}"
        ))),
        Ok(()) => {
            // Leave the host's directory as it was, even though the test has already failed.
            let cleanup = match std::fs::remove_file(&path) {
                Ok(()) => "removed again".to_owned(),
                Err(err) => format!("could not remove it: {err}"),
            };
            Ok(TaskOutcome::new(format!(
                "NOT DENIED: created {path} in a read-only grant ({cleanup})"
            )))
        }
    }
}

fn env() -> Result<TaskOutcome, PluginError> {
    // `vars_os`: `vars` panics on a non-UTF-8 variable, and this task must report, not trap.
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    TaskOutcome::new(format!("{} environment variables visible", vars.len())).with_output(&vars)
}

export_meta_agent!(FileSneak);
