//! The audit log: one JSON line per mutation and per refused request, appended to
//! `<log dir>/audit.jsonl` (mode 0600) before the answer leaves, and read newest first at
//! `GET /v1/audit` (scope `admin`).
//!
//! A line says who (the token's name, or none), what (method, path, the endpoint's pattern and
//! the scope it needs), when (RFC 3339, ms), from where (the peer address) and the result (the
//! status and `ok` / `refused` / `failed`). Traffic through the proxy and routes is data, not a
//! change to the daemon: it is audited only when refused (metrics count the rest).
//!
//! Appends are one `write` of a whole line to a file opened with `O_APPEND`, so lines from
//! concurrent requests never interleave, and a line written survives the daemon's `kill -9`
//! (it is in the kernel's page cache once `write` returns).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, ApiState};

/// Most entries one `GET /v1/audit` returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// Most bytes one `GET /v1/audit` reads back from the end of the file: with a `caller` filter
/// that matches rarely, the read stops here rather than scanning a log of any size.
const MAX_AUDIT_SCAN_BYTES: u64 = 32 << 20;

/// Bytes read per step when walking the file backwards.
const SCAN_CHUNK_BYTES: usize = 64 << 10;

/// Longest path or caller written into an entry; a longer one is cut (the request line is the
/// client's, and a line of the audit log should stay a line).
const MAX_FIELD_CHARS: usize = 2_048;

/// What a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// Answered with a 1xx-3xx status.
    Ok,
    /// Refused by the access check (token, scope, host, origin, media type).
    Refused,
    /// Passed the check, then failed (a 4xx or 5xx from the endpoint).
    Failed,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the answer was decided, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The name of the token presented and known; `None` for an anonymous request.
    pub caller: Option<String>,
    /// The peer's address (`ip:port`), when known.
    pub remote: Option<String>,
    pub method: String,
    /// The request's path and query, as sent.
    pub path: String,
    /// The endpoint pattern it matched (`/v1/agents/{name}/run`), if any.
    pub endpoint: Option<String>,
    /// The scope the endpoint needs.
    pub scope: String,
    pub status: u16,
    pub result: AuditResult,
    /// Why a refused request was refused (the error code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Most refusals written per second: a client that sends a flood of refused requests gets its
/// first ones on record and the rest counted, and cannot fill the disk through the audit log.
pub const MAX_REFUSALS_PER_SECOND: u64 = 50;

/// Lines of the audit log since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    pub written: u64,
    /// Could not be written (a full disk): logged as errors.
    pub failed: u64,
    /// Refusals beyond [`MAX_REFUSALS_PER_SECOND`], counted only.
    pub suppressed: u64,
}

/// The append-only audit file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    written: AtomicU64,
    failed: AtomicU64,
    /// Refusals not written because [`MAX_REFUSALS_PER_SECOND`] was reached.
    suppressed: AtomicU64,
    /// The second (since the Unix epoch) refusals are being counted for, and how many so far.
    refusal_second: Mutex<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {source} (it lives in the log directory: set log.dir)")]
pub struct AuditOpenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl AuditLog {
    /// Opens (creating, mode 0600) `<dir>/audit.jsonl` for appending.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditOpenError> {
        let path = dir.join("audit.jsonl");
        let failed = |source| AuditOpenError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(failed)?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            refusal_second: Mutex::new((0, 0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was written, could not be written and was suppressed since start.
    pub fn counts(&self) -> AuditCounts {
        AuditCounts {
            written: self.written.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
        }
    }

    /// Appends a refusal, unless [`MAX_REFUSALS_PER_SECOND`] were written this second already
    /// (then it is counted as suppressed).
    pub fn append_refusal(&self, entry: AuditEntry) {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let admitted = {
            let mut window = evolve_core::sync::lock(&self.refusal_second);
            if window.0 != second {
                *window = (second, 0);
            }
            window.1 += 1;
            window.1 <= MAX_REFUSALS_PER_SECOND
        };
        if admitted {
            self.append(entry);
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends one entry as one line. A failure is logged and counted, never turned into the
    /// request's failure (the change it records has already happened).
    pub fn append(&self, mut entry: AuditEntry) {
        entry.path = cut(entry.path);
        entry.caller = entry.caller.map(cut);
        let mut line = match serde_json::to_vec(&entry) {
            Ok(line) => line,
            Err(err) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, "cannot encode an audit entry");
                return;
            }
        };
        line.push(b'\n');
        let result = evolve_core::sync::lock(&self.file).write_all(&line);
        match result {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), error = %err, "cannot append to the audit log");
            }
        }
    }

    /// The newest `limit` entries (newest first) whose caller is `caller` when given, reading
    /// back at most [`MAX_AUDIT_SCAN_BYTES`]; `truncated` when the scan stopped at that bound.
    pub fn newest(
        &self,
        limit: usize,
        caller: Option<&str>,
    ) -> std::io::Result<(Vec<Value>, bool)> {
        let mut file = File::open(&self.path)?;
        let mut end = file.seek(SeekFrom::End(0))?;
        let floor = end.saturating_sub(MAX_AUDIT_SCAN_BYTES);
        let mut entries = Vec::new();
        // Bytes of a line whose start lies in a chunk not read yet.
        let mut partial: Vec<u8> = Vec::new();
        while end > floor && entries.len() < limit {
            let start = end.saturating_sub(SCAN_CHUNK_BYTES as u64).max(floor);
            let mut chunk = vec![0u8; usize::try_from(end - start).unwrap_or(SCAN_CHUNK_BYTES)];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut chunk)?;
            chunk.extend_from_slice(&partial);
            let mut lines: Vec<&[u8]> = chunk.split(|b| *b == b'\n').collect();
            // The first piece may continue in the previous chunk, unless this one starts the file.
            let carried = if start > 0 {
                lines.remove(0).to_vec()
            } else {
                Vec::new()
            };
            for line in lines.iter().rev() {
                if entries.len() >= limit {
                    break;
                }
                push_entry(line, caller, &mut entries);
            }
            partial = carried;
            end = start;
        }
        if end == 0 && entries.len() < limit && !partial.is_empty() {
            push_entry(&partial, caller, &mut entries);
        }
        let truncated = end > 0 && end <= floor && entries.len() < limit;
        Ok((entries, truncated))
    }
}

