//! The plugin runtime: one shared engine, plugins loaded from directories, calls served on fresh
//! instances under per-plugin limits.
//!
//! | module | concern |
//! |---|---|
//! | [`manifest`] | `plugin.toml` parsing and validation |
//! | [`plugin`] | lifecycle of one plugin (load → validate → prepare → serve) and its call path |
//! | [`limits`] | limits, defaults and ceilings; admission (concurrency + queue); memory limiter |
//! | [`schedule`] | agent schedules: `every` and cron expressions, next fire, jitter |
//! | [`supervision`] | quarantine with backoff for plugins that keep failing |
//! | [`sandbox`] | WASI grants, guest stdio and logs → tracing, outbound-HTTP allow-list |
//! | [`state`] | the `Store` data and the host side of the plugin imports |
//! | [`inventory`] | the system view plugins read |
//! | [`probes`] | the active checks meta agents can make (`probes` import) |
//! | [`aot`] | compiled-artifact cache |
//! | [`engine`] | engine configuration and the epoch ticker |
//! | [`bindings`] | host bindings generated from `wit/` |
//! | [`error`] | [`LoadError`] and [`CallError`] |

pub mod aot;
pub mod bindings;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod limits;
pub mod manifest;
pub mod plugin;
pub mod probes;
pub mod sandbox;
pub mod schedule;
pub mod state;
pub mod supervision;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};

use chrono::{DateTime, Utc};
use evolve_core::sync::{lock, read, write};
use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use self::aot::{AotCache, CacheStats};
pub use self::error::{CallError, LoadError};
pub use self::inventory::{DetachedInventory, Snapshot, SystemInventory};
pub use self::limits::{LimitValues, Limits};
pub use self::manifest::{Manifest, PluginKind};
pub use self::plugin::{Answer, Call, CallReport, Description, Loaded, Plugin};
pub use self::probes::{DetachedProbes, ProbeTimer, SystemProbes};

use self::bindings::health_checker::HealthChecker;
use self::bindings::inventory as inv;
use self::bindings::meta_agent::MetaAgent;
use self::bindings::types::{HealthReport, PluginError, Service, Task, TaskOutcome};
use self::engine::{EngineSettings, EpochTicker, build_engine};
use self::plugin::LoadEnv;
use self::state::{PluginState, SnapshotSource};
pub use self::supervision::SupervisionConfig;
use evolve_core::events::{Event, EventBus, EventKind};

/// How the runtime is built (the `[runtime]` config section plus paths).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub pool_instances: u32,
    pub defaults: LimitValues,
    pub ceilings: LimitValues,
    pub cache_dir: PathBuf,
    /// Base for relative directory grants.
    pub data_dir: PathBuf,
    /// Quarantine policy for plugins that keep failing.
    pub supervision: SupervisionConfig,
    /// Directories no grant may expose, inside or around (the plugins dir, the AOT cache): a
    /// plugin able to write there could rewrite its own manifest or plant native code.
    pub protected_dirs: Vec<PathBuf>,
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    #[error("cannot link host interfaces: {0}")]
    Link(String),
    #[error(transparent)]
    Cache(#[from] aot::AotError),
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

/// A plugin directory that failed to load, kept so operators can see why.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The plugin's name when the manifest got that far, else the directory name.
    pub name: String,
    pub dir: PathBuf,
    pub code: &'static str,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// The runtime (state); build it from a [`RuntimeConfig`].
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

struct Shared {
    engine: Engine,
    meta_linker: Linker<PluginState>,
    checker_linker: Linker<PluginState>,
    aot: AotCache,
    config: RuntimeConfig,
    plugins: RwLock<BTreeMap<String, Slot>>,
    draining: Mutex<Vec<Arc<Plugin>>>,
    /// Highest generation handed out per plugin name.
    generations: Mutex<std::collections::HashMap<String, u64>>,
    failures: RwLock<BTreeMap<PathBuf, LoadFailure>>,
    pool: Arc<Semaphore>,
    events: EventBus,
    /// `config.protected_dirs` plus the AOT cache, canonicalised once.
    protected_dirs: Vec<PathBuf>,
    system: RwLock<Arc<dyn SystemInventory>>,
    probes: RwLock<Arc<dyn SystemProbes>>,
    http_transport: RwLock<Option<Arc<dyn sandbox::HttpTransport>>>,
    _ticker: EpochTicker,
}

/// What a swap took out of service; all of it is in the draining set.
#[derive(Debug)]
pub struct Swapped {
    /// The previous generation of the same name: the rollback target.
    pub previous: Option<Arc<Plugin>>,
    /// Generations under other names served from the same dir (the manifest renamed the
    /// plugin): they stop serving and only need draining.
    pub displaced: Vec<Arc<Plugin>>,
}

/// What serves under one plugin name.
struct Slot {
    current: Arc<Plugin>,
    last_reload: Option<ReloadRecord>,
}

/// The outcome of the most recent (re)load attempt of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub at: DateTime<Utc>,
    /// `ok`, `failed` or `rolled_back`.
    pub outcome: &'static str,
    /// The generation serving after the attempt.
    pub generation: u64,
    pub code: Option<&'static str>,
    pub reason: Option<String>,
}

