//! Online backups through SQLite's backup API (keep the newest N), restore with checks, and the
//! JSON export / import of the whole registry.
//!
//! A backup is written to a hidden partial file, fsynced, renamed into place and the directory
//! fsynced, then checked with `integrity_check`; so a backup file that exists under its final
//! name is whole. Names sort by time: `registry-20261124T121500.123Z.db`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aliases::{self, Alias, AliasMove, check_alias_name};
use super::error::{DatabaseError, RegistryError};
use super::models::{self, NewModel, Version, VersionStatus, check_name};
use super::performance::Point;
use super::store;
use super::to_millis;

/// Pages copied per backup step. The registry lock is held for the whole copy, so there is no
/// pause between steps; large steps keep the number of SQLite calls small.
const PAGES_PER_STEP: i32 = 4_096;
const BACKUP_PREFIX: &str = "registry-";
const BACKUP_SUFFIX: &str = ".db";
/// Length of the time stamp in a backup's name, `20261124T121500.123`.
const STAMP_LEN: usize = 19;
/// `format` of an export document.
pub const EXPORT_FORMAT: &str = "evolve-model-registry";
/// Version of the export document's shape.
pub const EXPORT_VERSION: u32 = 1;

/// A backup file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub file: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub created_at: Option<DateTime<Utc>>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DatabaseError + 'a {
    move |source| DatabaseError::Io {
        what,
        path: path.to_path_buf(),
        error: source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), DatabaseError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync directory", dir))
}

/// Copies the live database into `dir` (see the module docs), then keeps the newest `keep`.
pub(crate) fn backup(
    conn: &Connection,
    dir: &Path,
    keep: u32,
    now: DateTime<Utc>,
    label: &str,
) -> Result<BackupInfo, DatabaseError> {
    std::fs::create_dir_all(dir).map_err(io("cannot create backup directory", dir))?;
    let file = format!(
        "{BACKUP_PREFIX}{}{label}{BACKUP_SUFFIX}",
        now.format("%Y%m%dT%H%M%S%.3fZ")
    );
    let path = dir.join(&file);
    let partial = dir.join(format!(".{file}.partial"));
    let _ = std::fs::remove_file(&partial);
    {
        let mut target = Connection::open(&partial)?;
        Backup::new(conn, &mut target)?.run_to_completion(PAGES_PER_STEP, Duration::ZERO, None)?;
        target.execute_batch("PRAGMA journal_mode = DELETE")?;
    }
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io("cannot sync backup", &partial))?;
    std::fs::rename(&partial, &path).map_err(io("cannot rename backup into", &path))?;
    sync_dir(dir)?;
    if let Err(error) = store::check_candidate(&path) {
        let _ = std::fs::remove_file(&path);
        return Err(error);
    }
    prune(dir, keep)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(BackupInfo {
        file,
        path,
        bytes,
        created_at: Some(now),
    })
}

/// Backups in `dir`, newest first. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<BackupInfo>, DatabaseError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot list backups in", dir)(e)),
    };
    let mut backups = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(BACKUP_PREFIX) && name.ends_with(BACKUP_SUFFIX)) {
            continue;
        }
        // Any file may sit in the directory: `get` never splits a character.
        let created_at = name
            .get(BACKUP_PREFIX.len()..BACKUP_PREFIX.len() + STAMP_LEN)
            .and_then(|stamp| {
                chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3f").ok()
            })
            .map(|t| t.and_utc());
        backups.push(BackupInfo {
            bytes: entry.metadata().map(|m| m.len()).unwrap_or(0),
            path: entry.path(),
            file: name,
            created_at,
        });
    }
    backups.sort_by(|a, b| b.file.cmp(&a.file));
    Ok(backups)
}

fn prune(dir: &Path, keep: u32) -> Result<(), DatabaseError> {
    for old in list(dir)?.into_iter().skip(keep.max(1) as usize) {
        std::fs::remove_file(&old.path).map_err(io("cannot remove old backup", &old.path))?;
    }
    Ok(())
}

