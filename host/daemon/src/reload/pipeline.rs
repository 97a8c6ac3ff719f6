//! One directory's reconcile, the reload state machine:
//!
//! 1. **load**: read `plugin.toml` and the component, hash them; identical to what serves →
//!    nothing to do (unless forced).
//! 2. **validate**: compile (through the AOT cache), world and version check, limits, grants.
//! 3. **prepare**: pre-instance.
//! 4. **canary**: `describe()` (and `health()` for a meta agent, on a first load as on a
//!    reload) on a fresh instance of the new generation.
//! 5. **swap**: new calls go to the new generation, atomically.
//! 6. **drain**: calls already admitted to the old generation finish on its code.
//! 7. **retire**: the old generation is dropped, once the new one has passed its rollback
//!    window (module `window`); faults within the window serve the old one again instead.
//!
//! A failure in steps 1-4 (or a name clash at 5) leaves the serving generation untouched and is
//! reported as `plugin.reload_failed`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::window::{self, ServingGeneration, Window, WindowVerdict};
use super::{Reloader, fingerprint};
use evolve_core::events::{Event, EventKind};
use evolve_runtime::manifest::MANIFEST_FILE;
use evolve_runtime::{LoadError, Plugin, ReloadRecord, Runtime};

/// Longest a replaced generation is tracked while draining. Each admitted call is bounded by
/// its own deadline; this only stops a stuck count from keeping a generation forever.
const MAX_DRAIN: Duration = Duration::from_secs(600);

/// Time spent in each step of a successful (re)load.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepTimings {
    pub load_us: u64,
    /// Includes compilation on an AOT cache miss.
    pub validate_prepare_us: u64,
    pub canary_us: u64,
    pub swap_us: u64,
}

/// What reconciling one directory did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Loaded {
        plugin: String,
        generation: u64,
        timings: StepTimings,
    },
    Reloaded {
        plugin: String,
        from_generation: u64,
        generation: u64,
        timings: StepTimings,
    },
    Unchanged {
        plugin: String,
        generation: u64,
    },
    Unloaded {
        plugin: String,
        generation: u64,
    },
    Failed {
        plugin: String,
        code: &'static str,
        reason: String,
        /// The generation still serving, if any.
        serving_generation: Option<u64>,
    },
    /// These exact files were rolled back before; not tried until they change.
    Quarantined {
        plugin: String,
        serving_generation: Option<u64>,
    },
    /// No manifest and nothing loaded from the directory.
    Absent,
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

