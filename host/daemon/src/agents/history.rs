//! Run history: every agent run, persisted in SQLite (`<data_dir>/agents.db` by default).
//!
//! Durability: WAL with `synchronous = FULL`, so a run row is on disk before the API answers
//! with its id, and a finished run's outcome is on disk before the API answers with it. A run
//! that was in progress when the daemon died is marked `interrupted` at the next open.
//!
//! Schema versions are kept in `PRAGMA user_version`; [`MIGRATIONS`] upgrades older files in
//! order, and a file from a newer daemon is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Schema migrations; entry `i` takes a file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        task TEXT NOT NULL,
        trigger TEXT NOT NULL,
        caller TEXT,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        duration_ms INTEGER,
        outcome TEXT NOT NULL,
        summary TEXT,
        output TEXT,
        error_code TEXT,
        error TEXT,
        generation INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_agent ON runs(agent, id);"];

/// Most runs a single listing returns.
pub const MAX_PAGE: u32 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open the agent run history {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the agent run history {path} has schema version {found}, newer than this daemon's {supported}; run the newer daemon or move the file aside"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("agent run history: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped while the run was in progress.
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> RunOutcome {
        match text {
            "running" => RunOutcome::Running,
            "succeeded" => RunOutcome::Succeeded,
            "cancelled" => RunOutcome::Cancelled,
            "interrupted" => RunOutcome::Interrupted,
            _ => RunOutcome::Failed,
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Api,
    Schedule,
    /// The missed-run policy's catch-up run at start.
    Missed,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
            Trigger::Missed => "missed",
        }
    }

    fn parse(text: &str) -> Trigger {
        match text {
            "schedule" => Trigger::Schedule,
            "missed" => Trigger::Missed,
            _ => Trigger::Api,
        }
    }
}

/// One run as stored.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub agent: String,
    pub task: String,
    pub trigger: Trigger,
    pub caller: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub outcome: RunOutcome,
    pub summary: Option<String>,
    /// The agent's JSON output.
    pub output: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// Generation of the plugin that ran the (last) attempt.
    pub generation: Option<u64>,
    pub attempts: u32,
}

/// A run's end, as the manager reports it.
#[derive(Debug, Clone)]
pub struct Finish {
    pub finished_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    pub summary: Option<String>,
    pub output: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub generation: Option<u64>,
    pub attempts: u32,
}

/// Per-agent figures over the kept history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// Finished runs (any outcome but `running`).
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `succeeded / runs`, or `None` before the first run.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<RunOutcome>,
}

/// The history store; cheap to clone, safe to share. Calls block on SQLite (an fsync per
/// write): async callers go through `spawn_blocking`.
#[derive(Clone)]
pub struct RunHistory {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for RunHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHistory").finish_non_exhaustive()
    }
}

