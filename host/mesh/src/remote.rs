//! The catalog's seam for a cluster: services registered on other daemons, merged into this
//! daemon's routing table next to its own.
//!
//! The mesh knows nothing of how the other daemons' registrations arrive (the `cluster` module
//! reads them from Redis); it keeps, per node, the specs that node announced, and merges them
//! into the catalog:
//!
//! 1. a local service (config file or API) always wins over a remote one of the same name
//!    (the remote one is reported as shadowed);
//! 2. among nodes announcing the same name, the node whose id sorts first wins (deterministic on
//!    every daemon), the others are reported as conflicts;
//! 3. a remote service whose spec and origin are unchanged keeps its running state (breakers,
//!    latency, health); a changed one keeps the state of its unchanged instances;
//! 4. remote services are routed to like local ones and health-checked here, by this daemon's
//!    checker plugins; they are never written to this daemon's catalog file;
//! 5. what peers can make this daemon hold is capped (nodes, services per node, instances per
//!    service, remote services in all); what a cap drops is reported in
//!    [`MergeReport::capped`], so the cluster counts it.
//!
//! Who may announce as a node is the cluster's concern (its records and updates are signed):
//! by the time a spec gets here, its node is authenticated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::catalog::{MAX_INSTANCES, MAX_SERVICES, ServiceSpec};
use super::service::{ServiceState, Source};
use super::{Mesh, MeshError};

/// Most remote services merged in, over all nodes: a bound on what peers can make this daemon
/// hold (each costs health-check tasks and memory).
pub const MAX_REMOTE_SERVICES: usize = 8_192;
/// Most nodes with announced services: the cluster reads at most this many node records per
/// sync, and each node costs a table entry and a merge.
pub const MAX_REMOTE_NODES: usize = 1_024;
/// Most services one node may announce: a node holds at most [`MAX_SERVICES`] local services,
/// so a longer list is no real node's.
pub const MAX_REMOTE_SPECS_PER_NODE: usize = MAX_SERVICES;
/// Most instances of one remote service, as for a local registration ([`MAX_INSTANCES`]): each
/// costs health-check tasks and per-instance state here.
pub const MAX_REMOTE_INSTANCES_PER_SPEC: usize = MAX_INSTANCES;

/// Per node, the specs it announced, by service name.
pub(super) type RemoteTable = BTreeMap<String, BTreeMap<String, ServiceSpec>>;

/// What one merge changed, for the cluster's log, events and status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MergeReport {
    /// Remote services now routable that were not before.
    pub added: Vec<String>,
    /// Remote services whose spec or origin changed.
    pub updated: Vec<String>,
    /// Remote services no longer routable.
    pub removed: Vec<String>,
    /// Specs a peer announced that this daemon refused (`name`, reason).
    pub rejected: Vec<(String, String)>,
    /// Specs dropped by a cap (`name`, which cap).
    pub capped: Vec<(String, String)>,
}

impl MergeReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }
}

/// How a remote service's name is resolved in the merged catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteEntry {
    pub service: String,
    pub node: String,
    /// `routed` (in the catalog), `shadowed` (a local service has the name) or `conflict`
    /// (another node that sorts first announces the name too).
    pub status: &'static str,
}

impl Mesh {
    /// The services this daemon is authoritative for (config file and API), which it announces
    /// to the cluster.
    pub fn local_specs(&self) -> Vec<ServiceSpec> {
        self.services()
            .values()
            .filter(|s| s.source.is_local())
            .map(|s| s.spec.clone())
            .collect()
    }

    /// Replaces everything `node` announced with `specs` (a full sync of that node).
    pub async fn set_remote_node(&self, node: &str, specs: Vec<ServiceSpec>) -> MergeReport {
        self.remerge(|table, outcome| {
            let Some(entry) = node_entry(table, node, &specs, outcome) else {
                return;
            };
            entry.clear();
            for spec in specs {
                accept(entry, spec, outcome);
            }
            if entry.is_empty() {
                table.remove(node);
            }
        })
        .await
    }

