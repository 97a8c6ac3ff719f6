//! Reading the other nodes: the full sync that makes this node's view correct (pub/sub is
//! at-most-once), incremental catalog updates and events pushed over pub/sub, peers joining and
//! expiring, and what each merge changed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use serde_json::json;
use tokio::time::Instant;

use super::{Driver, Ended, MAX_NAMES_IN_EVENT, MAX_PEERS, RedisResult};
use crate::status::PeerStatus;
use crate::wire::{self, CatalogOp, NodeRecord};
use evolve_core::events::{Event, EventKind};
use evolve_mesh::{MergeReport, ServiceSpec};

impl Driver {
    /// Re-reads every node's record and registrations: merges the live ones, expires the ones
    /// whose record lapsed, and re-announces this node if its own record is gone (Redis lost
    /// its data, or this node was cut off for longer than the TTL).
    pub(super) async fn full_sync(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
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

    pub(super) fn parse_specs(
        &self,
        node: &str,
        hash: Option<&HashMap<String, Vec<u8>>>,
    ) -> Vec<ServiceSpec> {
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
    pub(super) fn saw(&mut self, record: NodeRecord, services: usize) {
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

    pub(super) async fn expire_peer(&mut self, node: &str, reason: &str) {
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
    pub(super) fn report_merge(&self, node: &str, cause: &str, report: &MergeReport) {
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
    pub(super) async fn on_push(
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
        if update.node == self.node || crate::config::validate_node_id(&update.node).is_err() {
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
}