impl RunHistory {
    /// Opens (creating) the store, migrates it, and marks runs left `running` by a previous
    /// process as `interrupted`. Returns how many were.
    pub fn open(path: &Path) -> Result<(RunHistory, usize), HistoryError> {
        let open_err = |source| HistoryError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            // A missing directory surfaces as SQLite's "unable to open"; create it first.
            let _ = std::fs::create_dir_all(parent);
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        let supported = MIGRATIONS.len() as u32;
        if version > supported {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported,
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(open_err)?;
            tx.execute_batch(migration).map_err(open_err)?;
            tx.pragma_update(None, "user_version", index as u32 + 1)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        let interrupted = conn.execute(
            "UPDATE runs SET outcome = 'interrupted', error_code = 'interrupted',
                 error = 'the daemon stopped while this run was in progress'
             WHERE outcome = 'running'",
            [],
        )?;
        Ok((
            RunHistory {
                conn: Arc::new(Mutex::new(conn)),
            },
            interrupted,
        ))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite mid-statement: each call is one
        // statement or one transaction, so the connection stays usable.
        evolve_core::sync::lock(&self.conn)
    }

    /// Records a run as started; returns its id.
    pub fn begin(
        &self,
        agent: &str,
        task: &str,
        trigger: Trigger,
        caller: Option<&str>,
        started_at: DateTime<Utc>,
    ) -> Result<i64, HistoryError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (agent, task, trigger, caller, started_at_ms, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
            params![
                agent,
                task,
                trigger.as_str(),
                caller,
                started_at.timestamp_millis()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records a run's end.
    pub fn finish(&self, id: i64, finish: &Finish) -> Result<(), HistoryError> {
        self.conn().execute(
            "UPDATE runs SET finished_at_ms = ?2,
                 duration_ms = MAX(0, ?2 - started_at_ms),
                 outcome = ?3, summary = ?4, output = ?5, error_code = ?6, error = ?7,
                 generation = ?8, attempts = ?9
             WHERE id = ?1",
            params![
                id,
                finish.finished_at.timestamp_millis(),
                finish.outcome.as_str(),
                finish.summary,
                finish.output,
                finish.error_code,
                finish.error,
                finish.generation.map(|g| g as i64),
                finish.attempts,
            ],
        )?;
        Ok(())
    }

    /// Keeps the newest `keep` runs of `agent`.
    pub fn prune(&self, agent: &str, keep: u32) -> Result<usize, HistoryError> {
        Ok(self.conn().execute(
            "DELETE FROM runs WHERE agent = ?1 AND id NOT IN
                 (SELECT id FROM runs WHERE agent = ?1 ORDER BY id DESC LIMIT ?2)",
            params![agent, keep],
        )?)
    }

    /// Newest first; `before` pages back from a run id.
    pub fn runs(
        &self,
        agent: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<RunRecord>, HistoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, agent, task, trigger, caller, started_at_ms, finished_at_ms, duration_ms,
                    outcome, summary, output, error_code, error, generation, attempts
             FROM runs WHERE agent = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![agent, before.unwrap_or(i64::MAX), limit.min(MAX_PAGE)],
            row_to_record,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn get(&self, id: i64) -> Result<Option<RunRecord>, HistoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, agent, task, trigger, caller, started_at_ms, finished_at_ms, duration_ms,
                    outcome, summary, output, error_code, error, generation, attempts
             FROM runs WHERE id = ?1",
        )?;
        Ok(stmt.query_row(params![id], row_to_record).optional()?)
    }

    /// When `agent` last started a run by its schedule (for the missed-run policy).
    pub fn last_scheduled_start(&self, agent: &str) -> Result<Option<DateTime<Utc>>, HistoryError> {
        let ms: Option<i64> = self.conn().query_row(
            "SELECT MAX(started_at_ms) FROM runs WHERE agent = ?1 AND trigger IN ('schedule', 'missed')",
            params![agent],
            |row| row.get(0),
        )?;
        Ok(ms.and_then(millis_to_time))
    }

    /// Stats over the kept history of `agent`.
    pub fn stats(&self, agent: &str) -> Result<RunStats, HistoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT outcome, duration_ms FROM runs WHERE agent = ?1 AND outcome != 'running'",
        )?;
        let mut stats = RunStats::default();
        let mut durations = Vec::new();
        let rows = stmt.query_map(params![agent], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
        })?;
        for row in rows {
            let (outcome, duration) = row?;
            stats.runs += 1;
            match RunOutcome::parse(&outcome) {
                RunOutcome::Succeeded => stats.succeeded += 1,
                RunOutcome::Failed => stats.failed += 1,
                _ => {}
            }
            if let Some(d) = duration {
                durations.push(d.max(0) as u64);
            }
        }
        durations.sort_unstable();
        stats.p50_ms = percentile(&durations, 50.0);
        stats.p99_ms = percentile(&durations, 99.0);
        if stats.runs > 0 {
            stats.success_rate = Some(stats.succeeded as f64 / stats.runs as f64);
        }
        let last: Option<(i64, String)> = conn
            .query_row(
                "SELECT started_at_ms, outcome FROM runs WHERE agent = ?1 ORDER BY id DESC LIMIT 1",
                params![agent],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((ms, outcome)) = last {
            stats.last_started_at = millis_to_time(ms);
            stats.last_outcome = Some(RunOutcome::parse(&outcome));
        }
        Ok(stats)
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn millis_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let output: Option<String> = row.get(10)?;
    Ok(RunRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        task: row.get(2)?,
        trigger: Trigger::parse(&row.get::<_, String>(3)?),
        caller: row.get(4)?,
        started_at: millis_to_time(row.get(5)?).unwrap_or_default(),
        finished_at: row.get::<_, Option<i64>>(6)?.and_then(millis_to_time),
        duration_ms: row.get::<_, Option<i64>>(7)?.map(|d| d.max(0) as u64),
        outcome: RunOutcome::parse(&row.get::<_, String>(8)?),
        summary: row.get(9)?,
        // Stored as the agent wrote it and read back with the reader the runtime checked it
        // with, so every stored output is served as its document; only a hand-edited row that
        // no longer parses is shown as a string rather than lost.
        output: output.map(|text| {
            evolve_runtime::output::parse(&text).unwrap_or(serde_json::Value::String(text))
        }),
        error_code: row.get(11)?,
        error: row.get(12)?,
        generation: row.get::<_, Option<i64>>(13)?.map(|g| g.max(0) as u64),
        attempts: row.get(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(outcome: RunOutcome, at: DateTime<Utc>) -> Finish {
        Finish {
            finished_at: at,
            outcome,
            summary: Some("done".into()),
            output: Some("{\"n\":1}".into()),
            error_code: None,
            error: None,
            generation: Some(3),
            attempts: 1,
        }
    }

    #[test]
    fn runs_survive_reopen_and_open_runs_become_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("agents.db");
        let t0 = Utc.timestamp_millis_opt(1_000_000).single().expect("time");
        let (done, open) = {
            let (history, interrupted) = RunHistory::open(&path).expect("open");
            assert_eq!(interrupted, 0);
            let done = history
                .begin("doc", "generate", Trigger::Api, Some("ops"), t0)
                .expect("begin");
            history
                .finish(
                    done,
                    &finish(
                        RunOutcome::Succeeded,
                        t0 + chrono::Duration::milliseconds(250),
                    ),
                )
                .expect("finish");
            let open = history
                .begin("doc", "generate", Trigger::Schedule, None, t0)
                .expect("begin");
            (done, open)
        };
        let (history, interrupted) = RunHistory::open(&path).expect("reopen");
        assert_eq!(interrupted, 1);
        let done = history.get(done).expect("get").expect("present");
        assert_eq!(done.outcome, RunOutcome::Succeeded);
        assert_eq!(done.duration_ms, Some(250));
        assert_eq!(done.output, Some(serde_json::json!({"n": 1})));
        assert_eq!(done.caller.as_deref(), Some("ops"));
        let open = history.get(open).expect("get").expect("present");
        assert_eq!(open.outcome, RunOutcome::Interrupted);
        assert_eq!(history.last_scheduled_start("doc").expect("q"), Some(t0));
    }

    #[test]
    fn stats_count_outcomes_and_rank_durations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (history, _) = RunHistory::open(&dir.path().join("a.db")).expect("open");
        let t0 = Utc.timestamp_millis_opt(0).single().expect("time");
        for i in 1..=100i64 {
            let id = history
                .begin("a", "t", Trigger::Api, None, t0)
                .expect("begin");
            let outcome = if i % 4 == 0 {
                RunOutcome::Failed
            } else {
                RunOutcome::Succeeded
            };
            history
                .finish(
                    id,
                    &finish(outcome, t0 + chrono::Duration::milliseconds(i * 10)),
                )
                .expect("finish");
        }
        let stats = history.stats("a").expect("stats");
        assert_eq!((stats.runs, stats.succeeded, stats.failed), (100, 75, 25));
        assert_eq!(stats.success_rate, Some(0.75));
        assert_eq!(stats.p50_ms, Some(500));
        assert_eq!(stats.p99_ms, Some(990));
        assert_eq!(stats.last_outcome, Some(RunOutcome::Failed));
        assert_eq!(history.prune("a", 10).expect("prune"), 90);
        let page = history.runs("a", 5, None).expect("runs");
        assert_eq!(page.len(), 5);
        assert!(page.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let older = history.runs("a", 100, Some(page[4].id)).expect("page");
        assert_eq!(older.len(), 5);
        assert_eq!(history.stats("other").expect("stats").success_rate, None);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db");
        drop(RunHistory::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 99).expect("bump");
        drop(conn);
        let err = RunHistory::open(&path).expect_err("too new");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
