//! Daemon configuration: a TOML file, environment overrides for the common keys, then CLI flags.
//!
//! Every key, its default and its unit is listed in the README; [`HostConfig::default`] is the
//! source of truth for the defaults. Relative paths are relative to the daemon's working
//! directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::access::{ENV_TOKEN_NAME, Scope, TokenEntry};
use crate::agents::AgentsConfig;
use crate::reload::ReloadConfig;
use evolve_cluster::ClusterConfig;
use evolve_mesh::MeshConfig;
use evolve_registry::{RegistryConfig, ScoringPolicy, scoring};
use evolve_runtime::{GrantPolicy, Guard, LimitValues, RuntimeConfig, SupervisionConfig};

/// Environment variables that override config keys (and the key each overrides).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("EVOLVE_LISTEN", "server.listen"),
    ("EVOLVE_AUTH_TOKEN", "server.tokens.env"),
    ("EVOLVE_DATA_DIR", "data_dir"),
    ("EVOLVE_PLUGINS_DIR", "plugins.dir"),
    ("EVOLVE_LOG", "log.level"),
    ("EVOLVE_LOG_FORMAT", "log.format"),
    ("EVOLVE_REDIS_URL", "cluster.redis_url"),
];

/// Ceiling of `server.body_limit_kb`: 64 MiB. The API reads a body whole into memory (JSON
/// documents, imports), and larger bodies belong on the data plane, which streams them; the
/// ceiling also keeps the KiB-to-bytes conversion far from overflow on any target.
pub const MAX_BODY_LIMIT_KB: u64 = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Base directory for state: AOT cache, relative directory grants, stores.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub plugins: PluginsConfig,
    pub runtime: RuntimeSection,
    pub reload: ReloadConfig,
    pub log: LogConfig,
    pub agents: AgentsConfig,
    pub registry: RegistrySection,
    /// The service mesh (`[mesh]`).
    pub mesh: MeshConfig,
    /// Several daemons, one mesh over Redis (`[cluster]`); unset `redis_url` = one daemon.
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Bearer tokens (`[[server.tokens]]`), each with a name (logs and the audit trail say who)
    /// and its scopes; when any is set, every request but anonymous reads needs one.
    pub tokens: Vec<TokenEntry>,
    /// A file of more `[[tokens]]` (the same fields), kept out of the config file so the config
    /// can be shared; refused when its group or others may read it.
    pub tokens_file: Option<PathBuf>,
    /// Whether reads need a token with the `read` scope; default: yes when the API listens
    /// beyond loopback, no on loopback.
    pub auth_reads: Option<bool>,
    /// `Host` values the API answers (a name or address, with or without `:port`); default:
    /// localhost, 127.0.0.1, [::1] and the listen address. Anything else gets 421, so a
    /// DNS-rebound name cannot reach a loopback daemon from a browser.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose browsers may send mutating requests and get CORS
    /// answers, beyond the daemon's own origins (`http://<allowed host>:<port>`).
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted, KiB (at most [`MAX_BODY_LIMIT_KB`]).
    pub body_limit_kb: u64,
    /// How long in-flight requests may take to finish after SIGTERM / Ctrl-C, s.
    pub shutdown_grace_s: u64,
    /// Lets the API listen beyond loopback without a token. Dangerous (anyone who can reach
    /// the port can load work into the daemon); the daemon warns at start and the
    /// security-auditor agent reports it.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct PluginsConfig {
    /// Directory of plugin directories; default `<data_dir>/plugins`.
    pub dir: Option<PathBuf>,
    /// Plugin dirs loading at once at start-up; 0, the default, means one per core.
    pub load_parallelism: u32,
}

/// Most plugin dirs loading at once at start-up: loading is CPU-bound (compiling on an AOT
/// cache miss, the canary), so more than the cores of any real machine only adds contention.
pub const MAX_LOAD_PARALLELISM: u32 = 256;

