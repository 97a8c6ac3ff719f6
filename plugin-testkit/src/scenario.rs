//! Scenario files: plugin tests in TOML, for any language, run by `evolve plugin test` through
//! the [`Kit`]. A project's `tests/*.toml` each hold cases; a case scripts the host (config,
//! limits, inventory, probes, fake HTTP hosts), makes one call and states what must come back.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::kit::{Kit, KitBuilder};
use super::mock::{FakeHttp, FakeResponse, Inventory, ProbeKind, service};
use evolve_runtime::bindings::types::{HealthReport, HealthStatus, Service};

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

impl ScenarioFile {
    /// Steps 1-3 for one file.
    pub fn read(path: &Path) -> Result<ScenarioFile, ScenarioError> {
        let read_error = |source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read_error)?.len();
        if bytes > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge {
                path: path.to_path_buf(),
                bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        ScenarioFile::parse(path, &text)
    }

    /// Steps 2-3: `text` is the content of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<ScenarioFile, ScenarioError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let parse_error = |message: String| ScenarioError::Parse {
            path: path.to_path_buf(),
            message,
        };
        if spec.cases.is_empty() {
            return Err(parse_error(
                "no `[[case]]`; a scenario file holds at least one case".to_owned(),
            ));
        }
        if spec.cases.len() > MAX_CASES_PER_FILE {
            return Err(parse_error(format!(
                "{} cases; at most {MAX_CASES_PER_FILE} per file",
                spec.cases.len()
            )));
        }
        let defaults = SetupSpec {
            config: spec.config,
            limits: spec.limits,
            inventory: spec.inventory,
            probes: spec.probes,
            http: spec.http,
        };
        let mut names = std::collections::HashSet::new();
        let mut cases = Vec::with_capacity(spec.cases.len());
        for case in spec.cases {
            let invalid = |key: &str, message: String| ScenarioError::Invalid {
                path: path.to_path_buf(),
                case: case.name.clone(),
                key: key.to_owned(),
                message,
            };
            if case.name.trim().is_empty() {
                return Err(parse_error("a case has an empty `name`".to_owned()));
            }
            if !names.insert(case.name.clone()) {
                return Err(invalid("name", "two cases have this name".to_owned()));
            }
            let call = match (case.run, case.health, case.check) {
                (Some(run), None, None) => {
                    let input = match run.input {
                        None => Value::Object(serde_json::Map::new()),
                        Some(value) => serde_json::to_value(value)
                            .map_err(|e| invalid("run.input", e.to_string()))?,
                    };
                    Call::Run {
                        task: run.task,
                        input,
                    }
                }
                (None, Some(true), None) => Call::Health,
                (None, Some(false), None) => {
                    return Err(invalid(
                        "health",
                        "`health = false` makes no call; write `health = true`".to_owned(),
                    ));
                }
                (None, None, Some(check)) => {
                    let mut target = service(&check.name, &check.endpoint);
                    if let Some(service_type) = check.service_type {
                        target.service_type = service_type;
                    }
                    target.capabilities = check.capabilities;
                    if let Some(weight) = check.weight {
                        target.weight = weight;
                    }
                    target.metadata = check.metadata.into_iter().collect();
                    Call::Check(target)
                }
                _ => {
                    return Err(invalid(
                        "run / health / check",
                        "a case makes exactly one call: `run = {...}`, `health = true` or `check = {...}`"
                            .to_owned(),
                    ));
                }
            };
            let setup = SetupSpec {
                config: case.config,
                limits: case.limits,
                inventory: case.inventory,
                probes: case.probes,
                http: case.http,
            }
            .over(&defaults);
            validate_setup(&setup).map_err(|(key, message)| invalid(&key, message))?;
            validate_expect(&call, &case.expect)
                .map_err(|(key, message)| invalid(&key, message))?;
            cases.push(Case {
                name: case.name,
                setup,
                call,
                expect: case.expect,
            });
        }
        Ok(ScenarioFile {
            path: path.to_path_buf(),
            cases,
        })
    }
}

