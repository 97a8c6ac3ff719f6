//! Writing this node's side: its node record and heartbeat, its services hash (all afresh on
//! join, then only the difference of each local change) with the catalog updates that announce
//! them, and leaving on shutdown.

use std::collections::BTreeMap;

use chrono::Utc;
use redis::aio::MultiplexedConnection;

use super::{Driver, RedisResult};
use crate::seal::{self, SealKind};
use crate::wire::{self, CatalogOp, CatalogUpdate, NodeRecord};
use evolve_mesh::ServiceSpec;

/// Name → digest of each spec, as a node record lists them.
fn digests(specs: &BTreeMap<String, ServiceSpec>) -> BTreeMap<String, String> {
    specs
        .iter()
        .map(|(name, spec)| (name.clone(), wire::spec_digest(spec)))
        .collect()
}

impl Driver {
    /// This node's next sequence (see [`seal::next_seq`]).
    fn next_seq(&mut self) -> u64 {
        self.sealed_seq = seal::next_seq(self.sealed_seq);
        self.sealed_seq
    }

    /// This node's record, sealed, listing `specs` (what its services hash holds).
    pub(super) fn record(&mut self, specs: BTreeMap<String, String>) -> String {
        let record = NodeRecord {
            node: self.node.clone(),
            api: self.api.clone(),
            started_at: self.started_at,
            heartbeat_at: Utc::now(),
            services: specs.len(),
            specs,
            health: self.catalog.health_seen(),
        };
        let body = serde_json::to_string(&record).unwrap_or_default();
        let seq = self.next_seq();
        self.sealer.seal(SealKind::Record, &self.node, seq, &body)
    }

    /// A catalog update of this node, sealed.
    pub(super) fn update_json(&mut self, op: CatalogOp) -> String {
        let body = serde_json::to_string(&CatalogUpdate {
            node: self.node.clone(),
            at: Utc::now(),
            op,
        })
        .unwrap_or_default();
        let seq = self.next_seq();
        self.sealer.seal(SealKind::Update, &self.node, seq, &body)
    }

    /// Rewrites this node's registrations and record from scratch, then tells the peers.
    pub(super) async fn announce_all(
        &mut self,
        con: &mut MultiplexedConnection,
    ) -> RedisResult<()> {
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
                hset.arg(name).arg(wire::spec_json(spec));
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("EXPIRE").arg(&services_key).arg(ttl).ignore();
        }
        // The record first, then the update: an update's sequence is above its record's.
        let record = self.record(digests(&local));
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(record)
            .arg("EX")
            .arg(ttl)
            .ignore();
        pipe.query_async::<()>(con).await?;
        let announce = self.update_json(CatalogOp::Announce);
        redis::cmd("PUBLISH")
            .arg(self.keys.catalog_channel())
            .arg(announce)
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
    pub(super) async fn announce_changes(
        &mut self,
        con: &mut MultiplexedConnection,
    ) -> RedisResult<()> {
        let Some(announced) = &self.announced else {
            return self.announce_all(con).await;
        };
        let local: BTreeMap<String, ServiceSpec> = self
            .catalog
            .local_specs()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let upserts: Vec<ServiceSpec> = local
            .values()
            .filter(|s| announced.get(&s.name) != Some(*s))
            .cloned()
            .collect();
        let removals: Vec<String> = announced
            .keys()
            .filter(|name| !local.contains_key(*name))
            .cloned()
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
                .arg(wire::spec_json(spec))
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
        // The record too, so its list of registrations, service count and health view match
        // the new catalog (and it is sealed before the updates that follow it).
        let record = self.record(digests(&local));
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(record)
            .arg("EX")
            .arg(self.config.heartbeat_ttl_s)
            .ignore();
        pipe.query_async::<()>(con).await?;
        let mut publish = redis::pipe();
        let channel = self.keys.catalog_channel();
        let sent = (upserts.len() + removals.len()) as u64;
        for spec in upserts {
            let update = self.update_json(CatalogOp::Upsert {
                spec: Box::new(spec),
            });
            publish.cmd("PUBLISH").arg(&channel).arg(update).ignore();
        }
        for service in removals {
            let update = self.update_json(CatalogOp::Remove { service });
            publish.cmd("PUBLISH").arg(&channel).arg(update).ignore();
        }
        publish.query_async::<()>(con).await?;
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
    pub(super) async fn heartbeat(&mut self, con: &mut MultiplexedConnection) -> RedisResult<()> {
        let listed = self.announced.as_ref().map(digests).unwrap_or_default();
        let count = listed.len();
        let ttl = self.config.heartbeat_ttl_s;
        let record = self.record(listed);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(record)
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

    /// On shutdown: withdraws this node's registrations and tells the peers, so they stop
    /// routing to it at once instead of after the TTL. Best effort, bounded by the command
    /// timeout.
    pub(super) async fn leave(&mut self, con: &mut MultiplexedConnection) {
        let _ = self.flush(con).await;
        let leave = self.update_json(CatalogOp::Leave);
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.keys.node(&self.node))
            .arg(self.keys.services(&self.node))
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(self.keys.catalog_channel())
            .arg(leave)
            .ignore();
        match pipe.query_async::<()>(con).await {
            Ok(()) => tracing::info!(node = %self.node, "left the cluster"),
            Err(error) => {
                tracing::warn!(%error, "could not leave the cluster cleanly; peers expire this node after the TTL")
            }
        }
    }
}