impl PluginsConfig {
    /// Dirs loading at once: `load_parallelism`, or one per core when it is 0.
    pub fn load_parallelism(&self) -> usize {
        match self.load_parallelism {
            0 => std::thread::available_parallelism().map_or(2, |cores| cores.get()),
            n => n as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Component instances alive at once across all plugins.
    pub pool_instances: u32,
    /// The host memory budget: linear memory all calls in flight may reserve together (each
    /// its plugin's whole `memory_mb`), MiB; 0, the default, means half the machine's memory.
    pub max_total_memory_mb: u64,
    /// AOT cache directory; default `<data_dir>/cache/aot`.
    pub cache_dir: Option<PathBuf>,
    /// Limits a plugin gets when its manifest is silent.
    pub defaults: LimitValues,
    /// Limits no manifest may exceed.
    pub ceilings: LimitValues,
    /// Quarantine of plugins that keep failing (`[runtime.supervision]`).
    pub supervision: SupervisionConfig,
    /// Directories plugin directory grants may lie in (each grant must resolve, canonically,
    /// inside one); empty, the default, allows no directory grant. The daemon's own files stay
    /// refused inside them.
    pub allowed_dir_roots: Vec<PathBuf>,
    /// Environment variables a plugin manifest may name in `permissions.env`; empty, the
    /// default, allows none.
    pub allowed_env: Vec<String>,
    /// The key authenticating AOT artifacts (32 random bytes, created `0600` if missing);
    /// default `<data_dir>/aot.key`.
    pub aot_key_file: Option<PathBuf>,
    /// The file this config was read from (not a key: [`HostConfig::load`] sets it), so it and
    /// its directory are kept out of plugin grants.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// The budget when none is configured: half of the machine's memory (`MemTotal` in
/// `/proc/meminfo`), leaving the rest to the daemon's own heap, the page cache and the stores;
/// at least [`MIN_DEFAULT_MEMORY_BUDGET_MB`]. Where the machine's memory cannot be read,
/// [`FALLBACK_MEMORY_BUDGET_MB`].
pub fn default_memory_budget_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        });
    match total_kb {
        Some(kb) => (kb / 1024 / 2).max(MIN_DEFAULT_MEMORY_BUDGET_MB),
        None => FALLBACK_MEMORY_BUDGET_MB,
    }
}

/// Floor of the derived budget: room for a few default (64 MiB) calls on a tiny machine.
pub const MIN_DEFAULT_MEMORY_BUDGET_MB: u64 = 512;
/// The derived budget where `/proc/meminfo` is unreadable (not Linux).
pub const FALLBACK_MEMORY_BUDGET_MB: u64 = 4_096;

/// Most entries of `runtime.allowed_dir_roots` / `runtime.allowed_env`: each grant is checked
/// against every one at load, and a list longer than this is a policy nobody reviews.
pub const MAX_ALLOWED_ENTRIES: usize = 256;

/// `[registry]`: the model registry's store, backups, limits and scoring policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// SQLite file; default `<data_dir>/registry.db`.
    pub db: Option<PathBuf>,
    /// Backup directory; default `<data_dir>/backups/registry`.
    pub backup_dir: Option<PathBuf>,
    /// Seconds between scheduled backups (0 = only on demand), s.
    pub backup_interval_s: u64,
    /// Backups kept; older ones are removed after each new one.
    pub backup_keep: u32,
    /// Most points in one recording batch.
    pub max_batch_points: u32,
    /// Largest JSON import body, MiB (the general body limit is far smaller).
    pub import_limit_mb: u64,
    /// Policy used when a best-model query names none.
    pub default_policy: String,
    /// Named scoring policies (`[registry.policies.<name>]`); `default` exists unless redefined.
    pub policies: BTreeMap<String, ScoringPolicy>,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            db: None,
            backup_dir: None,
            backup_interval_s: 3_600,
            backup_keep: 24,
            max_batch_points: 10_000,
            import_limit_mb: 512,
            default_policy: scoring::DEFAULT_POLICY.into(),
            policies: BTreeMap::new(),
        }
    }
}

