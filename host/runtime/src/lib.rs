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
//! | [`output`] | the one reader of a task's JSON output (checked here, parsed back by the daemon) |
//! | [`probes`] | the active checks meta agents can make (`probes` import) |
//! | [`aot`] | compiled-artifact cache |
//! | [`engine`] | engine configuration and the epoch ticker |
//! | [`bindings`] | host bindings generated from `wit/` |
//! | [`error`] | [`LoadError`] and [`CallError`] |
//!
//! The [`Runtime`] itself is split the same way: this file builds it (engine, linkers, pool,
//! cache); `serving` holds its side of the lifecycle (canary, swap, drain, retire, reload
//! records, failed directories); `calls` the typed calls by name under supervision;
//! `snapshot` what plugins read through their imports.

pub mod aot;
pub mod bindings;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod limits;
pub mod manifest;
pub mod output;
pub mod plugin;
pub mod probes;
pub mod sandbox;
pub mod schedule;
pub mod state;
pub mod supervision;

mod calls;
mod serving;
mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use evolve_core::events::EventBus;
use evolve_core::sync::write;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use self::aot::{AotCache, CacheStats};
pub use self::error::{CallError, LoadError};
pub use self::inventory::SystemView;
pub use self::inventory::{DetachedInventory, Snapshot, SystemInventory};
pub use self::limits::{LimitValues, Limits, MemoryBudget};
pub use self::manifest::{Manifest, PluginKind};
pub use self::plugin::Capacity;
pub use self::plugin::{
    Answer, Call, CallReport, DaemonPath, Description, GrantPolicy, Guard, Loaded, Plugin,
};
pub use self::probes::{DetachedProbes, ProbeTimer, SystemProbes};
pub use self::serving::{FirstLoad, LoadFailure, LoadingPlugin, ReloadRecord, Swapped};
pub use self::supervision::SupervisionConfig;

use self::bindings::health_checker::HealthChecker;
use self::bindings::meta_agent::MetaAgent;
use self::engine::{EngineSettings, EpochTicker, build_engine};
use self::state::PluginState;

/// How the runtime is built (the `[runtime]` config section plus paths).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub pool_instances: u32,
    /// The host memory budget: the linear memory (each call's whole `memory_mb`) all calls in
    /// flight may reserve together, MiB.
    pub max_total_memory_mb: u64,
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
    /// What plugins may be granted: the operator's allowed roots and environment variables, and
    /// the daemon's own paths. The data dir, the AOT cache, the key file and `protected_dirs`
    /// are added to its daemon paths by the runtime.
    pub grant_policy: GrantPolicy,
    /// The install key authenticating AOT artifacts (created if missing).
    pub aot_key_file: PathBuf,
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
    Cache(#[from] aot::AotSetupError),
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
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
    /// Directories whose first load is under way (see [`Runtime::begin_first_load`]).
    loading: RwLock<BTreeMap<PathBuf, LoadingPlugin>>,
    capacity: Capacity,
    events: EventBus,
    /// `config.grant_policy` with every daemon path the runtime knows of added.
    grant_policy: GrantPolicy,
    /// What plugins see of the rest of the system; see [`Runtime::install_system_view`].
    system: RwLock<SystemView>,
    /// Answers checkers' admitted outbound HTTP instead of the network (the test kit's).
    http_transport: Option<Arc<dyn sandbox::HttpTransport>>,
    _ticker: EpochTicker,
}

/// What serves under one plugin name.
struct Slot {
    current: Arc<Plugin>,
    last_reload: Option<ReloadRecord>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig, events: EventBus) -> Result<Runtime, RuntimeError> {
        Runtime::with_http_transport(config, events, None)
    }

    /// [`Runtime::new`], with checkers' admitted outbound HTTP answered by `http_transport`
    /// instead of the network: the test kit's fake hosts. The daemon never passes one.
    pub fn with_http_transport(
        config: RuntimeConfig,
        events: EventBus,
        http_transport: Option<Arc<dyn sandbox::HttpTransport>>,
    ) -> Result<Runtime, RuntimeError> {
        config
            .defaults
            .check_against(&config.ceilings)
            .map_err(RuntimeError::Config)?;
        if config.pool_instances == 0 {
            return Err(RuntimeError::Config(
                "runtime.pool_instances must be at least 1".into(),
            ));
        }
        let memory_budget =
            MemoryBudget::new(config.max_total_memory_mb).map_err(RuntimeError::Config)?;
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

        let aot = AotCache::new(config.cache_dir.clone(), &config.aot_key_file, &engine)?;
        // The data dir first: a refusal names the first daemon path a grant overlaps, and a
        // grant over the data dir is best explained as that.
        let mut grant_policy = GrantPolicy {
            daemon_paths: Vec::new(),
            ..config.grant_policy.clone()
        };
        grant_policy.protect(&config.data_dir, "the data dir", Guard::Enclosing);
        grant_policy.protect(&config.cache_dir, "the AOT cache", Guard::Whole);
        grant_policy.protect(&config.aot_key_file, "the AOT key file", Guard::Whole);
        for dir in &config.protected_dirs {
            grant_policy.protect(dir, "a directory the daemon owns", Guard::Whole);
        }
        grant_policy
            .daemon_paths
            .extend(config.grant_policy.daemon_paths.iter().cloned());
        let ticker = EpochTicker::start(&engine).map_err(RuntimeError::Ticker)?;
        Ok(Runtime {
            shared: Arc::new(Shared {
                capacity: Capacity {
                    pool: Arc::new(Semaphore::new(config.pool_instances as usize)),
                    memory: Arc::new(memory_budget),
                },
                grant_policy,
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
                loading: RwLock::default(),
                system: RwLock::new(SystemView::detached()),
                http_transport,
                _ticker: ticker,
            }),
        })
    }

    /// Installs what plugins see of the rest of the system. This is the runtime's one late
    /// setter, for the one cycle in the daemon's wiring: the inventory and probes read the
    /// agents, mesh and registry, which are built on this runtime, so they can only be handed
    /// in after it exists. Until then (and in a runtime nobody connects) plugins see an empty
    /// system and every probe fails with a message saying so.
    pub fn install_system_view(&self, view: SystemView) {
        *write(&self.shared.system) = view;
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
            - u32::try_from(self.shared.capacity.pool.available_permits()).unwrap_or(0)
    }

    /// The host memory budget, and what calls in flight reserve of it now.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.shared.capacity.memory
    }

    /// The event bus the runtime publishes on.
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }
}
