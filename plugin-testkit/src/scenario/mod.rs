//! Scenario files: plugin tests in TOML, for any language, run by `evolve plugin test` through
//! the [`Kit`](crate::kit::Kit). A project's `tests/*.toml` each hold cases; a case scripts the
//! host (config, limits, inventory, probes, fake HTTP hosts), makes one call and states what
//! must come back.
//!
//! ```toml
//! # Shared by every case of the file (a case's own keys win, key by key).
//! config = { greeting = "hello" }
//!
//! [[case]]
//! name = "greets the caller"
//! config = { greeting = "hi" }
//! run = { task = "hello", input = { who = "evolve" } }
//! expect = { summary = "hi, evolve", output = { greeting = "hi, evolve" }, logs = ["greeted: hi, evolve"] }
//!
//! [[case]]
//! name = "a 503 is unhealthy"
//! http."down.test:80" = { status = 503 }
//! check = { endpoint = "http://down.test" }
//! expect = { status = "unhealthy", http_requests = ["GET http://down.test/health"] }
//! ```
//!
//! Steps, per file: 1. read (at most [`MAX_SCENARIO_BYTES`]) → 2. parse (unknown keys are errors
//! naming the key) → 3. validate each case (one call; expectations that fit the call) → then
//! per case: 4. load the plugin into a fresh kit with the case's setup → 5. make the call →
//! 6. compare, collecting every mismatch (not only the first).
//!
//! | module | steps |
//! |---|---|
//! | this file | the file format (what authors write) and the validated cases |
//! | `parse` | 1-3: read, parse, validate |
//! | `run` | 4-6: load into a kit, call, compare |

mod parse;
mod run;
#[cfg(test)]
mod tests;

pub use run::CaseResult;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use evolve_runtime::bindings::types::{HealthStatus, Service};

/// Where a project keeps its scenario files: `<project>/tests/*.toml`.
pub const SCENARIO_DIR: &str = "tests";

/// Largest scenario file read: they are hand-written; anything bigger is a mistake.
pub const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;

/// Most cases in one file, and most fake-HTTP delay per answer: a scenario run stays bounded.
const MAX_CASES_PER_FILE: usize = 1000;
const MAX_HTTP_DELAY_MS: u64 = 60_000;

/// Why scenario files could not be read; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {bytes} bytes; a scenario file may be at most {MAX_SCENARIO_BYTES} bytes")]
    TooLarge { path: PathBuf, bytes: u64 },
    /// TOML syntax, an unknown key or a value of the wrong type (the message has line, column
    /// and key).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A case that parses but cannot be run as written.
    #[error("{path}: case `{case}`: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        case: String,
        key: String,
        message: String,
    },
    #[error("{dir}: no scenario files (`*.toml`); see the plugin guide, \"Scenario tests\"")]
    NoScenarios { dir: PathBuf },
}

// ---------------------------------------------------------------------------------------------
// The file format (what authors write). Every struct refuses unknown keys.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Over the manifest's `[config]`.
    config: Option<toml::Table>,
    /// Over the manifest's `[limits]`.
    limits: Option<BTreeMap<String, u64>>,
    inventory: Option<InventorySpec>,
    probes: Option<Vec<ProbeSpec>>,
    /// Fake hosts by `host:port`; any other host refuses the connection.
    http: Option<BTreeMap<String, HttpSpec>>,
    #[serde(default, rename = "case")]
    cases: Vec<CaseSpec>,
}

/// What a case scripts; at file level, the defaults of every case. (Spelled out in [`FileSpec`]
/// and [`CaseSpec`] rather than flattened: serde cannot refuse unknown keys through a flatten.)
#[derive(Debug, Default, Clone)]
struct SetupSpec {
    /// Over the manifest's `[config]`.
    config: Option<toml::Table>,
    /// Over the manifest's `[limits]`.
    limits: Option<BTreeMap<String, u64>>,
    inventory: Option<InventorySpec>,
    probes: Option<Vec<ProbeSpec>>,
    /// Fake hosts by `host:port`; any other host refuses the connection.
    http: Option<BTreeMap<String, HttpSpec>>,
}