impl RegistrySection {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("registry.{key}"),
            message,
        };
        if self.backup_keep == 0 || self.backup_keep > 10_000 {
            return Err(invalid("backup_keep", "must be between 1 and 10000".into()));
        }
        if self.max_batch_points == 0 || self.max_batch_points > 1_000_000 {
            return Err(invalid(
                "max_batch_points",
                "must be between 1 and 1000000".into(),
            ));
        }
        if self.import_limit_mb == 0 || self.import_limit_mb > 16_384 {
            return Err(invalid(
                "import_limit_mb",
                "must be between 1 and 16384".into(),
            ));
        }
        for (name, policy) in &self.policies {
            evolve_registry::models::check_name("policy", name, false)
                .map_err(|e| invalid(&format!("policies.{name}"), e.to_string()))?;
            policy
                .validate(&format!("registry.policies.{name}"))
                .map_err(|message| invalid(&format!("policies.{name}"), message))?;
        }
        let known = scoring::with_default(self.policies.clone());
        if !known.contains_key(&self.default_policy) {
            return Err(invalid(
                "default_policy",
                format!(
                    "\"{}\" is not a policy; known: {}",
                    self.default_policy,
                    known.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `info,evolve::plugin=debug`.
    pub level: String,
    pub format: LogFormat,
    /// Directory of the daemon's JSON-lines log files (one per day, `evolve.log.YYYY-MM-DD`);
    /// default `<data_dir>/logs`. The log-analyzer agent reads it.
    pub dir: Option<PathBuf>,
    /// Whether logs are written to `dir` as well as stderr.
    pub to_files: bool,
    /// Daily log files kept; older ones are deleted.
    pub files_kept: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            data_dir: PathBuf::from("data"),
            server: ServerConfig::default(),
            plugins: PluginsConfig::default(),
            runtime: RuntimeSection::default(),
            reload: ReloadConfig::default(),
            log: LogConfig::default(),
            agents: AgentsConfig::default(),
            registry: RegistrySection::default(),
            mesh: MeshConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tokens: Vec::new(),
            tokens_file: None,
            auth_reads: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            body_limit_kb: 1_024,
            shutdown_grace_s: 30,
            allow_unauthenticated: false,
        }
    }
}

impl ServerConfig {
    /// Adds the tokens of `server.tokens_file` to the configured ones (see
    /// [`crate::access::read_tokens_file`]).
    pub fn read_tokens_file(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.tokens_file {
            let from_file = crate::access::read_tokens_file(path)?;
            crate::access::validate_tokens(&from_file, "server.tokens_file tokens")?;
            self.tokens.extend(from_file);
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        crate::access::validate_tokens(&self.tokens, "server.tokens")
    }

    /// Whether reads need a token (see [`ServerConfig::auth_reads`]).
    pub fn reads_need_token(&self) -> bool {
        self.auth_reads
            .unwrap_or_else(|| !self.listen.ip().is_loopback())
    }

    /// The `Host` values the API answers: [`ServerConfig::allowed_hosts`], or by default the
    /// loopback names and the listen address.
    pub fn effective_allowed_hosts(&self) -> Vec<String> {
        if !self.allowed_hosts.is_empty() {
            return self.allowed_hosts.clone();
        }
        let mut hosts = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "[::1]".to_string(),
        ];
        let listen = match self.listen.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        if !self.listen.ip().is_unspecified() && !hosts.contains(&listen) {
            hosts.push(listen);
        }
        hosts
    }
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            pool_instances: 128,
            max_total_memory_mb: 0,
            cache_dir: None,
            defaults: LimitValues::DEFAULTS,
            ceilings: LimitValues::CEILINGS,
            supervision: SupervisionConfig::default(),
            allowed_dir_roots: Vec::new(),
            allowed_env: Vec::new(),
            aot_key_file: None,
            config_file: None,
        }
    }
}

impl RuntimeSection {
    fn validate_grant_policy(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("runtime.{key}"),
            message,
        };
        for (key, len) in [
            ("allowed_dir_roots", self.allowed_dir_roots.len()),
            ("allowed_env", self.allowed_env.len()),
        ] {
            if len > MAX_ALLOWED_ENTRIES {
                return Err(invalid(
                    key,
                    format!("{len} entries; at most {MAX_ALLOWED_ENTRIES}"),
                ));
            }
        }
        for root in &self.allowed_dir_roots {
            if root.as_os_str().is_empty() {
                return Err(invalid(
                    "allowed_dir_roots",
                    "an empty path; name the directories plugins may be granted".into(),
                ));
            }
            if root.parent().is_none() {
                return Err(invalid(
                    "allowed_dir_roots",
                    format!(
                        "\"{}\" would let plugins be granted any directory on the host; name the directories they need",
                        root.display()
                    ),
                ));
            }
        }
        for name in &self.allowed_env {
            let well_formed = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !well_formed {
                return Err(invalid(
                    "allowed_env",
                    format!(
                        "\"{name}\" is not an environment variable name (letters, digits, '_')"
                    ),
                ));
            }
            if name.starts_with("EVOLVE_") {
                return Err(invalid(
                    "allowed_env",
                    format!(
                        "\"{name}\" is the daemon's own setting (it may hold the API token) and is never passed to plugins"
                    ),
                ));
            }
        }
        if self
            .aot_key_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty() || f.file_name().is_none())
        {
            return Err(invalid(
                "aot_key_file",
                "must name a file, e.g. data/aot.key".into(),
            ));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            dir: None,
            to_files: true,
            files_kept: 7,
        }
    }
}

