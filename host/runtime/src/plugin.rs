//! One loaded plugin: its lifecycle (load → validate → prepare, then serve) and the call path.
//!
//! A [`Plugin`] is immutable once prepared; it holds a pre-instance and every call gets a fresh
//! `Store` and instance from it, so no state leaks between calls and a trap only loses that call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::ResourceTable;
use wasmtime_wasi_http::WasiHttpCtx;

use super::aot::{AotCache, AotError, CacheOutcome};
use super::bindings::health_checker::HealthCheckerPre;
use super::bindings::meta_agent::MetaAgentPre;
use super::bindings::types::{
    AgentInfo, CheckerInfo, HealthReport, PluginError, Service, Task, TaskOutcome,
};
use super::bindings::{WIT_PACKAGE, WIT_VERSION};
use super::error::{CallError, LoadError};
use super::limits::{CallGate, LimitValues, Limits, StoreLimiter};
use super::manifest::{HostPattern, Manifest, PluginKind};
use super::sandbox::{CallLog, Grants, HttpPolicy, ResolvedDir, uri_host_port};
use super::state::{PluginContext, PluginState, SnapshotSource};
use super::supervision::{Supervision, SupervisionConfig};

/// Largest component file accepted. componentize-py output is ~18 MB; anything far beyond that
/// is a mistake (a debug build of a large app), and the file is read into memory to hash it.
const MAX_WASM_BYTES: u64 = 256 << 20;

/// Resources (open files, streams, HTTP requests...) a call may hold at once. Each can pin host
/// memory or a file descriptor; wasmtime's default (1,000,000) would let one call exhaust the
/// daemon's descriptors. Real plugins hold a handful.
const MAX_RESOURCES: usize = 1_024;

/// Bytes of HTTP header fields a checker may build per `fields` resource. wasi-http's default
/// (128 KiB) times many resources is a lot of host memory; 16 KiB is above any real request.
const MAX_HTTP_FIELDS_BYTES: usize = 16 << 10;

/// Extra wall-clock time, past the deadline, before a call blocked in a host await (an HTTP
/// request) is abandoned. Guest code is interrupted by the epoch within one tick of the deadline;
/// this only covers time spent outside guest code.
const HOST_AWAIT_GRACE: Duration = Duration::from_millis(50);

/// What load needs from the runtime.
pub(crate) struct LoadEnv<'a> {
    pub engine: &'a Engine,
    pub meta_linker: &'a Linker<PluginState>,
    pub checker_linker: &'a Linker<PluginState>,
    pub aot: &'a AotCache,
    pub defaults: &'a LimitValues,
    pub ceilings: &'a LimitValues,
    pub data_dir: &'a Path,
    pub protected_dirs: &'a [PathBuf],
    pub snapshot_source: Weak<dyn SnapshotSource>,
    pub generation: u64,
}

/// The typed pre-instance of the plugin's world.
enum WorldPre {
    MetaAgent(MetaAgentPre<PluginState>),
    HealthChecker(HealthCheckerPre<PluginState>),
}

/// What `describe()` returned at the canary call.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Description {
    Agent(AgentInfo),
    Checker(CheckerInfo),
}

/// Per-plugin call counters.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub overloaded: AtomicU64,
    pub busy_us: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub code: &'static str,
    pub message: String,
}

impl PluginStats {
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn record(&self, elapsed: Duration, outcome: Result<(), &CallError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.busy_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if matches!(
                    e,
                    CallError::Overloaded { .. } | CallError::Quarantined { .. }
                ) {
                    self.overloaded.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                let last = LastError {
                    at: Utc::now(),
                    code: e.code(),
                    message: e.to_string(),
                };
                if let Ok(mut slot) = self.last_error.lock() {
                    *slot = Some(last);
                }
            }
        }
    }
}

/// A call into a plugin.
#[derive(Debug)]
pub enum Call {
    Describe,
    Run(Task),
    Health,
    Check(Service),
}

