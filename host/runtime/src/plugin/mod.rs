//! One loaded plugin: the [`Plugin`] type and its small accessors. The rest is by concern:
//!
//! | module | concern |
//! |---|---|
//! | `lifecycle` | load → validate → prepare: files, manifest, sha256, AOT cache, pre-instance |
//! | `world` | is it a component; its `evolve:plugin` interfaces and versions; link errors |
//! | `grants` | the manifest's permissions resolved (WASI directories, env, HTTP allow-list) |
//! | `call` | the call path: admission, a fresh instance, dispatch, failures, answer checks |
//! | `stats` | per-plugin call counters and the last error |
//!
//! A [`Plugin`] is immutable once prepared; it holds a pre-instance and every call gets a fresh
//! `Store` and instance from it, so no state leaks between calls and a trap only loses that call.

mod call;
mod grants;
mod lifecycle;
mod stats;
mod world;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

pub use self::call::{Answer, Call, CallReport, Capacity};
pub use self::grants::{ALLOWED_DIR_ROOTS_KEY, ALLOWED_ENV_KEY, DaemonPath, GrantPolicy, Guard};
pub(crate) use self::lifecycle::LoadEnv;
pub use self::lifecycle::{Loaded, hex_sha256};
pub use self::stats::{LastError, PluginStats};
use crate::aot::CacheOutcome;
use crate::bindings::health_checker::HealthCheckerPre;
use crate::bindings::meta_agent::MetaAgentPre;
use crate::bindings::types::{AgentInfo, CheckerInfo};
use crate::limits::{CallGate, Limits};
use crate::manifest::{HostPattern, Manifest, PluginKind};
use crate::sandbox::Grants;
use crate::state::{PluginContext, PluginState, SnapshotSource};
use crate::supervision::Supervision;

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

/// A recorded description and the name the component claimed in it when that was not its
/// manifest's.
#[derive(Debug)]
struct Described {
    description: Description,
    claimed_name: Option<String>,
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
    /// What the first canary's `describe()` returned, named by the manifest.
    description: OnceLock<Described>,
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

impl Plugin {
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

    /// `describe()`'s answer; its `name` is always the manifest's.
    pub fn description(&self) -> Option<&Description> {
        self.description.get().map(|d| &d.description)
    }

    /// The name `describe()` claimed when it was not the manifest's (escaped, for display only):
    /// the plugin is served, logged and counted under its manifest name regardless.
    pub fn claimed_name(&self) -> Option<&str> {
        self.description.get()?.claimed_name.as_deref()
    }

    /// Records the first description; returns whether this one was recorded (later canaries of
    /// the same generation keep the first).
    pub(crate) fn set_description(
        &self,
        description: Description,
        claimed_name: Option<String>,
    ) -> bool {
        self.description
            .set(Described {
                description,
                claimed_name,
            })
            .is_ok()
    }

    pub fn in_flight(&self) -> u32 {
        self.gate.in_flight()
    }

    pub fn queued(&self) -> u32 {
        self.gate.queued()
    }
}