impl HostConfig {
    /// Reads `path` if given, else the defaults; then applies environment overrides. Does not
    /// validate: callers apply CLI flags first, then call [`HostConfig::validate`].
    pub fn load(path: Option<&Path>) -> Result<HostConfig, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                HostConfig::parse(&text, path)?
            }
            None => HostConfig::default(),
        };
        config.apply_env(|key| std::env::var(key).ok())?;
        config.server.read_tokens_file()?;
        config.runtime.config_file = path.map(Path::to_path_buf);
        Ok(config)
    }

    pub fn parse(text: &str, path: &Path) -> Result<HostConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Applies [`ENV_OVERRIDES`] read through `get` (a parameter so tests need not touch the
    /// process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = get("EVOLVE_LISTEN") {
            self.server.listen = parse_listen(&listen, "EVOLVE_LISTEN")?;
        }
        if let Some(token) = get("EVOLVE_AUTH_TOKEN").filter(|t| !t.is_empty()) {
            self.server
                .tokens
                .retain(|entry| entry.name != ENV_TOKEN_NAME);
            self.server.tokens.push(TokenEntry {
                name: ENV_TOKEN_NAME.into(),
                token,
                scopes: vec![Scope::Admin],
            });
        }
        if let Some(dir) = get("EVOLVE_DATA_DIR") {
            self.data_dir = dir.into();
        }
        if let Some(dir) = get("EVOLVE_PLUGINS_DIR") {
            self.plugins.dir = Some(dir.into());
        }
        if let Some(url) = get("EVOLVE_REDIS_URL").filter(|u| !u.is_empty()) {
            self.cluster.redis_url = Some(url);
        }
        if let Some(level) = get("EVOLVE_LOG") {
            self.log.level = level;
        }
        if let Some(format) = get("EVOLVE_LOG_FORMAT") {
            self.log.format = match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Invalid {
                        key: "EVOLVE_LOG_FORMAT".into(),
                        message: format!("\"{other}\" is not one of \"text\", \"json\""),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.runtime
            .defaults
            .check_against(&self.runtime.ceilings)
            .map_err(|message| ConfigError::Invalid {
                key: "runtime".into(),
                message,
            })?;
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.plugins.load_parallelism > MAX_LOAD_PARALLELISM {
            return Err(invalid(
                "plugins.load_parallelism",
                "must be at most 256 (0 = one per core)",
            ));
        }
        if self.runtime.max_total_memory_mb > u64::from(u32::MAX) {
            return Err(invalid(
                "runtime.max_total_memory_mb",
                "must be at most 4294967295 MiB (0 = half the machine's memory)",
            ));
        }
        if self.runtime.pool_instances == 0 || self.runtime.pool_instances > 10_000 {
            return Err(invalid(
                "runtime.pool_instances",
                "must be between 1 and 10000",
            ));
        }
        if self.runtime.ceilings.max_concurrency > 10_000
            || self.runtime.ceilings.max_queue > 1_000_000
        {
            return Err(invalid(
                "runtime.ceilings",
                "max_concurrency must be at most 10000 and max_queue at most 1000000",
            ));
        }
        self.runtime.validate_grant_policy()?;
        if self.reload.watch_window_s > 86_400 {
            return Err(invalid("reload.watch_window_s", "must be at most 86400"));
        }
        if self.reload.debounce_ms > 60_000 {
            return Err(invalid("reload.debounce_ms", "must be at most 60000"));
        }
        self.registry.validate()?;
        if self.server.body_limit_kb == 0 || self.server.body_limit_kb > MAX_BODY_LIMIT_KB {
            return Err(invalid(
                "server.body_limit_kb",
                "must be between 1 and 65536 (KiB, i.e. at most 64 MiB)",
            ));
        }
        self.server.validate_tokens()?;
        if self.server.auth_reads == Some(true) && self.server.tokens.is_empty() {
            return Err(invalid(
                "server.auth_reads",
                "reads need a token, but no token is configured: add [[server.tokens]] (scope read) or set EVOLVE_AUTH_TOKEN",
            ));
        }
        for host in &self.server.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(ConfigError::Invalid {
                    key: "server.allowed_hosts".into(),
                    message: format!(
                        "\"{host}\" is not a host name or address with an optional :port"
                    ),
                });
            }
        }
        for origin in &self.server.allowed_origins {
            let well_formed = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if !well_formed {
                return Err(ConfigError::Invalid {
                    key: "server.allowed_origins".into(),
                    message: format!(
                        "\"{origin}\" is not an origin: write scheme://host[:port], e.g. https://console.example.com"
                    ),
                });
            }
        }
        self.mesh
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        // Model-aware routes name a scoring policy the registry must know.
        for (request_type, entry) in &self.mesh.routes {
            if let Some(policy) = entry.resolve(request_type).policy
                && policy != evolve_registry::scoring::DEFAULT_POLICY
                && !self.registry.policies.contains_key(&policy)
            {
                return Err(ConfigError::Invalid {
                    key: format!("mesh.routes.{request_type}.policy"),
                    message: format!(
                        "no scoring policy named \"{policy}\"; define [registry.policies.{policy}] or use \"default\""
                    ),
                });
            }
        }
        self.agents
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        self.cluster
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        if self.log.files_kept == 0 || self.log.files_kept > 3_650 {
            return Err(invalid("log.files_kept", "must be between 1 and 3650"));
        }
        if !self.server.listen.ip().is_loopback()
            && self.server.tokens.is_empty()
            && !self.server.allow_unauthenticated
        {
            return Err(ConfigError::Invalid {
                key: "server.listen".into(),
                message: format!(
                    "{} is reachable beyond this machine, so an auth token is required: set EVOLVE_AUTH_TOKEN, [[server.tokens]] or server.tokens_file, or listen on 127.0.0.1 (or, knowingly, server.allow_unauthenticated = true)",
                    self.server.listen
                ),
            });
        }
        Ok(())
    }

    /// The daemon's log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.log
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("logs"))
    }

    /// The agent run history database.
    pub fn agents_db(&self) -> PathBuf {
        self.agents
            .db
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agents.db"))
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.plugins
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// The registry's settings with paths resolved against `data_dir`.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig {
            db_path: self
                .registry
                .db
                .clone()
                .unwrap_or_else(|| self.data_dir.join("registry.db")),
            backup_dir: self.registry_backup_dir(),
            backup_keep: self.registry.backup_keep,
            max_batch_points: self.registry.max_batch_points,
            default_policy: self.registry.default_policy.clone(),
            policies: scoring::with_default(self.registry.policies.clone()),
        }
    }

    pub fn registry_backup_dir(&self) -> PathBuf {
        self.registry
            .backup_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups").join("registry"))
    }

    /// The mesh's catalog file (services registered through the API).
    pub fn mesh_catalog_file(&self) -> PathBuf {
        self.mesh
            .catalog_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mesh").join("catalog.json"))
    }

    /// `runtime.max_total_memory_mb`, or half the machine's memory when it is 0.
    pub fn memory_budget_mb(&self) -> u64 {
        match self.runtime.max_total_memory_mb {
            0 => default_memory_budget_mb(),
            mb => mb,
        }
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            pool_instances: self.runtime.pool_instances,
            max_total_memory_mb: self.memory_budget_mb(),
            defaults: self.runtime.defaults,
            ceilings: self.runtime.ceilings,
            cache_dir: self
                .runtime
                .cache_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("cache").join("aot")),
            data_dir: self.data_dir.clone(),
            protected_dirs: Vec::new(),
            supervision: self.runtime.supervision,
            grant_policy: self.grant_policy(),
            aot_key_file: self.aot_key_file(),
        }
    }

    /// The install key authenticating AOT artifacts.
    pub fn aot_key_file(&self) -> PathBuf {
        self.runtime
            .aot_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("aot.key"))
    }

    /// The operator's allow-lists plus every path the daemon owns (the runtime adds the data
    /// dir, the AOT cache and the key file itself).
    fn grant_policy(&self) -> GrantPolicy {
        let mut policy = GrantPolicy {
            allowed_dir_roots: self.runtime.allowed_dir_roots.clone(),
            allowed_env: self.runtime.allowed_env.clone(),
            daemon_paths: Vec::new(),
        };
        policy.protect(self.plugins_dir(), "the plugins dir", Guard::Whole);
        // Read by the log-analyzer; written only by the daemon (the log and the audit trail).
        policy.protect(self.log_dir(), "the logs dir", Guard::ReadOnly);
        let registry = self.registry_config();
        policy.protect(registry.db_path, "the model registry", Guard::Whole);
        policy.protect(registry.backup_dir, "the registry backups", Guard::Whole);
        policy.protect(self.agents_db(), "the agent run history", Guard::Whole);
        policy.protect(self.mesh_catalog_file(), "the mesh catalog", Guard::Whole);
        if let Some(tokens) = &self.server.tokens_file {
            policy.protect(tokens, "the tokens file", Guard::Whole);
        }
        if let Some(file) = &self.runtime.config_file {
            policy.protect(file, "the config file", Guard::Whole);
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                policy.protect(dir, "the config file's directory", Guard::Enclosing);
            } else {
                policy.protect(".", "the config file's directory", Guard::Enclosing);
            }
        }
        policy
    }
}