    /// Adds or replaces one service announced by `node` (an incremental update).
    pub async fn upsert_remote(&self, node: &str, spec: ServiceSpec) -> MergeReport {
        self.remerge(|table, outcome| {
            let specs = std::slice::from_ref(&spec);
            let Some(entry) = node_entry(table, node, specs, outcome) else {
                return;
            };
            accept(entry, spec, outcome);
            if entry.is_empty() {
                table.remove(node);
            }
        })
        .await
    }

    /// Drops one service `node` no longer announces.
    pub async fn remove_remote(&self, node: &str, name: &str) -> MergeReport {
        self.remerge(|table, _| {
            if let Some(specs) = table.get_mut(node) {
                specs.remove(name);
                if specs.is_empty() {
                    table.remove(node);
                }
            }
        })
        .await
    }

    /// Drops everything `node` announced (its registrations expired).
    pub async fn forget_remote_node(&self, node: &str) -> MergeReport {
        self.remerge(|table, _| {
            table.remove(node);
        })
        .await
    }

    /// What `node` announced and this daemon holds, by service name.
    pub fn remote_specs(&self, node: &str) -> BTreeMap<String, ServiceSpec> {
        self.remote_table().get(node).cloned().unwrap_or_default()
    }

    /// Nodes with announced services, and how many each announced.
    pub fn remote_nodes(&self) -> BTreeMap<String, usize> {
        self.remote_table()
            .iter()
            .map(|(node, specs)| (node.clone(), specs.len()))
            .collect()
    }

    /// Every remote announcement and how it resolved.
    pub fn remote_entries(&self) -> Vec<RemoteEntry> {
        let services = self.services();
        let mut out = Vec::new();
        for (node, specs) in self.remote_table().iter() {
            for name in specs.keys() {
                let status = match services.get(name) {
                    Some(s) if s.source.is_local() => "shadowed",
                    Some(s) if s.origin.as_deref() == Some(node.as_str()) => "routed",
                    _ => "conflict",
                };
                out.push(RemoteEntry {
                    service: name.clone(),
                    node: node.clone(),
                    status,
                });
            }
        }
        out
    }

    fn remote_table(&self) -> std::sync::MutexGuard<'_, RemoteTable> {
        self.inner
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `mutate` to the remote table (it notes what it refused or capped) and publishes
    /// the merged catalog.
    async fn remerge(
        &self,
        mutate: impl FnOnce(&mut RemoteTable, &mut MergeReport),
    ) -> MergeReport {
        let _writer = self.inner.writer.lock().await;
        let mut outcome = MergeReport::default();
        mutate(&mut self.remote_table(), &mut outcome);
        let current = self.services();
        let mut next = (*current).clone();
        let mut report = self.overlay_remote(&mut next);
        report.rejected = outcome.rejected;
        report.capped.extend(outcome.capped);
        if report.changed() {
            self.publish_catalog(next);
        }
        report
    }