/// Its answer, when the call itself worked. A plugin's own `Err` is an answer, not a failure of
/// the call.
#[derive(Debug, Clone, Serialize)]
pub enum Answer {
    Described(Description),
    Ran(Result<TaskOutcome, PluginError>),
    Health(HealthReport),
    Checked(Result<HealthReport, PluginError>),
}

/// An answer with what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport<T> {
    pub plugin: String,
    pub generation: u64,
    pub duration_us: u64,
    /// Log bytes over `max_log_kb` that were dropped.
    pub logs_dropped: u64,
    pub value: T,
}

/// A plugin ready to serve.
pub struct Plugin {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub wasm_path: PathBuf,
    pub sha256: String,
    /// Version of `evolve:plugin` the component was built against.
    pub wit_version: String,
    pub limits: Limits,
    pub grants: Grants,
    pub generation: u64,
    pub loaded_at: DateTime<Utc>,
    pub cache: CacheOutcome,
    pub stats: PluginStats,
    context: Arc<PluginContext>,
    pre: WorldPre,
    gate: CallGate,
    http_hosts: Arc<[HostPattern]>,
    snapshot_source: Weak<dyn SnapshotSource>,
    description: OnceLock<Description>,
    digest: String,
    active: AtomicU32,
    idle: Notify,
    /// Quarantine state and the fault signal.
    pub supervision: Supervision,
    /// Notified when this generation stops serving (replaced or unloaded).
    pub replaced: Notify,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("generation", &self.generation)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Step 1 output: the manifest and the component bytes, hashed and pin-checked.
pub struct Loaded {
    manifest: Manifest,
    dir: PathBuf,
    wasm_path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    /// Identifies manifest + component together, so a reload of identical files is a no-op.
    digest: String,
}

impl Loaded {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// Step 2 output: a compiled component that fits its world, with limits and grants resolved.
struct Validated {
    loaded: Loaded,
    component: Component,
    cache: CacheOutcome,
    wit_version: String,
    limits: Limits,
    grants: Grants,
    http_hosts: Arc<[HostPattern]>,
}

impl Plugin {
    /// Step 1, load: read and hash the files.
    pub(crate) fn load(dir: &Path) -> Result<Loaded, LoadError> {
        load(dir)
    }

    /// Steps 2 and 3, validate → prepare. The canary call is the runtime's next step.
    pub(crate) fn from_loaded(env: &LoadEnv<'_>, loaded: Loaded) -> Result<Plugin, LoadError> {
        let validated = validate(env, loaded)?;
        prepare(env, validated)
    }