/// Parses `host:port`; `what` names the source in the error.
pub fn parse_listen(text: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::Invalid {
        key: what.into(),
        message: format!("\"{text}\" is not an address such as 127.0.0.1:7070"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let parsed = HostConfig::parse("", Path::new("e.toml")).expect("empty is valid");
        assert_eq!(parsed, HostConfig::default());
        assert_eq!(parsed.plugins_dir(), PathBuf::from("data/plugins"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = HostConfig::parse(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n",
            Path::new("c.toml"),
        )
        .expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("lisen") && text.contains("line 3"), "{text}");
    }

    #[test]
    fn nested_sections_parse_and_reject_typos() {
        let text = "[runtime]\npool_instances = 8\n[runtime.supervision]\nquarantine_base_ms = 5\n[reload]\nwatch_window_s = 2\n";
        let config = HostConfig::parse(text, Path::new("c.toml")).expect("valid");
        assert_eq!(config.runtime.supervision.quarantine_base_ms, 5);
        assert_eq!(config.reload.watch_window_s, 2);
        let typo = "[runtime.supervision]\nquarantine_bsae_ms = 5\n";
        assert!(HostConfig::parse(typo, Path::new("c.toml")).is_err());
    }

    #[test]
    fn the_memory_budget_defaults_to_half_the_machine_and_is_capped() {
        let config = HostConfig::parse("", Path::new("c.toml")).expect("valid");
        let derived = config.memory_budget_mb();
        assert!(derived >= MIN_DEFAULT_MEMORY_BUDGET_MB, "{derived}");
        assert_eq!(derived, default_memory_budget_mb());
        let set = HostConfig::parse("[runtime]\nmax_total_memory_mb = 64\n", Path::new("c.toml"))
            .expect("valid");
        assert_eq!(set.runtime_config().max_total_memory_mb, 64);
        let huge = HostConfig::parse(
            "[runtime]\nmax_total_memory_mb = 99999999999\n",
            Path::new("c.toml"),
        )
        .expect("parses");
        let error = huge.validate().expect_err("above the cap").to_string();
        assert!(error.contains("runtime.max_total_memory_mb"), "{error}");
    }

    #[test]
    fn load_parallelism_is_one_per_core_by_default_and_capped() {
        let config = HostConfig::parse("", Path::new("c.toml")).expect("valid");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(config.plugins.load_parallelism(), cores);
        let one = HostConfig::parse("[plugins]\nload_parallelism = 1\n", Path::new("c.toml"))
            .expect("valid");
        assert_eq!(one.plugins.load_parallelism(), 1);
        let many = HostConfig::parse("[plugins]\nload_parallelism = 257\n", Path::new("c.toml"))
            .expect("parses");
        let error = many.validate().expect_err("above the cap").to_string();
        assert!(error.contains("plugins.load_parallelism"), "{error}");
    }

    #[test]
    fn model_aware_and_fanout_route_keys_parse_and_are_validated() {
        let text = r#"
[mesh.routes.forecast]
capability = "forecast"
task = "forecast"
model = "champion"
model_fallback = "reject"
[mesh.routes.analysis]
capability = "analysis"
fanout = "best_n"
fanout_n = 3
aggregate = "quorum"
quorum = 2
[mesh.routes.plain]
capability = "plain"
task = "risk"
"#;
        let config = HostConfig::parse(text, Path::new("c.toml")).expect("valid");
        config.validate().expect("in range");
        let forecast = config.mesh.route("forecast");
        assert_eq!(
            forecast.model_wanted(),
            Some(evolve_mesh::config::ModelWanted::Alias("champion".into()))
        );
        assert_eq!(
            forecast.model_fallback,
            Some(evolve_mesh::config::ModelFallback::Reject)
        );
        assert_eq!(
            config.mesh.route("plain").model_wanted(),
            Some(evolve_mesh::config::ModelWanted::Best)
        );
        assert_eq!(config.mesh.route("other").model_wanted(), None);
        assert_eq!(config.mesh.route("analysis").quorum, Some(2));

        let refused = |routes: &str, key: &str, words: &str| {
            let text = format!("[mesh.routes.r]\ncapability = \"c\"\n{routes}");
            let config = HostConfig::parse(&text, Path::new("c.toml")).expect("parses");
            let err = config.validate().expect_err(routes).to_string();
            assert!(err.contains(key) && err.contains(words), "{routes}: {err}");
        };
        refused("model = \"champion\"", "mesh.routes.r", "model needs task");
        refused("policy = \"default\"", "mesh.routes.r", "policy needs task");
        refused("model_fallback = \"reject\"", "mesh.routes.r", "needs task");
        refused("task = \"bad task\"", "mesh.routes.r", "task");
        refused(
            "task = \"f\"\nmodel = \"a b\"",
            "mesh.routes.r",
            "alias name",
        );
        refused(
            "task = \"f\"\npolicy = \"nope\"",
            "mesh.routes.r.policy",
            "no scoring policy named",
        );
        refused("fanout = \"best_n\"", "mesh.routes.r", "needs fanout_n");
        refused(
            "fanout = \"best_n\"\nfanout_n = 0",
            "mesh.routes.r",
            "at least 1",
        );
        refused(
            "fanout = \"all\"\nfanout_n = 2",
            "mesh.routes.r",
            "fanout_n goes with",
        );
        refused("aggregate = \"all\"", "mesh.routes.r", "need fanout");
        refused(
            "fanout = \"all\"\naggregate = \"quorum\"",
            "mesh.routes.r",
            "needs quorum",
        );
        refused(
            "fanout = \"all\"\nquorum = 2",
            "mesh.routes.r",
            "quorum goes with",
        );
        refused(
            "fanout = \"best_n\"\nfanout_n = 2\naggregate = \"quorum\"\nquorum = 3",
            "mesh.routes.r",
            "could never succeed",
        );
        let typo = "[mesh.routes.r]\ncapability = \"c\"\nfanout = \"every\"\n";
        assert!(HostConfig::parse(typo, Path::new("c.toml")).is_err());
    }

    #[test]
    fn mesh_section_parses_routes_and_services_and_validates_ranges() {
        let text = r#"
[mesh]
lb = "weighted"
[mesh.routes]
forecast = "forecast"
predict = { capability = "forecast", path = "/v2/predict", timeout_ms = 500, lb = "least_loaded" }
[mesh.breaker]
max_in_flight = 10
[[mesh.services]]
name = "fc"
capabilities = ["forecast"]
instances = [{ endpoint = "http://127.0.0.1:9000", weight = 50 }]
"#;
        let config = HostConfig::parse(text, Path::new("c.toml")).expect("valid");
        config.validate().expect("in range");
        assert_eq!(
            config.mesh.route("predict").path.as_deref(),
            Some("/v2/predict")
        );
        assert_eq!(config.mesh.route("forecast").capability, "forecast");
        assert_eq!(config.mesh.services[0].instances[0].weight, 50);
        let typo = "[mesh.breaker]
max_in_fligth = 3
";
        assert!(HostConfig::parse(typo, Path::new("c.toml")).is_err());
        let bad = HostConfig::parse(
            "[mesh]
timeout_ms = 0
",
            Path::new("c.toml"),
        )
        .expect("parses");
        let err = bad.validate().expect_err("zero timeout");
        assert!(err.to_string().contains("mesh.timeout_ms"), "{err}");
    }

    #[test]
    fn env_overrides_file_values() {
        let mut config = HostConfig::default();
        config
            .apply_env(|k| match k {
                "EVOLVE_LISTEN" => Some("127.0.0.1:9999".into()),
                "EVOLVE_DATA_DIR" => Some("/tmp/x".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(config.server.listen.port(), 9999);
        assert_eq!(config.plugins_dir(), PathBuf::from("/tmp/x/plugins"));
    }

    #[test]
    fn registry_policies_parse_validate_and_resolve_paths() {
        let text = "[registry]\nbackup_keep = 3\ndefault_policy = \"risk\"\n[registry.policies.risk]\nmetrics = [{ name = \"max_drawdown\", weight = 2.0 }, { name = \"sharpe_ratio\" }]\nwindow_days = 10\n";
        let config = HostConfig::parse(text, Path::new("c.toml")).expect("valid");
        config.validate().expect("valid policy");
        let registry = config.registry_config();
        assert_eq!(registry.db_path, PathBuf::from("data/registry.db"));
        assert_eq!(registry.backup_dir, PathBuf::from("data/backups/registry"));
        assert!(
            registry.policies.contains_key("default") && registry.policies.contains_key("risk")
        );
        assert_eq!(
            registry.policies["risk"].metrics[0].direction(),
            evolve_registry::scoring::Direction::Down
        );

        let bad_weight =
            "[registry.policies.x]\nmetrics = [{ name = \"sharpe_ratio\", weight = -1.0 }]\n";
        let err = HostConfig::parse(bad_weight, Path::new("c.toml"))
            .expect("parses")
            .validate()
            .expect_err("negative weight");
        assert!(err.to_string().contains("registry.policies.x"), "{err}");
        let unknown = "[registry]\ndefault_policy = \"nope\"\n";
        let err = HostConfig::parse(unknown, Path::new("c.toml"))
            .expect("parses")
            .validate()
            .expect_err("unknown policy");
        assert!(err.to_string().contains("known: default"), "{err}");
        let typo = "[registry.policies.x]\nwindow_dayz = 3\n";
        assert!(HostConfig::parse(typo, Path::new("c.toml")).is_err());
    }

    #[test]
    fn public_listen_without_token_is_refused() {
        let mut config = HostConfig::default();
        config.server.listen = "0.0.0.0:7070".parse().expect("addr");
        let err = config.validate().expect_err("needs a token");
        assert!(err.to_string().contains("auth token is required"), "{err}");
        config.server.tokens.push(crate::access::TokenEntry {
            name: "ops".into(),
            token: "0123456789abcdef0123".into(),
            scopes: vec![Scope::Admin],
        });
        config.validate().expect("token set");
        assert!(config.server.reads_need_token(), "beyond loopback");
    }

    #[test]
    fn tokens_are_an_array_of_named_entries_with_scopes() {
        let text = "[[server.tokens]]\nname = \"ci\"\ntoken = \"0123456789abcdef\"\nscopes = [\"operate\"]\n";
        let config = HostConfig::parse(text, Path::new("c.toml")).expect("valid");
        config.validate().expect("valid token");
        assert_eq!(config.server.tokens[0].scope(), Scope::Operate);
        assert!(!config.server.reads_need_token(), "loopback default");
        let short =
            "[[server.tokens]]\nname = \"ci\"\ntoken = \"0123456789abc\"\nscopes = [\"read\"]\n";
        let err = HostConfig::parse(short, Path::new("c.toml"))
            .expect("parses")
            .validate()
            .expect_err("a 13-character token");
        assert!(err.to_string().contains("server.tokens[0]"), "{err}");
        assert!(err.to_string().contains("at least 16"), "{err}");
        let unknown_scope =
            "[[server.tokens]]\nname = \"ci\"\ntoken = \"0123456789abcdef\"\nscopes = [\"root\"]\n";
        assert!(HostConfig::parse(unknown_scope, Path::new("c.toml")).is_err());
    }

    #[test]
    fn the_env_token_is_admin_and_hosts_default_to_loopback_and_the_listen_address() {
        let mut config = HostConfig::default();
        config
            .apply_env(|k| match k {
                "EVOLVE_AUTH_TOKEN" => Some("0123456789abcdef".into()),
                "EVOLVE_LISTEN" => Some("10.1.2.3:7070".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(config.server.tokens[0].name, ENV_TOKEN_NAME);
        assert_eq!(config.server.tokens[0].scope(), Scope::Admin);
        assert_eq!(
            config.server.effective_allowed_hosts(),
            vec!["localhost", "127.0.0.1", "[::1]", "10.1.2.3"]
        );
        config.server.allowed_origins = vec!["console.example.com".into()];
        let err = config.validate().expect_err("no scheme");
        assert!(err.to_string().contains("server.allowed_origins"), "{err}");
    }

    #[test]
    fn body_limit_has_a_ceiling_named_with_its_key() {
        let mut config = HostConfig::default();
        config.server.body_limit_kb = MAX_BODY_LIMIT_KB;
        config.validate().expect("the ceiling itself is allowed");
        // Far enough that `<< 10` wraps a u64 to 0: refused, not turned into "no body".
        for too_big in [MAX_BODY_LIMIT_KB + 1, 1 << 54, u64::MAX] {
            config.server.body_limit_kb = too_big;
            let err = config.validate().expect_err("over the ceiling").to_string();
            assert!(
                err.contains("server.body_limit_kb") && err.contains("65536"),
                "{err}"
            );
        }
    }

    #[test]
    fn grant_allow_lists_are_validated_and_the_daemons_paths_protected() {
        let refused = |text: &str, key: &str, words: &str| {
            let err = HostConfig::parse(text, Path::new("c.toml"))
                .expect("parses")
                .validate()
                .expect_err(text)
                .to_string();
            assert!(err.contains(key) && err.contains(words), "{text}: {err}");
        };
        refused(
            "[runtime]\nallowed_env = [\"EVOLVE_AUTH_TOKEN\"]\n",
            "runtime.allowed_env",
            "never passed to plugins",
        );
        refused(
            "[runtime]\nallowed_env = [\"A-B\"]\n",
            "runtime.allowed_env",
            "not an environment variable name",
        );
        refused(
            "[runtime]\nallowed_dir_roots = [\"/\"]\n",
            "runtime.allowed_dir_roots",
            "any directory",
        );
        let text = "[runtime]\nallowed_dir_roots = [\"data/docs\"]\nallowed_env = [\"TZ\"]\n";
        let mut config = HostConfig::parse(text, Path::new("c.toml")).expect("valid");
        config.validate().expect("valid lists");
        config.runtime.config_file = Some(PathBuf::from("/etc/evolve/evolve.toml"));
        let runtime = config.runtime_config();
        assert_eq!(runtime.aot_key_file, PathBuf::from("data/aot.key"));
        let policy = runtime.grant_policy;
        assert_eq!(policy.allowed_dir_roots, [PathBuf::from("data/docs")]);
        assert_eq!(policy.allowed_env, ["TZ"]);
        let guarded = |path: &str| {
            policy
                .daemon_paths
                .iter()
                .find(|p| p.path == Path::new(path))
                .map(|p| p.guard)
        };
        assert_eq!(guarded("data/plugins"), Some(Guard::Whole));
        assert_eq!(guarded("data/mesh/catalog.json"), Some(Guard::Whole));
        assert_eq!(guarded("data/logs"), Some(Guard::ReadOnly));
        assert_eq!(guarded("/etc/evolve"), Some(Guard::Enclosing));
        assert_eq!(guarded("/etc/evolve/evolve.toml"), Some(Guard::Whole));
    }
}
