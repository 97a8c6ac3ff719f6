//! Hot reload: the plugins directory is the source of truth, and the daemon follows it without a
//! failed call.
//!
//! | module | concern |
//! |---|---|
//! | [`pipeline`] | one directory's reconcile: load → validate → canary → swap → drain → retire |
//! | `window` | after a swap, the rollback window: faults of the new generation within it serve the previous one again |
//! | [`watcher`] | filesystem events, debounced and settled, plus a periodic rescan |
//!
//! A reload that fails before the swap leaves the serving generation untouched; in-flight calls
//! on a replaced generation finish on its code (the call path holds the generation it started
//! on), bounded by its deadline.

pub mod pipeline;
pub mod watcher;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::pipeline::{ReloadOutcome, StepTimings};
use evolve_core::events::EventBus;
use evolve_runtime::{FirstLoad, LoadFailure, Runtime, manifest::MANIFEST_FILE};

/// `[reload]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Follow the plugins directory with filesystem events.
    pub watch: bool,
    /// Quiet time after the last event in a plugin dir before it is reloaded, ms.
    pub debounce_ms: u64,
    /// Interval of the full rescan that catches missed events, s (0 = never).
    pub rescan_s: u64,
    /// After a swap, how long the new generation is watched for faults, s. The previous
    /// generation is kept (drained, not dropped) until then, to roll back to.
    pub watch_window_s: u64,
    /// Faults of the new generation within the window that roll it back (0 = never).
    pub rollback_failures: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce_ms: 100,
            rescan_s: 30,
            watch_window_s: 30,
            rollback_failures: 3,
        }
    }
}

impl ReloadConfig {
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

/// What a full reconcile did.
#[derive(Debug, Default)]
pub struct ReconcileSummary {
    pub outcomes: Vec<ReloadOutcome>,
}

impl ReconcileSummary {
    pub fn serving(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    ReloadOutcome::Loaded { .. }
                        | ReloadOutcome::Reloaded { .. }
                        | ReloadOutcome::Unchanged { .. }
                )
            })
            .count()
    }

    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, ReloadOutcome::Failed { .. }))
            .count()
    }
}

/// Size and modification time of every file in a plugin dir: a cheap "did anything change"
/// test, and the settle check that keeps half-written files out of the pipeline.
pub(crate) type Fingerprint = Vec<(String, u64, Option<std::time::SystemTime>)>;