fn validate_setup(setup: &SetupSpec) -> Result<(), (String, String)> {
    for (authority, spec) in setup.http.iter().flatten() {
        let key = format!("http.\"{authority}\"");
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err((
                key,
                "a fake host is `host:port`, e.g. \"svc.test:80\"".to_owned(),
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err((
                key,
                "a fake host is `host:port`, e.g. \"svc.test:80\"".to_owned(),
            ));
        }
        match (spec.status, spec.fail) {
            (Some(status), None) => {
                if !(100..=599).contains(&status) {
                    return Err((key, format!("status {status} is not 100-599")));
                }
            }
            (None, Some(_)) => {
                if spec.body.is_some() || spec.delay_ms.is_some() {
                    return Err((
                        key,
                        "`body` / `delay_ms` go with `status`, not with `fail`".to_owned(),
                    ));
                }
            }
            _ => {
                return Err((
                    key,
                    "give `status` (an answer) or `fail = \"timeout\" | \"refused\"`, not both"
                        .to_owned(),
                ));
            }
        }
        if spec.delay_ms.is_some_and(|d| d > MAX_HTTP_DELAY_MS) {
            return Err((key, format!("`delay_ms` is at most {MAX_HTTP_DELAY_MS}")));
        }
    }
    Ok(())
}

fn validate_expect(call: &Call, expect: &Expect) -> Result<(), (String, String)> {
    let only = |present: bool, key: &str, calls: &str| {
        if present {
            Err((
                format!("expect.{key}"),
                format!("applies to {calls}, not to `{}`", call.key()),
            ))
        } else {
            Ok(())
        }
    };
    let is_run = matches!(call, Call::Run { .. });
    let is_health = matches!(call, Call::Health);
    only(
        !is_run && (expect.summary.is_some() || expect.output.is_some()),
        if expect.summary.is_some() {
            "summary"
        } else {
            "output"
        },
        "`run`",
    )?;
    only(
        is_run
            && (expect.status.is_some()
                || expect.detail.is_some()
                || expect.detail_contains.is_some()),
        if expect.status.is_some() {
            "status"
        } else {
            "detail"
        },
        "`health` and `check`",
    )?;
    only(
        is_health && expect.error.is_some(),
        "error",
        "`run` and `check`",
    )?;
    let fails = expect.error.is_some() || expect.call_error.is_some();
    if expect.error.is_some() && expect.call_error.is_some() {
        return Err((
            "expect.error".to_owned(),
            "a call fails either with the plugin's `error` or with the host's `call_error`, not both"
                .to_owned(),
        ));
    }
    if expect.error_message.is_some() && expect.error.is_none() {
        return Err((
            "expect.error_message".to_owned(),
            "goes with `error`".to_owned(),
        ));
    }
    let success_keys = [
        ("summary", expect.summary.is_some()),
        ("output", expect.output.is_some()),
        ("status", expect.status.is_some()),
        ("detail", expect.detail.is_some()),
        ("detail_contains", expect.detail_contains.is_some()),
    ];
    if fails && let Some((key, _)) = success_keys.iter().find(|(_, set)| *set) {
        return Err((
            format!("expect.{key}"),
            "describes a successful call, but the case expects an error".to_owned(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running.

/// What one case came to.
#[derive(Debug)]
pub enum CaseResult {
    Passed,
    /// Every expectation that did not hold, as `key: expected …, got …`.
    Failed(Vec<String>),
}

impl Case {
    /// Steps 4-6: loads the plugin dir `plugin` into a fresh kit with this case's setup, makes
    /// the call and compares. Must not run inside an async runtime (the kit owns one).
    pub fn run(&self, plugin: &Path, cache_dir: Option<&Path>) -> CaseResult {
        let mut builder = Kit::builder(plugin);
        if let Some(dir) = cache_dir {
            builder = builder.cache_dir(dir);
        }
        let kit = match self.setup.apply(builder).load() {
            Ok(kit) => kit,
            Err(e) => return CaseResult::Failed(vec![format!("load: {e}")]),
        };
        kit.clear_logs();
        let mut failures = Vec::new();
        let expect = &self.expect;
        match &self.call {
            Call::Run { task, input } => match kit.run(task, input.clone()) {
                Err(call_error) => {
                    call_failed(expect, call_error.code(), &call_error, &mut failures)
                }
                Ok(Err(plugin_error)) => plugin_failed(
                    expect,
                    plugin_error.code.as_str(),
                    &plugin_error.message,
                    &mut failures,
                ),
                Ok(Ok(outcome)) => {
                    succeeded(expect, &mut failures);
                    if let Some(summary) = &expect.summary
                        && *summary != outcome.summary
                    {
                        failures.push(format!(
                            "summary: expected {summary:?}, got {:?}",
                            outcome.summary
                        ));
                    }
                    if let Some(output) = &expect.output {
                        compare_output(output, &outcome.output, &mut failures);
                    }
                }
            },
            Call::Health => match kit.health() {
                Err(call_error) => {
                    call_failed(expect, call_error.code(), &call_error, &mut failures)
                }
                Ok(report) => {
                    succeeded(expect, &mut failures);
                    compare_report(expect, &report, &mut failures);
                }
            },
            Call::Check(target) => match kit.check(target.clone()) {
                Err(call_error) => {
                    call_failed(expect, call_error.code(), &call_error, &mut failures)
                }
                Ok(Err(plugin_error)) => plugin_failed(
                    expect,
                    plugin_error.code.as_str(),
                    &plugin_error.message,
                    &mut failures,
                ),
                Ok(Ok(report)) => {
                    succeeded(expect, &mut failures);
                    compare_report(expect, &report, &mut failures);
                }
            },
        }
        if let Some(expected) = &expect.logs {
            let logged: Vec<String> = kit.logs().into_iter().map(|r| r.message).collect();
            let mut rest = logged.iter();
            if let Some(missing) = expected.iter().find(|want| !rest.any(|line| line == *want)) {
                failures.push(format!(
                    "logs: expected {missing:?} (in order after the lines before it), got {logged:?}"
                ));
            }
        }
        if let Some(expected) = &expect.http_requests {
            let made = kit.http_requests();
            if *expected != made {
                failures.push(format!(
                    "http_requests: expected {expected:?}, got {made:?}"
                ));
            }
        }
        if failures.is_empty() {
            CaseResult::Passed
        } else {
            CaseResult::Failed(failures)
        }
    }
}

impl SetupSpec {
    fn apply(&self, mut builder: KitBuilder) -> KitBuilder {
        for (key, value) in self.config.iter().flatten() {
            builder = builder.config(key, value.clone());
        }
        for (key, value) in self.limits.iter().flatten() {
            builder = builder.limit(key, *value);
        }
        if let Some(spec) = &self.inventory {
            let mut inventory = Inventory::new();
            for entry in &spec.services {
                let mut svc = service(&entry.name, &entry.endpoint);
                if let Some(service_type) = &entry.service_type {
                    svc.service_type = service_type.clone();
                }
                svc.capabilities = entry.capabilities.clone();
                inventory = inventory.service(svc, entry.health.map(StatusSpec::status));
            }
            for model in &spec.models {
                inventory = inventory.model(&model.name, &model.task_type, model.latest_version);
            }
            for agent in &spec.agents {
                inventory = inventory.agent(agent);
            }
            builder = builder.inventory(inventory);
        }
        for probe in self.probes.iter().flatten() {
            let kind = match probe.kind {
                ProbeKindSpec::Service => ProbeKind::Service,
                ProbeKindSpec::Checker => ProbeKind::Checker,
                ProbeKindSpec::BestModel => ProbeKind::BestModel,
                ProbeKindSpec::Agent => ProbeKind::Agent,
            };
            builder = builder.probe(kind, &probe.name, probe.ok, &probe.detail);
        }
        // Always fake: a scenario never reaches the real network.
        let mut http = FakeHttp::new();
        for (authority, spec) in self.http.iter().flatten() {
            let response = match (spec.status, spec.fail) {
                (_, Some(HttpFailure::Timeout)) => FakeResponse::Timeout,
                (_, Some(HttpFailure::Refused)) | (None, None) => FakeResponse::Refused,
                (Some(status), None) => {
                    FakeResponse::body(status, spec.body.clone().unwrap_or_default().into_bytes())
                        .delayed(Duration::from_millis(spec.delay_ms.unwrap_or(0)))
                }
            };
            http = http.route(authority, response);
        }
        builder.http(http)
    }
}

/// The call failed in the host (trap, deadline, ...).
fn call_failed(
    expect: &Expect,
    code: &str,
    error: &dyn std::fmt::Display,
    failures: &mut Vec<String>,
) {
    match &expect.call_error {
        Some(want) if want == code => {}
        Some(want) => failures.push(format!(
            "call_error: expected `{want}`, got `{code}`: {error}"
        )),
        None => failures.push(format!("the call failed: `{code}`: {error}")),
    }
}

/// The plugin returned its own error.
fn plugin_failed(expect: &Expect, code: &str, message: &str, failures: &mut Vec<String>) {
    match &expect.error {
        Some(want) if want == code => {
            if let Some(part) = &expect.error_message
                && !message.contains(part.as_str())
            {
                failures.push(format!(
                    "error_message: expected a message containing {part:?}, got {message:?}"
                ));
            }
        }
        Some(want) => failures.push(format!("error: expected `{want}`, got `{code}`: {message}")),
        None => failures.push(format!("the plugin returned an error: `{code}`: {message}")),
    }
}

/// The call succeeded: wrong if the case expects an error.
fn succeeded(expect: &Expect, failures: &mut Vec<String>) {
    if let Some(want) = &expect.error {
        failures.push(format!("error: expected `{want}`, but the call succeeded"));
    }
    if let Some(want) = &expect.call_error {
        failures.push(format!(
            "call_error: expected `{want}`, but the call succeeded"
        ));
    }
}

fn compare_output(expected: &toml::Value, got: &str, failures: &mut Vec<String>) {
    let expected = match serde_json::to_value(expected) {
        Ok(value) => value,
        Err(e) => {
            failures.push(format!("output: the expected value is not JSON: {e}"));
            return;
        }
    };
    match serde_json::from_str::<Value>(got) {
        Ok(value) if value == expected => {}
        Ok(value) => failures.push(format!("output: expected {expected}, got {value}")),
        Err(e) => failures.push(format!(
            "output: expected {expected}, got non-JSON {got:?} ({e})"
        )),
    }
}

fn compare_report(expect: &Expect, report: &HealthReport, failures: &mut Vec<String>) {
    if let Some(status) = expect.status
        && status.status() != report.status
    {
        failures.push(format!(
            "status: expected `{}`, got `{}` (detail {:?})",
            status.status().as_str(),
            report.status.as_str(),
            report.detail
        ));
    }
    if let Some(detail) = &expect.detail
        && *detail != report.detail
    {
        failures.push(format!(
            "detail: expected {detail:?}, got {:?}",
            report.detail
        ));
    }
    if let Some(part) = &expect.detail_contains
        && !report.detail.contains(part.as_str())
    {
        failures.push(format!(
            "detail_contains: expected a detail containing {part:?}, got {:?}",
            report.detail
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<ScenarioFile, ScenarioError> {
        ScenarioFile::parse(Path::new("tests/x.toml"), text)
    }

    #[test]
    fn a_file_parses_with_defaults_merged_into_cases() {
        let file = parse(
            r#"
            config = { greeting = "hello", other = 1 }
            http."a.test:80" = { status = 200 }

            [[case]]
            name = "one"
            config = { greeting = "hi" }
            http."b.test:8080" = { fail = "timeout" }
            check = { endpoint = "http://a.test" }
            expect = { status = "healthy", http_requests = ["GET http://a.test/health"] }

            [[case]]
            name = "two"
            run = { task = "hello", input = { who = "evolve" } }
            expect = { summary = "hello, evolve", output = { greeting = "hello, evolve" } }
            "#,
        )
        .unwrap();
        assert_eq!(file.cases.len(), 2);
        let one = &file.cases[0];
        let config = one.setup.config.as_ref().unwrap();
        assert_eq!(config["greeting"].as_str(), Some("hi"));
        assert_eq!(config["other"].as_integer(), Some(1));
        let http = one.setup.http.as_ref().unwrap();
        assert_eq!(http.len(), 2, "{http:?}");
        match &file.cases[1].call {
            Call::Run { task, input } => {
                assert_eq!(task, "hello");
                assert_eq!(input, &serde_json::json!({"who": "evolve"}));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let err = parse(
            r#"
            [[case]]
            name = "typo"
            run = { task = "hello" }
            expect = { sumary = "x" }
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("tests/x.toml: "), "{err}");
        assert!(err.contains("sumary"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn a_case_makes_exactly_one_call_with_fitting_expectations() {
        let err = parse("[[case]]\nname = \"none\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("case `none`") && err.contains("exactly one call"),
            "{err}"
        );
        let err = parse("[[case]]\nname = \"both\"\nhealth = true\nrun = { task = \"x\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one call"), "{err}");
        let err = parse("[[case]]\nname = \"h\"\nhealth = true\nexpect = { summary = \"x\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`expect.summary`") && err.contains("not to `health`"),
            "{err}"
        );
        let err = parse(
            "[[case]]\nname = \"r\"\nrun = {}\nexpect = { error = \"invalid-input\", summary = \"x\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`expect.summary`"), "{err}");
    }

    #[test]
    fn bad_fake_hosts_and_empty_files_are_refused() {
        let err = parse(
            "[[case]]\nname = \"h\"\nhttp.\"nohost\" = { status = 200 }\ncheck = { endpoint = \"http://x\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("http.\"nohost\"") && err.contains("host:port"),
            "{err}"
        );
        let err = parse(
            "[[case]]\nname = \"h\"\nhttp.\"a.test:80\" = { status = 200, fail = \"timeout\" }\ncheck = { endpoint = \"http://x\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not both"), "{err}");
        let err = parse("config = {}\n").unwrap_err().to_string();
        assert!(err.contains("no `[[case]]`"), "{err}");
        let err = parse("[[case]]\nname = 3\n").unwrap_err().to_string();
        assert!(
            err.starts_with("tests/x.toml: ") && err.contains("name"),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, vec![b'#'; MAX_SCENARIO_BYTES as usize + 1]).unwrap();
        let err = ScenarioFile::read(&path).unwrap_err();
        assert!(matches!(err, ScenarioError::TooLarge { .. }), "{err}");
    }
}
