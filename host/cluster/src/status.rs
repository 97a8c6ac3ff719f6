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
    /// Peer messages or specs skipped as malformed or refused by the mesh's validation.
    pub rejected: u64,
    /// Peer registrations dropped by a cap (nodes, services per node, instances per service,
    /// remote services in all).
    pub capped: u64,
    pub full_syncs: u64,
    /// Peers expired because their heartbeat lapsed.
    pub peers_expired: u64,
    /// Age of the last incremental update when it arrived (publisher's clock to ours), ms.
    pub last_update_lag_ms: Option<i64>,
}

/// Who may act as a node: the shared key's mode, and every peer record or message refused
/// because its seal did not open (each reason counted).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthStats {
    /// `hmac-sha256` (cluster.key_file), `unauthenticated` (cluster.allow_unauthenticated) or
    /// `disabled` (no cluster).
    pub mode: &'static str,
    /// Every refusal below but `superseded`: what a node without the key (or a replay) tried.
    pub refused: u64,
    /// No signature, in a cluster with a key (also: a node of wire version 1).
    pub unsigned: u64,
    /// A signature that does not verify, or a registration that does not match its node's
    /// signed record.
    pub bad_tag: u64,
    /// Validly signed, but found where another node's belongs.
    pub node_mismatch: u64,
    /// A sequence at or below one already accepted from that node.
    pub replayed: u64,
    /// Signed longer ago than the TTL plus the allowed clock skew.
    pub stale: u64,
    /// A signed upsert or remove that the node's own current record contradicts.
    pub unconfirmed: u64,
    /// Valid updates older than the node's record already applied (pub/sub and the sync
    /// raced); not counted in `refused`, the record carries their change.
    pub superseded: u64,
}

impl AuthStats {
    pub fn count(&mut self, reason: crate::seal::Reason) {
        use crate::seal::Reason;
        let counter = match reason {
            Reason::Malformed => return,
            Reason::Superseded => {
                self.superseded += 1;
                return;
            }
            Reason::Unsigned => &mut self.unsigned,
            Reason::BadTag => &mut self.bad_tag,
            Reason::NodeMismatch => &mut self.node_mismatch,
            Reason::Replayed => &mut self.replayed,
            Reason::Stale => &mut self.stale,
            Reason::Unconfirmed => &mut self.unconfirmed,
        };
        *counter += 1;
        self.refused += 1;
    }
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
    pub auth: AuthStats,
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
            auth: AuthStats {
                mode: if enabled {
                    "unauthenticated"
                } else {
                    "disabled"
                },
                ..AuthStats::default()
            },
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