impl ReloadRecord {
    fn success(plugin: &Plugin) -> ReloadRecord {
        ReloadRecord {
            at: Utc::now(),
            outcome: "ok",
            generation: plugin.generation,
            code: None,
            reason: None,
        }
    }

    /// The serving generation was rolled back to `generation`.
    pub fn rolled_back(generation: u64, reason: &str) -> ReloadRecord {
        ReloadRecord {
            at: Utc::now(),
            outcome: "rolled_back",
            generation,
            code: Some("rolled_back"),
            reason: Some(reason.to_string()),
        }
    }

    fn failure(error: &LoadError) -> ReloadRecord {
        ReloadRecord {
            at: Utc::now(),
            outcome: "failed",
            generation: 0,
            code: Some(error.code()),
            reason: Some(error.to_string()),
        }
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig, events: EventBus) -> Result<Runtime, RuntimeError> {
        config
            .defaults
            .check_against(&config.ceilings)
            .map_err(RuntimeError::Config)?;
        if config.pool_instances == 0 {
            return Err(RuntimeError::Config(
                "runtime.pool_instances must be at least 1".into(),
            ));
        }
        let engine = build_engine(EngineSettings {
            pool_instances: config.pool_instances,
            max_memory_bytes: config.ceilings.memory_mb << 20,
        })
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let link = |e: wasmtime::Error| RuntimeError::Link(format!("{e:#}"));

        let mut meta_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut meta_linker).map_err(link)?;
        MetaAgent::add_to_linker::<_, HasSelf<_>>(&mut meta_linker, |s| s).map_err(link)?;

