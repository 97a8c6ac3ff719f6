//! The model registry: models with immutable numbered versions, aliases with an append-only
//! history and rollback, performance series, explained best-model selection, backups.
//!
//! | module | concern |
//! |---|---|
//! | [`store`] | the SQLite file: safe open, WAL + `synchronous = FULL`, schema migrations |
//! | [`models`] | models and versions: records, validation, SQL |
//! | [`aliases`] | alias moves, their history, rollback |
//! | [`performance`] | metric points: record, history, aggregates, the in-memory series index |
//! | [`scoring`] | scoring policies and the explained best-model ranking |
//! | [`backup`] | online backup / restore / keep-N, JSON export and import |
//! | [`maintenance`] | background work: the inventory refresh and scheduled backups |
//! | [`error`] | [`DatabaseError`], [`RegistryError`] |
//!
//! [`Registry`] is the one entry point. Its methods are synchronous (SQLite): async callers run
//! them on a blocking thread. One connection behind a mutex serialises writers; every write is
//! one transaction, and a method returns only after it committed (durable: see [`store`]).
//! The inventory view for plugins is a snapshot refreshed by [`Registry::refresh_inventory`],
//! so guest calls never wait on the store.

pub mod aliases;
pub mod backup;
pub mod error;
pub mod maintenance;
pub mod models;
pub mod performance;
pub mod scoring;
pub mod status;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};

pub use self::aliases::{Alias, AliasAction, AliasMove, MoveContext};
pub use self::backup::{BackupInfo, RegistryExport};
pub use self::error::{DatabaseError, RegistryError};
pub use self::models::{Model, ModelFilter, NewModel, NewVersion, Version, VersionStatus};
use self::performance::SeriesIndex;
pub use self::performance::{HistoryQuery, NewPoint, PerformanceHistory};
use self::scoring::Candidate;
pub use self::scoring::{BestModelAnswer, ScoringPolicy};
pub use self::status::{IntegrityRecord, StoreStatus};

/// A model as the plugins' inventory lists it (the daemon converts it to the WIT
/// `model-summary`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub task_type: String,
    pub latest_version: u32,
    /// Alias name → the version it points at.
    pub aliases: BTreeMap<String, u32>,
    pub tags: Vec<String>,
}

/// The best model of one task type under the default policy, for the plugins' inventory (the
/// daemon converts it to the WIT `model-choice`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    pub task_type: String,
    pub name: String,
    pub version: u32,
    pub score: f64,
    /// Why this model won, for humans.
    pub reason: String,
}

/// Most models the plugin inventory lists (a guest copies the whole list per call).
pub const MAX_INVENTORY_MODELS: usize = 1_000;

pub(crate) fn to_millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What a registry needs to run; built from the `[registry]` config section.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    pub db_path: PathBuf,
    pub backup_dir: PathBuf,
    /// Backups kept; older ones are removed after each new one.
    pub backup_keep: u32,
    /// Most points in one recording batch.
    pub max_batch_points: u32,
    /// The policy used when a query names none.
    pub default_policy: String,
    pub policies: BTreeMap<String, ScoringPolicy>,
}

impl RegistryConfig {
    /// A registry in `dir` with the default policy and limits (tests, benchmarks).
    pub fn in_dir(dir: &std::path::Path) -> RegistryConfig {
        RegistryConfig {
            db_path: dir.join("registry.db"),
            backup_dir: dir.join("backups"),
            backup_keep: 24,
            max_batch_points: 10_000,
            default_policy: scoring::DEFAULT_POLICY.into(),
            policies: scoring::with_default(BTreeMap::new()),
        }
    }
}

/// A batch was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordReceipt {
    pub model: String,
    pub recorded: u64,
}

/// Where an alias points after a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasOutcome {
    pub alias: Alias,
    /// The history entry written; `None` when the alias already pointed there.
    pub moved: Option<AliasMove>,
}