fn push_entry(line: &[u8], caller: Option<&str>, entries: &mut Vec<Value>) {
    if line.is_empty() {
        return;
    }
    // A line that does not parse (a torn write after a full disk) is skipped, not fatal.
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    if caller.is_none_or(|wanted| value.get("caller").and_then(Value::as_str) == Some(wanted)) {
        entries.push(value);
    }
}

fn cut(text: String) -> String {
    if text.chars().count() <= MAX_FIELD_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_FIELD_CHARS).collect();
    cut.push('…');
    cut
}

/// The current time as the audit log writes it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Most entries, default 100, at most [`MAX_AUDIT_LIMIT`].
    limit: Option<usize>,
    /// Only this caller's entries (a token name).
    caller: Option<String>,
}

/// `GET /v1/audit`: the newest entries first.
pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(audit) = state.audit.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "this daemon runs without an audit log",
        ));
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_AUDIT_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_AUDIT_LIMIT}"
        )));
    }
    let caller = query.caller;
    let reader = audit.clone();
    let (entries, truncated) =
        tokio::task::spawn_blocking(move || reader.newest(limit, caller.as_deref()))
            .await
            .map_err(|e| read_failed(&e))?
            .map_err(|e| read_failed(&e))?;
    Ok(Json(json!({
        "entries": entries,
        "truncated": truncated,
        "counts": audit.counts(),
    })))
}

fn read_failed(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "audit_read_failed",
        format!("cannot read the audit log: {error}"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(n: usize, caller: Option<&str>) -> AuditEntry {
        AuditEntry {
            time: now(),
            caller: caller.map(str::to_string),
            remote: Some("127.0.0.1:5000".into()),
            method: "POST".into(),
            path: format!("/v1/plugins/p{n}/reload"),
            endpoint: Some("/v1/plugins/{name}/reload".into()),
            scope: "operate".into(),
            status: 200,
            result: AuditResult::Ok,
            reason: None,
        }
    }

    #[test]
    fn entries_come_back_newest_first_across_chunks_and_filtered_by_caller() {
        let dir = std::env::temp_dir().join(format!("evolve-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = AuditLog::open(&dir).unwrap();
        // Enough lines to span several read chunks.
        let total = 3_000;
        for n in 0..total {
            log.append(entry(n, Some(if n % 3 == 0 { "ops" } else { "ci" })));
        }
        assert_eq!(log.counts().written, total as u64);
        let (newest, truncated) = log.newest(5, None).unwrap();
        assert!(!truncated);
        let paths: Vec<&str> = newest.iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [2999, 2998, 2997, 2996, 2995].map(|n| format!("/v1/plugins/p{n}/reload"))
        );
        let (all, _) = log.newest(MAX_AUDIT_LIMIT, None).unwrap();
        assert_eq!(all.len(), total);
        assert_eq!(all[total - 1]["path"], "/v1/plugins/p0/reload");
        let (ops, _) = log.newest(MAX_AUDIT_LIMIT, Some("ops")).unwrap();
        assert_eq!(ops.len(), total / 3);
        assert!(ops.iter().all(|e| e["caller"] == "ops"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(log.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flood_of_refusals_is_written_up_to_the_budget_and_counted_beyond() {
        let dir = std::env::temp_dir().join(format!("evolve-audit-flood-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = AuditLog::open(&dir).unwrap();
        // Within one second (or two, if the clock ticks over mid-loop) of refusals.
        for n in 0..1_000 {
            log.append_refusal(entry(n, None));
        }
        let counts = log.counts();
        assert!(counts.written <= 2 * MAX_REFUSALS_PER_SECOND, "{counts:?}");
        assert_eq!(counts.written + counts.suppressed, 1_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_line_is_skipped_not_fatal() {
        let dir = std::env::temp_dir().join(format!("evolve-audit-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = AuditLog::open(&dir).unwrap();
        log.append(entry(1, None));
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"time\": \"2026-")
            .unwrap();
        let (entries, _) = log.newest(10, None).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["path"], "/v1/plugins/p1/reload");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