    /// Rewrites the remote entries of `next` (whose local entries are final) from the remote
    /// table; starts the checks of new remote services. The caller holds the writer lock.
    pub(super) fn overlay_remote(
        &self,
        next: &mut BTreeMap<String, Arc<ServiceState>>,
    ) -> MergeReport {
        let mut report = MergeReport::default();
        // Step 1: who should hold each name (first node by id wins; local names are taken).
        let mut desired: BTreeMap<String, (String, ServiceSpec)> = BTreeMap::new();
        for (node, specs) in self.remote_table().iter() {
            for (name, spec) in specs {
                let local = next.get(name).is_some_and(|s| s.source.is_local());
                if local || desired.contains_key(name) {
                    continue;
                }
                if desired.len() < MAX_REMOTE_SERVICES {
                    desired.insert(name.clone(), (node.clone(), spec.clone()));
                } else {
                    report.capped.push((
                        name.clone(),
                        format!("over {MAX_REMOTE_SERVICES} remote services in all"),
                    ));
                }
            }
        }
        // Step 2: drop remote entries no longer wanted.
        let stale: Vec<String> = next
            .iter()
            .filter(|(name, s)| s.source == Source::Remote && !desired.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(old) = next.remove(&name) {
                Self::stop_checks(&old);
                report.removed.push(name);
            }
        }
        // Step 3: add or refresh the wanted ones.
        let mut started = Vec::new();
        for (name, (node, spec)) in desired {
            let previous = next.get(&name).filter(|s| s.source == Source::Remote);
            if let Some(existing) = previous
                && existing.spec == spec
                && existing.origin.as_deref() == Some(node.as_str())
            {
                continue;
            }
            let mut state = ServiceState::new(
                spec,
                Source::Remote,
                &self.inner.config,
                previous.map(|p| p.as_ref()),
            );
            state.origin = Some(node);
            let state = Arc::new(state);
            match next.insert(name.clone(), Arc::clone(&state)) {
                Some(old) => {
                    Self::stop_checks(&old);
                    report.updated.push(name);
                }
                None => report.added.push(name),
            }
            started.push(state);
        }
        if self.inner.checks_started.load(Ordering::SeqCst) {
            for state in &started {
                self.spawn_checks(state);
            }
        }
        report
    }

    /// Refuses removing a remote service here: its node owns it.
    pub(super) fn remote_owned(service: &ServiceState) -> Option<MeshError> {
        (service.source == Source::Remote).then(|| MeshError::RemoteOwned {
            name: service.spec.name.clone(),
            node: service.origin.clone().unwrap_or_default(),
        })
    }
}

/// `node`'s specs in the table, or none (each spec noted as capped) when the table already
/// holds [`MAX_REMOTE_NODES`] other nodes.
fn node_entry<'t>(
    table: &'t mut RemoteTable,
    node: &str,
    specs: &[ServiceSpec],
    outcome: &mut MergeReport,
) -> Option<&'t mut BTreeMap<String, ServiceSpec>> {
    if !table.contains_key(node) && table.len() >= MAX_REMOTE_NODES {
        for spec in specs {
            outcome.capped.push((
                spec.name.chars().take(80).collect(),
                format!("node \"{node}\" is over the cap of {MAX_REMOTE_NODES} remote nodes"),
            ));
        }
        return None;
    }
    Some(table.entry(node.to_string()).or_default())
}