impl Reloader {
    /// Brings the plugin in `dir` in line with the files there.
    pub async fn reconcile(self: &Arc<Self>, dir: &Path, force: bool) -> ReloadOutcome {
        let dir_lock = self.dir_lock(dir);
        let _one_at_a_time = dir_lock.lock().await;
        let runtime = &self.runtime;
        let current = runtime.current_for_dir(dir);

        if !self.plugins_dir.is_dir() {
            // The plugins dir itself is missing (being replaced): a missing manifest means
            // nothing yet, so nothing is unloaded; the watcher reconciles when it is back.
            return ReloadOutcome::Absent;
        }
        if !dir.join(MANIFEST_FILE).is_file() {
            self.remember_fingerprint(dir, None);
            if let Ok(mut quarantined) = self.quarantined.lock() {
                quarantined.remove(dir);
            }
            runtime.forget_failure(dir);
            let Some(old) = runtime.unload_dir(dir) else {
                return ReloadOutcome::Absent;
            };
            let outcome = ReloadOutcome::Unloaded {
                plugin: old.name().to_string(),
                generation: old.generation,
            };
            self.events.publish(Event::new(
                EventKind::PluginUnloaded,
                old.name(),
                json!({ "generation": old.generation, "dir": dir.display().to_string() }),
            ));
            self.drain_and_retire(old);
            return outcome;
        }

        // Until it serves (or fails), calls by its name are told it is loading.
        let _first_load = current.is_none().then(|| runtime.begin_first_load(dir));
        let print = fingerprint(dir);
        let mut timings = StepTimings::default();
        // 1. load
        let step = Instant::now();
        let loaded = match runtime.load_files(dir) {
            Ok(loaded) => loaded,
            Err(error) => return self.failed(dir, current.as_deref(), error, print),
        };
        timings.load_us = micros(step);
        if !force && self.is_quarantined(dir, loaded.digest()) {
            self.remember_fingerprint(dir, Some(print));
            return ReloadOutcome::Quarantined {
                plugin: loaded.name().to_string(),
                serving_generation: current.map(|c| c.generation),
            };
        }
        if force && let Ok(mut quarantined) = self.quarantined.lock() {
            quarantined.remove(dir);
        }
        if let Some(current) = &current
            && !force
            && current.digest() == loaded.digest()
        {
            self.remember_fingerprint(dir, Some(print));
            return ReloadOutcome::Unchanged {
                plugin: current.name().to_string(),
                generation: current.generation,
            };
        }
        // 2-4. validate → prepare → canary
        let step = Instant::now();
        // A first load passes the same canary as a reload: describe() and health().
        let plugin = match runtime.prepare(loaded, true).await {
            Ok(plugin) => Arc::new(plugin),
            Err(error) => return self.failed(dir, current.as_deref(), error, print),
        };
        let prepared = micros(step);
        // The new generation's only calls so far are the canary's, so its busy time is theirs.
        timings.canary_us = plugin
            .stats
            .busy_us
            .load(std::sync::atomic::Ordering::Relaxed);
        timings.validate_prepare_us = prepared.saturating_sub(timings.canary_us);
        // 5. swap
        let step = Instant::now();
        let (previous, displaced) = match runtime.swap(Arc::clone(&plugin)) {
            Ok(swapped) => (swapped.previous, swapped.displaced),
            Err(error) => return self.failed(dir, current.as_deref(), error, print),
        };
        for old in displaced {
            // The manifest renamed the plugin: the old name is gone.
            self.events.publish(Event::new(
                EventKind::PluginUnloaded,
                old.name(),
                json!({ "generation": old.generation, "dir": dir.display().to_string(), "renamed_to": plugin.name() }),
            ));
            self.drain_and_retire(old);
        }
        timings.swap_us = micros(step);
        self.remember_fingerprint(dir, Some(print));

        let outcome = match &previous {
            Some(old) => ReloadOutcome::Reloaded {
                plugin: plugin.name().to_string(),
                from_generation: old.generation,
                generation: plugin.generation,
                timings,
            },
            None => ReloadOutcome::Loaded {
                plugin: plugin.name().to_string(),
                generation: plugin.generation,
                timings,
            },
        };
        let kind = if previous.is_some() {
            EventKind::PluginReloaded
        } else {
            EventKind::PluginLoaded
        };
        self.events.publish(Event::new(
            kind,
            plugin.name(),
            json!({
                "generation": plugin.generation,
                "from_generation": previous.as_ref().map(|p| p.generation),
                "sha256": plugin.sha256,
                "aot": plugin.cache,
                "dir": plugin.dir.display().to_string(),
                "timings": timings,
            }),
        ));
        // 6-7. drain → (watch window) → retire, off the reconcile path so the next reload
        // need not wait.
        if let Some(old) = previous {
            self.watch_then_retire(dir.to_path_buf(), plugin, old);
        }
        outcome
    }

    fn failed(
        &self,
        dir: &Path,
        current: Option<&Plugin>,
        error: LoadError,
        print: super::Fingerprint,
    ) -> ReloadOutcome {
        self.runtime.record_failure(dir, &error);
        // Remembered, so a rescan does not retry the same broken files; any change retries.
        // Not for a name clash: that clears when the other dir goes, with these files as they are.
        let clash = matches!(error, LoadError::DuplicateName { .. });
        self.remember_fingerprint(dir, (!clash).then_some(print));
        let plugin = current.map_or_else(
            || {
                dir.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            },
            |c| c.name().to_string(),
        );
        let serving_generation = current.map(|c| c.generation);
        self.events.publish(Event::new(
            EventKind::PluginReloadFailed,
            &plugin,
            json!({
                "code": error.code(),
                "reason": error.to_string(),
                "serving_generation": serving_generation,
                "dir": dir.display().to_string(),
            }),
        ));
        ReloadOutcome::Failed {
            plugin,
            code: error.code(),
            reason: error.to_string(),
            serving_generation,
        }
    }

