//! Typed errors of the plugin runtime.
//!
//! Two families, matching the two halves of a plugin's life: [`LoadError`] for load → validate →
//! prepare, and [`CallError`] for serve. Every variant names the plugin and, where there is one,
//! the file, and says how to fix it. Callers (the API, the CLI) match on variants to choose a
//! status code; the `Display` text is written for the person who has to act on it.

use std::path::PathBuf;

/// Why a plugin could not be loaded. The plugin is not served; nothing else is affected.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "plugin dir {dir}: {file} is missing ({source}); a plugin dir holds plugin.toml and the .wasm it names"
    )]
    MissingFile {
        dir: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: {message}")]
    Manifest { file: PathBuf, message: String },

    #[error(
        "plugin '{plugin}': {file} is {found}, not a WebAssembly component; build it with `cargo build --target wasm32-wasip2` (or wrap a core module with `wasm-tools component new`)"
    )]
    NotAComponent {
        plugin: String,
        file: PathBuf,
        found: &'static str,
    },

    #[error(
        "plugin '{plugin}': sha256 of {file} is {actual}, but plugin.toml pins {expected}; rebuild the plugin or update the pin"
    )]
    Sha256Mismatch {
        plugin: String,
        file: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("plugin '{plugin}': {file} does not compile: {message}")]
    Compile {
        plugin: String,
        file: PathBuf,
        message: String,
    },

    #[error(
        "plugin '{plugin}': {file} was built against evolve:plugin@{plugin_version}, but this host serves evolve:plugin@{host_version}; rebuild it with an SDK for {host_version}"
    )]
    VersionMismatch {
        plugin: String,
        file: PathBuf,
        plugin_version: String,
        host_version: &'static str,
    },

    #[error("plugin '{plugin}': {file} does not fit the {world} world: {detail}")]
    WorldMismatch {
        plugin: String,
        file: PathBuf,
        world: &'static str,
        detail: String,
    },

    #[error(
        "plugin '{plugin}': limits.{key} = {value} is above the host ceiling of {ceiling}; lower it in plugin.toml or raise runtime.ceilings.{key} in the host config"
    )]
    LimitAboveCeiling {
        plugin: String,
        key: &'static str,
        value: u64,
        ceiling: u64,
    },

    #[error(
        "plugin '{plugin}': limits.memory_mb = {memory_mb} is above the host memory budget of {budget_mb} MiB, so no call of it could ever run; lower it in plugin.toml or raise runtime.max_total_memory_mb in the host config"
    )]
    MemoryAboveBudget {
        plugin: String,
        memory_mb: u64,
        budget_mb: u64,
    },

    #[error("plugin '{plugin}': permission {what} cannot be granted: {reason}")]
    Permission {
        plugin: String,
        what: String,
        reason: String,
    },

    #[error(
        "plugin '{plugin}': directory grant \"{grant}\" (resolves to {resolved}) is refused: {reason}. Allowed roots (runtime.allowed_dir_roots in the host config): {roots}"
    )]
    DirGrantRefused {
        plugin: String,
        /// `host` as the manifest wrote it.
        grant: PathBuf,
        resolved: PathBuf,
        reason: String,
        /// `runtime.allowed_dir_roots`, canonical, as a list.
        roots: String,
    },

    #[error(
        "plugin '{plugin}': permissions.env grants \"{name}\", which is not in runtime.allowed_env {allowed}; add it to runtime.allowed_env in the host config if this plugin may read it, or remove it from the manifest"
    )]
    EnvGrantRefused {
        plugin: String,
        name: String,
        /// `runtime.allowed_env` as a list.
        allowed: String,
    },

    #[error(
        "plugin '{plugin}': name is already used by the plugin loaded from {other_dir}; plugin names must be unique"
    )]
    DuplicateName { plugin: String, other_dir: PathBuf },

    #[error("plugin '{plugin}': the canary call to describe() failed: {source}")]
    Canary {
        plugin: String,
        #[source]
        source: Box<CallError>,
    },

    #[error("plugin '{plugin}': the canary call to health() reported unhealthy: {detail}")]
    CanaryUnhealthy { plugin: String, detail: String },

    #[error("AOT cache at {dir}: {source}")]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    /// A short machine-readable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::MissingFile { .. } => "missing_file",
            LoadError::Manifest { .. } => "manifest",
            LoadError::NotAComponent { .. } => "not_a_component",
            LoadError::Sha256Mismatch { .. } => "sha256_mismatch",
            LoadError::Compile { .. } => "compile",
            LoadError::VersionMismatch { .. } => "version_mismatch",
            LoadError::WorldMismatch { .. } => "world_mismatch",
            LoadError::LimitAboveCeiling { .. } => "limit_above_ceiling",
            LoadError::MemoryAboveBudget { .. } => "limit_above_budget",
            LoadError::Permission { .. } => "permission",
            LoadError::DirGrantRefused { .. } => "dir_grant_refused",
            LoadError::EnvGrantRefused { .. } => "env_grant_refused",
            LoadError::DuplicateName { .. } => "duplicate_name",
            LoadError::Canary { .. } => "canary_failed",
            LoadError::CanaryUnhealthy { .. } => "canary_unhealthy",
            LoadError::Cache { .. } => "cache",
        }
    }
}