/// Validates a peer's spec (a peer is outside this daemon's control) and checks the caps
/// before keeping it.
fn accept(
    specs: &mut BTreeMap<String, ServiceSpec>,
    mut spec: ServiceSpec,
    outcome: &mut MergeReport,
) {
    let name: String = spec.name.chars().take(80).collect();
    if spec.instances.len() > MAX_REMOTE_INSTANCES_PER_SPEC {
        outcome.capped.push((
            name,
            format!(
                "{} instances, over the cap of {MAX_REMOTE_INSTANCES_PER_SPEC} per service",
                spec.instances.len()
            ),
        ));
        return;
    }
    if !specs.contains_key(&spec.name) && specs.len() >= MAX_REMOTE_SPECS_PER_NODE {
        outcome.capped.push((
            name,
            format!("over the cap of {MAX_REMOTE_SPECS_PER_NODE} services per node"),
        ));
        return;
    }
    match spec.validate(None) {
        Ok(()) => {
            specs.insert(spec.name.clone(), spec);
        }
        Err(error) => outcome.rejected.push((name, error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::InstanceRecord;
    use crate::catalog::{InstanceSpec, Protocol};
    use crate::{CheckOutcome, CheckRunner, MeshConfig};
    use evolve_core::events::EventBus;

    /// No checker is loaded: remote services get passive detection only.
    struct NoCheckers;

    #[async_trait::async_trait]
    impl CheckRunner for NoCheckers {
        fn has_checker(&self, _: &str) -> bool {
            false
        }
        async fn check(&self, _: &str, _: InstanceRecord) -> CheckOutcome {
            CheckOutcome::Error("no checker".into())
        }
    }

    fn spec(name: &str, endpoint: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            service_type: "model-server".into(),
            capabilities: vec!["forecast".into()],
            instances: vec![InstanceSpec {
                id: None,
                endpoint: endpoint.into(),
                weight: 100,
                protocol: Protocol::Http1,
                metadata: BTreeMap::new(),
            }],
            health: None,
            lb: None,
            max_in_flight: None,
            max_pending: None,
        }
    }

    fn mesh(dir: &tempfile::TempDir) -> Mesh {
        Mesh::new(
            MeshConfig::default(),
            dir.path().join("catalog.json"),
            Arc::new(NoCheckers),
            EventBus::new(),
        )
        .expect("mesh")
    }

    #[tokio::test]
    async fn remote_services_are_routed_marked_with_their_node_and_never_persisted_here() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = mesh(&dir);
        let report = mesh
            .set_remote_node("node-b", vec![spec("fc", "http://127.0.0.1:9001")])
            .await;
        assert_eq!(report.added, ["fc"]);
        let fc = mesh.service("fc").expect("merged");
        assert_eq!(fc.source, Source::Remote);
        assert_eq!(fc.origin.as_deref(), Some("node-b"));
        assert!(
            mesh.local_specs().is_empty(),
            "remote services are not announced again"
        );
        mesh.register(spec("local", "http://127.0.0.1:9002"), false)
            .await
            .expect("register");
        let stored = super::super::catalog::CatalogStore::new(dir.path().join("catalog.json"))
            .load()
            .expect("load");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].name, "local");
        assert!(matches!(
            mesh.remove("fc").await,
            Err(MeshError::RemoteOwned { node, .. }) if node == "node-b"
        ));
    }

    #[tokio::test]
    async fn local_names_win_and_the_first_node_wins_a_conflict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = mesh(&dir);
        mesh.set_remote_node("node-2", vec![spec("fc", "http://127.0.0.1:9002")])
            .await;
        let report = mesh
            .set_remote_node("node-1", vec![spec("fc", "http://127.0.0.1:9001")])
            .await;
        assert_eq!(report.updated, ["fc"]);
        assert_eq!(
            mesh.service("fc").and_then(|s| s.origin.clone()).as_deref(),
            Some("node-1")
        );
        let status = |node: &str| {
            mesh.remote_entries()
                .into_iter()
                .find(|e| e.node == node)
                .map(|e| e.status)
        };
        assert_eq!(status("node-1"), Some("routed"));
        assert_eq!(status("node-2"), Some("conflict"));

        // A local registration shadows both; removing it brings node-1's back.
        mesh.register(spec("fc", "http://127.0.0.1:9000"), false)
            .await
            .expect("local registration shadows a remote one");
        assert_eq!(mesh.service("fc").map(|s| s.source), Some(Source::Api));
        assert_eq!(status("node-1"), Some("shadowed"));
        let report = mesh
            .upsert_remote("node-1", spec("fc", "http://127.0.0.1:9003"))
            .await;
        assert!(!report.changed(), "a shadowed update changes no route");
        mesh.remove("fc").await.expect("remove local");
        let fc = mesh.service("fc").expect("node-1's is back");
        assert_eq!(fc.origin.as_deref(), Some("node-1"));
        assert_eq!(fc.spec.instances[0].endpoint, "http://127.0.0.1:9003");
    }

    #[tokio::test]
    async fn an_unchanged_sync_keeps_running_state_and_expiry_removes_a_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = mesh(&dir);
        let specs = vec![
            spec("fc", "http://127.0.0.1:9001"),
            spec("fd", "http://127.0.0.1:9002"),
        ];
        mesh.set_remote_node("node-b", specs.clone()).await;
        let before = mesh.service("fc").expect("fc");
        let report = mesh.set_remote_node("node-b", specs).await;
        assert!(!report.changed(), "{report:?}");
        assert!(Arc::ptr_eq(&before, &mesh.service("fc").expect("fc")));
        let report = mesh.remove_remote("node-b", "fd").await;
        assert_eq!(report.removed, ["fd"]);
        assert_eq!(mesh.remote_nodes().get("node-b"), Some(&1));
        let report = mesh.forget_remote_node("node-b").await;
        assert_eq!(report.removed, ["fc"]);
        assert!(mesh.services().is_empty());
        assert!(mesh.remote_nodes().is_empty());
    }

    #[tokio::test]
    async fn a_peer_s_invalid_spec_is_refused_and_the_rest_merged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = mesh(&dir);
        let report = mesh
            .set_remote_node(
                "node-b",
                vec![spec("ok", "http://127.0.0.1:9001"), spec("bad", "ftp://x")],
            )
            .await;
        assert_eq!(report.added, ["ok"]);
        assert_eq!(report.rejected.len(), 1);
        assert_eq!(report.rejected[0].0, "bad");
        assert!(
            report.rejected[0].1.contains("instances[0].endpoint"),
            "{report:?}"
        );
        assert!(mesh.service("bad").is_none());
    }

    #[tokio::test]
    async fn what_one_peer_can_make_this_daemon_hold_is_capped_and_the_drops_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = mesh(&dir);
        // Services per node.
        let many: Vec<ServiceSpec> = (0..=MAX_REMOTE_SPECS_PER_NODE)
            .map(|i| spec(&format!("s{i:05}"), "http://127.0.0.1:9001"))
            .collect();
        let report = mesh.set_remote_node("node-a", many).await;
        assert_eq!(report.added.len(), MAX_REMOTE_SPECS_PER_NODE);
        assert_eq!(report.capped.len(), 1, "{:?}", report.capped);
        assert!(report.capped[0].1.contains("services per node"));
        let report = mesh
            .upsert_remote("node-a", spec("one-more", "http://127.0.0.1:9001"))
            .await;
        assert!(!report.changed());
        assert_eq!(report.capped.len(), 1);
        assert!(mesh.service("one-more").is_none());
        // Instances per service.
        let mut wide = spec("wide", "http://127.0.0.1:9001");
        wide.instances = (0..=MAX_REMOTE_INSTANCES_PER_SPEC)
            .map(|i| InstanceSpec {
                id: Some(format!("i{i}")),
                ..wide.instances[0].clone()
            })
            .collect();
        let report = mesh.set_remote_node("node-b", vec![wide]).await;
        assert!(report.added.is_empty());
        assert_eq!(report.capped.len(), 1);
        assert!(report.capped[0].1.contains("instances"), "{report:?}");
        assert!(
            !mesh.remote_nodes().contains_key("node-b"),
            "no empty entry"
        );
        // Nodes.
        for i in 1..MAX_REMOTE_NODES {
            let report = mesh
                .set_remote_node(
                    &format!("n{i:05}"),
                    vec![spec(&format!("x{i}"), "http://127.0.0.1:9001")],
                )
                .await;
            assert!(report.capped.is_empty(), "node {i}: {report:?}");
        }
        assert_eq!(mesh.remote_nodes().len(), MAX_REMOTE_NODES);
        let report = mesh
            .set_remote_node("late", vec![spec("late", "http://127.0.0.1:9001")])
            .await;
        assert_eq!(report.capped.len(), 1);
        assert!(report.capped[0].1.contains("remote nodes"), "{report:?}");
        assert!(mesh.service("late").is_none());
        assert_eq!(mesh.remote_specs("node-a").len(), MAX_REMOTE_SPECS_PER_NODE);
    }
}