/// Finds a backup by its file name in `dir` (a bare name: no path may escape the directory).
pub fn find(dir: &Path, file: &str) -> Result<PathBuf, RegistryError> {
    if file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(RegistryError::invalid(
            "backup",
            "give the backup's file name as listed by `evolve model backups`, not a path",
        ));
    }
    list(dir)?
        .into_iter()
        .find(|b| b.file == file)
        .map(|b| b.path)
        .ok_or_else(|| {
            RegistryError::BackupNotFound(format!(
                "no backup named {file} in {}; `evolve model backups` lists them",
                dir.display()
            ))
        })
}

/// Replaces the live database's content with `source`'s, after checking `source`.
pub(crate) fn restore_into(conn: &mut Connection, source: &Path) -> Result<(), DatabaseError> {
    store::check_candidate(source)?;
    let from = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Backup::new(&from, conn)?.run_to_completion(PAGES_PER_STEP, Duration::ZERO, None)?;
    drop(from);
    store::reopen_after_restore(conn, source)
}

/// Restores with no daemon running: the current file (if any) is moved aside to
/// `<db>.replaced-<time>`, `source` is copied in through a synced temporary file, then opened
/// (and migrated) once. Returns where the old file went.
pub fn restore_offline(
    db: &Path,
    source: &Path,
    backup_dir: &Path,
) -> Result<Option<PathBuf>, DatabaseError> {
    store::check_candidate(source)?;
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("cannot create directory", dir))?;
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let moved = if db.exists() {
        let aside = db.with_file_name(format!(
            "{}.replaced-{stamp}",
            db.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        std::fs::rename(db, &aside).map_err(io("cannot move aside", db))?;
        for sidecar in store::sidecar_files(db) {
            if sidecar.exists() {
                let target = aside.with_file_name(format!(
                    "{}{}",
                    aside
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    sidecar
                        .to_string_lossy()
                        .rsplit('-')
                        .next()
                        .map(|s| format!("-{s}"))
                        .unwrap_or_default()
                ));
                std::fs::rename(&sidecar, &target).map_err(io("cannot move aside", &sidecar))?;
            }
        }
        Some(aside)
    } else {
        None
    };
    let bytes = std::fs::read(source).map_err(io("cannot read", source))?;
    evolve_core::fsutil::write_atomic(db, &bytes, ".registry-restore-")
        .map_err(io("cannot write", db))?;
    sync_dir(dir)?;
    let conn = store::open(db, &store::restore_hint(db, backup_dir))?;
    drop(conn);
    Ok(moved)
}

/// The whole registry as one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryExport {
    pub format: String,
    pub version: u32,
    pub exported_at: DateTime<Utc>,
    pub models: Vec<ModelExport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelExport {
    pub name: String,
    pub task_type: String,
    pub description: String,
    pub model_class: String,
    pub artifact_uri: Option<String>,
    pub sha256: Option<String>,
    pub tags: Vec<String>,
    pub dependencies: Vec<String>,
    pub parameters: BTreeMap<String, Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub versions: Vec<VersionExport>,
    pub aliases: Vec<AliasExport>,
    pub alias_history: Vec<AliasMove>,
    /// In recording order.
    pub metrics: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionExport {
    pub version: u32,
    pub status: VersionStatus,
    pub description: String,
    pub artifact_uri: Option<String>,
    pub sha256: Option<String>,
    pub parameters: BTreeMap<String, Value>,
    pub metadata: BTreeMap<String, Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasExport {
    pub alias: String,
    pub version: u32,
    pub updated_at: DateTime<Utc>,
}

/// A streamed export emits its JSON in chunks of about this size (a chunk ends after the point,
/// or the model head, that reaches it), so the answer costs a chunk of memory, not the registry.
pub const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// The whole registry in memory (tests, benchmarks; the API streams with [`export_chunks`]).
pub(crate) fn export(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<RegistryExport, RegistryError> {
    let all = models::list_models(conn, &models::ModelFilter::default(), u32::MAX)?;
    let mut out = Vec::with_capacity(all.len());
    let mut points = conn.prepare_cached(POINTS_OF_MODEL)?;
    for model in all {
        let (id, mut export) = model_head(conn, model)?;
        export.metrics = points
            .query_map([id], Point::from_row)?
            .collect::<rusqlite::Result<_>>()?;
        out.push(export);
    }
    Ok(RegistryExport {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        exported_at: now,
        models: out,
    })
}

/// The same document as [`export`], written as JSON to `emit` in chunks of about
/// [`EXPORT_CHUNK_BYTES`]: one model's head (versions, aliases, history) at a time, its points
/// read row by row. `emit` answers `false` to stop (the client went); the export then ends
/// early with `Ok`. Run it inside one read transaction for a consistent document.
pub(crate) fn export_chunks(
    conn: &Connection,
    now: DateTime<Utc>,
    emit: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<(), RegistryError> {
    let shape = |_| RegistryError::invalid("export", "a record did not serialise as JSON");
    let envelope = serde_json::to_vec(&RegistryExport {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        exported_at: now,
        models: Vec::new(),
    })
    .map_err(shape)?;
    // `models` is the envelope's last field: its `[]}` is written around the models instead.
    let Some(opening) = envelope.strip_suffix(b"[]}") else {
        return Err(RegistryError::invalid(
            "export",
            "the envelope lost its shape",
        ));
    };
    let mut chunk = Vec::with_capacity(EXPORT_CHUNK_BYTES + 1024);
    chunk.extend_from_slice(opening);
    chunk.push(b'[');
    let mut flush = |chunk: &mut Vec<u8>, at_least: usize| {
        if chunk.len() < at_least {
            return true;
        }
        emit(std::mem::replace(
            chunk,
            Vec::with_capacity(EXPORT_CHUNK_BYTES + 1024),
        ))
    };
    let all = models::list_models(conn, &models::ModelFilter::default(), u32::MAX)?;
    let mut points = conn.prepare_cached(POINTS_OF_MODEL)?;
    for (index, model) in all.into_iter().enumerate() {
        let (id, head) = model_head(conn, model)?;
        let head = serde_json::to_vec(&head).map_err(shape)?;
        // Likewise `metrics` is a model's last field, empty in the head.
        let Some(head) = head.strip_suffix(b"[]}") else {
            return Err(RegistryError::invalid("export", "a model lost its shape"));
        };
        if index > 0 {
            chunk.push(b',');
        }
        chunk.extend_from_slice(head);
        chunk.push(b'[');
        let mut rows = points.query([id])?;
        let mut first = true;
        while let Some(row) = rows.next()? {
            if !first {
                chunk.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut chunk, &Point::from_row(row)?).map_err(shape)?;
            if !flush(&mut chunk, EXPORT_CHUNK_BYTES) {
                return Ok(());
            }
        }
        chunk.extend_from_slice(b"]}");
        if !flush(&mut chunk, EXPORT_CHUNK_BYTES) {
            return Ok(());
        }
    }
    chunk.extend_from_slice(b"]}");
    flush(&mut chunk, 1);
    Ok(())
}

/// A model's points in recording order, as `Point::from_row` reads them.
const POINTS_OF_MODEL: &str = "SELECT v.version, p.metric, p.value, p.ts FROM metrics p JOIN versions v ON v.id = p.version_id
         WHERE v.model_id = ?1 ORDER BY p.seq";

/// A model's id and its export without the points (`metrics` empty).
fn model_head(
    conn: &Connection,
    model: models::Model,
) -> Result<(i64, ModelExport), RegistryError> {
    let id = models::model_id(conn, &model.name)?;
    let versions = models::list_versions(conn, &model.name)?
        .into_iter()
        .map(|v: Version| VersionExport {
            version: v.version,
            status: v.status,
            description: v.description,
            artifact_uri: v.artifact_uri,
            sha256: v.sha256,
            parameters: v.parameters,
            metadata: v.metadata,
            created_at: v.created_at,
            created_by: v.created_by,
        })
        .collect();
    let aliases = aliases::list_aliases(conn, &model.name)?
        .into_iter()
        .map(|a: Alias| AliasExport {
            alias: a.alias,
            version: a.version,
            updated_at: a.updated_at,
        })
        .collect();
    Ok((
        id,
        ModelExport {
            alias_history: aliases::model_history(conn, id)?,
            name: model.name,
            task_type: model.task_type,
            description: model.description,
            model_class: model.model_class,
            artifact_uri: model.artifact_uri,
            sha256: model.sha256,
            tags: model.tags,
            dependencies: model.dependencies,
            parameters: model.parameters,
            created_at: model.created_at,
            created_by: model.created_by,
            versions,
            aliases,
            metrics: Vec::new(),
        },
    ))
}

/// Imports a document into an empty registry inside `conn`'s open transaction; validates every
/// record as the API would. Returns the number of metric points.
pub(crate) fn import(conn: &Connection, document: &RegistryExport) -> Result<u64, RegistryError> {
    if document.format != EXPORT_FORMAT || document.version != EXPORT_VERSION {
        return Err(RegistryError::invalid(
            "format",
            format!(
                "expected format \"{EXPORT_FORMAT}\" version {EXPORT_VERSION}, got \"{}\" version {}",
                document.format, document.version
            ),
        ));
    }
    let models: u64 = conn.query_row("SELECT count(*) FROM models", [], |row| row.get(0))?;
    if models > 0 {
        return Err(RegistryError::NotEmpty { models });
    }
    let mut points = 0u64;
    for (index, model) in document.models.iter().enumerate() {
        let at = |field: &str| format!("models[{index}].{field}");
        let new = NewModel {
            name: model.name.clone(),
            task_type: model.task_type.clone(),
            description: model.description.clone(),
            model_class: model.model_class.clone(),
            artifact_uri: model.artifact_uri.clone(),
            sha256: model.sha256.clone(),
            tags: model.tags.clone(),
            dependencies: model.dependencies.clone(),
            parameters: model.parameters.clone(),
        }
        .validated()
        .map_err(|e| RegistryError::invalid(at("model"), e.to_string()))?;
        let id = models::insert_model(conn, &new, model.created_at, model.created_by.as_deref())?;
        let mut version_ids = BTreeMap::new();
        for version in &model.versions {
            let new_version = models::NewVersion {
                description: version.description.clone(),
                artifact_uri: version.artifact_uri.clone(),
                sha256: version.sha256.clone(),
                parameters: version.parameters.clone(),
                metadata: version.metadata.clone(),
                status: version.status,
            }
            .validated()
            .map_err(|e| RegistryError::invalid(at("versions"), e.to_string()))?;
            conn.execute(
                "INSERT INTO versions (model_id, version, status, description, artifact_uri, sha256, parameters, metadata, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    id,
                    version.version,
                    new_version.status.as_str(),
                    new_version.description,
                    new_version.artifact_uri,
                    new_version.sha256,
                    serde_json::to_string(&new_version.parameters).unwrap_or_default(),
                    serde_json::to_string(&new_version.metadata).unwrap_or_default(),
                    to_millis(version.created_at),
                    version.created_by,
                ],
            )
            .map_err(|e| RegistryError::invalid(at("versions"), format!("version {}: {e}", version.version)))?;
            version_ids.insert(version.version, conn.last_insert_rowid());
        }
        for alias in &model.aliases {
            check_alias_name(&alias.alias)?;
            if !version_ids.contains_key(&alias.version) {
                return Err(RegistryError::invalid(
                    at("aliases"),
                    format!(
                        "{} points at version {}, which the document lacks",
                        alias.alias, alias.version
                    ),
                ));
            }
            aliases::insert_raw(
                conn,
                id,
                &Alias {
                    model: model.name.clone(),
                    alias: alias.alias.clone(),
                    version: alias.version,
                    updated_at: alias.updated_at,
                },
            )?;
        }
        for entry in &model.alias_history {
            aliases::append_raw(conn, id, entry)?;
        }
        let mut insert = conn.prepare_cached(
            "INSERT INTO metrics (version_id, metric, ts, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (p, point) in model.metrics.iter().enumerate() {
            check_name(&at("metrics"), &point.metric, true)?;
            if !point.value.is_finite() {
                return Err(RegistryError::NonFinite {
                    what: format!("models[{index}].metrics[{p}]"),
                    value: point.value,
                });
            }
            let Some(version_id) = version_ids.get(&point.version) else {
                return Err(RegistryError::invalid(
                    at("metrics"),
                    format!(
                        "point {p} names version {}, which the document lacks",
                        point.version
                    ),
                ));
            };
            insert.execute(params![
                version_id,
                point.metric,
                to_millis(point.timestamp),
                point.value
            ])?;
            points += 1;
        }
    }
    Ok(points)
}
