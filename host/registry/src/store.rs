//! The registry's SQLite file: opening it safely, its pragmas and its versioned schema.
//!
//! Opening runs these steps in order:
//! 1. refuse a file that is not SQLite at all (its header is checked before SQLite touches it);
//! 2. open, set a busy timeout, switch to WAL with `synchronous = FULL` (see [`open`]);
//! 3. refuse a SQLite file that belongs to someone else (`application_id`, or tables without it);
//! 4. run `PRAGMA quick_check` and refuse a damaged file;
//! 5. refuse a schema newer than this build, then apply the missing [`MIGRATIONS`] one
//!    transaction each, bumping `user_version` inside the same transaction.
//!
//! Nothing is written to a refused file: the error says how to restore it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::DatabaseError;

/// `PRAGMA application_id` of a registry file ("EvMR"): tells our file from any other SQLite file.
pub const APPLICATION_ID: i32 = 0x4576_4d52;

/// How long a writer waits for another connection's lock (an offline CLI command beside the
/// daemon) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every SQLite database starts with these 16 bytes.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Schema migrations; entry `i` takes `user_version` from `i` to `i + 1`. Append only: a
/// released migration never changes.
pub const MIGRATIONS: &[&str] = &[
    // 1: models, versions, aliases with their append-only history, metric points.
    r#"
    CREATE TABLE models (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        task_type     TEXT NOT NULL,
        description   TEXT NOT NULL,
        model_class   TEXT NOT NULL,
        artifact_uri  TEXT,
        sha256        TEXT,
        tags          TEXT NOT NULL,
        dependencies  TEXT NOT NULL,
        parameters    TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        created_by    TEXT
    );
    CREATE INDEX models_by_task ON models(task_type);
    CREATE TABLE model_tags (
        tag      TEXT NOT NULL,
        model_id INTEGER NOT NULL REFERENCES models(id),
        PRIMARY KEY (tag, model_id)
    ) WITHOUT ROWID;
    CREATE TABLE versions (
        id            INTEGER PRIMARY KEY,
        model_id      INTEGER NOT NULL REFERENCES models(id),
        version       INTEGER NOT NULL,
        status        TEXT NOT NULL,
        description   TEXT NOT NULL,
        artifact_uri  TEXT,
        sha256        TEXT,
        parameters    TEXT NOT NULL,
        metadata      TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        created_by    TEXT,
        UNIQUE (model_id, version)
    );
    CREATE TRIGGER versions_are_immutable
        BEFORE UPDATE OF id, model_id, version, description, artifact_uri, sha256, parameters,
                         metadata, created_at, created_by ON versions
        BEGIN SELECT RAISE(ABORT, 'model versions are immutable; only status changes'); END;
    CREATE TABLE aliases (
        model_id    INTEGER NOT NULL REFERENCES models(id),
        alias       TEXT NOT NULL,
        version     INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (model_id, alias),
        FOREIGN KEY (model_id, version) REFERENCES versions(model_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE alias_history (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        model_id      INTEGER NOT NULL REFERENCES models(id),
        alias         TEXT NOT NULL,
        action        TEXT NOT NULL CHECK (action IN ('set', 'rollback', 'delete')),
        from_version  INTEGER,
        to_version    INTEGER,
        at            INTEGER NOT NULL,
        reason        TEXT NOT NULL,
        actor         TEXT
    );
    CREATE INDEX alias_history_by_alias ON alias_history(model_id, alias, id);
    CREATE TRIGGER alias_history_no_update BEFORE UPDATE ON alias_history
        BEGIN SELECT RAISE(ABORT, 'alias history is append-only'); END;
    CREATE TRIGGER alias_history_no_delete BEFORE DELETE ON alias_history
        BEGIN SELECT RAISE(ABORT, 'alias history is append-only'); END;
    CREATE TABLE metrics (
        seq         INTEGER PRIMARY KEY,
        version_id  INTEGER NOT NULL REFERENCES versions(id),
        metric      TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        value       REAL NOT NULL
    );
    CREATE INDEX metrics_by_series ON metrics(version_id, metric, ts, value);
    "#,
];

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Opens (creating if absent) the registry at `path`; `restore_hint` ends the error message of a
/// refused file. See the module docs for the steps.
pub fn open(path: &Path, restore_hint: &str) -> Result<Connection, DatabaseError> {
    // 1. Header.
    check_header(path, restore_hint)?;
    // 2. Open and pragmas.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e, restore_hint))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // 3. Ownership (before anything writes: WAL mode alone would rewrite a foreign header).
    check_ownership(&conn, path, restore_hint)?;
    set_pragmas(&conn, path)?;
    // 4. Damage.
    let check = quick_check(&conn).map_err(|e| classify(path, e, restore_hint))?;
    if check != "ok" {
        return Err(DatabaseError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("quick_check: {check}"),
            hint: restore_hint.to_string(),
        });
    }
    // 5. Schema.
    migrate(&conn, path)?;
    Ok(conn)
}

/// WAL with `synchronous = FULL`: a commit returns after its WAL frames are fsynced, so every
/// write the API acknowledged survives `kill -9` and power loss. NORMAL would be faster but can
/// lose the last commits on power loss, which the README's promise rules out.
fn set_pragmas(conn: &Connection, path: &Path) -> Result<(), DatabaseError> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DatabaseError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

fn check_header(path: &Path, restore_hint: &str) -> Result<(), DatabaseError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DatabaseError::Io {
                what: "cannot read",
                path: path.to_path_buf(),
                error: source,
            });
        }
    };
    let mut header = Vec::with_capacity(16);
    (&mut file)
        .take(16)
        .read_to_end(&mut header)
        .map_err(|source| DatabaseError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            error: source,
        })?;
    // An empty file is what a crash between create and first write leaves: SQLite treats it as
    // a new database.
    if header.is_empty() || header.as_slice() == SQLITE_HEADER {
        return Ok(());
    }
    Err(DatabaseError::Foreign {
        path: path.to_path_buf(),
        detail: "it is not a SQLite database".into(),
        hint: restore_hint.to_string(),
    })
}

