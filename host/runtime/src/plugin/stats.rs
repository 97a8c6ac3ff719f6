//! Per-plugin call statistics: counters by outcome, busy time, and the most recent failure,
//! which the API and the inventory report.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::CallError;

/// Per-plugin call counters.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub overloaded: AtomicU64,
    pub busy_us: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

/// The most recent failed call of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub code: &'static str,
    pub message: String,
}

impl PluginStats {
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(super) fn record(&self, elapsed: Duration, outcome: Result<(), &CallError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.busy_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if matches!(
                    e,
                    CallError::Overloaded { .. } | CallError::Quarantined { .. }
                ) {
                    self.overloaded.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                let last = LastError {
                    at: Utc::now(),
                    code: e.code(),
                    message: e.to_string(),
                };
                if let Ok(mut slot) = self.last_error.lock() {
                    *slot = Some(last);
                }
            }
        }
    }
}
