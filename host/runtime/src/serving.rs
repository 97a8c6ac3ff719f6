//! The runtime's side of a plugin's lifecycle, and which generation serves under each name.
//!
//! A (re)load runs load → validate → prepare (in [`crate::plugin`]) → canary, then serve
//! ([`Runtime::swap`]); what it replaces drains and is retired. Each attempt leaves a
//! [`ReloadRecord`], and a directory that never loaded is kept as a [`LoadFailure`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};
use evolve_core::events::{Event, EventKind};
use evolve_core::sync::{lock, read, write};
use serde::Serialize;

use crate::bindings::types::HealthStatus;
use crate::error::LoadError;
use crate::manifest::{MANIFEST_FILE, Manifest, PluginKind};
use crate::plugin::{Answer, Call, LoadEnv, Loaded, Plugin};
use crate::state::SnapshotSource;
use crate::{Runtime, Slot};

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

/// A plugin directory whose first load is under way: nothing serves from it yet, and calls
/// by its name are told to retry rather than that it does not exist.
#[derive(Debug, Clone, Serialize)]
pub struct LoadingPlugin {
    /// The plugin's name when its manifest parses, else the directory name.
    pub name: String,
    pub dir: PathBuf,
    pub since: DateTime<Utc>,
}

/// Keeps a directory marked as loading while held; see [`Runtime::begin_first_load`].
#[must_use = "the directory stops being marked as loading when this is dropped"]
pub struct FirstLoad {
    runtime: Runtime,
    dir: PathBuf,
    /// The name the directory is listed under, when this call read it.
    name: Option<String>,
    /// False when an outer mark already covered the directory: only the first one unmarks.
    marked: bool,
}

impl FirstLoad {
    /// The plugin's name (from its manifest, else the directory's) when this mark read it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl Drop for FirstLoad {
    fn drop(&mut self) {
        if self.marked {
            write(&self.runtime.shared.loading).remove(&self.dir);
        }
    }
}

impl std::fmt::Debug for FirstLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstLoad")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
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
            grant_policy: &shared.grant_policy,
            snapshot_source: Arc::downgrade(&self.shared) as Weak<dyn SnapshotSource>,
            memory_budget_mb: shared.capacity.memory.total_mb(),
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
        let pool = &self.shared.capacity;
        let failed = |e| LoadError::Canary {
            plugin: plugin.name().to_string(),
            source: Box::new(e),
        };
        let report = plugin.probe(pool, Call::Describe).await.map_err(failed)?;
        if let Answer::Described {
            description,
            claimed_name,
        } = report.value
        {
            let warning = claimed_name.clone();
            // Warned once per generation: later canaries (a quarantine's, a rollback's) find
            // the description already recorded.
            if plugin.set_description(description, claimed_name)
                && let Some(claimed) = warning
            {
                self.shared.events.publish(Event::new(
                    EventKind::PluginNameMismatch,
                    plugin.name(),
                    serde_json::json!({
                        "generation": plugin.generation,
                        "sha256": plugin.sha256,
                        "claimed_name": claimed,
                        "message": format!(
                            "describe() names this plugin `{claimed}`; it is served as `{}`, its manifest name",
                            plugin.name()
                        ),
                    }),
                ));
            }
        }
        if check_health && plugin.kind() == PluginKind::MetaAgent {
            let report = plugin.probe(pool, Call::Health).await.map_err(failed)?;
            if let Answer::Health(health) = report.value
                && health.status == HealthStatus::Unhealthy
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
            if other.dir != plugin.dir && other.dir.join(MANIFEST_FILE).is_file() {
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
        let name = name_of_dir(dir);
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

    /// Marks `dir` as loading for the first time until the returned guard is dropped, so the
    /// API and callers see "still loading" instead of "no such plugin". A directory that a
    /// plugin already serves from is not marked: its serving generation answers meanwhile.
    pub fn begin_first_load(&self, dir: &Path) -> FirstLoad {
        let unmarked = |name| FirstLoad {
            runtime: self.clone(),
            dir: dir.to_path_buf(),
            name,
            marked: false,
        };
        let serving = read(&self.shared.plugins)
            .values()
            .any(|slot| slot.current.dir == dir);
        if serving || read(&self.shared.loading).contains_key(dir) {
            // Already covered: no manifest read for a name nobody will show.
            return unmarked(None);
        }
        let name = name_of_dir(dir);
        let mut loading = write(&self.shared.loading);
        if loading.contains_key(dir) {
            return unmarked(Some(name));
        }
        loading.insert(
            dir.to_path_buf(),
            LoadingPlugin {
                name: name.clone(),
                dir: dir.to_path_buf(),
                since: Utc::now(),
            },
        );
        FirstLoad {
            runtime: self.clone(),
            dir: dir.to_path_buf(),
            name: Some(name),
            marked: true,
        }
    }

    /// Directories whose first load is under way.
    pub fn loading(&self) -> Vec<LoadingPlugin> {
        read(&self.shared.loading).values().cloned().collect()
    }

    /// When the first load of a plugin named `name` began, while it is under way.
    pub fn loading_since(&self, name: &str) -> Option<DateTime<Utc>> {
        read(&self.shared.loading)
            .values()
            .find(|entry| entry.name == name)
            .map(|entry| entry.since)
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
}

/// The plugin's name from the manifest in `dir`, else the directory's name (the manifest is
/// what failed).
fn name_of_dir(dir: &Path) -> String {
    Manifest::load(dir).map(|m| m.name).unwrap_or_else(|_| {
        dir.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    })
}