    fn is_quarantined(&self, dir: &Path, digest: &str) -> bool {
        self.quarantined
            .lock()
            .map(|q| q.get(dir).is_some_and(|d| d == digest))
            .unwrap_or(false)
    }

    /// Watches the new generation for the watch window (module `window`), rolling back
    /// to `old` on its verdict; otherwise retires `old` once drained and the window is over.
    fn watch_then_retire(self: &Arc<Self>, dir: PathBuf, new: Arc<Plugin>, old: Arc<Plugin>) {
        let reloader = Arc::clone(self);
        tokio::spawn(async move {
            let window = Window {
                length: Duration::from_secs(reloader.config.watch_window_s),
                rollback_failures: reloader.config.rollback_failures,
            };
            let watched = ServingGeneration {
                runtime: &reloader.runtime,
                plugin: &new,
            };
            if window::watch(&watched, window).await == WindowVerdict::RollBack
                && reloader.roll_back(&dir, &new, &old).await
            {
                return;
            }
            reloader.drain_and_retire(old);
        });
    }

    /// Serves `old` again in place of `new`, quarantining `new`'s files. False when `new` no
    /// longer serves (replaced meanwhile), in which case nothing changes.
    async fn roll_back(&self, dir: &Path, new: &Arc<Plugin>, old: &Arc<Plugin>) -> bool {
        let dir_lock = self.dir_lock(dir);
        let _one_at_a_time = dir_lock.lock().await;
        let serving = self
            .runtime
            .get(new.name())
            .is_some_and(|current| Arc::ptr_eq(&current, new));
        if !serving {
            return false;
        }
        if old.dir != dir {
            // The plugin moved dirs with this reload; the old one's files are gone.
            tracing::warn!(
                plugin = new.name(),
                "not rolling back: the previous generation was served from {}, which the plugin has left",
                old.dir.display()
            );
            return false;
        }
        if old.supervision.view().quarantined {
            // It was itself quarantined when replaced: serve it again only if a canary passes.
            if self.runtime.canary(old, true).await.is_err() {
                tracing::warn!(
                    plugin = new.name(),
                    "not rolling back: the previous generation fails its canary too"
                );
                return false;
            }
            old.supervision.release();
        }
        // Out of the draining set: it serves again.
        self.runtime.retire(old);
        if let Err(error) = self.runtime.swap(Arc::clone(old)) {
            tracing::error!(plugin = new.name(), "rollback failed: {error}");
            return false;
        }
        let failures = new.stats.failed.load(Ordering::Relaxed);
        let last_error = new
            .stats
            .last_error()
            .map_or_else(String::new, |e| e.message);
        let reason = format!(
            "generation {} failed {failures} calls within {} s of its swap; last: {last_error}",
            new.generation, self.config.watch_window_s
        );
        self.runtime.set_last_reload(
            new.name(),
            ReloadRecord::rolled_back(old.generation, &reason),
        );
        if let Ok(mut quarantined) = self.quarantined.lock() {
            quarantined.insert(dir.to_path_buf(), new.digest().to_string());
        }
        self.events.publish(Event::new(
            EventKind::PluginRolledBack,
            new.name(),
            json!({
                "from_generation": new.generation,
                "to_generation": old.generation,
                "failures": failures,
                "reason": reason,
            }),
        ));
        self.events.publish(Event::new(
            EventKind::PluginQuarantined,
            new.name(),
            json!({
                "generation": new.generation,
                "sha256": new.sha256,
                "reason": "rolled back; these files are not tried again until they change",
            }),
        ));
        self.drain_and_retire(Arc::clone(new));
        true
    }

    fn drain_and_retire(&self, old: Arc<Plugin>) {
        let runtime: Runtime = self.runtime.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let drained = old.drained(MAX_DRAIN).await;
            runtime.retire(&old);
            events.publish(Event::new(
                EventKind::PluginRetired,
                old.name(),
                json!({
                    "generation": old.generation,
                    "drain_ms": started.elapsed().as_millis() as u64,
                    "drained": drained,
                }),
            ));
        });
    }
}
