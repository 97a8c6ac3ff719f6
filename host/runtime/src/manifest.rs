//! `plugin.toml`: parsing and validation (the first half of the *load* step).
//!
//! The format is documented in `docs/manifest.md` and the README. Unknown keys are errors: a typo
//! in a limit or permission must not silently fall back to a default.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::LoadError;

/// File name of the manifest inside a plugin directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// Longest plugin name accepted; names appear in URLs, metrics labels and log fields.
const MAX_NAME_LEN: usize = 64;

/// The two worlds a plugin can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    MetaAgent,
    HealthChecker,
}

impl PluginKind {
    /// The WIT world name, as written in `wit/worlds.wit`.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::MetaAgent => "meta-agent",
            PluginKind::HealthChecker => "health-checker",
        }
    }

    /// The interface the world exports (without package and version).
    pub fn export_interface(self) -> &'static str {
        match self {
            PluginKind::MetaAgent => "agent",
            PluginKind::HealthChecker => "checker",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

/// Per-plugin limits as written in the manifest; `None` takes the host default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub memory_mb: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub max_queue: Option<u64>,
    pub max_output_kb: Option<u64>,
    pub max_log_kb: Option<u64>,
    pub max_probes: Option<u64>,
}

/// A directory grant: `host` is mapped at `guest`, read-only unless `write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub write: bool,
}

/// Capabilities the plugin asks for. Everything absent is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// `host`, `host:port` or `*.suffix`; health checkers only.
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// Names of daemon environment variables passed through.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// Longest retry count an agent may ask for; more is a loop, not a retry policy.
pub const MAX_AGENT_RETRIES: u32 = 10;

/// Longest base backoff between retries, ms.
pub const MAX_RETRY_BACKOFF_MS: u64 = 60_000;

/// Longest schedule jitter, s: spreading runs over more than an hour hides the schedule.
pub const MAX_SCHEDULE_JITTER_S: u64 = 3_600;

/// `[agent]`: how the agent manager runs a meta agent. Absent keys take the `[agents]` defaults
/// of the daemon config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Whether runs of this agent may overlap; by default a second run is refused while one is
    /// in progress.
    #[serde(default)]
    pub overlap: bool,
    /// Extra attempts after a failure the agent marks retryable.
    pub max_retries: Option<u32>,
    /// Base of the exponential, jittered backoff between attempts, ms.
    pub retry_backoff_ms: Option<u64>,
    pub schedule: Option<ScheduleSpec>,
}

/// `[agent.schedule]`: when the agent runs on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// An interval such as `"5m"` or `"1h30m"`.
    pub every: Option<String>,
    /// A five-field cron expression (UTC), e.g. `"*/15 * * * *"`.
    pub cron: Option<String>,
    /// Each fire is delayed by a random 0..=jitter_s seconds.
    #[serde(default)]
    pub jitter_s: u64,
    /// Task name passed to `run`.
    #[serde(default = "default_schedule_task")]
    pub task: String,
    /// Task input passed to `run`.
    #[serde(default)]
    pub input: BTreeMap<String, toml::Value>,
    /// What to do at start when a fire was missed while the daemon was down.
    #[serde(default)]
    pub missed: MissedRuns,
}

fn default_schedule_task() -> String {
    "run".into()
}

/// Missed-run policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// Wait for the next fire time.
    #[default]
    Skip,
    /// Run once right away (however many fires were missed), then keep the schedule.
    RunOnce,
}

impl ScheduleSpec {
    /// The parsed schedule; errors name the key.
    pub fn parsed(&self) -> Result<crate::schedule::Schedule, String> {
        use crate::schedule::Schedule;
        match (&self.every, &self.cron) {
            (Some(every), None) => Schedule::every(every),
            (None, Some(cron)) => Schedule::cron(cron),
            (Some(_), Some(_)) => Err("set one of every and cron, not both".into()),
            (None, None) => Err("set every (e.g. \"5m\") or cron (e.g. \"0 * * * *\")".into()),
        }
    }

