//! One directory's reconcile, the reload state machine:
//!
//! 1. **load**: read `plugin.toml` and the component, hash them; identical to what serves →
//!    nothing to do (unless forced).
//! 2. **validate**: compile (through the AOT cache), world and version check, limits, grants.
//! 3. **prepare**: pre-instance.
//! 4. **canary**: `describe()` (and `health()` for a meta agent replacing a serving generation)
//!    on a fresh instance of the new generation.
//! 5. **swap**: new calls go to the new generation, atomically.
//! 6. **drain**: calls already admitted to the old generation finish on its code.
//! 7. **retire**: the old generation is dropped.
//!
//! A failure in steps 1-4 (or a name clash at 5) leaves the serving generation untouched and is
//! reported as `plugin.reload_failed`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{Reloader, fingerprint};
use crate::events::{Event, EventKind};
use crate::runtime::manifest::MANIFEST_FILE;
use crate::runtime::{LoadError, Plugin, Runtime};

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
    /// No manifest and nothing loaded from the directory.
    Absent,
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

impl Reloader {
    /// Brings the plugin in `dir` in line with the files there.
    pub async fn reconcile(&self, dir: &Path, force: bool) -> ReloadOutcome {
        let _serial = self.serial.lock().await;
        let runtime = &self.runtime;
        let current = runtime.current_for_dir(dir);

        if !self.plugins_dir.is_dir() {
            // The plugins dir itself is missing (being replaced): a missing manifest means
            // nothing yet, so nothing is unloaded; the watcher reconciles when it is back.
            return ReloadOutcome::Absent;
        }
        if !dir.join(MANIFEST_FILE).is_file() {
            self.remember_fingerprint(dir, None);
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

        let print = fingerprint(dir);
        let mut timings = StepTimings::default();
        // 1. load
        let step = Instant::now();
        let loaded = match runtime.load_files(dir) {
            Ok(loaded) => loaded,
            Err(error) => return self.failed(dir, current.as_deref(), error, print),
        };
        timings.load_us = micros(step);
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
        let plugin = match runtime.prepare(loaded, current.is_some()).await {
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
        let previous = match runtime.swap(Arc::clone(&plugin)) {
            Ok(previous) => previous,
            Err(error) => return self.failed(dir, current.as_deref(), error, print),
        };
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
        // 6-7. drain → retire, off the reconcile path so the next reload need not wait.
        if let Some(old) = previous {
            self.drain_and_retire(old);
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
        self.remember_fingerprint(dir, Some(print));
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
