//! Reading the other nodes: the full sync that makes this node's view correct (pub/sub is
//! at-most-once), incremental catalog updates pushed over pub/sub, peers joining and expiring,
//! and what each merge changed.
//!
//! Nothing a peer wrote is acted on before its seal opens ([`crate::seal`]): a record must be
//! signed by the node whose key it sits under, fresh, and not older than the last accepted; a
//! registration in a node's hash counts only when it matches the digest its record lists; an
//! update must be signed, fresh and newer than everything accepted from its node. Whatever is
//! refused changes nothing and is counted (`auth` in `GET /v1/cluster`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use serde_json::json;
use tokio::time::Instant;

use super::{Driver, Ended, MAX_NAMES_IN_EVENT, MAX_PEERS, RedisResult};
use crate::seal::{self, Reason, Refusal, SealKind};
use crate::status::PeerStatus;
use crate::wire::{self, CatalogOp, NodeRecord};
use evolve_core::events::{Event, EventKind};
use evolve_mesh::remote::MAX_REMOTE_SPECS_PER_NODE;
use evolve_mesh::{MergeReport, ServiceSpec};

/// A node record whose seal opened, with the registrations it vouches for.
struct Verified {
    record: NodeRecord,
    seq: u64,
    specs: Vec<ServiceSpec>,
}

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
            // One transaction, so each record is read with the hash it was written with.
            let mut pipe = redis::pipe();
            pipe.atomic();
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
        let empty = HashMap::new();
        for (i, peer) in peers.iter().enumerate() {
            let Some(Some(bytes)) = records.get(i) else {
                continue; // expired between SCAN and GET
            };
            match self.verify_node(peer, bytes, hashes.get(i).unwrap_or(&empty)) {
                Ok(verified) => {
                    self.merge_node(peer, "sync", verified).await;
                    alive.push((*peer).clone());
                }
                Err(refusal) => {
                    self.refuse(peer, "node record", &refusal);
                    // A refused record changes nothing: a node seen within the TTL stays as
                    // it was (its own next heartbeat rewrites its record).
                    let ttl = chrono::Duration::seconds(
                        i64::try_from(self.config.heartbeat_ttl_s).unwrap_or(i64::MAX),
                    );
                    if self
                        .peers
                        .get(*peer)
                        .is_some_and(|p| Utc::now() - p.last_seen < ttl)
                    {
                        alive.push((*peer).clone());
                    }
                }
            }
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

    /// Opens `peer`'s record and keeps the registrations of its hash that match the digests it
    /// lists; a listed one that does not match (tampered, or gone) is taken from what this
    /// daemon holds if that is exactly it. Nothing is merged here.
    /// A node record stored under `peer`'s key, opened under the cluster key: signed for
    /// `peer` and naming it inside. Its sequence, and the record.
    fn open_record(&self, peer: &str, bytes: &[u8]) -> Result<(u64, wire::NodeRecord), Refusal> {
        let opened = self.sealer.open(SealKind::Record, bytes)?;
        if opened.node != peer {
            return Err(Refusal::NodeMismatch {
                signed: opened.node,
                found: peer.to_string(),
            });
        }
        let record = wire::parse_record(&opened.body)?;
        if record.node != opened.node {
            return Err(Refusal::NodeMismatch {
                signed: opened.node,
                found: record.node,
            });
        }
        Ok((opened.seq, record))
    }

    fn verify_node(
        &self,
        peer: &str,
        bytes: &[u8],
        hash: &HashMap<String, Vec<u8>>,
    ) -> Result<Verified, Refusal> {
        let (seq, record) = self.open_record(peer, bytes)?;
        seal::fresh(record.heartbeat_at, self.config.heartbeat_ttl_s, Utc::now())?;
        self.seqs.check_record(peer, seq)?;
        if record.specs.len() > MAX_REMOTE_SPECS_PER_NODE {
            let over = (record.specs.len() - MAX_REMOTE_SPECS_PER_NODE) as u64;
            tracing::warn!(node = %peer, listed = record.specs.len(), "a peer's record lists more services than any node may hold; the rest are dropped");
            self.status.update(|s| s.catalog.capped += over);
        }
        let held = self.catalog.remote_specs(peer);
        let mut specs = Vec::new();
        for (name, digest) in record.specs.iter().take(MAX_REMOTE_SPECS_PER_NODE) {
            let stored = hash.get(name).map(|bytes| wire::parse_spec(bytes));
            match stored {
                Some(Ok(spec)) if spec.name == *name && wire::spec_digest(&spec) == *digest => {
                    specs.push(spec);
                    continue;
                }
                Some(_) => {
                    tracing::warn!(node = %peer, service = %name, "refused a registration in a peer's hash that does not match its signed record");
                    self.status.update(|s| s.auth.count(Reason::BadTag));
                }
                None => {}
            }
            if let Some(spec) = held.get(name).filter(|s| wire::spec_digest(s) == *digest) {
                specs.push(spec.clone());
            }
        }
        let unlisted = hash
            .keys()
            .filter(|name| !record.specs.contains_key(*name))
            .count();
        if unlisted > 0 {
            tracing::warn!(node = %peer, unlisted, "refused registrations in a peer's hash that its signed record does not list");
            self.status.update(|s| {
                for _ in 0..unlisted {
                    s.auth.count(Reason::BadTag);
                }
            });
        }
        Ok(Verified { record, seq, specs })
    }

    /// Merges a verified node and records it alive.
    async fn merge_node(&mut self, node: &str, cause: &str, verified: Verified) {
        let Verified { record, seq, specs } = verified;
        let count = specs.len();
        let report = self.catalog.set_remote_node(node, specs).await;
        self.report_merge(node, cause, &report);
        self.seqs.accept_record(node, seq);
        self.saw(record, count);
    }

    /// Counts and logs a refused record or message; it changes nothing.
    pub(super) fn refuse(&self, node: &str, what: &str, refusal: &Refusal) {
        let reason = refusal.reason();
        match reason {
            Reason::Malformed => {
                tracing::warn!(%node, error = %refusal, "skipping a malformed {what}");
                self.status.update(|s| s.catalog.rejected += 1);
            }
            Reason::Superseded => {
                tracing::debug!(%node, error = %refusal, "skipping a {what}");
            }
            _ => {
                tracing::warn!(%node, error = %refusal, "refused a {what}: it changes nothing here");
            }
        }
        self.status.update(|s| s.auth.count(reason));
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
        for (service, cap) in report.capped.iter().take(MAX_NAMES_IN_EVENT) {
            tracing::warn!(%node, %service, %cap, "dropped a peer's registration");
        }
        if !report.capped.is_empty() {
            let n = report.capped.len() as u64;
            self.status.update(|s| s.catalog.capped += n);
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
        let opened = match self.sealer.open(SealKind::Update, &bytes) {
            Ok(opened) => opened,
            Err(refusal) => {
                self.refuse("?", "catalog update", &refusal);
                return Ok(());
            }
        };
        if opened.node == self.node {
            return Ok(());
        }
        let node = opened.node;
        let checked = wire::parse_update(&opened.body)
            .map_err(Refusal::from)
            .and_then(|update| {
                if update.node != node {
                    return Err(Refusal::NodeMismatch {
                        signed: node.clone(),
                        found: update.node,
                    });
                }
                seal::fresh(update.at, self.config.heartbeat_ttl_s, Utc::now())?;
                self.seqs.check_update(&node, opened.seq)?;
                Ok(update)
            });
        let update = match checked {
            Ok(update) => update,
            Err(refusal) => {
                self.refuse(&node, "catalog update", &refusal);
                return Ok(());
            }
        };
        // A node whose record this daemon has not verified yet: its update says only that it
        // changed, the record and hash say what it holds.
        let known = self.seqs.knows(&node);
        self.seqs.accept_update(&node, opened.seq);
        let lag = (Utc::now() - update.at).num_milliseconds();
        self.status.update(|s| {
            s.catalog.updates_received += 1;
            s.catalog.last_update_lag_ms = Some(lag);
        });
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.last_seen = Utc::now();
        }
        match update.op {
            CatalogOp::Leave => self.confirm_leave(con, &node, opened.seq).await?,
            _ if !known => self.read_node(con, &node, "announce").await?,
            op @ (CatalogOp::Upsert { .. } | CatalogOp::Remove { .. }) => {
                self.confirm_change(con, &node, opened.seq, op).await?;
            }
            CatalogOp::Announce => self.read_node(con, &node, "announce").await?,
        }
        let peers_now: Vec<PeerStatus> = self.peers.values().cloned().collect();
        self.status.update(|s| s.peers = peers_now);
        Ok(())
    }

    /// Reads one node's record and hash (in one transaction) and merges what verifies.
    async fn read_node(
        &mut self,
        con: &mut MultiplexedConnection,
        node: &str,
        cause: &str,
    ) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("GET").arg(self.keys.node(node));
        pipe.cmd("HGETALL").arg(self.keys.services(node));
        let (record, hash): (Option<Vec<u8>>, HashMap<String, Vec<u8>>) =
            pipe.query_async(con).await?;
        let Some(record) = record else {
            return Ok(()); // gone again; the sync expires it
        };
        match self.verify_node(node, &record, &hash) {
            Ok(verified) => self.merge_node(node, cause, verified).await,
            Err(refusal) => self.refuse(node, "node record", &refusal),
        }
        Ok(())
    }

    /// A signed `Upsert`/`Remove` (sequence `seq`) of `node`, applied only when the node's own
    /// record agrees: the node rewrites its record (the list of its registrations' digests)
    /// before it announces a change. A record newer than the update carries the change itself
    /// and is merged instead; a missing record means the node left or lapsed, so only a
    /// removal can still be applied.
    async fn confirm_change(
        &mut self,
        con: &mut MultiplexedConnection,
        node: &str,
        seq: u64,
        op: CatalogOp,
    ) -> RedisResult<()> {
        let record: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.node(node))
            .query_async(con)
            .await?;
        let listed = match record.map(|bytes| self.open_record(node, &bytes)) {
            None => None,
            Some(Err(refusal)) => {
                self.refuse(node, "node record", &refusal);
                return Ok(());
            }
            // A newer record carries this change (and perhaps later ones): merge it instead.
            Some(Ok((record_seq, _))) if record_seq > seq => {
                return self.read_node(con, node, "update").await;
            }
            Some(Ok((_, record))) => Some(record.specs),
        };
        if let Err(refusal) = confirms(listed.as_ref(), &op) {
            self.refuse(node, "catalog update", &refusal);
            return Ok(());
        }
        let report = match op {
            CatalogOp::Upsert { spec } => self.catalog.upsert_remote(node, *spec).await,
            CatalogOp::Remove { service } => self.catalog.remove_remote(node, &service).await,
            CatalogOp::Announce | CatalogOp::Leave => return Ok(()),
        };
        self.report_merge(node, "update", &report);
        Ok(())
    }

    /// A signed `Leave` (sequence `seq`) of `node`: the node deleted its record before sending
    /// it, so a record of that node that is still there and newer says it is back (the leave
    /// is superseded); otherwise its registrations go.
    async fn confirm_leave(
        &mut self,
        con: &mut MultiplexedConnection,
        node: &str,
        seq: u64,
    ) -> RedisResult<()> {
        let record: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.node(node))
            .query_async(con)
            .await?;
        let back = record
            .and_then(|bytes| self.sealer.open(SealKind::Record, &bytes).ok())
            .filter(|opened| opened.node == node && opened.seq > seq);
        if let Some(opened) = back {
            self.refuse(
                node,
                "leave",
                &Refusal::Superseded {
                    seq,
                    record: opened.seq,
                },
            );
            return Ok(());
        }
        self.expire_peer(node, "left the cluster").await;
        Ok(())
    }
}