    /// Manifest and component digest (see [`Loaded`]).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Calls admitted or waiting on this generation.
    pub fn active_calls(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no call is admitted or waiting on this generation, or `bound` passes;
    /// returns whether it drained.
    pub async fn drained(&self, bound: Duration) -> bool {
        let wait = async {
            loop {
                // Register interest before checking, so a call ending in between still wakes us.
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.active_calls() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(bound, wait).await.is_ok()
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }

    pub fn description(&self) -> Option<&Description> {
        self.description.get()
    }

    pub(crate) fn set_description(&self, description: Description) {
        let _ = self.description.set(description);
    }

    pub fn in_flight(&self) -> u32 {
        self.gate.in_flight()
    }

    pub fn queued(&self) -> u32 {
        self.gate.queued()
    }

    /// Serves one call: quarantine check, admission, a fresh instance, the export, bounded by
    /// limits; the outcome feeds supervision.
    pub async fn invoke(
        &self,
        pool: &Arc<Semaphore>,
        call: Call,
        supervision: &SupervisionConfig,
    ) -> Result<CallReport<Answer>, CallError> {
        if let Err((remaining, reason)) = self.supervision.admit() {
            let error = CallError::Quarantined {
                plugin: self.name().to_string(),
                retry_after_ms: remaining.as_millis() as u64,
                reason,
            };
            self.stats.record(Duration::ZERO, Err(&error));
            return Err(error);
        }
        let result = self.probe(pool, call).await;
        self.supervision
            .record(result.as_ref().map(|_| ()), supervision);
        result
    }

    /// Serves one call without the quarantine check or supervision accounting: the canary path.
    pub async fn probe(
        &self,
        pool: &Arc<Semaphore>,
        call: Call,
    ) -> Result<CallReport<Answer>, CallError> {
        let started = Instant::now();
        let _active = ActiveCall::enter(self);
        let result = self.invoke_inner(pool, call).await;
        let elapsed = started.elapsed();
        self.stats
            .record(elapsed, result.as_ref().map(|_| ()).map_err(|(e, _)| e));
        let (answer, logs_dropped) = match result {
            Ok(ok) => ok,
            Err((error, _)) => {
                tracing::warn!(plugin = self.name(), code = error.code(), "{error}");
                return Err(error);
            }
        };
        Ok(CallReport {
            plugin: self.manifest.name.clone(),
            generation: self.generation,
            duration_us: elapsed.as_micros() as u64,
            logs_dropped,
            value: answer,
        })
    }

    async fn invoke_inner(
        &self,
        pool: &Arc<Semaphore>,
        call: Call,
    ) -> Result<(Answer, u64), (CallError, u64)> {
        let name = self.name();
        // 1. Admission: the plugin's own concurrency and queue, then a pool slot. Per-plugin
        //    queues bound how many wait for the pool, and the pool never sees more concurrent
        //    instances than it has slots, so it cannot fail with a raw exhaustion error.
        let _permit = self.gate.enter(name).await.map_err(|e| (e, 0))?;
        // The wait for a pool slot is bounded by the call's deadline: when every slot is held
        // by slow plugins, a caller gets Overloaded instead of hanging behind them.
        let slot = tokio::time::timeout(self.limits.deadline(), Arc::clone(pool).acquire_owned());
        let _slot = match slot.await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => {
                let message = "the runtime is shutting down".to_string();
                let plugin = name.to_string();
                return Err((CallError::Instantiate { plugin, message }, 0));
            }
            Err(_elapsed) => {
                let (running, queued) = (self.gate.in_flight(), self.gate.queued());
                let plugin = name.to_string();
                return Err((
                    CallError::Overloaded {
                        plugin,
                        running,
                        queued,
                    },
                    0,
                ));
            }
        };

        // 2. A fresh store with exactly the plugin's grants.
        let deadline = self.limits.deadline();
        let target = match &call {
            Call::Check(service) => service
                .endpoint
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri_host_port(&uri)),
            _ => None,
        };
        let log = CallLog::new(Arc::clone(&self.context.name), self.limits.max_log_bytes);
        let wasi = self.grants.wasi_ctx(&log).map_err(|e| {
            (
                CallError::Instantiate {
                    plugin: name.to_string(),
                    message: format!("granted directory unavailable: {e}"),
                },
                0,
            )
        })?;
        let http_policy = HttpPolicy::new(
            Arc::clone(&self.context.name),
            Arc::clone(&self.http_hosts),
            target,
            deadline,
        )
        .with_transport(
            self.snapshot_source
                .upgrade()
                .and_then(|source| source.http_transport()),
        );
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
        let state = PluginState {
            wasi,
            table,
            http,
            http_policy: http_policy.clone(),
            limiter: StoreLimiter::new(self.limits.memory_bytes),
            log: Arc::clone(&log),
            plugin: Arc::clone(&self.context),
            snapshot_source: self.snapshot_source.clone(),
            snapshot: None,
            deadline_hit: false,
        };
        let mut store = Store::new(self.engine(), state);
        store.limiter(|state| &mut state.limiter);
        let deadline_at = Instant::now() + deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if Instant::now() >= deadline_at {
                ctx.data_mut().deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield at every tick so a busy guest shares the executor thread.
                Ok(UpdateDeadline::Yield(1))
            }
        });

