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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use evolve_core::backoff::{Backoff, Jitter};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::SharedCatalog;
use super::config::ClusterConfig;
use super::outbox::{Outbox, Outgoing};
use super::status::{ConnectionState, PeerStatus, SharedStatus};
use super::wire::{self, CatalogOp, CatalogUpdate, EventEnvelope, Keys, NodeRecord, WIRE_VERSION};
use evolve_core::events::{Event, EventBus, EventKind};
use evolve_mesh::{MergeReport, ServiceSpec};

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
    outbox: Outbox,
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
        catalog: Arc<dyn SharedCatalog>,
        events: EventBus,
        status: SharedStatus,
    ) -> Driver {
        Driver {
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

    fn record(&self, services: usize) -> String {
        let record = NodeRecord {
            v: WIRE_VERSION,
            node: self.node.clone(),
            api: self.api.clone(),
            started_at: self.started_at,
            heartbeat_at: Utc::now(),
            services,
            health: self.catalog.health_seen(),
        };
        serde_json::to_string(&record).unwrap_or_default()
    }

    fn update_json(&self, op: CatalogOp) -> String {
        serde_json::to_string(&CatalogUpdate {
            v: WIRE_VERSION,
            node: self.node.clone(),
            at: Utc::now(),
            op,
        })
        .unwrap_or_default()
    }

    /// Rewrites this node's registrations and record from scratch, then tells the peers.
    async fn announce_all(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        let local: BTreeMap<String, ServiceSpec> = self
            .catalog
            .local_specs()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let services_key = self.keys.services(&self.node);
        let ttl = self.config.heartbeat_ttl_s;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(&services_key).ignore();
        if !local.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(&services_key);
            for (name, spec) in &local {
                hset.arg(name)
                    .arg(serde_json::to_string(spec).unwrap_or_default());
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("EXPIRE").arg(&services_key).arg(ttl).ignore();
        }
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(self.record(local.len()))
            .arg("EX")
            .arg(ttl)
            .ignore();
        pipe.query_async::<()>(con).await?;
        redis::cmd("PUBLISH")
            .arg(self.keys.catalog_channel())
            .arg(self.update_json(CatalogOp::Announce))
            .query_async::<()>(con)
            .await?;
        let count = local.len();
        self.announced = Some(local);
        self.status.update(|s| {
            s.catalog.announced = count;
            s.catalog.updates_sent += 1;
            s.last_heartbeat_at = Some(Utc::now());
        });
        Ok(())
    }

    /// Writes what changed in the local catalog since the last announcement and publishes one
    /// update per change.
    async fn announce_changes(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        let Some(announced) = &self.announced else {
            return self.announce_all(con).await;
        };
        let local: BTreeMap<String, ServiceSpec> = self
            .catalog
            .local_specs()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let upserts: Vec<&ServiceSpec> = local
            .values()
            .filter(|s| announced.get(&s.name) != Some(*s))
            .collect();
        let removals: Vec<&String> = announced
            .keys()
            .filter(|name| !local.contains_key(*name))
            .collect();
        if upserts.is_empty() && removals.is_empty() {
            return Ok(());
        }
        let services_key = self.keys.services(&self.node);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for spec in &upserts {
            pipe.cmd("HSET")
                .arg(&services_key)
                .arg(&spec.name)
                .arg(serde_json::to_string(spec).unwrap_or_default())
                .ignore();
        }
        for name in &removals {
            pipe.cmd("HDEL")
                .arg(&services_key)
                .arg(name.as_str())
                .ignore();
        }
        pipe.cmd("EXPIRE")
            .arg(&services_key)
            .arg(self.config.heartbeat_ttl_s)
            .ignore();
        // The record too, so its service count and health view match the new catalog.
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(self.record(local.len()))
            .arg("EX")
            .arg(self.config.heartbeat_ttl_s)
            .ignore();
        pipe.query_async::<()>(con).await?;
        let mut publish = redis::pipe();
        let channel = self.keys.catalog_channel();
        for spec in &upserts {
            publish
                .cmd("PUBLISH")
                .arg(&channel)
                .arg(self.update_json(CatalogOp::Upsert {
                    spec: Box::new((*spec).clone()),
                }))
                .ignore();
        }
        for name in &removals {
            publish
                .cmd("PUBLISH")
                .arg(&channel)
                .arg(self.update_json(CatalogOp::Remove {
                    service: (*name).clone(),
                }))
                .ignore();
        }
        publish.query_async::<()>(con).await?;
        let sent = (upserts.len() + removals.len()) as u64;
        let count = local.len();
        self.announced = Some(local);
        self.status.update(|s| {
            s.catalog.announced = count;
            s.catalog.updates_sent += sent;
        });
        Ok(())
    }

    /// Refreshes this node's record and the expiry of its registrations; re-announces them if
    /// their hash is gone while the record lived on (deleted by hand, evicted under
    /// `maxmemory`), since peers would otherwise see this node with no services until it restarts.
    async fn heartbeat(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        let count = self.announced.as_ref().map_or(0, BTreeMap::len);
        let ttl = self.config.heartbeat_ttl_s;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(self.record(count))
            .arg("EX")
            .arg(ttl)
            .ignore();
        // 1 when the hash exists (its expiry is refreshed), 0 when it is missing.
        pipe.cmd("EXPIRE")
            .arg(self.keys.services(&self.node))
            .arg(ttl);
        let (refreshed,): (i64,) = pipe.query_async(con).await?;
        if count > 0 && refreshed == 0 {
            tracing::warn!(
                node = %self.node,
                services = count,
                "this node's registrations vanished from Redis; announcing them again"
            );
            return self.announce_all(con).await;
        }
        self.status
            .update(|s| s.last_heartbeat_at = Some(Utc::now()));
        Ok(())
    }

    /// Re-reads every node's record and registrations: merges the live ones, expires the ones
    /// whose record lapsed, and re-announces this node if its own record is gone (Redis lost
    /// its data, or this node was cut off for longer than the TTL).
    async fn full_sync(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        let started = Instant::now();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.keys.node_pattern())
                .arg("COUNT")
                .arg(1_000)
                .query_async(con)
                .await?;
            keys.extend(batch);
            if next == 0 || keys.len() >= MAX_PEERS {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys.truncate(MAX_PEERS);
        let nodes: Vec<String> = keys
            .iter()
            .filter_map(|k| self.keys.node_of(k))
            .map(str::to_string)
            .collect();
        if !nodes.contains(&self.node) {
            tracing::info!(node = %self.node, "this node's record is missing from Redis: announcing its services again");
            self.announce_all(con).await?;
        }
        let peers: Vec<&String> = nodes.iter().filter(|n| **n != self.node).collect();
        let mut records: Vec<Option<Vec<u8>>> = Vec::new();
        let mut hashes: Vec<HashMap<String, Vec<u8>>> = Vec::new();
        if !peers.is_empty() {
            let mut pipe = redis::pipe();
            for peer in &peers {
                pipe.cmd("GET").arg(self.keys.node(peer));
            }
            for peer in &peers {
                pipe.cmd("HGETALL").arg(self.keys.services(peer));
            }
            let values: Vec<Value> = pipe.query_async(con).await?;
            let (record_values, hash_values) = values.split_at(peers.len().min(values.len()));
            for value in record_values {
                records.push(redis::from_redis_value_ref(value).unwrap_or(None));
            }
            for value in hash_values {
                hashes.push(redis::from_redis_value_ref(value).unwrap_or_default());
            }
        }
        let mut alive = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let Some(Some(bytes)) = records.get(i) else {
                continue; // expired between SCAN and GET
            };
            let record = match wire::parse_record(bytes) {
                Ok(record) if record.node == **peer => record,
                Ok(record) => {
                    tracing::warn!(key = %self.keys.node(peer), claims = %record.node, "skipping a node record whose node id does not match its key");
                    self.status.update(|s| s.catalog.rejected += 1);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(node = %peer, %error, "skipping a node record");
                    self.status.update(|s| s.catalog.rejected += 1);
                    continue;
                }
            };
            let specs = self.parse_specs(peer, hashes.get(i));
            let count = specs.len();
            let report = self.catalog.set_remote_node(peer, specs).await;
            self.report_merge(peer, "sync", &report);
            self.saw(record, count);
            alive.push((*peer).clone());
        }
        // Expire peers whose record lapsed: only a successful read of Redis can say so, and
        // only after a whole TTL connected (see `connected_at`).
        let settled = self
            .connected_at
            .is_some_and(|at| at.elapsed() >= Duration::from_secs(self.config.heartbeat_ttl_s));
        let gone: Vec<String> = self
            .peers
            .keys()
            .chain(self.catalog.remote_nodes().iter())
            .filter(|n| settled && !alive.contains(n))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for node in gone {
            self.expire_peer(&node, "heartbeat expired").await;
        }
        let took = started.elapsed();
        let peers_now: Vec<PeerStatus> = self.peers.values().cloned().collect();
        let remote = self.catalog.remote_count();
        self.status.update(|s| {
            s.last_sync_at = Some(Utc::now());
            s.last_sync_ms = Some(took.as_millis() as u64);
            s.catalog.full_syncs += 1;
            s.catalog.remote_services = remote;
            s.peers = peers_now;
        });
        Ok(())
    }

    fn parse_specs(&self, node: &str, hash: Option<&HashMap<String, Vec<u8>>>) -> Vec<ServiceSpec> {
        let mut specs = Vec::new();
        for (name, bytes) in hash.into_iter().flatten() {
            match wire::parse_spec(bytes) {
                Ok(spec) if spec.name == *name => specs.push(spec),
                Ok(_) | Err(_) => {
                    tracing::warn!(%node, service = %name.chars().take(80).collect::<String>(), "skipping a malformed registration of a peer");
                    self.status.update(|s| s.catalog.rejected += 1);
                }
            }
        }
        specs
    }

    /// Records that `record`'s node is alive.
    fn saw(&mut self, record: NodeRecord, services: usize) {
        let node = record.node.clone();
        let joined = !self.peers.contains_key(&node);
        self.peers.insert(
            node.clone(),
            PeerStatus {
                node: node.clone(),
                api: record.api,
                started_at: record.started_at,
                heartbeat_at: record.heartbeat_at,
                last_seen: Utc::now(),
                services,
                health: record.health,
            },
        );
        if joined {
            self.events.publish(Event::new(
                EventKind::ClusterPeerJoined,
                &node,
                json!({ "services": services }),
            ));
        }
    }

    async fn expire_peer(&mut self, node: &str, reason: &str) {
        let report = self.catalog.forget_remote_node(node).await;
        let known = self.peers.remove(node).is_some();
        if known || report.changed() {
            self.status.update(|s| s.catalog.peers_expired += 1);
            self.events.publish(Event::new(
                EventKind::ClusterPeerLost,
                node,
                json!({ "reason": reason, "services_removed": report.removed.len() }),
            ));
            self.report_merge(node, reason, &report);
        }
        let peers_now: Vec<PeerStatus> = self.peers.values().cloned().collect();
        self.status.update(|s| s.peers = peers_now);
    }

    /// Logs and publishes what a merge changed.
    fn report_merge(&self, node: &str, cause: &str, report: &MergeReport) {
        for (service, reason) in &report.rejected {
            tracing::warn!(%node, %service, %reason, "refused a peer's registration");
        }
        if !report.rejected.is_empty() {
            let n = report.rejected.len() as u64;
            self.status.update(|s| s.catalog.rejected += n);
        }
        if !report.changed() {
            return;
        }
        let names = |v: &[String]| {
            v.iter()
                .take(MAX_NAMES_IN_EVENT)
                .cloned()
                .collect::<Vec<_>>()
        };
        self.events.publish(Event::new(
            EventKind::ClusterCatalogMerged,
            node,
            json!({
                "cause": cause,
                "added": names(&report.added),
                "updated": names(&report.updated),
                "removed": names(&report.removed),
                "counts": {
                    "added": report.added.len(),
                    "updated": report.updated.len(),
                    "removed": report.removed.len(),
                },
            }),
        ));
        let remote = self.catalog.remote_count();
        self.status.update(|s| s.catalog.remote_services = remote);
    }

    /// A message on a subscribed channel.
    async fn on_push(
        &mut self,
        con: &mut MultiplexedConnection,
        info: PushInfo,
    ) -> Result<(), Ended> {
        match info.kind {
            PushKind::Disconnection => {
                return Err(Ended::Lost("Redis closed the connection".into()));
            }
            PushKind::Message => {}
            _ => return Ok(()),
        }
        let Some(payload) = info.data.get(1) else {
            return Ok(());
        };
        let bytes: Vec<u8> = redis::from_redis_value_ref(payload).unwrap_or_default();
        let update = match wire::parse_update(&bytes) {
            Ok(update) => update,
            Err(error) => {
                tracing::warn!(%error, "skipping a catalog update");
                self.status.update(|s| s.catalog.rejected += 1);
                return Ok(());
            }
        };
        if update.node == self.node || super::config::validate_node_id(&update.node).is_err() {
            return Ok(());
        }
        let lag = (Utc::now() - update.at).num_milliseconds();
        self.status.update(|s| {
            s.catalog.updates_received += 1;
            s.catalog.last_update_lag_ms = Some(lag);
        });
        if let Some(peer) = self.peers.get_mut(&update.node) {
            peer.last_seen = Utc::now();
        }
        let node = update.node;
        match update.op {
            CatalogOp::Upsert { spec } => {
                let report = self.catalog.upsert_remote(&node, *spec).await;
                self.report_merge(&node, "update", &report);
            }
            CatalogOp::Remove { service } => {
                let report = self.catalog.remove_remote(&node, &service).await;
                self.report_merge(&node, "update", &report);
            }
            CatalogOp::Announce => {
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(self.keys.node(&node));
                pipe.cmd("HGETALL").arg(self.keys.services(&node));
                let (record, hash): (Option<Vec<u8>>, HashMap<String, Vec<u8>>) =
                    pipe.query_async(con).await?;
                let specs = self.parse_specs(&node, Some(&hash));
                let count = specs.len();
                let report = self.catalog.set_remote_node(&node, specs).await;
                self.report_merge(&node, "announce", &report);
                if let Some(Ok(record)) = record.map(|r| wire::parse_record(&r))
                    && record.node == node
                {
                    self.saw(record, count);
                }
            }
            CatalogOp::Leave => self.expire_peer(&node, "left the cluster").await,
        }
        let peers_now: Vec<PeerStatus> = self.peers.values().cloned().collect();
        self.status.update(|s| s.peers = peers_now);
        Ok(())
    }

    /// On shutdown: withdraws this node's registrations and tells the peers, so they stop
    /// routing to it at once instead of after the TTL. Best effort, bounded by the command
    /// timeout.
    async fn leave(&mut self, con: &mut MultiplexedConnection) {
        let _ = self.flush(con).await;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.keys.node(&self.node))
            .arg(self.keys.services(&self.node))
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(self.keys.catalog_channel())
            .arg(self.update_json(CatalogOp::Leave))
            .ignore();
        match pipe.query_async::<()>(con).await {
            Ok(()) => tracing::info!(node = %self.node, "left the cluster"),
            Err(error) => {
                tracing::warn!(%error, "could not leave the cluster cleanly; peers expire this node after the TTL")
            }
        }
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
