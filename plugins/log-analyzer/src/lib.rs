//! `log-analyzer`: a meta agent that reads the daemon's own JSON-lines logs.
//!
//! Task `analyze` (also the default) reads the granted log directory (config `log_dir`,
//! default `/logs`, read-only), keeps the lines inside the window, and returns JSON plus a
//! markdown summary (`output.markdown`): counts by level, component (the log target's first
//! two segments) and plugin; error bursts; the most frequent errors with numbers and ids
//! folded; and a text chart of errors over time.
//!
//! Input (all optional): `window_minutes`, `until_ms` (default now), `top`,
//! `burst_min_errors`, `burst_factor`. Reads are capped at `max_read_mb`, newest files first,
//! so a huge log costs bounded memory and time.

mod analysis;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use evolve_plugin_sdk::{
    AgentInfo, HealthReport, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent, info,
    now_ms,
};
use serde::Deserialize;

use crate::analysis::{Analysis, Settings};

/// The `[config]` table of `plugin.toml`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    log_dir: String,
    max_read_mb: u64,
    window_minutes: u64,
    burst_min_errors: u64,
    burst_factor: f64,
    top: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_dir: "/logs".to_owned(),
            max_read_mb: 64,
            window_minutes: 60,
            burst_min_errors: 5,
            burst_factor: 3.0,
            top: 10,
        }
    }
}

/// Task input; every field overrides the config's.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Input {
    window_minutes: Option<u64>,
    until_ms: Option<u64>,
    top: Option<usize>,
    burst_min_errors: Option<u64>,
    burst_factor: Option<f64>,
}

/// Longest window accepted, minutes (a week).
const MAX_WINDOW_MINUTES: u64 = 7 * 24 * 60;

struct LogAnalyzer;

impl MetaAgent for LogAnalyzer {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Counts, error bursts and top errors of the daemon's own logs",
        )
        .with_capabilities(["log-analysis"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "" | "analyze" => analyze(&task),
            other => Err(PluginError::invalid_input(format!(
                "unknown task `{other}`; log-analyzer knows `analyze`"
            ))),
        }
    }

    fn health() -> HealthReport {
        let config: Config = match evolve_plugin_sdk::config::get() {
            Ok(config) => config,
            Err(err) => return HealthReport::unhealthy(err.message),
        };
        match log_files(Path::new(&config.log_dir)) {
            Ok(files) => HealthReport::healthy(format!(
                "{} readable, {} log files",
                config.log_dir,
                files.len()
            )),
            Err(err) => HealthReport::unhealthy(err.message),
        }
    }
}

fn analyze(task: &Task) -> Result<TaskOutcome, PluginError> {
    let config: Config = evolve_plugin_sdk::config::get()?;
    let input: Input = if task.input.trim().is_empty() {
        Input::default()
    } else {
        task.input()?
    };
    let window_minutes = input.window_minutes.unwrap_or(config.window_minutes);
    if window_minutes == 0 || window_minutes > MAX_WINDOW_MINUTES {
        return Err(PluginError::invalid_input(format!(
            "window_minutes = {window_minutes}: must be between 1 and {MAX_WINDOW_MINUTES}"
        )));
    }
    let factor = input.burst_factor.unwrap_or(config.burst_factor);
    if !factor.is_finite() || factor < 1.0 {
        return Err(PluginError::invalid_input(format!(
            "burst_factor = {factor}: must be a finite number of at least 1"
        )));
    }
    let until_ms = input.until_ms.unwrap_or_else(now_ms);
    let settings = Settings {
        since_ms: until_ms.saturating_sub(window_minutes * 60_000),
        until_ms,
        top: input.top.unwrap_or(config.top).clamp(1, 100),
        burst_min_errors: input
            .burst_min_errors
            .unwrap_or(config.burst_min_errors)
            .max(1),
        burst_factor: factor,
    };
    let dir = Path::new(&config.log_dir);
    let budget = config.max_read_mb.saturating_mul(1 << 20);
    let mut analysis = Analysis::new(settings);
    let mut read = 0u64;
    let mut truncated = false;
    // Newest file first, so the byte budget keeps the most recent lines.
    for file in log_files(dir)?.into_iter().rev() {
        let remaining = budget.saturating_sub(read);
        if remaining == 0 {
            truncated = true;
            break;
        }
        let (text, cut) = read_tail(&file, remaining)?;
        read += text.len() as u64;
        truncated |= cut;
        for line in text.lines() {
            analysis.add_line(line);
        }
    }
    let report = analysis.finish(truncated, read);
    info!(
        "analyzed {} log lines ({} in window, {} errors, {} bursts)",
        report.lines_read,
        report.lines_in_window,
        report.errors,
        report.bursts.len()
    );
    let markdown = report.markdown();
    let mut output = serde_json::to_value(&report)
        .map_err(|e| PluginError::internal(format!("cannot encode the report: {e}")))?;
    if let Some(map) = output.as_object_mut() {
        map.insert("markdown".into(), markdown.into());
    }
    TaskOutcome::new(report.summary()).with_output(&output)
}

/// The daemon's log files (`evolve*.log*`), oldest first (their names sort by date).
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        PluginError::not_found(format!(
            "cannot read the log directory {}: {e} (is it granted? see [[permissions.dirs]])",
            dir.display()
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("evolve") && n.contains(".log"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Up to `limit` bytes from the end of `path`, starting at a line boundary; whether it cut.
fn read_tail(path: &Path, limit: u64) -> Result<(String, bool), PluginError> {
    let io_err =
        |e: std::io::Error| PluginError::internal(format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let cut = len > limit;
    if cut {
        file.seek(SeekFrom::Start(len - limit)).map_err(io_err)?;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len.min(limit)).unwrap_or(0));
    file.take(limit).read_to_end(&mut bytes).map_err(io_err)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut && let Some(newline) = text.find('\n') {
        // The first line is partial.
        text.drain(..=newline);
    }
    Ok((text, cut))
}

export_meta_agent!(LogAnalyzer);