/// Keeps the runtime in step with the plugins directory (state); built from a
/// [`ReloadConfig`].
pub struct Reloader {
    runtime: Runtime,
    events: EventBus,
    plugins_dir: PathBuf,
    config: ReloadConfig,
    /// One reconcile of a directory at a time (a reload and a rollback of the same dir never
    /// interleave); different dirs proceed side by side, so one slow plugin holds up no other.
    dir_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Turns true once the first load of every plugin dir has finished (`GET /readyz`).
    initial_load_done: AtomicBool,
    /// Fingerprint of each dir at its last reconcile, so a rescan skips unchanged dirs.
    fingerprints: Mutex<HashMap<PathBuf, Fingerprint>>,
    /// Per dir, the digest of a version that was rolled back: not tried again until the files
    /// change (or a forced reload).
    quarantined: Mutex<HashMap<PathBuf, String>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("plugins_dir", &self.plugins_dir)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub fn new(
        runtime: Runtime,
        events: EventBus,
        plugins_dir: PathBuf,
        config: ReloadConfig,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            runtime,
            events,
            plugins_dir,
            config,
            dir_locks: Mutex::default(),
            initial_load_done: AtomicBool::new(false),
            fingerprints: Mutex::default(),
            quarantined: Mutex::default(),
        })
    }

    pub fn plugins_dir(&self) -> &Path {
        &self.plugins_dir
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn config(&self) -> &ReloadConfig {
        &self.config
    }

    /// Reconciles every plugin dir: removed ones first (so a renamed dir frees its name), then
    /// the present ones. With `only_changed`, dirs whose fingerprint is unchanged since their
    /// last reconcile are skipped.
    pub async fn reconcile_all(
        self: &Arc<Self>,
        only_changed: bool,
    ) -> std::io::Result<ReconcileSummary> {
        let present = plugin_dirs(&self.plugins_dir)?;
        let mut summary = ReconcileSummary::default();
        let known: Vec<PathBuf> = self
            .runtime
            .plugins()
            .iter()
            .map(|p| p.dir.clone())
            .chain(
                self.runtime
                    .failures()
                    .into_iter()
                    .map(|f: LoadFailure| f.dir),
            )
            .collect();
        // Present dirs first: a renamed dir then takes its name over with a swap, never a gap.
        for dir in &present {
            if only_changed && self.fingerprint_unchanged(dir) {
                continue;
            }
            summary.outcomes.push(self.reconcile(dir, false).await);
        }
        for dir in known.iter().filter(|d| !present.contains(d)) {
            summary.outcomes.push(self.reconcile(dir, false).await);
        }
        // Forget dirs that are gone, whatever event about them was missed.
        if let Ok(mut prints) = self.fingerprints.lock() {
            prints.retain(|dir, _| present.contains(dir));
        }
        if let Ok(mut locks) = self.dir_locks.lock() {
            // A lock someone holds or waits for stays, so its holder and waiters agree on it.
            locks.retain(|dir, held| present.contains(dir) || Arc::strong_count(held) > 1);
        }
        if let Ok(mut quarantined) = self.quarantined.lock() {
            quarantined.retain(|dir, _| present.contains(dir));
        }
        Ok(summary)
    }

    /// The first load of every plugin dir, while the API already serves: up to `parallelism`
    /// dirs at once (compiling is CPU-bound, so the daemon passes its core count), each marked
    /// as loading from the start so `GET /v1/health` lists the ones still waiting their turn.
    /// Dirs that name the same plugin load one after another in sorted order, so the first dir
    /// keeps the name exactly as a one-by-one load would give it. Ends [`Reloader::is_ready`].
    pub async fn load_initial(
        self: &Arc<Self>,
        parallelism: usize,
    ) -> std::io::Result<ReconcileSummary> {
        let present = match plugin_dirs(&self.plugins_dir) {
            Ok(present) => present,
            Err(error) => {
                self.initial_load_done.store(true, Ordering::Release);
                return Err(error);
            }
        };
        let mut groups: BTreeMap<String, Vec<(PathBuf, FirstLoad)>> = BTreeMap::new();
        for dir in present {
            let mark = self.runtime.begin_first_load(&dir);
            // Grouped by the name the mark read (a broken manifest's is its dir's name: it then
            // merely waits its turn behind a namesake, and fails on its own).
            let key = mark.name().map_or_else(
                || format!("dir:{}", dir.display()),
                |name| format!("name:{name}"),
            );
            groups.entry(key).or_default().push((dir, mark));
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
        let mut loads = tokio::task::JoinSet::new();
        for (_, dirs) in groups {
            let reloader = Arc::clone(self);
            let permits = Arc::clone(&permits);
            loads.spawn(async move {
                let mut outcomes = Vec::with_capacity(dirs.len());
                for (dir, mark) in dirs {
                    // Never closed, so a permit always comes.
                    let _permit = permits.acquire().await.ok();
                    outcomes.push(reloader.reconcile(&dir, false).await);
                    drop(mark);
                }
                outcomes
            });
        }
        let mut summary = ReconcileSummary::default();
        while let Some(joined) = loads.join_next().await {
            match joined {
                Ok(outcomes) => summary.outcomes.extend(outcomes),
                Err(error) => tracing::error!(%error, "a plugin's first load ended abnormally"),
            }
        }
        self.initial_load_done.store(true, Ordering::Release);
        Ok(summary)
    }

    /// Whether the first load of every plugin dir has finished (successfully or not).
    pub fn is_ready(&self) -> bool {
        self.initial_load_done.load(Ordering::Acquire)
    }

    /// The lock that keeps one reconcile of `dir` at a time.
    fn dir_lock(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = evolve_core::sync::lock(&self.dir_locks);
        Arc::clone(locks.entry(dir.to_path_buf()).or_default())
    }

    fn fingerprint_unchanged(&self, dir: &Path) -> bool {
        let now = fingerprint(dir);
        self.fingerprints
            .lock()
            .map(|known| known.get(dir) == Some(&now))
            .unwrap_or(false)
    }

    fn remember_fingerprint(&self, dir: &Path, print: Option<Fingerprint>) {
        if let Ok(mut known) = self.fingerprints.lock() {
            match print {
                Some(print) => known.insert(dir.to_path_buf(), print),
                None => known.remove(dir),
            };
        }
    }

    /// `POST /v1/plugins/{name}/reload`: reconciles the dir the named plugin serves from.
    pub async fn reload_plugin(self: &Arc<Self>, name: &str, force: bool) -> Option<ReloadOutcome> {
        let dir = match self.runtime.get(name) {
            Some(plugin) => plugin.dir.clone(),
            None => {
                self.runtime
                    .failures()
                    .into_iter()
                    .find(|f| f.name == name)?
                    .dir
            }
        };
        Some(self.reconcile(&dir, force).await)
    }
}

/// Subdirectories of `dir` holding a manifest, sorted.
pub fn plugin_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.join(MANIFEST_FILE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Files looked at per plugin dir; a plugin dir is a manifest, a component and perhaps a few
/// assets, so this only stops a runaway tree from making every rescan expensive.
const MAX_FINGERPRINT_FILES: usize = 1_000;

/// Fingerprint of the files in `dir` and its subdirectories (the manifest may put the component
/// in one), editor temp files excluded.
pub(crate) fn fingerprint(dir: &Path) -> Fingerprint {
    let mut print: Fingerprint = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            if print.len() >= MAX_FINGERPRINT_FILES {
                break;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if watcher::is_ignored_name(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let relative = entry
                    .path()
                    .strip_prefix(dir)
                    .map_or(name, |r| r.display().to_string());
                print.push((relative, meta.len(), meta.modified().ok()));
            }
        }
    }
    print.sort();
    print
}
