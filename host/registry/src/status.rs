//! The registry store's part of the daemon's health (`GET /v1/health`), cheap enough to answer
//! on every request: it never runs `integrity_check` (that is `GET /v1/registry`'s job) and never
//! waits behind a writer.
//!
//! What it reports:
//! - the `quick_check` the store passed when it was opened (a damaged file never opens);
//! - the result of the last full `integrity_check` the daemon ran (`GET /v1/registry`), if any;
//! - a one-statement read (`PRAGMA user_version`) on the connection, skipped as `busy` when a
//!   writer holds it (a busy store is a working store);
//! - whether the database file is still on disk (a deleted file keeps working through the open
//!   descriptor, but every write after that is lost at the next start).

use std::sync::TryLockError;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Registry;

/// Result of the last full `integrity_check`, kept for the health view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntegrityRecord {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// The first problem when not ok.
    pub first_problem: Option<String>,
}

/// What [`Registry::store_status`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    /// The store can be read and written: the file is present, the read worked (or a writer
    /// holds the connection), and the last integrity check, if any, passed.
    pub usable: bool,
    pub path: String,
    pub opened_at: DateTime<Utc>,
    /// `PRAGMA quick_check` at open; always `ok` for an open store (a damaged file is refused).
    pub quick_check_at_open: &'static str,
    pub last_integrity_check: Option<IntegrityRecord>,
    /// `ok`, `busy` (a writer holds the connection) or the read's error.
    pub read_probe: String,
    pub file_present: bool,
    pub schema_version: Option<i64>,
}

impl Registry {
    /// The store's health without blocking on writers or scanning the file.
    pub fn store_status(&self) -> StoreStatus {
        let (read_probe, read_ok, schema_version) = match self.state.try_lock() {
            Ok(state) => read_probe(&state.conn),
            // A panic while holding the lock left no open transaction (see `lock`).
            Err(TryLockError::Poisoned(poisoned)) => read_probe(&poisoned.into_inner().conn),
            Err(TryLockError::WouldBlock) => ("busy".to_string(), true, None),
        };
        let file_present = self.config.db_path.is_file();
        let last_integrity_check = evolve_core::sync::lock(&self.last_integrity).clone();
        let integrity_ok = last_integrity_check.as_ref().is_none_or(|r| r.ok);
        StoreStatus {
            usable: read_ok && file_present && integrity_ok,
            path: self.config.db_path.display().to_string(),
            opened_at: self.opened_at,
            quick_check_at_open: "ok",
            last_integrity_check,
            read_probe,
            file_present,
            schema_version,
        }
    }

    /// Keeps a full integrity check's outcome for [`Registry::store_status`].
    pub(super) fn note_integrity(&self, problems: &[String]) {
        let ok = problems == ["ok"];
        let record = IntegrityRecord {
            at: Utc::now(),
            ok,
            first_problem: (!ok).then(|| problems.first().cloned().unwrap_or_default()),
        };
        *evolve_core::sync::lock(&self.last_integrity) = Some(record);
    }
}

fn read_probe(conn: &rusqlite::Connection) -> (String, bool, Option<i64>) {
    match conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0)) {
        Ok(version) => ("ok".to_string(), true, Some(version)),
        Err(error) => (error.to_string(), false, None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::{Registry, RegistryConfig};

    #[test]
    fn a_fresh_store_is_usable_and_reports_its_read() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::in_dir(dir.path())).unwrap();
        let status = registry.store_status();
        assert!(status.usable, "{status:?}");
        assert_eq!(status.read_probe, "ok");
        assert!(status.file_present);
        assert!(status.schema_version.is_some());
        assert_eq!(status.last_integrity_check, None);
    }

    #[test]
    fn a_writer_holding_the_connection_reads_as_busy_not_broken() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::in_dir(dir.path())).unwrap();
        let held = registry.lock();
        let status = registry.store_status();
        drop(held);
        assert_eq!(status.read_probe, "busy");
        assert!(status.usable);
    }

    #[test]
    fn a_deleted_file_makes_the_store_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::in_dir(dir.path())).unwrap();
        std::fs::remove_file(dir.path().join("registry.db")).unwrap();
        let status = registry.store_status();
        assert!(!status.file_present);
        assert!(!status.usable);
    }

    #[test]
    fn a_failed_integrity_check_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::in_dir(dir.path())).unwrap();
        registry.note_integrity(&["ok".to_string()]);
        assert!(registry.store_status().usable);
        registry.note_integrity(&["page 3: btree damaged".to_string()]);
        let status = registry.store_status();
        assert!(!status.usable);
        let record = status.last_integrity_check.unwrap();
        assert_eq!(
            record.first_problem.as_deref(),
            Some("page 3: btree damaged")
        );
    }
}
