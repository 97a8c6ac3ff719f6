//! The cluster driver: one task per daemon that keeps the Redis connection and, over it,
//! announces this node's services, merges the other nodes' ones and publishes the bus's events.
//!
//! States (numbered as in the code):
//! 1. **connect** — open a RESP3 connection (pushes arrive on a channel) within
//!    `connect_timeout_ms`; on failure go to 5.
//! 2. **join** — subscribe to the catalog channel, write all local registrations afresh
//!    (`announce`), fully sync the peers, flush buffered events. Connected from here.
//! 3. **run** — react to the bus (queue the event, publish; on a local registration change,
//!    write the difference and publish incremental updates), to peers' catalog updates, to
//!    the heartbeat tick (refresh this node's record and expiry) and to the jittered sync tick
//!    (re-read every peer: pub/sub is at-most-once, the sync is what makes the view correct).
//! 4. **lost** — any Redis error or a dropped connection ends the session. Nothing local is
//!    undone: routing keeps the last known catalog (remote services are never expired because
//!    *this* node cannot reach Redis), events queue in the bounded outbox.
//! 5. **back off** — wait `reconnect_min_ms × 2ⁿ` (capped at `reconnect_max_ms`, upper half
//!    jittered) while still queueing events, then go to 1.
//!
//! | module | the driver's work on a live connection |
//! |---|---|
//! | [`announce`] | this node's side: record, heartbeat, services hash, catalog updates, leaving |
//! | [`peers`] | the other nodes: full sync, pushed updates, joins and expiry, each record and update opened with the shared key first |

mod announce;
mod peers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use evolve_core::backoff::{Backoff, Jitter};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::SharedCatalog;
use crate::config::ClusterConfig;
use crate::outbox::{Outbox, Outgoing};
use crate::seal::{Sealer, Sequences};
use crate::status::{ConnectionState, PeerStatus, SharedStatus};
use crate::wire::{EventEnvelope, Keys};
use evolve_core::events::{Event, EventBus, EventKind};
use evolve_mesh::ServiceSpec;

/// Most node records read in one sync: a bound on what a crowded or hostile Redis can make
/// this daemon hold.
const MAX_PEERS: usize = 1_024;
/// Events sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 256;
/// Service names listed in one `cluster.catalog_merged` event (the counts are always complete).
const MAX_NAMES_IN_EVENT: usize = 50;

type RedisResult<T> = Result<T, redis::RedisError>;

/// Everything the driver needs; built by [`super::Cluster::start`].
pub(super) struct Driver {
    pub config: ClusterConfig,
    pub node: String,
    pub api: String,
    pub keys: Keys,
    pub catalog: Arc<dyn SharedCatalog>,
    pub events: EventBus,
    pub status: SharedStatus,
    pub started_at: chrono::DateTime<Utc>,
    /// Seals this node's records and updates, opens the peers'.
    sealer: Sealer,
    /// The sequence of this node's last sealed record or update.
    sealed_seq: u64,
    /// The peers' last accepted sequences.
    seqs: Sequences,
    outbox: Outbox,
    /// Per-node number of the published events (contiguous: a gap tells a follower it missed
    /// some); not the sealed sequence.
    seq: u64,
    /// What this node's services hash holds; `None` = unknown (write it all afresh).
    announced: Option<BTreeMap<String, ServiceSpec>>,
    peers: BTreeMap<String, PeerStatus>,
    /// Start of the current session: a peer whose record is missing is expired only once this
    /// node has been connected for a whole TTL (after a Redis restart, live peers need up to
    /// their reconnect backoff to write their records again).
    connected_at: Option<Instant>,
}

/// Why a session ended.
#[derive(Debug)]
enum Ended {
    /// The daemon is stopping.
    Shutdown,
    Lost(String),
}

impl From<redis::RedisError> for Ended {
    fn from(error: redis::RedisError) -> Ended {
        Ended::Lost(error.to_string())
    }
}

