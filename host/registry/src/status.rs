//! The registry store's part of the daemon's health (`GET /v1/health`), cheap enough to answer
//! on every request: it never runs `integrity_check` (that is `GET /v1/registry`'s job) and never
//! waits behind a writer.
//!
//! What it reports:
//! - the `quick_check` the store passed when it was opened (a damaged file never opens);
//! - the result of the last full `integrity_check` the daemon ran (`GET /v1/registry`, at most
//!   every [`INTEGRITY_CHECK_MAX_AGE`], see [`Registry::health`]), if any;
//! - a one-statement read (`PRAGMA user_version`) on the connection, skipped as `busy` when a
//!   writer holds it (a busy store is a working store);
//! - whether the database file is still on disk (a deleted file keeps working through the open
//!   descriptor, but every write after that is lost at the next start).

use std::sync::TryLockError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::error::RegistryError;
use super::{Registry, store};

/// How old the full `integrity_check` `GET /v1/registry` reports may be. The check reads every
/// page of the file and the route is open to anonymous readers on a loopback listen, so it runs
/// at most this often (concurrent readers wait for one check and share it), and again right
/// after a restore or an import replaced the content.
pub const INTEGRITY_CHECK_MAX_AGE: Duration = Duration::from_secs(60);

/// The last full check, as `GET /v1/registry` serves it until it is too old.
#[derive(Debug, Clone)]
pub(super) struct CachedIntegrity {
    /// When it ran, on the clock the age is measured by.
    checked: Instant,
    /// [`Registry::replaced`] when it ran: a newer count means the content it read is gone.
    replaced: u64,
    /// `["ok"]` or the problems.
    problems: Vec<String>,
    at: DateTime<Utc>,
}

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

    /// Keeps a full integrity check's outcome for [`Registry::store_status`]; returns when.
    pub(super) fn note_integrity(&self, problems: &[String]) -> DateTime<Utc> {
        let ok = problems == ["ok"];
        let at = Utc::now();
        let record = IntegrityRecord {
            at,
            ok,
            first_problem: (!ok).then(|| problems.first().cloned().unwrap_or_default()),
        };
        *evolve_core::sync::lock(&self.last_integrity) = Some(record);
        at
    }

    /// The full `integrity_check` as of `now`: the cached one while it is younger than
    /// [`INTEGRITY_CHECK_MAX_AGE`] and the content was not replaced since, else a new one.
    /// Returns the problems (`["ok"]`) and when the check ran.
    pub(super) fn integrity_at(
        &self,
        now: Instant,
    ) -> Result<(Vec<String>, DateTime<Utc>), RegistryError> {
        // Held across the check: readers arriving meanwhile wait and take its result.
        let mut cache = evolve_core::sync::lock(&self.integrity_cache);
        let replaced = self.replaced.load(Ordering::Acquire);
        if let Some(cached) = cache.as_ref()
            && cached.replaced == replaced
            && now.saturating_duration_since(cached.checked) < INTEGRITY_CHECK_MAX_AGE
        {
            return Ok((cached.problems.clone(), cached.at));
        }
        let problems = self.run_integrity_check()?;
        let at = self.note_integrity(&problems);
        *cache = Some(CachedIntegrity {
            checked: now,
            replaced,
            problems: problems.clone(),
            at,
        });
        Ok((problems, at))
    }

    /// Runs the check on a read-only connection of its own, so writers and model selections
    /// are not held behind the scan (WAL readers never block them); on the shared connection
    /// only when the file cannot be opened again (then that is what the check reports on).
    fn run_integrity_check(&self) -> Result<Vec<String>, RegistryError> {
        let own = Connection::open_with_flags(
            &self.config.db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        );
        Ok(match own {
            Ok(conn) => store::integrity_check(&conn)?,
            Err(_) => store::integrity_check(&self.lock().conn)?,
        })
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
    fn the_integrity_check_is_reused_until_it_is_too_old_or_the_content_is_replaced() {
        use super::INTEGRITY_CHECK_MAX_AGE;
        use std::time::{Duration, Instant};

        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::in_dir(dir.path())).unwrap();
        let start = Instant::now();
        let first = registry.health_at(start).unwrap();
        assert!(first.ok);
        assert_eq!(first.integrity_check, ["ok"]);
        let ran_at = |registry: &Registry| registry.store_status().last_integrity_check.unwrap().at;
        assert_eq!(ran_at(&registry), first.integrity_checked_at);

        // Within the age: the same check, not a new one.
        let later = start + INTEGRITY_CHECK_MAX_AGE - Duration::from_millis(1);
        let again = registry.health_at(later).unwrap();
        assert_eq!(again.integrity_checked_at, first.integrity_checked_at);
        assert_eq!(ran_at(&registry), first.integrity_checked_at);

        // Too old: checked again.
        let aged = registry.health_at(start + INTEGRITY_CHECK_MAX_AGE).unwrap();
        assert!(aged.integrity_checked_at > first.integrity_checked_at);

        // A restore replaces the content: the next read checks it, however recent the last.
        let backup = registry.backup_now().unwrap();
        registry.restore(&backup.file).unwrap();
        let restored = registry.health_at(start + INTEGRITY_CHECK_MAX_AGE).unwrap();
        assert!(restored.integrity_checked_at > aged.integrity_checked_at);
        assert!(restored.ok);
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