        let mut checker_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut checker_linker).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut checker_linker).map_err(link)?;
        HealthChecker::add_to_linker::<_, HasSelf<_>>(&mut checker_linker, |s| s).map_err(link)?;

        let aot = AotCache::new(config.cache_dir.clone(), &engine)?;
        let protected_dirs = config
            .protected_dirs
            .iter()
            .chain(std::iter::once(&config.cache_dir))
            .map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.clone()))
            .collect();
        let ticker = EpochTicker::start(&engine).map_err(RuntimeError::Ticker)?;
        Ok(Runtime {
            shared: Arc::new(Shared {
                pool: Arc::new(Semaphore::new(config.pool_instances as usize)),
                protected_dirs,
                events,
                engine,
                meta_linker,
                checker_linker,
                aot,
                config,
                plugins: RwLock::default(),
                draining: Mutex::default(),
                generations: Mutex::default(),
                failures: RwLock::default(),
                system: RwLock::new(Arc::new(DetachedInventory)),
                probes: RwLock::new(Arc::new(DetachedProbes)),
                http_transport: RwLock::new(None),
                _ticker: ticker,
            }),
        })
    }

    /// Installs the view of the rest of the system that plugins read through `inventory`.
    pub fn set_system_inventory(&self, system: Arc<dyn SystemInventory>) {
        *write(&self.shared.system) = system;
    }

    /// Installs the active checks meta agents make through `probes`.
    pub fn set_system_probes(&self, probes: Arc<dyn SystemProbes>) {
        *write(&self.shared.probes) = probes;
    }

    /// Answers checkers' admitted outbound HTTP from `transport` instead of the network: for
    /// the test kit; the daemon never calls this.
    pub fn set_http_transport(&self, transport: Option<Arc<dyn sandbox::HttpTransport>>) {
        *write(&self.shared.http_transport) = transport;
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.shared.aot.stats()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Pool slots in use now.
    pub fn pool_in_use(&self) -> u32 {
        self.shared.config.pool_instances
            - u32::try_from(self.shared.pool.available_permits()).unwrap_or(0)
    }

    /// Step 1 of a (re)load: read and hash the plugin's files.
    pub fn load_files(&self, dir: &Path) -> Result<Loaded, LoadError> {
        Plugin::load(dir)
    }

    /// Steps 2-4 of a (re)load: validate → prepare → canary, without serving. The canary calls
    /// `describe()` and, for a meta agent when `check_health`, `health()`, which must not report
    /// unhealthy: a reload keeps the old generation rather than swap in one that says it cannot
    /// work.
    pub async fn prepare(&self, loaded: Loaded, check_health: bool) -> Result<Plugin, LoadError> {
        let shared = &self.shared;
        // Monotonic per name for the life of the process, so a number never means two
        // versions (a rollback serves an older generation; the next reload must not reuse the
        // rolled-back one's number).
        // Peeked here, committed by `swap`: a failed attempt does not use up a number.
        let generation = lock(&self.shared.generations)
            .get(loaded.name())
            .copied()
            .unwrap_or(0)
            + 1;
        let env = LoadEnv {
            engine: &shared.engine,
            meta_linker: &shared.meta_linker,
            checker_linker: &shared.checker_linker,
            aot: &shared.aot,
            defaults: &shared.config.defaults,
            ceilings: &shared.config.ceilings,
            data_dir: &shared.config.data_dir,
            protected_dirs: &shared.protected_dirs,
            snapshot_source: Arc::downgrade(&self.shared) as Weak<dyn SnapshotSource>,
            generation,
        };
        let plugin = Plugin::from_loaded(&env, loaded)?;
        self.canary(&plugin, check_health).await?;
        Ok(plugin)
    }

    /// Step 4, canary: `describe()` on a fresh instance (recording the description) and, for a
    /// meta agent when `check_health`, `health()`, which must not report unhealthy. Bypasses
    /// quarantine: it is what releases one.
    pub async fn canary(&self, plugin: &Plugin, check_health: bool) -> Result<(), LoadError> {
        let pool = &self.shared.pool;
        let failed = |e| LoadError::Canary {
            plugin: plugin.name().to_string(),
            source: Box::new(e),
        };
        let report = plugin.probe(pool, Call::Describe).await.map_err(failed)?;
        if let Answer::Described(description) = report.value {
            plugin.set_description(description);
        }
        if check_health && plugin.kind() == PluginKind::MetaAgent {
            let report = plugin.probe(pool, Call::Health).await.map_err(failed)?;
            if let Answer::Health(health) = report.value
                && health.status == bindings::types::HealthStatus::Unhealthy
            {
                return Err(LoadError::CanaryUnhealthy {
                    plugin: plugin.name().to_string(),
                    detail: health.detail,
                });
            }
        }
        Ok(())
    }

    /// Load → validate → prepare → canary without serving: what `evolve plugin check` runs.
    pub async fn open_checked(&self, dir: &Path) -> Result<Plugin, LoadError> {
        let loaded = self.load_files(dir)?;
        self.prepare(loaded, false).await
    }

    /// Step 5: serve `plugin`: new calls get it from now on. What it replaces moves to the
    /// draining set and is returned for the caller to drain and retire.
    pub fn swap(&self, plugin: Arc<Plugin>) -> Result<Swapped, LoadError> {
        let mut plugins = write(&self.shared.plugins);
        if let Some(slot) = plugins.get(plugin.name()) {
            let other = &slot.current;
            // A rename moves the dir: the old one is gone, so the name is free to move with it.
            if other.dir != plugin.dir && other.dir.join(manifest::MANIFEST_FILE).is_file() {
                return Err(LoadError::DuplicateName {
                    plugin: plugin.name().to_string(),
                    other_dir: other.dir.clone(),
                });
            }
        }
        {
            let mut high = lock(&self.shared.generations);
            let entry = high.entry(plugin.name().to_string()).or_insert(0);
            *entry = (*entry).max(plugin.generation);
        }
        let record = ReloadRecord::success(&plugin);
        // A manifest that renamed the plugin: the old name served from this dir stops.
        let renamed: Vec<String> = plugins
            .iter()
            .filter(|(name, slot)| slot.current.dir == plugin.dir && *name != plugin.name())
            .map(|(name, _)| name.clone())
            .collect();
        let mut replaced: Vec<Arc<Plugin>> = renamed
            .iter()
            .filter_map(|name| plugins.remove(name))
            .map(|slot| slot.current)
            .collect();
        let previous = plugins
            .insert(
                plugin.name().to_string(),
                Slot {
                    current: Arc::clone(&plugin),
                    last_reload: Some(record),
                },
            )
            .map(|slot| slot.current);
        drop(plugins);
        write(&self.shared.failures).remove(&plugin.dir);
        replaced.extend(previous.iter().cloned());
        for old in &replaced {
            lock(&self.shared.draining).push(Arc::clone(old));
            old.replaced.notify_waiters();
        }
        let displaced = replaced
            .into_iter()
            .filter(|old| old.name() != plugin.name())
            .collect();
        Ok(Swapped {
            previous,
            displaced,
        })
    }

    /// Stops serving the plugin loaded from `dir`; it moves to the draining set and is returned.
    pub fn unload_dir(&self, dir: &Path) -> Option<Arc<Plugin>> {
        write(&self.shared.failures).remove(dir);
        let mut plugins = write(&self.shared.plugins);
        let name = plugins
            .iter()
            .find(|(_, slot)| slot.current.dir == dir)
            .map(|(name, _)| name.clone())?;
        let slot = plugins.remove(&name)?;
        drop(plugins);
        lock(&self.shared.draining).push(Arc::clone(&slot.current));
        slot.current.replaced.notify_waiters();
        Some(slot.current)
    }

    /// Step 6: forget a drained generation.
    pub fn retire(&self, plugin: &Arc<Plugin>) {
        lock(&self.shared.draining).retain(|p| !Arc::ptr_eq(p, plugin));
    }

    /// Generations that no longer take new calls but may still be finishing some.
    pub fn draining(&self) -> Vec<Arc<Plugin>> {
        lock(&self.shared.draining).clone()
    }

    /// The generation serving from `dir`, if any.
    pub fn current_for_dir(&self, dir: &Path) -> Option<Arc<Plugin>> {
        read(&self.shared.plugins)
            .values()
            .find(|slot| slot.current.dir == dir)
            .map(|slot| Arc::clone(&slot.current))
    }

    /// Replaces the record of the last (re)load of `name`.
    pub fn set_last_reload(&self, name: &str, record: ReloadRecord) {
        if let Some(slot) = write(&self.shared.plugins).get_mut(name) {
            slot.last_reload = Some(record);
        }
    }

    /// The outcome of the last (re)load of `name`.
    pub fn last_reload(&self, name: &str) -> Option<ReloadRecord> {
        read(&self.shared.plugins)
            .get(name)
            .and_then(|slot| slot.last_reload.clone())
    }

    /// Records a failed (re)load of `dir`: on the serving plugin's record when one serves from
    /// it (it keeps serving), else as a failed directory.
    pub fn record_failure(&self, dir: &Path, error: &LoadError) {
        let record = ReloadRecord::failure(error);
        {
            let mut plugins = write(&self.shared.plugins);
            if let Some(slot) = plugins.values_mut().find(|slot| slot.current.dir == dir) {
                slot.last_reload = Some(ReloadRecord {
                    generation: slot.current.generation,
                    ..record
                });
                return;
            }
        }
        let name = Manifest::load(dir).map(|m| m.name).unwrap_or_else(|_| {
            dir.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        });
        write(&self.shared.failures).insert(
            dir.to_path_buf(),
            LoadFailure {
                name,
                dir: dir.to_path_buf(),
                code: error.code(),
                error: error.to_string(),
                at: Utc::now(),
            },
        );
    }

    /// Forgets a failed directory that no longer exists.
    pub fn forget_failure(&self, dir: &Path) {
        write(&self.shared.failures).remove(dir);
    }

    /// Loaded plugins, by name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        read(&self.shared.plugins)
            .values()
            .map(|slot| Arc::clone(&slot.current))
            .collect()
    }

    /// Directories that failed to load, with why.
    pub fn failures(&self) -> Vec<LoadFailure> {
        read(&self.shared.failures).values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        read(&self.shared.plugins)
            .get(name)
            .map(|slot| Arc::clone(&slot.current))
    }

    fn get_kind(&self, name: &str, kind: PluginKind) -> Result<Arc<Plugin>, CallError> {
        let plugin = self.get(name).ok_or_else(|| CallError::NotFound {
            plugin: name.to_string(),
        })?;
        if plugin.kind() != kind {
            return Err(CallError::WrongKind {
                plugin: name.to_string(),
                expected: kind.world(),
                actual: plugin.kind().world(),
            });
        }
        Ok(plugin)
    }

    /// Every served call: invoke under supervision; a quarantine it starts gets its canary
    /// scheduled.
    async fn call(
        &self,
        plugin: &Arc<Plugin>,
        call: Call,
    ) -> Result<CallReport<Answer>, CallError> {
        let result = plugin
            .invoke(&self.shared.pool, call, &self.shared.config.supervision)
            .await;
        if let Some(start) = plugin.supervision.take_started() {
            self.supervise(Arc::clone(plugin), start);
        }
        result
    }

    /// Publishes a quarantine and runs its canary loop until released or replaced.
    fn supervise(&self, plugin: Arc<Plugin>, start: supervision::QuarantineStart) {
        let events = self.shared.events.clone();
        let publish_quarantine =
            move |plugin: &Plugin, backoff: std::time::Duration, strikes: u32, reason: &str| {
                events.publish(Event::new(
                    EventKind::PluginQuarantined,
                    plugin.name(),
                    serde_json::json!({
                        "generation": plugin.generation,
                        "sha256": plugin.sha256,
                        "backoff_ms": backoff.as_millis() as u64,
                        "strikes": strikes,
                        "reason": reason,
                    }),
                ));
            };
        publish_quarantine(&plugin, start.backoff, start.strikes, &start.reason);
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut backoff = start.backoff;
            loop {
                tokio::time::sleep(backoff).await;
                let serving = runtime
                    .get(plugin.name())
                    .is_some_and(|current| Arc::ptr_eq(&current, &plugin));
                if !serving {
                    return;
                }
                match runtime.canary(&plugin, true).await {
                    Ok(()) => {
                        plugin.supervision.release();
                        runtime.shared.events.publish(Event::new(
                            EventKind::PluginReleased,
                            plugin.name(),
                            serde_json::json!({ "generation": plugin.generation }),
                        ));
                        return;
                    }
                    Err(error) => {
                        let reason = format!("canary failed: {error}");
                        let (next, strikes) = plugin
                            .supervision
                            .extend(&runtime.shared.config.supervision, reason.clone());
                        publish_quarantine(&plugin, next, strikes, &reason);
                        backoff = next;
                    }
                }
            }
        });
    }

    /// The event bus the runtime publishes on.
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// Runs one task on a meta agent.
    pub async fn run_agent(
        &self,
        name: &str,
        task: Task,
    ) -> Result<CallReport<Result<TaskOutcome, PluginError>>, CallError> {
        let plugin = self.get_kind(name, PluginKind::MetaAgent)?;
        let report = self.call(&plugin, Call::Run(task)).await?;
        map_report(report, |answer| match answer {
            Answer::Ran(result) => Some(result),
            _ => None,
        })
    }

    /// Asks a meta agent for its health.
    pub async fn agent_health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError> {
        let plugin = self.get_kind(name, PluginKind::MetaAgent)?;
        let report = self.call(&plugin, Call::Health).await?;
        map_report(report, |answer| match answer {
            Answer::Health(report) => Some(report),
            _ => None,
        })
    }

    /// Checks one service instance with a health checker.
    pub async fn check_service(
        &self,
        name: &str,
        target: Service,
    ) -> Result<CallReport<Result<HealthReport, PluginError>>, CallError> {
        let plugin = self.get_kind(name, PluginKind::HealthChecker)?;
        let report = self.call(&plugin, Call::Check(target)).await?;
        map_report(report, |answer| match answer {
            Answer::Checked(result) => Some(result),
            _ => None,
        })
    }

    /// Calls `describe()` on a fresh instance.
    pub async fn describe(&self, name: &str) -> Result<CallReport<Description>, CallError> {
        let plugin = self.get(name).ok_or_else(|| CallError::NotFound {
            plugin: name.to_string(),
        })?;
        let report = self.call(&plugin, Call::Describe).await?;
        map_report(report, |answer| match answer {
            Answer::Described(d) => Some(d),
            _ => None,
        })
    }
}

