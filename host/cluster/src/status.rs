//! What `GET /v1/cluster`, `evolve cluster` and the metrics show: the connection, the peers, the
//! last sync and the event counters. The driver writes it, readers take snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The connection to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// No `[cluster] redis_url`: a single daemon.
    Disabled,
    /// First attempt in progress.
    Connecting,
    Connected,
    /// Unreachable; serving on the last known catalog and retrying with backoff.
    Disconnected,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Disabled => "disabled",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
        }
    }
}

/// Another daemon as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub node: String,
    pub api: String,
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat, by its clock.
    pub heartbeat_at: DateTime<Utc>,
    /// When this daemon last saw it alive (a sync found its record, or an update arrived).
    pub last_seen: DateTime<Utc>,
    /// Services it registered (and this daemon merged).
    pub services: usize,
    /// Instance health as that node sees it: service → instance → state.
    pub health: BTreeMap<String, BTreeMap<String, String>>,
}

/// The event publisher's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventStats {
    pub published: u64,
    /// Waiting for Redis now.
    pub buffered: usize,
    pub buffer_capacity: usize,
    /// Lost: the buffer overflowed while Redis was unreachable.
    pub dropped: u64,
}

/// The shared catalog's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatalogStats {
    /// Local services announced to the cluster.
    pub announced: usize,
    /// Remote services merged into the routing table.
    pub remote_services: usize,
    pub updates_sent: u64,
    pub updates_received: u64,
    /// Peer messages or specs skipped as malformed or refused.
    pub rejected: u64,
    pub full_syncs: u64,
    /// Peers expired because their heartbeat lapsed.
    pub peers_expired: u64,
    /// Age of the last incremental update when it arrived (publisher's clock to ours), ms.
    pub last_update_lag_ms: Option<i64>,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub enabled: bool,
    pub node: String,
    /// The Redis URL with any password hidden; none when disabled.
    pub redis_url: Option<String>,
    pub state: ConnectionState,
    /// Since when `state` holds.
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
    pub connects: u64,
    /// The next connection attempt, while disconnected.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_sync_ms: Option<u64>,
    /// Time since the last full sync, ms.
    pub sync_lag_ms: Option<i64>,
    pub heartbeat_ttl_s: u64,
    pub sync_interval_s: u64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub peers: Vec<PeerStatus>,
    pub events: EventStats,
    pub catalog: CatalogStats,
}

/// Cheap to clone; the driver writes, everyone else reads.
#[derive(Debug, Clone)]
pub struct SharedStatus(Arc<Mutex<ClusterStatus>>);

impl SharedStatus {
    pub fn new(node: String, redis_url: Option<String>, ttl_s: u64, sync_s: u64) -> SharedStatus {
        let enabled = redis_url.is_some();
        SharedStatus(Arc::new(Mutex::new(ClusterStatus {
            enabled,
            node,
            redis_url,
            state: if enabled {
                ConnectionState::Connecting
            } else {
                ConnectionState::Disabled
            },
            since: Utc::now(),
            last_error: None,
            connects: 0,
            next_attempt_at: None,
            last_sync_at: None,
            last_sync_ms: None,
            sync_lag_ms: None,
            heartbeat_ttl_s: ttl_s,
            sync_interval_s: sync_s,
            last_heartbeat_at: None,
            peers: Vec::new(),
            events: EventStats::default(),
            catalog: CatalogStats::default(),
        })))
    }

    pub fn update(&self, f: impl FnOnce(&mut ClusterStatus)) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard);
    }

    /// A snapshot with the time-dependent fields computed now.
    pub fn snapshot(&self) -> ClusterStatus {
        let mut status = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        status.sync_lag_ms = status
            .last_sync_at
            .map(|at| (Utc::now() - at).num_milliseconds());
        status
    }

    pub fn set_state(&self, state: ConnectionState, error: Option<String>) {
        self.update(|s| {
            if s.state != state {
                s.since = Utc::now();
            }
            s.state = state;
            if error.is_some() || state == ConnectionState::Connected {
                s.last_error = error;
            }
            if state == ConnectionState::Connected {
                s.connects += 1;
                s.next_attempt_at = None;
            }
        });
    }
}
