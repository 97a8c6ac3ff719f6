//! Structured logging into the host's log, through the `evolve:plugin/logging` import.
//!
//! The host tags every line with the plugin's name and generation and caps the bytes logged per
//! call (`max_log_kb`); the excess is dropped and counted, so logging never fails from the
//! plugin's side. Use the crate-level macros:
//!
//! ```no_run
//! use evolve_plugin_sdk::{info, warn};
//!
//! let endpoint = "http://127.0.0.1:9000";
//! info!("checking {endpoint}");
//! warn!("slow answer: {} ms", 480);
//! ```
//!
//! `println!`/`eprintln!` also reach the host log (as stdout/stderr lines), but without a level.

pub use crate::bindings::meta_agent::evolve::plugin::logging::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    crate::bindings::meta_agent::evolve::plugin::logging::log(level, message, &[]);
}

/// Logs `message` at `level` with structured key/value `fields`.
pub fn log_with_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
    // The generated import takes owned strings (`list<tuple<string, string>>` in owning mode).
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    crate::bindings::meta_agent::evolve::plugin::logging::log(level, message, &fields);
}

/// Logs at `trace` level, with `format!` arguments.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+))
    };
}

/// Logs at `debug` level, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+))
    };
}

/// Logs at `info` level, with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+))
    };
}

/// Logs at `warn` level, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+))
    };
}

/// Logs at `error` level, with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+))
    };
}