/// Narrows a report's answer to the variant its call produces. `dispatch` answers each call with
/// its own variant, so the fallback arm is unreachable in practice; it is still an error, not a
/// panic.
fn map_report<T>(
    report: CallReport<Answer>,
    pick: impl FnOnce(Answer) -> Option<T>,
) -> Result<CallReport<T>, CallError> {
    let value = pick(report.value).ok_or_else(|| CallError::Trap {
        plugin: report.plugin.clone(),
        message: "the plugin answered a different call than was made".into(),
    })?;
    Ok(CallReport {
        plugin: report.plugin,
        generation: report.generation,
        duration_us: report.duration_us,
        logs_dropped: report.logs_dropped,
        value,
    })
}

impl SnapshotSource for Shared {
    fn http_transport(&self) -> Option<Arc<dyn sandbox::HttpTransport>> {
        read(&self.http_transport).clone()
    }

    fn snapshot(&self) -> Snapshot {
        let system = Arc::clone(&read(&self.system));
        let plugins = read(&self.plugins)
            .values()
            .map(|slot| plugin_summary(&slot.current))
            .collect();
        Snapshot {
            host: system.host(),
            plugins,
            services: system.services(),
            models: system.models(),
            best_models: system.best_models(),
            agents: system.agents(),
            plugin_sources: read(&self.plugins)
                .values()
                .map(|slot| plugin_source(&slot.current))
                .collect(),
            api_endpoints: system.api_endpoints(),
        }
    }