    /// The task input as a JSON object.
    pub fn input_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.input).unwrap_or(serde_json::Value::Null)
    }
}

/// A parsed and validated `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub wasm: PathBuf,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Meta agents only: how the agent manager runs it.
    #[serde(default)]
    pub agent: Option<AgentSpec>,
}

impl Manifest {
    /// Reads and validates `dir/plugin.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, LoadError> {
        let file = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::MissingFile {
            dir: dir.to_path_buf(),
            file: file.clone(),
            source,
        })?;
        Manifest::parse(&text, &file)
    }

    /// Parses manifest text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, LoadError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| LoadError::Manifest {
            file: file.to_path_buf(),
            // toml's message carries the line, column and a caret under the offending key.
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest.validate().map_err(|message| LoadError::Manifest {
            file: file.to_path_buf(),
            message,
        })?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        validate_version(&self.version)
            .map_err(|e| format!("version = \"{}\": {e}", self.version))?;
        validate_relative_path(&self.wasm).map_err(|e| format!("wasm = {:?}: {e}", self.wasm))?;
        if let Some(pin) = &self.sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "sha256 = \"{pin}\": expected 64 hex digits (e.g. the output of `sha256sum`)"
            ));
        }
        let perms = &self.permissions;
        if !perms.http_hosts.is_empty() && self.kind != PluginKind::HealthChecker {
            return Err(format!(
                "permissions.http_hosts is only for health checkers; a {} gets no outbound HTTP (remove the key)",
                self.kind
            ));
        }
        for host in &perms.http_hosts {
            HostPattern::parse(host)
                .map_err(|e| format!("permissions.http_hosts: \"{host}\": {e}"))?;
        }
        for name in &perms.env {
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "permissions.env: \"{name}\" is not an environment variable name (letters, digits, '_')"
                ));
            }
            if name.starts_with("EVOLVE_") {
                return Err(format!(
                    "permissions.env: \"{name}\" is the daemon's own setting (it may hold the API token) and is never passed to plugins"
                ));
            }
        }
        if let Some(agent) = &self.agent {
            if self.kind != PluginKind::MetaAgent {
                return Err(format!(
                    "[agent] is only for meta agents; a {} is run by the mesh (remove the section)",
                    self.kind
                ));
            }
            agent.validate()?;
        }
        let mut guests = std::collections::BTreeSet::new();
        for dir in &perms.dirs {
            if !dir.guest.starts_with('/') || dir.guest.split('/').any(|p| p == "..") {
                return Err(format!(
                    "permissions.dirs: guest = \"{}\" must be an absolute path without '..' (e.g. \"/out\")",
                    dir.guest
                ));
            }
            if !guests.insert(dir.guest.trim_end_matches('/')) {
                return Err(format!(
                    "permissions.dirs: guest path \"{}\" is granted twice",
                    dir.guest
                ));
            }
            if dir.host.as_os_str().is_empty() {
                return Err("permissions.dirs: host must not be empty".to_string());
            }
        }
        Ok(())
    }

    /// The plugin's `[config]` table as a JSON object, for the `config` import.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

impl AgentSpec {
    fn validate(&self) -> Result<(), String> {
        if let Some(retries) = self.max_retries
            && retries > MAX_AGENT_RETRIES
        {
            return Err(format!(
                "agent.max_retries = {retries}: at most {MAX_AGENT_RETRIES}"
            ));
        }
        if let Some(backoff) = self.retry_backoff_ms
            && backoff > MAX_RETRY_BACKOFF_MS
        {
            return Err(format!(
                "agent.retry_backoff_ms = {backoff}: at most {MAX_RETRY_BACKOFF_MS}"
            ));
        }
        if let Some(schedule) = &self.schedule {
            schedule
                .parsed()
                .map_err(|e| format!("agent.schedule: {e}"))?;
            if schedule.jitter_s > MAX_SCHEDULE_JITTER_S {
                return Err(format!(
                    "agent.schedule.jitter_s = {}: at most {MAX_SCHEDULE_JITTER_S}",
                    schedule.jitter_s
                ));
            }
            if schedule.task.trim().is_empty() {
                return Err("agent.schedule.task must not be empty".into());
            }
        }
        Ok(())
    }
}

