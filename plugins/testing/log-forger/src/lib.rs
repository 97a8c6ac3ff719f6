//! `log-forger`: a hostile meta agent for tests whose text imitates the daemon's own log lines.
//!
//! - task `log`: logs, through the `logging` import, a message holding a newline followed by a
//!   fake daemon line (`... ERROR evolve::api: FORGED-MESSAGE daemon panicked`), then a CR, an
//!   ANSI clear-screen sequence, U+2028 and a bidi override; and fields whose key and value
//!   hold fake lines too. Returns `{"logged": true}`.
//! - task `trap`: panics with a message holding a fake daemon line (the host quotes a trap's
//!   stderr in its error, which it logs).
//! - task `error`: fails with a plugin error whose message holds a fake daemon line.
//!
//! Every fake line carries a `FORGED-` marker so a test can find where it landed.

use evolve_plugin_sdk::log::{Level, log_with_fields};
use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

/// What the daemon's text log lines start with, as a forger would copy it.
const FAKE_PREFIX: &str = "2026-01-01T00:00:00.000000Z ERROR evolve::api:";

struct LogForger;

impl MetaAgent for LogForger {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Logs, panics or fails with text imitating the daemon's log lines",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "log" => {
                let message = format!(
                    "innocent start\n{FAKE_PREFIX} FORGED-MESSAGE daemon panicked\r\n\
                     {FAKE_PREFIX} FORGED-CR\rover\x1b[2J\x1b[31mFORGED-ANSI\u{9b}31m\
                     \u{2028}FORGED-LS\u{2029}\u{202e}FORGED-BIDI"
                );
                let key = format!("key\n{FAKE_PREFIX} FORGED-KEY");
                let value = format!("value\n{FAKE_PREFIX} FORGED-VALUE");
                log_with_fields(Level::Error, &message, &[(&key, &value)]);
                Ok(TaskOutcome::new("logged").with_json_output(r#"{"logged": true}"#))
            }
            "trap" => panic!("deliberate\n{FAKE_PREFIX} FORGED-TRAP daemon panicked"),
            "error" => Err(PluginError::internal(format!(
                "failed\n{FAKE_PREFIX} FORGED-ERROR daemon panicked"
            ))),
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; expected `log`, `trap` or `error`"
            ))),
        }
    }
}

export_meta_agent!(LogForger);