        // 3 + 4. Instantiate and call, bounded by the deadline also while in host awaits.
        let outcome = tokio::time::timeout(
            deadline + HOST_AWAIT_GRACE,
            dispatch(&self.pre, &mut store, call),
        )
        .await;
        let logs_dropped = log.finish();

        // 5. Classify failures by what the store saw, not by the trap alone.
        let answer = match outcome {
            Err(_elapsed) => {
                return Err((
                    CallError::DeadlineExceeded {
                        plugin: name.to_string(),
                        deadline_ms: self.limits.deadline_ms,
                    },
                    logs_dropped,
                ));
            }
            Ok(Err(error)) => return Err((self.classify(error, &store, &log), logs_dropped)),
            Ok(Ok(answer)) => answer,
        };

        // 6. The answer must fit the output budget and carry valid JSON.
        self.check_answer(&answer, &http_policy)
            .map_err(|e| (e, logs_dropped))?;
        Ok((answer, logs_dropped))
    }

    fn engine(&self) -> &Engine {
        match &self.pre {
            WorldPre::MetaAgent(pre) => pre.engine(),
            WorldPre::HealthChecker(pre) => pre.engine(),
        }
    }

    fn classify(
        &self,
        error: wasmtime::Error,
        store: &Store<PluginState>,
        log: &CallLog,
    ) -> CallError {
        let plugin = self.name().to_string();
        if let Some(hit) = store.data().limiter.memory_hit {
            return CallError::MemoryLimit {
                plugin,
                limit_bytes: hit.limit,
                requested_bytes: hit.requested,
            };
        }
        if store.data().deadline_hit
            || matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
        {
            return CallError::DeadlineExceeded {
                plugin,
                deadline_ms: self.limits.deadline_ms,
            };
        }
        if let Some(trap) = error.downcast_ref::<Trap>() {
            let stderr = log.stderr_tail();
            let message = if stderr.is_empty() {
                trap.to_string()
            } else {
                format!("{trap}; stderr: {stderr}")
            };
            return CallError::Trap { plugin, message };
        }
        CallError::Trap {
            plugin,
            message: format!("{error:#}"),
        }
    }