/// The registry's part of the daemon's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryHealth {
    pub ok: bool,
    pub path: PathBuf,
    pub schema_version: i64,
    /// `PRAGMA integrity_check`: `["ok"]` or the problems.
    pub integrity_check: Vec<String>,
    /// When that check ran (it is reused for up to [`status::INTEGRITY_CHECK_MAX_AGE`]).
    pub integrity_checked_at: DateTime<Utc>,
    pub models: u64,
    pub versions: u64,
    pub points: u64,
    pub db_bytes: u64,
    pub wal_bytes: u64,
    pub backup_dir: PathBuf,
    pub backups: usize,
    pub last_backup: Option<BackupInfo>,
    /// Plugins' inventory view reflects every committed write (`false` for up to a second
    /// after a change).
    pub inventory_current: bool,
}

struct State {
    conn: Connection,
    /// Task type → its non-archived versions, ordered by model name and version.
    candidates: BTreeMap<String, Vec<Candidate>>,
    index: SeriesIndex,
}

#[derive(Debug, Default)]
struct InventoryView {
    models: Vec<ModelSummary>,
    best: Vec<ModelChoice>,
}

pub struct Registry {
    config: RegistryConfig,
    state: Mutex<State>,
    inventory: RwLock<Arc<InventoryView>>,
    /// Committed writes since open; the inventory view is current when it reflects them all.
    changes: AtomicU64,
    /// The value of `changes` the published inventory view was computed after.
    inventory_reflects: AtomicU64,
    /// When the store was opened (it passed `quick_check` then), for the health view.
    opened_at: DateTime<Utc>,
    /// The last full `integrity_check`'s outcome, for the health view (see [`status`]).
    last_integrity: Mutex<Option<IntegrityRecord>>,
    /// The check `GET /v1/registry` serves until it is too old (see [`status`]).
    integrity_cache: Mutex<Option<status::CachedIntegrity>>,
    /// Restores and imports so far: each replaces the content a cached check read.
    replaced: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("db_path", &self.config.db_path)
            .finish_non_exhaustive()
    }
}

fn load_candidates(conn: &Connection) -> Result<BTreeMap<String, Vec<Candidate>>, RegistryError> {
    let mut statement = conn.prepare(
        "SELECT m.task_type, v.id, m.name, v.version, v.created_at FROM versions v
         JOIN models m ON m.id = v.model_id WHERE v.status != 'archived'
         ORDER BY m.name, v.version",
    )?;
    let mut candidates: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        candidates.entry(row.get(0)?).or_default().push(Candidate {
            version_id: row.get(1)?,
            model: row.get(2)?,
            version: row.get(3)?,
            created_at: row.get(4)?,
        });
    }
    Ok(candidates)
}