/// Whether a node's current record (its registrations' digests, `None` when the record is
/// gone) confirms `op`: an upsert must be listed with its spec's digest, a removed service must
/// no longer be listed.
fn confirms(
    listed: Option<&std::collections::BTreeMap<String, String>>,
    op: &CatalogOp,
) -> Result<(), Refusal> {
    match op {
        CatalogOp::Upsert { spec } => match listed.and_then(|l| l.get(&spec.name)) {
            Some(digest) if *digest == wire::spec_digest(spec) => Ok(()),
            Some(_) => Err(Refusal::Unconfirmed {
                op: "upsert",
                service: spec.name.clone(),
                why: "its record lists another version of it",
            }),
            None => Err(Refusal::Unconfirmed {
                op: "upsert",
                service: spec.name.clone(),
                why: "its record does not list it",
            }),
        },
        CatalogOp::Remove { service } if listed.is_some_and(|l| l.contains_key(service)) => {
            Err(Refusal::Unconfirmed {
                op: "remove",
                service: service.clone(),
                why: "its record still lists it",
            })
        }
        CatalogOp::Remove { .. } | CatalogOp::Announce | CatalogOp::Leave => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::ClusterConfig;
    use crate::seal::{ClusterKey, Sealer};
    use crate::status::SharedStatus;
    use evolve_core::events::EventBus;

    /// Holds what a test says this daemon already merged.
    #[derive(Default)]
    struct Held(Mutex<BTreeMap<String, BTreeMap<String, ServiceSpec>>>);

    #[async_trait::async_trait]
    impl crate::SharedCatalog for Held {
        fn local_specs(&self) -> Vec<ServiceSpec> {
            Vec::new()
        }
        fn health_seen(&self) -> BTreeMap<String, BTreeMap<String, String>> {
            BTreeMap::new()
        }
        fn remote_nodes(&self) -> Vec<String> {
            Vec::new()
        }
        fn remote_count(&self) -> usize {
            0
        }
        fn remote_specs(&self, node: &str) -> BTreeMap<String, ServiceSpec> {
            let held = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            held.get(node).cloned().unwrap_or_default()
        }
        async fn set_remote_node(&self, _: &str, _: Vec<ServiceSpec>) -> MergeReport {
            MergeReport::default()
        }
        async fn upsert_remote(&self, _: &str, _: ServiceSpec) -> MergeReport {
            MergeReport::default()
        }
        async fn remove_remote(&self, _: &str, _: &str) -> MergeReport {
            MergeReport::default()
        }
        async fn forget_remote_node(&self, _: &str) -> MergeReport {
            MergeReport::default()
        }
    }

    fn sealer() -> Sealer {
        Sealer::new(Some(ClusterKey::new(vec![9; 32]).expect("key")), "evolve")
    }

    fn driver(held: Arc<Held>) -> Driver {
        let config = ClusterConfig::default();
        let status = SharedStatus::new("me".into(), Some("redis://x/".into()), 15, 10);
        Driver::new(
            config,
            "me".into(),
            "127.0.0.1:1".into(),
            sealer(),
            held,
            EventBus::new(),
            status,
        )
    }

    fn spec(name: &str, endpoint: &str) -> ServiceSpec {
        serde_json::from_value(json!({
            "name": name,
            "instances": [{"endpoint": endpoint}],
        }))
        .expect("spec")
    }

    /// A record of `node` listing `specs`, signed at `at` with sequence `seq`.
    fn record(node: &str, seq: u64, at: chrono::DateTime<Utc>, specs: &[&ServiceSpec]) -> Vec<u8> {
        let body = NodeRecord {
            node: node.into(),
            api: "127.0.0.1:2".into(),
            started_at: at,
            heartbeat_at: at,
            services: specs.len(),
            specs: specs
                .iter()
                .map(|s| (s.name.clone(), wire::spec_digest(s)))
                .collect(),
            health: BTreeMap::new(),
        };
        let body = serde_json::to_string(&body).expect("json");
        sealer()
            .seal(SealKind::Record, node, seq, &body)
            .into_bytes()
    }

    fn hash(specs: &[&ServiceSpec]) -> HashMap<String, Vec<u8>> {
        specs
            .iter()
            .map(|s| (s.name.clone(), wire::spec_json(s).into_bytes()))
            .collect()
    }

    #[test]
    fn a_record_signed_by_another_node_is_refused_under_this_node_s_key() {
        let d = driver(Arc::default());
        let fc = spec("fc", "http://127.0.0.1:9001");
        let b_record = record("node-b", 5, Utc::now(), &[&fc]);
        let refused = d.verify_node("node-a", &b_record, &hash(&[&fc]));
        assert!(
            matches!(&refused, Err(Refusal::NodeMismatch { signed, found }) if signed == "node-b" && found == "node-a"),
            "{:?}",
            refused.err()
        );
        let verified = d
            .verify_node("node-b", &b_record, &hash(&[&fc]))
            .expect("under its own key");
        assert_eq!(verified.specs, vec![fc]);
        assert_eq!(verified.seq, 5);
    }

    #[test]
    fn stale_and_replayed_records_are_refused() {
        let mut d = driver(Arc::default());
        let old = Utc::now() - chrono::Duration::seconds(15 + 61);
        assert!(matches!(
            d.verify_node("node-a", &record("node-a", 5, old, &[]), &HashMap::new()),
            Err(Refusal::Stale { .. })
        ));
        d.seqs.accept_record("node-a", 10);
        assert_eq!(
            d.verify_node(
                "node-a",
                &record("node-a", 9, Utc::now(), &[]),
                &HashMap::new()
            )
            .err(),
            Some(Refusal::Replayed { seq: 9, last: 10 })
        );
        assert!(
            d.verify_node(
                "node-a",
                &record("node-a", 10, Utc::now(), &[]),
                &HashMap::new()
            )
            .is_ok(),
            "the same record read again"
        );
    }

    #[test]
    fn upserts_and_removes_apply_only_as_the_node_s_own_record_confirms() {
        let fc = spec("fc", "http://127.0.0.1:9001");
        let listed: BTreeMap<String, String> = [("fc".to_string(), wire::spec_digest(&fc))].into();
        let remove = CatalogOp::Remove {
            service: "fc".into(),
        };
        // A removal while the node's record still lists the service: forged.
        assert!(matches!(
            confirms(Some(&listed), &remove),
            Err(Refusal::Unconfirmed { op: "remove", .. })
        ));
        assert_eq!(confirms(Some(&BTreeMap::new()), &remove), Ok(()));
        assert_eq!(confirms(None, &remove), Ok(()), "the node's record is gone");
        let upsert = |spec: &ServiceSpec| CatalogOp::Upsert {
            spec: Box::new(spec.clone()),
        };
        assert_eq!(confirms(Some(&listed), &upsert(&fc)), Ok(()));
        let evil = spec("fc", "http://203.0.113.9:80");
        assert!(matches!(
            confirms(Some(&listed), &upsert(&evil)),
            Err(Refusal::Unconfirmed { op: "upsert", .. })
        ));
        assert!(confirms(None, &upsert(&fc)).is_err());
        assert!(confirms(Some(&BTreeMap::new()), &upsert(&fc)).is_err());
    }

    #[test]
    fn hash_entries_that_do_not_match_the_signed_record_are_refused_and_counted() {
        let held = Arc::new(Held::default());
        let fc = spec("fc", "http://127.0.0.1:9001");
        let fd = spec("fd", "http://127.0.0.1:9002");
        held.0
            .lock()
            .expect("lock")
            .insert("node-a".into(), [("fc".to_string(), fc.clone())].into());
        let d = driver(Arc::clone(&held));
        let signed = record("node-a", 1, Utc::now(), &[&fc, &fd]);
        let mut tampered = hash(&[&fc, &fd]);
        // fc's endpoint replaced, fd's replaced too, and a service the record never listed.
        let evil = spec("fc", "http://203.0.113.9:80");
        tampered.insert("fc".into(), wire::spec_json(&evil).into_bytes());
        tampered.insert(
            "fd".into(),
            wire::spec_json(&spec("fd", "http://203.0.113.9:80")).into_bytes(),
        );
        tampered.insert(
            "extra".into(),
            wire::spec_json(&spec("extra", "http://203.0.113.9:80")).into_bytes(),
        );
        let verified = d.verify_node("node-a", &signed, &tampered).expect("record");
        // fc is what this daemon held and the record lists: kept; fd cannot be verified: left out.
        assert_eq!(verified.specs, vec![fc]);
        let auth = d.status.snapshot().auth;
        assert_eq!(auth.bad_tag, 3, "{auth:?}");
        assert_eq!(auth.refused, 3);
    }
}