impl SetupSpec {
    /// `self` over `defaults`, key by key (config and http merge per entry).
    fn over(self, defaults: &SetupSpec) -> SetupSpec {
        let merge_tables =
            |mine: Option<toml::Table>, base: &Option<toml::Table>| match (mine, base) {
                (Some(mine), Some(base)) => {
                    let mut merged = base.clone();
                    merged.extend(mine);
                    Some(merged)
                }
                (mine, base) => mine.or_else(|| base.clone()),
            };
        let merge_maps = |mine: Option<BTreeMap<String, HttpSpec>>,
                          base: &Option<BTreeMap<String, HttpSpec>>| {
            match (mine, base) {
                (Some(mine), Some(base)) => {
                    let mut merged = base.clone();
                    merged.extend(mine);
                    Some(merged)
                }
                (mine, base) => mine.or_else(|| base.clone()),
            }
        };
        let limits = match (self.limits, &defaults.limits) {
            (Some(mine), Some(base)) => {
                let mut merged = base.clone();
                merged.extend(mine);
                Some(merged)
            }
            (mine, base) => mine.or_else(|| base.clone()),
        };
        SetupSpec {
            config: merge_tables(self.config, &defaults.config),
            limits,
            inventory: self.inventory.or_else(|| defaults.inventory.clone()),
            probes: self.probes.or_else(|| defaults.probes.clone()),
            http: merge_maps(self.http, &defaults.http),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventorySpec {
    #[serde(default)]
    services: Vec<InventoryService>,
    #[serde(default)]
    models: Vec<InventoryModel>,
    /// Agent names.
    #[serde(default)]
    agents: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryService {
    name: String,
    endpoint: String,
    #[serde(rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    /// The last check's verdict; absent: never checked.
    health: Option<StatusSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryModel {
    name: String,
    task_type: String,
    latest_version: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSpec {
    kind: ProbeKindSpec,
    name: String,
    ok: bool,
    #[serde(default)]
    detail: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ProbeKindSpec {
    Service,
    Checker,
    BestModel,
    Agent,
}

/// One fake host: an answer (`status`, `body`, `delay_ms`) or a failure (`fail`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSpec {
    status: Option<u16>,
    body: Option<String>,
    delay_ms: Option<u64>,
    fail: Option<HttpFailure>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HttpFailure {
    Timeout,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StatusSpec {
    Healthy,
    Degraded,
    Unhealthy,
}

impl StatusSpec {
    fn status(self) -> HealthStatus {
        match self {
            StatusSpec::Healthy => HealthStatus::Healthy,
            StatusSpec::Degraded => HealthStatus::Degraded,
            StatusSpec::Unhealthy => HealthStatus::Unhealthy,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    /// Over the manifest's `[config]`.
    config: Option<toml::Table>,
    /// Over the manifest's `[limits]`.
    limits: Option<BTreeMap<String, u64>>,
    inventory: Option<InventorySpec>,
    probes: Option<Vec<ProbeSpec>>,
    /// Fake hosts by `host:port`; any other host refuses the connection.
    http: Option<BTreeMap<String, HttpSpec>>,
    run: Option<RunSpec>,
    health: Option<bool>,
    check: Option<CheckSpec>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunSpec {
    #[serde(default)]
    task: String,
    /// Any TOML value; the plugin gets it as JSON (absent: `{}`).
    input: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckSpec {
    #[serde(default = "default_service_name")]
    name: String,
    endpoint: String,
    #[serde(rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    weight: Option<u32>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn default_service_name() -> String {
    "svc".to_owned()
}

/// What must come back. Without `error` or `call_error`, the call must succeed.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `run`: the outcome's summary, exactly.
    summary: Option<String>,
    /// `run`: the outcome's output JSON, exactly (key order does not matter).
    output: Option<toml::Value>,
    /// `run` / `check`: the plugin's own error code (`invalid-input`, `not-found`, ...).
    error: Option<String>,
    /// With `error`: a part of the plugin's error message.
    error_message: Option<String>,
    /// The host's call error code (`trap`, `deadline_exceeded`, `memory_limit`, ...).
    call_error: Option<String>,
    /// `health` / `check`: the report's status.
    status: Option<StatusSpec>,
    /// `health` / `check`: the report's detail, exactly.
    detail: Option<String>,
    /// `health` / `check`: a part of the report's detail.
    detail_contains: Option<String>,
    /// Messages the plugin logged during the call, in this order (others may come between).
    logs: Option<Vec<String>>,
    /// Every `METHOD url` that reached the fake hosts during the call, in order.
    http_requests: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Validated scenarios (what the runner executes).

/// One scenario file, parsed and validated.
#[derive(Debug)]
pub struct ScenarioFile {
    pub path: PathBuf,
    pub cases: Vec<Case>,
}

/// One case: its setup, its call, its expectations.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    setup: SetupSpec,
    call: Call,
    expect: Expect,
}

#[derive(Debug)]
enum Call {
    Run { task: String, input: Value },
    Health,
    Check(Service),
}

impl Call {
    fn key(&self) -> &'static str {
        match self {
            Call::Run { .. } => "run",
            Call::Health => "health",
            Call::Check(_) => "check",
        }
    }
}

/// Reads every `*.toml` in `<project>/tests`, in name order.
pub fn load_project(project: &Path) -> Result<Vec<ScenarioFile>, ScenarioError> {
    let dir = project.join(SCENARIO_DIR);
    let entries = std::fs::read_dir(&dir).map_err(|source| ScenarioError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| ScenarioError::Read {
                path: dir.clone(),
                source,
            })?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(ScenarioError::NoScenarios { dir });
    }
    paths.sort();
    paths.iter().map(|path| ScenarioFile::read(path)).collect()
}
