//! [`Kit`]: one built plugin loaded into a private runtime, and the calls tests make on it.
//!
//! Loading runs the daemon's own steps: load (manifest, file, sha256 pin) → validate (component,
//! world, WIT version, limits under ceilings, grants) → prepare → canary (`describe()`, and
//! `health()` for a meta agent). Each call gets a fresh instance with the plugin's limits, as in
//! the daemon, and runs on a current-thread tokio runtime owned by the kit, so what the plugin
//! logs during the call is captured.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use evolve_core::events::EventBus;
use evolve_runtime::bindings::types::{HealthReport, PluginError, Service, Task, TaskOutcome};
use evolve_runtime::manifest::MANIFEST_FILE;
use evolve_runtime::plugin::Description;
use evolve_runtime::sandbox::HttpTransport;
use evolve_runtime::{
    CallError, LimitValues, LoadError, Runtime, RuntimeConfig, RuntimeError, SupervisionConfig,
    SystemView,
};
use tracing_subscriber::layer::SubscriberExt;

use super::logs::{Capture, LogRecord, Sink};
use super::mock::{FakeHttp, Inventory, ProbeKind, Probes};

/// Pool slots of the kit's runtime: enough for a test that calls concurrently.
const POOL_INSTANCES: u32 = 8;

/// Why a plugin could not be put under test.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("{path}: {message}")]
    Setup { path: PathBuf, message: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// The loader refused the plugin, exactly as the daemon would.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// How to load the plugin; from [`Kit::builder`].
#[derive(Debug)]
pub struct KitBuilder {
    dir: PathBuf,
    config: toml::Table,
    limits: toml::Table,
    inventory: Inventory,
    probes: Probes,
    http: Option<FakeHttp>,
    cache_dir: Option<PathBuf>,
}

impl KitBuilder {
    /// Sets `[config] key = value` over the manifest's own table.
    pub fn config(mut self, key: &str, value: impl Into<toml::Value>) -> KitBuilder {
        self.config.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `[limits] key = value` (e.g. `memory_mb`) over the manifest's own.
    pub fn limit(mut self, key: &str, value: u64) -> KitBuilder {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.limits
            .insert(key.to_owned(), toml::Value::Integer(value));
        self
    }

    /// What the `inventory` import answers.
    pub fn inventory(mut self, inventory: Inventory) -> KitBuilder {
        self.inventory = inventory;
        self
    }

    /// What a `probes` call about `name` answers; unscripted probes fail.
    pub fn probe(mut self, kind: ProbeKind, name: &str, ok: bool, detail: &str) -> KitBuilder {
        self.probes
            .answers
            .insert((kind, name.to_owned()), (ok, detail.to_owned()));
        self
    }

    /// Answers the checker's outbound HTTP from `http` instead of the network. Without it, a
    /// checker reaches the real network (e.g. a server the test started on loopback).
    pub fn http(mut self, http: FakeHttp) -> KitBuilder {
        self.http = Some(http);
        self
    }

    /// Where compiled components are cached (default `$EVOLVE_TESTKIT_CACHE`, else
    /// `<temp dir>/evolve-testkit-aot`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> KitBuilder {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Loads the plugin: copies it into a private dir with the scripted config and limits, and
    /// runs the loader on it.
    pub fn load(self) -> Result<Kit, KitError> {
        let temp = tempfile::tempdir().map_err(|e| setup(Path::new("(temp dir)"), e))?;
        let plugin_dir = temp.path().join("plugin");
        std::fs::create_dir_all(&plugin_dir).map_err(|e| setup(&plugin_dir, e))?;
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| setup(&manifest_path, e))?;
        let mut manifest: toml::Table = text.parse().map_err(|e| setup(&manifest_path, e))?;
        for (section, overrides) in [("config", self.config), ("limits", self.limits)] {
            if overrides.is_empty() {
                continue;
            }
            let entry = manifest
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(table) = entry.as_table_mut() else {
                return Err(setup(&manifest_path, format!("`{section}` is not a table")));
            };
            table.extend(overrides);
        }
        // The component keeps its name and bytes, so the manifest's sha256 pin still holds.
        if let Some(toml::Value::String(wasm)) = manifest.get("wasm") {
            let from = self.dir.join(wasm);
            let to = plugin_dir.join(wasm);
            if from.is_file() && Path::new(wasm).file_name().is_some() {
                std::fs::copy(&from, &to).map_err(|e| setup(&from, e))?;
            }
        }
        let written = toml::to_string(&manifest).map_err(|e| setup(&manifest_path, e))?;
        std::fs::write(plugin_dir.join(MANIFEST_FILE), written)
            .map_err(|e| setup(&plugin_dir, e))?;

        let cache_dir = self.cache_dir.unwrap_or_else(|| {
            std::env::var_os("EVOLVE_TESTKIT_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("evolve-testkit-aot"))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(Path::new("(tokio runtime)"), e))?;
        let seen = self.http.as_ref().map(|http| Arc::clone(&http.seen));
        let http_transport = self
            .http
            .map(|http| Arc::new(http) as Arc<dyn HttpTransport>);
        let runtime = Runtime::with_http_transport(
            RuntimeConfig {
                pool_instances: POOL_INSTANCES,
                // One plugin under test: every slot may hold the ceiling's memory.
                max_total_memory_mb: LimitValues::CEILINGS.memory_mb * u64::from(POOL_INSTANCES),
                defaults: LimitValues::DEFAULTS,
                ceilings: LimitValues::CEILINGS,
                cache_dir: cache_dir.clone(),
                data_dir: temp.path().join("data"),
                supervision: SupervisionConfig::default(),
                protected_dirs: vec![plugin_dir.clone()],
                // The kit stands in for the operator: the plugin gets what its manifest asks
                // for, inside the kit's own data dir.
                grant_policy: evolve_runtime::GrantPolicy {
                    allowed_dir_roots: vec![temp.path().join("data")],
                    allowed_env: manifest_env(&manifest),
                    daemon_paths: Vec::new(),
                },
                aot_key_file: cache_dir.join("aot.key"),
            },
            EventBus::new(),
            http_transport,
        )?;
        runtime.install_system_view(SystemView {
            inventory: Arc::new(self.inventory),
            probes: Arc::new(self.probes),
        });
        let sink: Sink = Arc::default();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(Capture {
            sink: Arc::clone(&sink),
        }));
        let name = {
            let _guard = tracing::dispatcher::set_default(&dispatch);
            rt.block_on(async {
                let loaded = runtime.load_files(&plugin_dir)?;
                let plugin = runtime.prepare(loaded, true).await?;
                let name = plugin.name().to_owned();
                runtime.swap(Arc::new(plugin))?;
                Ok::<_, LoadError>(name)
            })?
        };
        Ok(Kit {
            name,
            runtime,
            rt,
            dispatch,
            logs: sink,
            http_seen: seen.unwrap_or_default(),
            _temp: temp,
        })
    }
}

/// `permissions.env` of a manifest table.
fn manifest_env(manifest: &toml::Table) -> Vec<String> {
    manifest
        .get("permissions")
        .and_then(|p| p.get("env"))
        .and_then(toml::Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn setup(path: &Path, err: impl std::fmt::Display) -> KitError {
    KitError::Setup {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

/// A loaded plugin under test.
pub struct Kit {
    name: String,
    runtime: Runtime,
    rt: tokio::runtime::Runtime,
    dispatch: tracing::Dispatch,
    logs: Sink,
    http_seen: Arc<Mutex<Vec<String>>>,
    _temp: tempfile::TempDir,
}

impl std::fmt::Debug for Kit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kit")
            .field("plugin", &self.name)
            .finish_non_exhaustive()
    }
}

impl Kit {
    /// Starts describing how to load the built plugin in `dir` (`plugin.toml` + component).
    pub fn builder(dir: impl Into<PathBuf>) -> KitBuilder {
        KitBuilder {
            dir: dir.into(),
            config: toml::Table::new(),
            limits: toml::Table::new(),
            inventory: Inventory::default(),
            probes: Probes::default(),
            http: None,
            cache_dir: None,
        }
    }

    /// Loads the built plugin in `dir` with nothing scripted.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Kit, KitError> {
        Kit::builder(dir).load()
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon runtime the plugin is loaded into, for what the kit does not wrap.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn block_on<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        let _guard = tracing::dispatcher::set_default(&self.dispatch);
        self.rt.block_on(call)
    }

    /// `describe()` on a fresh instance.
    pub fn describe(&self) -> Result<Description, CallError> {
        self.block_on(self.runtime.describe(&self.name))
            .map(|r| r.value)
    }

    /// Runs `task` with `input` on a meta agent. The outer `Err` is a failure of the call (trap,
    /// deadline, memory limit, bad output, ...), the inner one the plugin's own error.
    pub fn run(
        &self,
        task: &str,
        input: serde_json::Value,
    ) -> Result<Result<TaskOutcome, PluginError>, CallError> {
        let task = Task {
            name: task.to_owned(),
            input: input.to_string(),
        };
        self.block_on(self.runtime.run_agent(&self.name, task))
            .map(|r| r.value)
    }

    /// A meta agent's `health()`.
    pub fn health(&self) -> Result<HealthReport, CallError> {
        self.block_on(self.runtime.agent_health(&self.name))
            .map(|r| r.value)
    }

    /// Checks `target` with a health checker.
    pub fn check(&self, target: Service) -> Result<Result<HealthReport, PluginError>, CallError> {
        self.block_on(self.runtime.check_service(&self.name, target))
            .map(|r| r.value)
    }

    /// Everything the plugin logged so far (the `logging` import and stdout/stderr lines), in
    /// order, including its load canary.
    pub fn logs(&self) -> Vec<LogRecord> {
        evolve_core::sync::lock(&self.logs).clone()
    }

    /// Forgets the captured logs (e.g. those of the canary).
    pub fn clear_logs(&self) {
        evolve_core::sync::lock(&self.logs).clear();
    }

    /// `METHOD url` of every request that reached the [`FakeHttp`] (not those the allow-list
    /// denied), in order.
    pub fn http_requests(&self) -> Vec<String> {
        evolve_core::sync::lock(&self.http_seen).clone()
    }
}