    fn check_answer(&self, answer: &Answer, http: &HttpPolicy) -> Result<(), CallError> {
        let plugin = || self.name().to_string();
        let size = answer_size(answer);
        if size > self.limits.max_output_bytes {
            return Err(CallError::OutputTooLarge {
                plugin: plugin(),
                size,
                limit: self.limits.max_output_bytes,
            });
        }
        match answer {
            Answer::Ran(Ok(outcome)) => {
                serde_json::from_str::<serde::de::IgnoredAny>(&outcome.output).map_err(|e| {
                    CallError::InvalidOutput {
                        plugin: plugin(),
                        field: "task-outcome.output",
                        message: e.to_string(),
                    }
                })?;
            }
            Answer::Ran(Err(error)) | Answer::Checked(Err(error)) => {
                // A plugin that failed after the host refused it a host reports the refusal.
                let (hosts, count) = http.refused();
                if !hosts.is_empty() {
                    let more = count.saturating_sub(hosts.len() as u64);
                    return Err(CallError::PermissionDenied {
                        plugin: plugin(),
                        refused: format!(
                            "outbound HTTP to {}{}",
                            hosts.join(", "),
                            if more > 0 {
                                format!(" (and {more} more refusals)")
                            } else {
                                String::new()
                            }
                        ),
                        message: error.message.clone(),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Counts a call on its generation from admission to return, even if the caller's future is
/// dropped midway, so draining knows when the generation is idle.
struct ActiveCall<'a>(&'a Plugin);

impl<'a> ActiveCall<'a> {
    fn enter(plugin: &'a Plugin) -> ActiveCall<'a> {
        plugin.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(plugin)
    }
}

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Bytes of guest-produced text in an answer.
fn answer_size(answer: &Answer) -> u64 {
    let error_size = |e: &PluginError| e.message.len();
    let report_size = |r: &HealthReport| r.detail.len();
    let info = |name: &str, version: &str, desc: &str, caps: &[String]| {
        name.len() + version.len() + desc.len() + caps.iter().map(String::len).sum::<usize>()
    };
    (match answer {
        Answer::Described(Description::Agent(a)) => {
            info(&a.name, &a.version, &a.description, &a.capabilities)
                + a.schedule.as_ref().map_or(0, String::len)
        }
        Answer::Described(Description::Checker(c)) => {
            info(&c.name, &c.version, &c.description, &c.capabilities)
        }
        Answer::Ran(Ok(o)) => {
            o.summary.len() + o.output.len() + o.artifacts.iter().map(String::len).sum::<usize>()
        }
        Answer::Ran(Err(e)) | Answer::Checked(Err(e)) => error_size(e),
        Answer::Health(r) | Answer::Checked(Ok(r)) => report_size(r),
    }) as u64
}

/// Instantiates the world and calls the export `call` names.
async fn dispatch(
    pre: &WorldPre,
    store: &mut Store<PluginState>,
    call: Call,
) -> wasmtime::Result<Answer> {
    match pre {
        WorldPre::MetaAgent(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let agent = instance.evolve_plugin_agent();
            Ok(match call {
                Call::Describe => {
                    Answer::Described(Description::Agent(agent.call_describe(&mut *store).await?))
                }
                Call::Run(task) => Answer::Ran(agent.call_run(&mut *store, &task).await?),
                Call::Health => Answer::Health(agent.call_health(&mut *store).await?),
                Call::Check(_) => {
                    return Err(wasmtime::Error::msg("meta agents do not check services"));
                }
            })
        }
        WorldPre::HealthChecker(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let checker = instance.evolve_plugin_checker();
            Ok(match call {
                Call::Describe => Answer::Described(Description::Checker(
                    checker.call_describe(&mut *store).await?,
                )),
                Call::Check(service) => {
                    Answer::Checked(checker.call_check(&mut *store, &service).await?)
                }
                Call::Run(_) | Call::Health => {
                    return Err(wasmtime::Error::msg("health checkers do not run tasks"));
                }
            })
        }
    }
}

/// 1. Load: read the manifest and the component, hash it, check the pin.
fn load(dir: &Path) -> Result<Loaded, LoadError> {
    let manifest_path = dir.join(super::manifest::MANIFEST_FILE);
    let manifest_text =
        std::fs::read_to_string(&manifest_path).map_err(|source| LoadError::MissingFile {
            dir: dir.to_path_buf(),
            file: manifest_path.clone(),
            source,
        })?;
    let manifest = Manifest::parse(&manifest_text, &manifest_path)?;
    let wasm_path = dir.join(&manifest.wasm);
    let missing = |source| LoadError::MissingFile {
        dir: dir.to_path_buf(),
        file: wasm_path.clone(),
        source,
    };
    let size = std::fs::metadata(&wasm_path).map_err(missing)?.len();
    if size > MAX_WASM_BYTES {
        return Err(LoadError::Compile {
            plugin: manifest.name.clone(),
            file: wasm_path,
            message: format!(
                "{size} bytes is over the {MAX_WASM_BYTES}-byte limit for a component"
            ),
        });
    }
    let bytes = std::fs::read(&wasm_path).map_err(missing)?;
    let sha256 = hex_sha256(&bytes);
    if let Some(pin) = &manifest.sha256
        && !pin.eq_ignore_ascii_case(&sha256)
    {
        return Err(LoadError::Sha256Mismatch {
            plugin: manifest.name.clone(),
            file: wasm_path,
            expected: pin.to_ascii_lowercase(),
            actual: sha256,
        });
    }
    let digest =
        hex_sha256(format!("{}\n{sha256}", hex_sha256(manifest_text.as_bytes())).as_bytes());
    Ok(Loaded {
        manifest,
        dir: dir.to_path_buf(),
        wasm_path,
        bytes,
        sha256,
        digest,
    })
}

/// Lowercase hex sha256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// 2. Validate: a component (not a core module), compiled via the AOT cache, whose world and
///    package version fit its declared kind; limits under ceilings; grants resolvable.
fn validate(env: &LoadEnv<'_>, loaded: Loaded) -> Result<Validated, LoadError> {
    let name = loaded.manifest.name.clone();
    let file = loaded.wasm_path.clone();
    if let Some(found) = not_a_component(&loaded.bytes) {
        return Err(LoadError::NotAComponent {
            plugin: name,
            file,
            found,
        });
    }
    let limits = Limits::resolve(&name, &loaded.manifest.limits, env.defaults, env.ceilings)?;
    let (grants, http_hosts) = resolve_grants(&loaded.manifest, env.data_dir, env.protected_dirs)?;
    let (component, cache) = env
        .aot
        .load(env.engine, &loaded.bytes, &loaded.sha256)
        .map_err(|e| match e {
            AotError::Compile(message) => LoadError::Compile {
                plugin: name.clone(),
                file: file.clone(),
                message,
            },
            AotError::Io { dir, source } => LoadError::Cache { dir, source },
        })?;
    let wit_version = check_world(env.engine, &component, loaded.manifest.kind)
        .map_err(|e| e.into_load_error(&name, &file))?;
    Ok(Validated {
        loaded,
        component,
        cache,
        wit_version,
        limits,
        grants,
        http_hosts,
    })
}

/// 3. Prepare: link the imports once (`InstancePre`), so each call only instantiates.
fn prepare(env: &LoadEnv<'_>, v: Validated) -> Result<Plugin, LoadError> {
    let name = v.loaded.manifest.name.clone();
    let kind = v.loaded.manifest.kind;
    let world_error = |detail: String| LoadError::WorldMismatch {
        plugin: name.clone(),
        file: v.loaded.wasm_path.clone(),
        world: kind.world(),
        detail,
    };
    let linker = match kind {
        PluginKind::MetaAgent => env.meta_linker,
        PluginKind::HealthChecker => env.checker_linker,
    };
    let instance_pre = linker
        .instantiate_pre(&v.component)
        .map_err(|e| world_error(explain_link_error(kind, &format!("{e:#}"))))?;
    let pre = match kind {
        PluginKind::MetaAgent => WorldPre::MetaAgent(
            MetaAgentPre::new(instance_pre).map_err(|e| world_error(format!("{e:#}")))?,
        ),
        PluginKind::HealthChecker => WorldPre::HealthChecker(
            HealthCheckerPre::new(instance_pre).map_err(|e| world_error(format!("{e:#}")))?,
        ),
    };
    let config = match v.loaded.manifest.config_json() {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let config_text = serde_json::Value::Object(config.clone()).to_string();
    let gate = CallGate::new(&v.limits);
    Ok(Plugin {
        context: Arc::new(PluginContext {
            name: Arc::from(name.as_str()),
            config,
            config_text,
        }),
        manifest: v.loaded.manifest,
        dir: v.loaded.dir,
        wasm_path: v.loaded.wasm_path,
        sha256: v.loaded.sha256,
        wit_version: v.wit_version,
        limits: v.limits,
        grants: v.grants,
        generation: env.generation,
        loaded_at: Utc::now(),
        cache: v.cache,
        stats: PluginStats::default(),
        pre,
        gate,
        http_hosts: v.http_hosts,
        snapshot_source: env.snapshot_source.clone(),
        description: OnceLock::new(),
        digest: v.loaded.digest,
        active: AtomicU32::new(0),
        idle: Notify::new(),
        supervision: Supervision::default(),
        replaced: Notify::new(),
    })
}

/// `Some(what it is)` when `bytes` is not a component.
fn not_a_component(bytes: &[u8]) -> Option<&'static str> {
    const MAGIC: &[u8] = b"\0asm";
    // Version + layer fields of the preamble: 0x0d 0x00 (component-model version), 0x01 0x00
    // (component layer); a core module has version 1, layer 0.
    const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Some("not WebAssembly (no \\0asm header)");
    }
    match &bytes[4..8] {
        v if v == COMPONENT => None,
        v if v == CORE_MODULE => Some("a core WebAssembly module"),
        _ => Some("WebAssembly of an unknown version or layer"),
    }
}

/// A world or version problem found by inspecting the component's type.
#[derive(Debug)]
pub(crate) enum WorldProblem {
    Version(String),
    Mismatch(&'static str, String),
}

impl WorldProblem {
    fn into_load_error(self, plugin: &str, file: &Path) -> LoadError {
        match self {
            WorldProblem::Version(plugin_version) => LoadError::VersionMismatch {
                plugin: plugin.to_string(),
                file: file.to_path_buf(),
                plugin_version,
                host_version: WIT_VERSION,
            },
            WorldProblem::Mismatch(world, detail) => LoadError::WorldMismatch {
                plugin: plugin.to_string(),
                file: file.to_path_buf(),
                world,
                detail,
            },
        }
    }
}

/// Splits `evolve:plugin/agent@0.1.0` into `("agent", "0.1.0")`.
fn evolve_interface(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').unwrap_or((rest, "")))
}

/// Whether a component built against `version` links with this host: same major, and for 0.x the
/// same minor (semver's rule for pre-1.0 packages, which wasmtime's linker also applies).
fn compatible(version: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(version), parse(WIT_VERSION)) {
        (Some((maj, min)), Some((host_maj, host_min))) => {
            maj == host_maj && (maj != 0 || min == host_min)
        }
        _ => false,
    }
}

/// Checks the component's exports against `kind`'s world and every `evolve:plugin` version it
/// names; returns the version it was built against.
pub(crate) fn check_world(
    engine: &Engine,
    component: &Component,
    kind: PluginKind,
) -> Result<String, WorldProblem> {
    let ty = component.component_type();
    let expected = kind.export_interface();
    let mut found_version = None;
    let mut other_world = None;
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_string());
        let Some((iface, version)) = evolve_interface(name) else {
            continue;
        };
        if !compatible(version) {
            return Err(WorldProblem::Version(version.to_string()));
        }
        if iface == expected && matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            found_version = Some(version.to_string());
        } else if iface == PluginKind::MetaAgent.export_interface()
            || iface == PluginKind::HealthChecker.export_interface()
        {
            other_world = Some(name.to_string());
        }
    }
    let version = match (found_version, other_world) {
        (Some(version), _) => version,
        (None, Some(other)) => {
            return Err(WorldProblem::Mismatch(
                kind.world(),
                format!(
                    "plugin.toml says kind = \"{kind}\" but the component exports {other}; fix `kind` or rebuild against the {kind} world"
                ),
            ));
        }
        (None, None) => {
            return Err(WorldProblem::Mismatch(
                kind.world(),
                format!(
                    "missing export {WIT_PACKAGE}/{expected}@{WIT_VERSION} (it exports: {}); implement the {kind} world with evolve-plugin-sdk",
                    if exports.is_empty() {
                        "nothing".to_string()
                    } else {
                        exports.join(", ")
                    }
                ),
            ));
        }
    };
    for (name, _) in ty.imports(engine) {
        if let Some((_, version)) = evolve_interface(name)
            && !compatible(version)
        {
            return Err(WorldProblem::Version(version.to_string()));
        }
        if kind == PluginKind::MetaAgent && name.starts_with("wasi:http/") {
            return Err(WorldProblem::Mismatch(
                kind.world(),
                format!(
                    "it imports {name}, but only health checkers may make outbound HTTP; use a health-checker, or get data through the inventory import"
                ),
            ));
        }
    }
    Ok(version)
}

/// Rewrites wasmtime's "import not found in linker" into what it means for a plugin author.
fn explain_link_error(kind: PluginKind, message: &str) -> String {
    if message.contains("matching implementation was not found in the linker") {
        format!(
            "{message}; the {kind} world provides evolve:plugin/{{logging,config,inventory}} and WASI 0.2 CLI interfaces{}",
            if kind == PluginKind::HealthChecker {
                " plus wasi:http/outgoing-handler"
            } else {
                ""
            }
        )
    } else {
        message.to_string()
    }
}

/// Resolves directory grants against the data dir (creating writable ones), reads granted
/// environment variables, and parses the HTTP allow-list.
fn resolve_grants(
    manifest: &Manifest,
    data_dir: &Path,
    protected_dirs: &[PathBuf],
) -> Result<(Grants, Arc<[HostPattern]>), LoadError> {
    let perms = &manifest.permissions;
    let denied = |what: String, reason: String| LoadError::Permission {
        plugin: manifest.name.clone(),
        what,
        reason,
    };
    let mut dirs = Vec::new();
    for grant in &perms.dirs {
        let host = if grant.host.is_absolute() {
            grant.host.clone()
        } else {
            data_dir.join(&grant.host)
        };
        if grant.write {
            std::fs::create_dir_all(&host).map_err(|e| {
                denied(
                    format!("dir {} (write)", host.display()),
                    format!("cannot create it: {e}"),
                )
            })?;
        }
        let host = host.canonicalize().map_err(|e| {
            denied(
                format!("dir {}", host.display()),
                format!("{e}; create it or grant `write = true` so the host creates it"),
            )
        })?;
        if let Some(protected) = protected_dirs
            .iter()
            .find(|p| host.starts_with(p) || p.starts_with(&host))
        {
            return Err(denied(
                format!("dir {}", host.display()),
                format!(
                    "it overlaps {}, which holds the daemon's plugins or compiled code; grant a directory of its own",
                    protected.display()
                ),
            ));
        }
        dirs.push(ResolvedDir {
            host,
            guest: grant.guest.clone(),
            write: grant.write,
        });
    }
    let env = perms
        .env
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
        .collect();
    // Patterns were validated with the manifest; a failure here cannot happen, so skip rather
    // than fail on it.
    let http_hosts: Arc<[HostPattern]> = perms
        .http_hosts
        .iter()
        .filter_map(|h| HostPattern::parse(h).ok())
        .collect::<Vec<_>>()
        .into();
    Ok((
        Grants {
            env,
            env_names: perms.env.clone(),
            dirs,
            http_host_patterns: perms.http_hosts.clone(),
        },
        http_hosts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_component_from_core_module_and_junk() {
        let component = b"\0asm\x0d\x00\x01\x00rest";
        let core = b"\0asm\x01\x00\x00\x00rest";
        assert_eq!(not_a_component(component), None);
        assert_eq!(not_a_component(core), Some("a core WebAssembly module"));
        assert!(not_a_component(b"PK\x03\x04zip").is_some());
        assert!(not_a_component(b"").is_some());
    }

    #[test]
    fn pre_1_0_versions_need_the_same_minor() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.1.0"));
        assert!(!compatible("garbage"));
    }

    #[test]
    fn interface_names_split_into_name_and_version() {
        assert_eq!(
            evolve_interface("evolve:plugin/agent@0.1.0"),
            Some(("agent", "0.1.0"))
        );
        assert_eq!(evolve_interface("wasi:cli/run@0.2.0"), None);
    }
}
