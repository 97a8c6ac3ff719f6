//! The health vocabulary every part of the daemon speaks: a [`Status`] ordered from best to
//! worst, and a [`Part`] (a status, the reasons for it and the figures behind it). The rules that
//! judge each part live with the daemon's system health; a lower crate that reports its own part
//! (the cluster) implements [`ClusterHealth`].

use serde::Serialize;
use serde_json::Value;

/// A part's or the whole system's status; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// One part of the system health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    pub status: Status,
    /// Why the part is not healthy, one sentence each (empty when healthy).
    pub reasons: Vec<String>,
    /// The figures behind the verdict.
    pub detail: Value,
}

impl Part {
    /// Unhealthy when any `unhealthy` reason exists, else degraded when any `degraded` one
    /// does; the reasons are kept worst first.
    pub fn from_reasons(unhealthy: Vec<String>, degraded: Vec<String>, detail: Value) -> Part {
        let status = if !unhealthy.is_empty() {
            Status::Unhealthy
        } else if !degraded.is_empty() {
            Status::Degraded
        } else {
            Status::Healthy
        };
        let mut reasons = unhealthy;
        reasons.extend(degraded);
        Part {
            status,
            reasons,
            detail,
        }
    }
}

/// The cluster's part of the health (Redis-backed clustering). The daemon installs one with
/// the API state's `with_cluster` when clustering is configured; without one the
/// `cluster` part says `not configured` and is healthy. An implementation should answer from
/// state it keeps current (e.g. its last ping), not make a round trip per request.
#[async_trait::async_trait]
pub trait ClusterHealth: Send + Sync {
    async fn part(&self) -> Part;
}
