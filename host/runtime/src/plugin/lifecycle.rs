//! The lifecycle steps that turn a plugin directory into a [`Plugin`]:
//!
//! 1. **load** ([`Plugin::load`]): read `plugin.toml` and the component, hash it, check the pin;
//! 2. **validate**: a component of the declared world, compiled through the AOT cache, with
//!    limits under the ceilings and grants resolved;
//! 3. **prepare**: link the imports once into a pre-instance.
//!
//! The runtime then runs the canary and, if it passes, **serves** the plugin (`Runtime::swap`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock, Weak};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::grants::{GrantPolicy, resolve_grants};
use super::stats::PluginStats;
use super::world::{check_world, explain_link_error, not_a_component};
use super::{Plugin, WorldPre};
use crate::aot::{AotCache, AotError, CacheOutcome};
use crate::bindings::health_checker::HealthCheckerPre;
use crate::bindings::meta_agent::MetaAgentPre;
use crate::error::LoadError;
use crate::limits::{CallGate, LimitValues, Limits};
use crate::manifest::{HostPattern, Manifest, PluginKind};
use crate::sandbox::Grants;
use crate::state::{PluginContext, PluginState, SnapshotSource};
use crate::supervision::Supervision;

/// Largest component file accepted. componentize-py output is ~18 MB; anything far beyond that
/// is a mistake (a debug build of a large app), and the file is read into memory to hash it.
const MAX_WASM_BYTES: u64 = 256 << 20;

/// What load needs from the runtime.
pub(crate) struct LoadEnv<'a> {
    pub engine: &'a Engine,
    pub meta_linker: &'a Linker<PluginState>,
    pub checker_linker: &'a Linker<PluginState>,
    pub aot: &'a AotCache,
    pub defaults: &'a LimitValues,
    pub ceilings: &'a LimitValues,
    pub data_dir: &'a Path,
    pub grant_policy: &'a GrantPolicy,
    pub snapshot_source: Weak<dyn SnapshotSource>,
    pub generation: u64,
    /// `runtime.max_total_memory_mb`: a plugin asking more could never run.
    pub memory_budget_mb: u64,
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
}

/// 1. Load: read the manifest and the component, hash it, check the pin.
fn load(dir: &Path) -> Result<Loaded, LoadError> {
    let manifest_path = dir.join(crate::manifest::MANIFEST_FILE);
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
    if limits.memory_mb() > env.memory_budget_mb {
        return Err(LoadError::MemoryAboveBudget {
            plugin: name,
            memory_mb: limits.memory_mb(),
            budget_mb: env.memory_budget_mb,
        });
    }
    let (grants, http_hosts) = resolve_grants(&loaded.manifest, env.data_dir, env.grant_policy)?;
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