/// The plugin-name rule, for callers outside the manifest (e.g. `evolve plugin new`).
pub fn valid_name(name: &str) -> bool {
    validate_name(name).is_ok()
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name = \"{name}\": use 1-{MAX_NAME_LEN} characters of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

/// Semantic version `MAJOR.MINOR.PATCH` with optional `-pre` and `+build` parts.
pub(crate) fn validate_version(version: &str) -> Result<(), &'static str> {
    let core = version.split_once('+').map_or(version, |(core, _)| core);
    let core = core.split_once('-').map_or(core, |(core, _)| core);
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() == 3 && parts.iter().all(numeric) {
        Ok(())
    } else {
        Err("expected a semantic version such as \"1.2.0\"")
    }
}

fn validate_relative_path(path: &Path) -> Result<(), &'static str> {
    if path.as_os_str().is_empty() {
        return Err("must name the component file");
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("must be a path inside the plugin dir (relative, no '..')");
    }
    Ok(())
}

/// One entry of `permissions.http_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `example.com` (ports 80 and 443) or `example.com:8080`; also an IP literal.
    Exact { host: String, port: Option<u16> },
    /// `*.example.com`: any subdomain, not the apex.
    Suffix { suffix: String, port: Option<u16> },
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, &'static str> {
        if text.contains("://") || text.contains('/') {
            return Err(
                "write a host (\"api.example.com\" or \"api.example.com:8443\"), not a URL",
            );
        }
        let (host, port) = split_host_port(text)?;
        if host == "*" || host.is_empty() {
            return Err("a bare '*' would allow every host; list the hosts");
        }
        let host = host.to_ascii_lowercase();
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err("a wildcard is only allowed as a leading \"*.\"");
            }
            return Ok(HostPattern::Suffix {
                suffix: suffix.to_string(),
                port,
            });
        }
        if host.contains('*') {
            return Err("a wildcard is only allowed as a leading \"*.\"");
        }
        Ok(HostPattern::Exact { host, port })
    }

    /// Whether this pattern allows `host` on `port` (rules in `sandbox::destination`).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = crate::sandbox::destination::RequestHost::parse(host);
        crate::sandbox::destination::pattern_allows(self, &host, port)
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, HostPattern::Suffix { .. })
    }
}