    fn probes(&self) -> Arc<dyn SystemProbes> {
        Arc::clone(&read(&self.probes))
    }
}

fn plugin_source(p: &Plugin) -> inv::PluginSource {
    inv::PluginSource {
        name: p.name().to_string(),
        dir: p.dir.display().to_string(),
        sha256_pinned: p.manifest.sha256.is_some(),
    }
}

fn plugin_summary(p: &Plugin) -> inv::PluginSummary {
    inv::PluginSummary {
        name: p.name().to_string(),
        version: p.manifest.version.clone(),
        kind: match p.kind() {
            PluginKind::MetaAgent => inv::PluginKind::MetaAgent,
            PluginKind::HealthChecker => inv::PluginKind::HealthChecker,
        },
        wit_version: p.wit_version.clone(),
        description: p.manifest.description.clone(),
        state: "serving".to_string(),
        sha256: p.sha256.clone(),
        generation: p.generation,
        permissions: inv::PluginPermissions {
            http_hosts: p.grants.http_host_patterns.clone(),
            env: p.grants.env_names.clone(),
            dirs: p
                .grants
                .dirs
                .iter()
                .map(|d| inv::GrantedDir {
                    guest_path: d.guest.clone(),
                    host_path: d.host.display().to_string(),
                    writable: d.write,
                })
                .collect(),
        },
        limits: inv::PluginLimits {
            memory_bytes: p.limits.memory_bytes,
            deadline_ms: p.limits.deadline_ms,
            max_concurrency: p.limits.max_concurrency,
            max_queue: p.limits.max_queue,
            max_output_bytes: p.limits.max_output_bytes,
            max_log_bytes: p.limits.max_log_bytes,
        },
        calls: p.stats.calls.load(Ordering::Relaxed),
        failures: p.stats.failed.load(Ordering::Relaxed),
    }
}