/// Why one call into a plugin failed. The plugin stays loaded; the next call gets a fresh instance.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no plugin named '{plugin}' is loaded")]
    NotFound { plugin: String },

    #[error(
        "plugin '{plugin}' is still loading (its first load began at {since}); retry once it serves: GET /v1/health lists the plugins still loading"
    )]
    Loading {
        plugin: String,
        since: chrono::DateTime<chrono::Utc>,
    },

    #[error("plugin '{plugin}' is a {actual}, not a {expected}")]
    WrongKind {
        plugin: String,
        expected: &'static str,
        actual: &'static str,
    },

    #[error(
        "plugin '{plugin}' needs {wanted_mb} MiB of linear memory (its memory_mb) and the host memory budget (runtime.max_total_memory_mb = {budget_mb} MiB) stayed fully reserved for its deadline ({reserved_mb} MiB by calls in flight); retry later, or raise the budget"
    )]
    MemoryBudget {
        plugin: String,
        wanted_mb: u64,
        budget_mb: u64,
        reserved_mb: u64,
    },

    #[error(
        "plugin '{plugin}' is overloaded: {running} calls running and {queued} waiting (limits max_concurrency / max_queue); retry later"
    )]
    Overloaded {
        plugin: String,
        running: u32,
        queued: u32,
    },

    #[error(
        "plugin '{plugin}' is quarantined for another {retry_after_ms} ms ({reason}); it is released when a canary call succeeds"
    )]
    Quarantined {
        plugin: String,
        retry_after_ms: u64,
        reason: String,
    },

    #[error("plugin '{plugin}' exceeded its deadline of {deadline_ms} ms")]
    DeadlineExceeded { plugin: String, deadline_ms: u64 },

    #[error(
        "plugin '{plugin}' hit its memory limit of {limit_bytes} bytes (asked for {requested_bytes}); raise limits.memory_mb or use less memory"
    )]
    MemoryLimit {
        plugin: String,
        limit_bytes: u64,
        requested_bytes: u64,
    },

    #[error("plugin '{plugin}' trapped: {message}")]
    Trap { plugin: String, message: String },

    #[error(
        "plugin '{plugin}' made more than {limit} requests through the probes import in one call (its max_probes limit; {refused} more were refused); probe less, or raise limits.max_probes"
    )]
    ProbeQuota {
        plugin: String,
        limit: u32,
        refused: u32,
    },

    #[error(
        "plugin '{plugin}' called exit (wasi:cli/exit) with status {status} instead of returning from its export; return an answer or a plugin-error"
    )]
    Exited { plugin: String, status: i32 },

    #[error(
        "plugin '{plugin}' held more than {limit} resources at once (streams, pollables, HTTP requests and responses: the host's MAX_RESOURCES cap per call); drop each one when done with it"
    )]
    TooManyResources { plugin: String, limit: usize },

    #[error(
        "plugin '{plugin}' returned {size} bytes (its text plus {} per field and list entry), more than {limit_name} of {limit} bytes",
        crate::output::ELEMENT_COST_BYTES
    )]
    OutputTooLarge {
        plugin: String,
        size: u64,
        limit: u64,
        /// Which limit: `its max_output_kb limit`, or the host's cap on a `describe()` answer.
        limit_name: &'static str,
    },

    #[error(
        "plugin '{plugin}' returned {count} entries in {field}, more than the {limit} the host accepts ({constant}); return fewer"
    )]
    TooManyEntries {
        plugin: String,
        /// The WIT field, e.g. `task-outcome.artifacts`.
        field: &'static str,
        count: usize,
        limit: usize,
        /// The host constant that sets `limit`, so the cap can be found in the docs.
        constant: &'static str,
    },

    #[error("plugin '{plugin}' returned invalid JSON in {field}: {message}")]
    InvalidOutput {
        plugin: String,
        field: &'static str,
        message: String,
    },

    #[error("plugin '{plugin}' was refused {refused}: {message}")]
    PermissionDenied {
        plugin: String,
        refused: String,
        message: String,
    },

    #[error("plugin '{plugin}' could not be instantiated: {message}")]
    Instantiate { plugin: String, message: String },
}

impl CallError {
    /// A short machine-readable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NotFound { .. } => "not_found",
            CallError::Loading { .. } => "loading",
            CallError::WrongKind { .. } => "wrong_kind",
            CallError::Overloaded { .. } => "overloaded",
            CallError::MemoryBudget { .. } => "memory_budget",
            CallError::Quarantined { .. } => "quarantined",
            CallError::DeadlineExceeded { .. } => "deadline_exceeded",
            CallError::MemoryLimit { .. } => "memory_limit",
            CallError::Trap { .. } => "trap",
            CallError::Exited { .. } => "exited",
            CallError::ProbeQuota { .. } => "probe_quota",
            CallError::TooManyResources { .. } => "resource_limit",
            CallError::OutputTooLarge { .. } => "output_too_large",
            CallError::TooManyEntries { .. } => "too_many_entries",
            CallError::InvalidOutput { .. } => "invalid_output",
            CallError::PermissionDenied { .. } => "permission_denied",
            CallError::Instantiate { .. } => "instantiate",
        }
    }
}