/// Splits `host[:port]`, accepting bracketed IPv6 literals (`[::1]:8080`).
fn split_host_port(text: &str) -> Result<(&str, Option<u16>), &'static str> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((
                host,
                Some(port.parse().map_err(|_| "port must be 1-65535")?),
            )),
            None if after.is_empty() => Ok((host, None)),
            None => Err("unexpected text after ']'"),
        };
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port.parse().map_err(|_| "port must be 1-65535")?;
            if port == 0 {
                return Err("port must be 1-65535");
            }
            Ok((host, Some(port)))
        }
        None => Ok((text, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(text, Path::new("p/plugin.toml")).map_err(|e| e.to_string())
    }

    const MINIMAL: &str =
        "name = \"a\"\nversion = \"0.1.0\"\nkind = \"meta-agent\"\nwasm = \"a.wasm\"\n";

    #[test]
    fn agent_section_parses_and_is_validated() {
        let text = format!(
            "{MINIMAL}[agent]\nmax_retries = 3\n[agent.schedule]\nevery = \"5m\"\njitter_s = 10\nmissed = \"run_once\"\ninput = {{ deep = true }}\n"
        );
        let m = parse(&text).expect("valid");
        let agent = m.agent.expect("section");
        assert_eq!(agent.max_retries, Some(3));
        assert!(!agent.overlap);
        let schedule = agent.schedule.expect("schedule");
        assert_eq!(schedule.missed, MissedRuns::RunOnce);
        assert_eq!(schedule.task, "run");
        assert_eq!(schedule.input_json(), serde_json::json!({"deep": true}));
        assert_eq!(schedule.parsed().expect("parses").to_string(), "every 5m");

        let both = format!("{MINIMAL}[agent.schedule]\nevery = \"5m\"\ncron = \"* * * * *\"\n");
        assert!(parse(&both).expect_err("both").contains("not both"));
        let neither = format!("{MINIMAL}[agent.schedule]\njitter_s = 5\n");
        assert!(parse(&neither).expect_err("neither").contains("set every"));
        let retries = format!("{MINIMAL}[agent]\nmax_retries = 11\n");
        assert!(
            parse(&retries)
                .expect_err("too many")
                .contains("at most 10")
        );
        let typo = format!("{MINIMAL}[agent]\noverlapp = true\n");
        assert!(parse(&typo).expect_err("typo").contains("overlapp"));
        let checker = MINIMAL.replace("meta-agent", "health-checker") + "[agent]\noverlap = true\n";
        assert!(
            parse(&checker)
                .expect_err("checker")
                .contains("only for meta agents")
        );
    }

    #[test]
    fn minimal_manifest_takes_defaults() {
        let m = parse(MINIMAL).expect("valid");
        assert_eq!(m.kind, PluginKind::MetaAgent);
        assert_eq!(m.limits, LimitsSpec::default());
        assert!(m.permissions.dirs.is_empty());
    }

    #[test]
    fn toml_error_names_file_and_line() {
        let err = parse("name = \"a\"\nversion = 0.1.0\n").expect_err("bad toml");
        assert!(err.starts_with("p/plugin.toml: "), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_kind_lists_the_choices() {
        let err = parse(&MINIMAL.replace("meta-agent", "cron-job")).expect_err("bad kind");
        assert!(
            err.contains("cron-job")
                && err.contains("meta-agent")
                && err.contains("health-checker"),
            "{err}"
        );
    }

    #[test]
    fn misspelt_limit_is_an_error_not_a_default() {
        let err = parse(&format!("{MINIMAL}[limits]\nmemory_mib = 3\n")).expect_err("typo");
        assert!(err.contains("memory_mib"), "{err}");
    }

    #[test]
    fn wasm_path_cannot_escape_the_plugin_dir() {
        let err = parse(&MINIMAL.replace("a.wasm", "../x.wasm")).expect_err("escape");
        assert!(err.contains("inside the plugin dir"), "{err}");
    }

    #[test]
    fn http_hosts_are_for_checkers_only() {
        let err = parse(&format!(
            "{MINIMAL}[permissions]\nhttp_hosts = [\"x.com\"]\n"
        ))
        .expect_err("agent with http");
        assert!(err.contains("only for health checkers"), "{err}");
    }

    #[test]
    fn daemon_settings_are_never_granted() {
        let err = parse(&format!(
            "{MINIMAL}[permissions]\nenv = [\"EVOLVE_AUTH_TOKEN\"]\n"
        ))
        .expect_err("token leak");
        assert!(err.contains("never passed to plugins"), "{err}");
    }

    #[test]
    fn host_patterns_match_exact_suffix_and_port() {
        let exact = HostPattern::parse("API.example.com").expect("valid");
        assert!(exact.allows("api.example.com", 443));
        assert!(!exact.allows("evil.api.example.com", 443));
        let port = HostPattern::parse("api.example.com:8443").expect("valid");
        assert!(port.allows("api.example.com", 8443));
        assert!(!port.allows("api.example.com", 443));
        let suffix = HostPattern::parse("*.internal").expect("valid");
        assert!(suffix.allows("db.internal", 80));
        assert!(!suffix.allows("internal", 80));
        assert!(!suffix.allows("xinternal", 80));
        let v6 = HostPattern::parse("[::1]:9000").expect("valid");
        assert!(v6.allows("::1", 9000));
        for bad in ["*", "http://x.com", "a.*.com", "x.com:0", "x.com:99999"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