impl Registry {
    /// Opens (creating) the store at `config.db_path` and loads the series index. A foreign or
    /// damaged file is refused, untouched, with how to restore.
    pub fn open(config: RegistryConfig) -> Result<Registry, RegistryError> {
        if let Some(dir) = config
            .db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| DatabaseError::Io {
                what: "cannot create directory",
                path: dir.to_path_buf(),
                error: source,
            })?;
        }
        let hint = store::restore_hint(&config.db_path, &config.backup_dir);
        let conn = store::open(&config.db_path, &hint)?;
        let candidates = load_candidates(&conn)?;
        let index = SeriesIndex::load(&conn)?;
        let registry = Registry {
            config,
            state: Mutex::new(State {
                conn,
                candidates,
                index,
            }),
            inventory: RwLock::new(Arc::default()),
            // One pending change, so the first refresh computes the view of the opened store.
            changes: AtomicU64::new(1),
            inventory_reflects: AtomicU64::new(0),
            opened_at: Utc::now(),
            last_integrity: Mutex::new(None),
            integrity_cache: Mutex::new(None),
            replaced: AtomicU64::new(0),
        };
        registry.refresh_inventory();
        Ok(registry)
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left no open transaction behind (it rolled back on
        // drop), so the state is still consistent.
        evolve_core::sync::lock(&self.state)
    }

    /// Runs `write` in one IMMEDIATE transaction and commits; the registry is unchanged on error.
    fn write<T>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, RegistryError>,
    ) -> Result<(T, MutexGuard<'_, State>), RegistryError> {
        let mut state = self.lock();
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = write(&tx)?;
        tx.commit()?;
        self.changes.fetch_add(1, Ordering::AcqRel);
        Ok((value, state))
    }

    fn reload_candidates(state: &mut State) -> Result<(), RegistryError> {
        state.candidates = load_candidates(&state.conn)?;
        Ok(())
    }

    pub fn register_model(
        &self,
        model: NewModel,
        actor: Option<&str>,
    ) -> Result<Model, RegistryError> {
        let model = model.validated()?;
        let now = Utc::now();
        let (_, state) = self.write(|tx| models::insert_model(tx, &model, now, actor))?;
        models::get_model(&state.conn, &model.name)
    }

    pub fn model(&self, name: &str) -> Result<Model, RegistryError> {
        models::get_model(&self.lock().conn, name)
    }

    pub fn models(&self, filter: &ModelFilter) -> Result<Vec<Model>, RegistryError> {
        models::list_models(&self.lock().conn, filter, models::MAX_LIST_LIMIT)
    }

    pub fn create_version(
        &self,
        model: &str,
        version: NewVersion,
        actor: Option<&str>,
    ) -> Result<Version, RegistryError> {
        let version = version.validated()?;
        let now = Utc::now();
        let ((_, number), mut state) = self.write(|tx| {
            let id = models::model_id(tx, model)?;
            models::insert_version(tx, id, &version, now, actor)
        })?;
        Self::reload_candidates(&mut state)?;
        models::get_version(&state.conn, model, number)
    }

    pub fn versions(&self, model: &str) -> Result<Vec<Version>, RegistryError> {
        models::list_versions(&self.lock().conn, model)
    }

    pub fn version(&self, model: &str, version: u32) -> Result<Version, RegistryError> {
        models::get_version(&self.lock().conn, model, version)
    }

    /// Changes a version's lifecycle status (the one mutable field of a version).
    pub fn set_version_status(
        &self,
        model: &str,
        version: u32,
        status: VersionStatus,
    ) -> Result<Version, RegistryError> {
        let (_, mut state) = self.write(|tx| models::set_status(tx, model, version, status))?;
        Self::reload_candidates(&mut state)?;
        models::get_version(&state.conn, model, version)
    }

    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        context: &MoveContext<'_>,
    ) -> Result<AliasOutcome, RegistryError> {
        let (moved, state) =
            self.write(|tx| aliases::set_alias(tx, model, alias, version, context))?;
        Ok(AliasOutcome {
            alias: aliases::resolve(&state.conn, model, alias)?,
            moved,
        })
    }

    pub fn delete_alias(
        &self,
        model: &str,
        alias: &str,
        context: &MoveContext<'_>,
    ) -> Result<AliasMove, RegistryError> {
        Ok(self
            .write(|tx| aliases::delete_alias(tx, model, alias, context))?
            .0)
    }

    /// Moves `alias` back to where it pointed before its latest move not yet undone.
    pub fn rollback_alias(
        &self,
        model: &str,
        alias: &str,
        context: &MoveContext<'_>,
    ) -> Result<AliasMove, RegistryError> {
        Ok(self
            .write(|tx| aliases::rollback_alias(tx, model, alias, context))?
            .0)
    }

    pub fn alias(&self, model: &str, alias: &str) -> Result<Alias, RegistryError> {
        aliases::resolve(&self.lock().conn, model, alias)
    }

    pub fn aliases(&self, model: &str) -> Result<Vec<Alias>, RegistryError> {
        aliases::list_aliases(&self.lock().conn, model)
    }

    pub fn alias_history(&self, model: &str, alias: &str) -> Result<Vec<AliasMove>, RegistryError> {
        aliases::alias_history(&self.lock().conn, model, alias)
    }

    /// Records a batch of points in one transaction: all or none.
    pub fn record(&self, model: &str, points: &[NewPoint]) -> Result<RecordReceipt, RegistryError> {
        let now = Utc::now();
        let max = self.config.max_batch_points as usize;
        let (bound, mut state) = self.write(|tx| {
            let bound = performance::bind_batch(tx, model, points, now, max)?;
            performance::insert_points(tx, &bound)?;
            Ok(bound)
        })?;
        state.index.add(&bound);
        Ok(RecordReceipt {
            model: model.to_string(),
            recorded: bound.len() as u64,
        })
    }

    pub fn history(
        &self,
        model: &str,
        query: &HistoryQuery,
    ) -> Result<PerformanceHistory, RegistryError> {
        performance::history(&self.lock().conn, model, query, Utc::now())
    }

    /// The names and definitions of the policies this registry knows.
    pub fn policies(&self) -> &BTreeMap<String, ScoringPolicy> {
        &self.config.policies
    }

    /// The best model of `task_type` under `policy` (the configured default when `None`), with
    /// every candidate's score and why the winner won. For other subsystems; no HTTP involved.
    pub fn best_for_task(
        &self,
        task_type: &str,
        policy: Option<&str>,
    ) -> Result<BestModelAnswer, RegistryError> {
        self.best_for_task_at(task_type, policy, Utc::now())
    }

    /// [`Registry::best_for_task`] evaluated as of `now` (deterministic for tests and replays).
    pub fn best_for_task_at(
        &self,
        task_type: &str,
        policy: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<BestModelAnswer, RegistryError> {
        let task = models::normalise_task_type(task_type)?;
        let name = policy.unwrap_or(&self.config.default_policy);
        let Some(definition) = self.config.policies.get(name) else {
            return Err(RegistryError::PolicyNotFound {
                name: name.to_string(),
                known: self
                    .config
                    .policies
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let state = self.lock();
        let empty = Vec::new();
        let candidates = state.candidates.get(&task).unwrap_or(&empty);
        scoring::rank(
            &task,
            name,
            definition,
            candidates,
            &state.index,
            to_millis(now),
        )
    }

    /// Writes an online backup now; keeps the newest `backup_keep`.
    pub fn backup_now(&self) -> Result<BackupInfo, RegistryError> {
        let state = self.lock();
        Ok(backup::backup(
            &state.conn,
            &self.config.backup_dir,
            self.config.backup_keep,
            Utc::now(),
            "",
        )?)
    }

    pub fn backups(&self) -> Result<Vec<BackupInfo>, RegistryError> {
        Ok(backup::list(&self.config.backup_dir)?)
    }

    /// Replaces the registry with the backup named `file` (in the backup dir) after checking
    /// it; the current content is first saved as a backup labelled `-pre-restore`.
    pub fn restore(&self, file: &str) -> Result<BackupInfo, RegistryError> {
        let source = backup::find(&self.config.backup_dir, file)?;
        store::check_candidate(&source)?;
        let mut state = self.lock();
        let saved = backup::backup(
            &state.conn,
            &self.config.backup_dir,
            // The pre-restore copy must survive this rotation even with keep = 1.
            self.config.backup_keep.max(2),
            Utc::now(),
            "-pre-restore",
        )?;
        backup::restore_into(&mut state.conn, &source)?;
        state.candidates = load_candidates(&state.conn)?;
        state.index = SeriesIndex::load(&state.conn)?;
        drop(state);
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.replaced.fetch_add(1, Ordering::AcqRel);
        Ok(saved)
    }

    /// The whole registry as one document, in memory (tests, benchmarks, small registries);
    /// the API streams it with [`Registry::export_chunks`].
    pub fn export(&self) -> Result<RegistryExport, RegistryError> {
        backup::export(&self.lock().conn, Utc::now())
    }

    /// The document [`Registry::export`] builds, as JSON chunks of about
    /// [`backup::EXPORT_CHUNK_BYTES`] given to `emit` (which answers `false` to stop early).
    /// It reads one snapshot on a read-only connection of its own, so the export is consistent
    /// and neither holds the writer's lock nor waits for it.
    pub fn export_chunks(
        &self,
        now: DateTime<Utc>,
        emit: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<(), RegistryError> {
        let conn = Connection::open_with_flags(
            &self.config.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A deferred transaction: its first read fixes the snapshot every later read sees.
        conn.execute_batch("BEGIN")?;
        backup::export_chunks(&conn, now, emit)?;
        conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Imports a whole export into this (empty) registry in one transaction.
    pub fn import(&self, document: &RegistryExport) -> Result<u64, RegistryError> {
        let (points, mut state) = self.write(|tx| backup::import(tx, document))?;
        state.candidates = load_candidates(&state.conn)?;
        state.index = SeriesIndex::load(&state.conn)?;
        self.replaced.fetch_add(1, Ordering::AcqRel);
        Ok(points)
    }

    /// (models, versions, metric points), cheaply.
    pub fn counts(&self) -> Result<(u64, u64, u64), RegistryError> {
        let state = self.lock();
        let count = |table: &str| -> Result<u64, RegistryError> {
            Ok(state
                .conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                    row.get(0)
                })?)
        };
        Ok((count("models")?, count("versions")?, state.index.points()))
    }

    /// Counts, sizes, backups and a full `integrity_check`: at most
    /// [`status::INTEGRITY_CHECK_MAX_AGE`] old (a newer check is not run before, except after a
    /// restore or an import), run beside the writer rather than under its lock.
    pub fn health(&self) -> Result<RegistryHealth, RegistryError> {
        self.health_at(std::time::Instant::now())
    }

    /// [`Registry::health`] as of `now` on the clock the check's age is measured by (tests).
    pub fn health_at(&self, now: std::time::Instant) -> Result<RegistryHealth, RegistryError> {
        let (models, versions, points) = self.counts()?;
        let (integrity, integrity_checked_at) = self.integrity_at(now)?;
        let schema_version = self
            .lock()
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let backups = self.backups()?;
        Ok(RegistryHealth {
            ok: integrity == ["ok"],
            path: self.config.db_path.clone(),
            schema_version,
            integrity_check: integrity,
            integrity_checked_at,
            models,
            versions,
            points,
            db_bytes: size(&self.config.db_path),
            wal_bytes: size(&store::sidecar_files(&self.config.db_path)[0]),
            backup_dir: self.config.backup_dir.clone(),
            backups: backups.len(),
            last_backup: backups.into_iter().next(),
            inventory_current: self.inventory_current(),
        })
    }

    /// Recomputes the plugin inventory's view if anything changed since the last refresh.
    pub fn refresh_inventory(&self) {
        // Read before computing: a write that lands meanwhile stays pending for the next refresh.
        let changes = self.changes.load(Ordering::Acquire);
        if self.inventory_reflects.load(Ordering::Acquire) == changes {
            return;
        }
        let view = match self.compute_inventory() {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(%error, "registry inventory refresh failed");
                return;
            }
        };
        *evolve_core::sync::write(&self.inventory) = Arc::new(view);
        self.inventory_reflects.store(changes, Ordering::Release);
    }

    /// Whether plugins' inventory view reflects every committed write (it is refreshed every
    /// second after a change), so a client that seeded the registry can wait for plugins to see it.
    pub fn inventory_current(&self) -> bool {
        self.inventory_reflects.load(Ordering::Acquire) == self.changes.load(Ordering::Acquire)
    }

    fn compute_inventory(&self) -> Result<InventoryView, RegistryError> {
        let models = self.models(&ModelFilter {
            limit: Some(MAX_INVENTORY_MODELS as u32),
            ..Default::default()
        })?;
        let tasks: Vec<String> = self.lock().candidates.keys().cloned().collect();
        let now = Utc::now();
        let mut best = Vec::new();
        for task in tasks {
            if let Ok(answer) = self.best_for_task_at(&task, None, now) {
                best.push(ModelChoice {
                    task_type: answer.task_type,
                    name: answer.winner.model,
                    version: answer.winner.version,
                    score: answer.winner.score,
                    reason: answer.explanation,
                });
            }
        }
        Ok(InventoryView {
            models: models
                .into_iter()
                .map(|m| ModelSummary {
                    name: m.name,
                    task_type: m.task_type,
                    latest_version: m.latest_version,
                    aliases: m.aliases.into_iter().collect(),
                    tags: m.tags,
                })
                .collect(),
            best,
        })
    }

    /// Models for the plugin inventory (at most [`MAX_INVENTORY_MODELS`]); from memory.
    pub fn inventory_models(&self) -> Vec<ModelSummary> {
        evolve_core::sync::read(&self.inventory).models.clone()
    }

    /// Best model per task type under the default policy, for the plugin inventory; from memory.
    pub fn inventory_best(&self) -> Vec<ModelChoice> {
        evolve_core::sync::read(&self.inventory).best.clone()
    }
}

#[cfg(test)]
mod tests;