fn check_ownership(
    conn: &Connection,
    path: &Path,
    restore_hint: &str,
) -> Result<(), DatabaseError> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|e| classify(path, e, restore_hint))?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .map_err(|e| classify(path, e, restore_hint))?;
    let foreign = |detail: String| DatabaseError::Foreign {
        path: path.to_path_buf(),
        detail,
        hint: restore_hint.to_string(),
    };
    match app_id {
        APPLICATION_ID => Ok(()),
        0 if tables == 0 => Ok(()),
        0 => Err(foreign(format!(
            "a SQLite database with {tables} tables of another application"
        ))),
        other => Err(foreign(format!(
            "a SQLite database with application_id {other:#x}, not {APPLICATION_ID:#x}"
        ))),
    }
}

/// `PRAGMA quick_check`'s first line: `ok` for a sound file.
pub fn quick_check(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("PRAGMA quick_check", [], |row| row.get(0))
}

/// `PRAGMA integrity_check`: `["ok"]` for a sound file, else the problems (first 100).
pub fn integrity_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare("PRAGMA integrity_check(100)")?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
    rows.collect()
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), DatabaseError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > schema_version() {
        return Err(DatabaseError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: schema_version(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let next = index as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{sql}\nPRAGMA application_id = {APPLICATION_ID};\nPRAGMA user_version = {next};\nCOMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        tracing::info!(path = %path.display(), version = next, "registry schema migrated");
    }
    Ok(())
}

/// After a restore replaced the content under an open connection: WAL and pragmas again, and
/// the migrations a backup from an older build lacks.
pub(crate) fn reopen_after_restore(conn: &Connection, source: &Path) -> Result<(), DatabaseError> {
    set_pragmas(conn, source)?;
    migrate(conn, source)
}

/// Turns SQLite's "not a database" / "malformed" codes into [`DatabaseError`]s with the hint.
fn classify(path: &Path, error: rusqlite::Error, restore_hint: &str) -> DatabaseError {
    use rusqlite::ffi::ErrorCode;
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => DatabaseError::Foreign {
            path: path.to_path_buf(),
            detail: error.to_string(),
            hint: restore_hint.to_string(),
        },
        Some(ErrorCode::DatabaseCorrupt) => DatabaseError::Corrupt {
            path: path.to_path_buf(),
            detail: error.to_string(),
            hint: restore_hint.to_string(),
        },
        _ => DatabaseError::Sqlite(error),
    }
}

/// Checks a file meant to replace the registry (a backup being restored) without changing it:
/// ours, sound, not newer than this build. Returns its schema version.
pub fn check_candidate(path: &Path) -> Result<i64, DatabaseError> {
    let hint = "choose another backup file";
    let metadata = std::fs::metadata(path).map_err(|source| DatabaseError::Io {
        what: "cannot read",
        path: path.to_path_buf(),
        error: source,
    })?;
    if metadata.len() == 0 {
        return Err(DatabaseError::Foreign {
            path: path.to_path_buf(),
            detail: "the file is empty".into(),
            hint: hint.into(),
        });
    }
    check_header(path, hint)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e, hint))?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|e| classify(path, e, hint))?;
    if app_id != APPLICATION_ID {
        return Err(DatabaseError::Foreign {
            path: path.to_path_buf(),
            detail: format!("application_id {app_id:#x}, not {APPLICATION_ID:#x}"),
            hint: hint.into(),
        });
    }
    let problems = integrity_check(&conn).map_err(|e| classify(path, e, hint))?;
    if problems != ["ok"] {
        return Err(DatabaseError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("integrity_check: {}", problems.join("; ")),
            hint: hint.into(),
        });
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > schema_version() {
        return Err(DatabaseError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: schema_version(),
        });
    }
    Ok(version)
}

/// The message that ends every refusal of the registry file at start-up.
pub fn restore_hint(db: &Path, backup_dir: &Path) -> String {
    format!(
        "the daemon left it untouched. To recover: stop the daemon and run `evolve model restore --db {} <backup>` with a backup from {} (the newest is listed first by `evolve model backups --dir {}`), or move the file aside to start with an empty registry",
        db.display(),
        backup_dir.display(),
        backup_dir.display()
    )
}

/// The WAL and shared-memory files beside a database.
pub fn sidecar_files(db: &Path) -> [PathBuf; 2] {
    let name = db.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    [
        db.with_file_name(format!("{name}-wal")),
        db.with_file_name(format!("{name}-shm")),
    ]
}