impl Driver {
    pub(super) fn new(
        config: ClusterConfig,
        node: String,
        api: String,
        sealer: Sealer,
        catalog: Arc<dyn SharedCatalog>,
        events: EventBus,
        status: SharedStatus,
    ) -> Driver {
        Driver {
            sealer,
            sealed_seq: 0,
            seqs: Sequences::default(),
            keys: Keys::new(&config.channel_prefix),
            outbox: Outbox::new(config.event_buffer),
            config,
            node,
            api,
            catalog,
            events,
            status,
            started_at: Utc::now(),
            seq: 0,
            announced: None,
            peers: BTreeMap::new(),
            connected_at: None,
        }
    }

    /// Runs until `stop` turns true: then leaves the cluster (best effort) and returns.
    pub(super) async fn run(
        mut self,
        client: Client,
        mut bus: broadcast::Receiver<Event>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failures: u32 = 0;
        let mut announced_down = false;
        loop {
            // 1. connect
            let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
            let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
            let connection_config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(Duration::from_millis(self.config.command_timeout_ms)))
                .set_push_sender(push_tx);
            let connected = tokio::time::timeout(
                connect_timeout,
                client.get_multiplexed_async_connection_with_config(&connection_config),
            )
            .await;
            let error = match connected {
                Ok(Ok(mut con)) => {
                    // 2. join, 3. run
                    let ended = self
                        .session(&mut con, &mut push_rx, &mut bus, &mut stop, &mut failures)
                        .await;
                    match ended {
                        Ended::Shutdown => {
                            self.leave(&mut con).await;
                            return;
                        }
                        // 4. lost
                        Ended::Lost(error) => {
                            if self.status.snapshot().state == ConnectionState::Connected {
                                tracing::warn!(%error, "lost the connection to Redis: routing continues on the last known catalog, events are buffered (up to cluster.event_buffer)");
                                self.events.publish(Event::new(
                                    EventKind::ClusterDisconnected,
                                    &self.node,
                                    json!({ "error": error }),
                                ));
                                announced_down = true;
                            }
                            error
                        }
                    }
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no connection within {} ms", self.config.connect_timeout_ms),
            };
            self.announced = None;
            if !announced_down {
                tracing::warn!(%error, redis = %self.status.snapshot().redis_url.unwrap_or_default(), "Redis is unreachable: serving locally (this node's own catalog and events) and retrying with backoff");
                announced_down = true;
            }
            self.status
                .set_state(ConnectionState::Disconnected, Some(error));
            // 5. back off, still queueing events
            let wait = backoff(
                self.config.reconnect_min_ms,
                self.config.reconnect_max_ms,
                failures,
            );
            failures = failures.saturating_add(1);
            self.status.update(|s| {
                s.next_attempt_at = chrono::Duration::from_std(wait)
                    .ok()
                    .map(|d| Utc::now() + d);
            });
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    received = bus.recv() => {
                        if !self.take(received) {
                            return;
                        }
                    }
                    _ = stopped(&mut stop) => return,
                }
            }
            self.publish_counters();
        }
    }

    /// Steps 2 and 3 on a live connection.
    async fn session(
        &mut self,
        con: &mut MultiplexedConnection,
        push_rx: &mut mpsc::UnboundedReceiver<PushInfo>,
        bus: &mut broadcast::Receiver<Event>,
        stop: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Ended {
        // 2. join
        if let Err(error) = self.join(con).await {
            return error.into();
        }
        *failures = 0;
        self.status.set_state(ConnectionState::Connected, None);
        tracing::info!(node = %self.node, peers = self.peers.len(), "connected to Redis: joined the cluster");
        self.events.publish(Event::new(
            EventKind::ClusterConnected,
            &self.node,
            json!({ "peers": self.peers.keys().collect::<Vec<_>>() }),
        ));
        // 3. run
        let heartbeat_every = Duration::from_secs(self.config.heartbeat_interval_s);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_sync = Instant::now() + self.sync_period();
        loop {
            let step: Result<(), Ended> = tokio::select! {
                received = bus.recv() => {
                    let registration = matches!(
                        &received,
                        Ok(e) if matches!(e.kind, EventKind::ServiceRegistered | EventKind::ServiceDeregistered)
                    ) || matches!(received, Err(broadcast::error::RecvError::Lagged(_)));
                    if !self.take(received) {
                        return Ended::Shutdown;
                    }
                    async {
                        if registration {
                            self.announce_changes(con).await?;
                        }
                        self.flush(con).await?;
                        Ok(())
                    }.await
                }
                push = push_rx.recv() => match push {
                    Some(info) => self.on_push(con, info).await,
                    None => Err(Ended::Lost("the connection closed".into())),
                },
                _ = heartbeat.tick() => async {
                    self.announce_changes(con).await?;
                    self.heartbeat(con).await?;
                    Ok(())
                }.await,
                _ = tokio::time::sleep_until(next_sync) => {
                    next_sync = Instant::now() + self.sync_period();
                    self.full_sync(con).await.map_err(Ended::from)
                }
                _ = stopped(stop) => return Ended::Shutdown,
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    async fn join(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        self.connected_at = Some(Instant::now());
        con.subscribe(self.keys.catalog_channel()).await?;
        self.announce_all(con).await?;
        self.full_sync(con).await?;
        self.flush(con).await?;
        Ok(())
    }

    /// Takes one bus delivery into the outbox; false when the bus is gone (shutdown).
    fn take(&mut self, received: Result<Event, broadcast::error::RecvError>) -> bool {
        match received {
            Ok(event) => {
                if self.config.publish_events {
                    self.seq += 1;
                    let envelope = EventEnvelope {
                        node: &self.node,
                        seq: self.seq,
                        event: &event,
                    };
                    if let Ok(payload) = serde_json::to_string(&envelope) {
                        self.outbox.push(Outgoing {
                            channel: self.keys.events_channel(event.kind.as_str()),
                            payload,
                        });
                    }
                }
                self.publish_counters();
                true
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.seq += missed;
                self.outbox.count_dropped(missed);
                self.publish_counters();
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    /// Publishes the outbox, oldest first; an event leaves it only once Redis took it.
    async fn flush(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        while !self.outbox.is_empty() {
            let batch = self.outbox.peek(PUBLISH_BATCH);
            let mut pipe = redis::pipe();
            for item in &batch {
                pipe.cmd("PUBLISH")
                    .arg(&item.channel)
                    .arg(&item.payload)
                    .ignore();
            }
            pipe.query_async::<()>(con).await?;
            self.outbox.commit(batch.len());
            self.status
                .update(|s| s.events.published += batch.len() as u64);
        }
        self.publish_counters();
        Ok(())
    }

    fn publish_counters(&self) {
        let (buffered, dropped, capacity) = (
            self.outbox.len(),
            self.outbox.dropped(),
            self.outbox.capacity(),
        );
        self.status.update(|s| {
            s.events.buffered = buffered;
            s.events.dropped = dropped;
            s.events.buffer_capacity = capacity;
        });
    }

    fn sync_period(&self) -> Duration {
        evolve_core::rng::jitter(
            Duration::from_secs(self.config.sync_interval_s),
            self.config.sync_jitter_pct,
        )
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// The wait before reconnect attempt `failures + 1`: `min × 2^failures`, capped at `max`
/// (at least 1 ms), the upper half jittered so the nodes of a cluster do not reconnect in step.
pub fn backoff(min_ms: u64, max_ms: u64, failures: u32) -> Duration {
    Backoff {
        base: Duration::from_millis(min_ms.max(1)),
        max: Duration::from_millis(max_ms.max(1)),
        jitter: Jitter::UpperHalf,
    }
    .delay(failures.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_in_the_upper_half() {
        for failures in 0..40 {
            let full = (200u64 << failures.min(20)).min(10_000);
            let wait = backoff(200, 10_000, failures).as_millis() as u64;
            assert!(
                wait >= full / 2 && wait <= full,
                "{failures}: {wait} vs {full}"
            );
        }
    }
}
