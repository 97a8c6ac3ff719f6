//! Several daemons, one mesh: the host's events on Redis pub/sub and a shared service catalog
//! with TTL heartbeats and a jittered periodic full sync.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the `[cluster]` section and its secret files |
//! | [`wire`] | Redis keys and channels, the versioned JSON the daemons exchange |
//! | [`seal`] | the shared key: every record and update signed, sequenced, verified |
//! | [`driver`] | the connection state machine: announce, sync, heartbeat, publish, back off |
//! | [`outbox`] | events waiting for Redis, bounded, drops counted |
//! | [`status`] | what `GET /v1/cluster` and the metrics show |
//! | [`tail`] | `evolve events tail --redis`: follow every node's events |
//!
//! The mesh does not know Redis: the driver drives it through [`SharedCatalog`] (the mesh's
//! `remote` seam). Without `[cluster] redis_url` nothing here runs and `GET /v1/cluster` says
//! `disabled`.

pub mod config;
pub mod driver;
pub mod outbox;
pub mod seal;
pub mod status;
pub mod tail;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::{Client, IntoConnectionInfo, ProtocolVersion, TlsCertificates};
use tokio::sync::watch;

pub use self::config::{ClusterConfig, RedisAccess};
pub use self::status::{ClusterStatus, ConnectionState, SharedStatus};
use evolve_core::events::EventBus;
use evolve_mesh::{MergeReport, Mesh, ServiceSpec};

/// What the cluster needs of the catalog: this node's registrations to announce, and a place
/// to merge the other nodes' ones. Implemented by [`Mesh`]; tests use their own.
#[async_trait::async_trait]
pub trait SharedCatalog: Send + Sync + 'static {
    /// Services this node is authoritative for.
    fn local_specs(&self) -> Vec<ServiceSpec>;
    /// Every instance's health as this node sees it: service → instance → state.
    fn health_seen(&self) -> BTreeMap<String, BTreeMap<String, String>>;
    /// Nodes whose services are merged now.
    fn remote_nodes(&self) -> Vec<String>;
    /// Remote services routed to now.
    fn remote_count(&self) -> usize;
    /// What `node` announced and this daemon holds, by service name.
    fn remote_specs(&self, node: &str) -> BTreeMap<String, ServiceSpec>;
    async fn set_remote_node(&self, node: &str, specs: Vec<ServiceSpec>) -> MergeReport;
    async fn upsert_remote(&self, node: &str, spec: ServiceSpec) -> MergeReport;
    async fn remove_remote(&self, node: &str, name: &str) -> MergeReport;
    async fn forget_remote_node(&self, node: &str) -> MergeReport;
}

#[async_trait::async_trait]
impl SharedCatalog for Mesh {
    fn local_specs(&self) -> Vec<ServiceSpec> {
        Mesh::local_specs(self)
    }

    fn health_seen(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.views()
            .into_iter()
            .map(|view| {
                let instances = view
                    .instances
                    .into_iter()
                    .map(|i| (i.id, i.health.to_string()))
                    .collect();
                (view.name, instances)
            })
            .collect()
    }

    fn remote_nodes(&self) -> Vec<String> {
        Mesh::remote_nodes(self).into_keys().collect()
    }

    fn remote_count(&self) -> usize {
        self.services()
            .values()
            .filter(|s| !s.source.is_local())
            .count()
    }

    fn remote_specs(&self, node: &str) -> BTreeMap<String, ServiceSpec> {
        Mesh::remote_specs(self, node)
    }

    async fn set_remote_node(&self, node: &str, specs: Vec<ServiceSpec>) -> MergeReport {
        Mesh::set_remote_node(self, node, specs).await
    }

    async fn upsert_remote(&self, node: &str, spec: ServiceSpec) -> MergeReport {
        Mesh::upsert_remote(self, node, spec).await
    }

    async fn remove_remote(&self, node: &str, name: &str) -> MergeReport {
        Mesh::remove_remote(self, node, name).await
    }

    async fn forget_remote_node(&self, node: &str) -> MergeReport {
        Mesh::forget_remote_node(self, node).await
    }
}

/// Why the cluster could not start (a malformed URL or a bad secret file; an unreachable Redis
/// is not an error).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0}")]
    BadUrl(String),
    #[error("{key}: {message}")]
    Config { key: String, message: String },
}

/// A Redis client speaking RESP3 (pub/sub messages arrive as pushes on a normal connection),
/// with the ACL user and password of `access` (when the URL has none) and, for `rediss://`, its
/// CA (else the system's roots). TLS is rustls.
pub fn client(url: &str, access: &RedisAccess) -> Result<Client, ClusterError> {
    let info = url
        .into_connection_info()
        .map_err(|e| ClusterError::BadUrl(e.to_string()))?;
    let mut settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    if let Some(user) = &access.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &access.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    match &access.ca_pem {
        Some(pem) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        )
        .map_err(|e| ClusterError::Config {
            key: "cluster.redis_ca_file".into(),
            message: format!("cannot use these certificates: {e}"),
        }),
        None => Client::open(info).map_err(|e| ClusterError::BadUrl(e.to_string())),
    }
}

/// The running cluster membership (or its absence); cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    status: SharedStatus,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Cluster {
    /// No Redis: a single daemon. `GET /v1/cluster` says so.
    pub fn disabled(node: String) -> Cluster {
        let (stop, _) = watch::channel(false);
        Cluster {
            status: SharedStatus::new(node, None, 0, 0),
            stop: Arc::new(stop),
            task: Arc::default(),
        }
    }

    /// Starts the driver when `config.redis_url` is set; `api` is this daemon's API address
    /// (told to peers). Never waits for Redis: an unreachable Redis is retried in the
    /// background while the daemon serves.
    pub fn start(
        config: ClusterConfig,
        node: String,
        api: String,
        catalog: Arc<dyn SharedCatalog>,
        events: EventBus,
    ) -> Result<Cluster, ClusterError> {
        let Some(url) = config.redis_url.clone() else {
            return Ok(Cluster::disabled(node));
        };
        let secrets = config
            .secrets()
            .map_err(|(key, message)| ClusterError::Config { key, message })?;
        if secrets.key.is_none() {
            if !config.allow_unauthenticated {
                return Err(ClusterError::Config {
                    key: "cluster.key_file".into(),
                    message: "is required in cluster mode (or, knowingly, cluster.allow_unauthenticated = true)".into(),
                });
            }
            tracing::warn!(node = %node, "cluster.allow_unauthenticated is set and there is no cluster.key_file: any client that can write to Redis can act as any node (announce endpoints that receive live traffic, deregister nodes)");
        }
        let client = client(&url, &secrets.redis)?;
        let status = SharedStatus::new(
            node.clone(),
            Some(config::redact_url(&url)),
            config.heartbeat_ttl_s,
            config.sync_interval_s,
        );
        let sealer = seal::Sealer::new(secrets.key, &config.channel_prefix);
        let mode = if sealer.authenticated() {
            "hmac-sha256"
        } else {
            "unauthenticated"
        };
        status.update(|s| s.auth.mode = mode);
        let (stop, stop_rx) = watch::channel(false);
        // Subscribe before anything can publish, so no event of this daemon is missed.
        let bus = events.subscribe();
        let driver =
            driver::Driver::new(config, node, api, sealer, catalog, events, status.clone());
        let task = tokio::spawn(driver.run(client, bus, stop_rx));
        Ok(Cluster {
            status,
            stop: Arc::new(stop),
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    pub fn status(&self) -> ClusterStatus {
        self.status.snapshot()
    }

    /// Leaves the cluster: the driver withdraws this node's registrations (best effort,
    /// waiting at most `within`).
    pub async fn shutdown(&self, within: std::time::Duration) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}

/// The `cluster` part of `GET /v1/health`, from the state the driver keeps current (no round
/// trip to Redis per request). Losing Redis degrades the system, never more: routing goes on
/// over the last known catalog.
#[async_trait::async_trait]
impl evolve_core::health::ClusterHealth for Cluster {
    async fn part(&self) -> evolve_core::health::Part {
        use evolve_core::health::{Part, Status};
        let status = self.status();
        let detail = |summary: String| {
            serde_json::json!({
                "configured": status.enabled,
                "summary": summary,
                "state": status.state.as_str(),
                "node": status.node,
                "peers": status.peers.len(),
                "sync_lag_ms": status.sync_lag_ms,
                "events_dropped": status.events.dropped,
            })
        };
        match status.state {
            ConnectionState::Disabled => Part {
                status: Status::Healthy,
                reasons: Vec::new(),
                detail: detail("not configured (single node)".to_string()),
            },
            ConnectionState::Connected => Part {
                status: Status::Healthy,
                reasons: Vec::new(),
                detail: detail(format!("connected, {} peers", status.peers.len())),
            },
            ConnectionState::Connecting | ConnectionState::Disconnected => Part {
                status: Status::Degraded,
                reasons: vec![format!(
                    "Redis is unreachable ({}) since {}; routing uses the last known catalog",
                    status.last_error.as_deref().unwrap_or("connecting"),
                    status.since.to_rfc3339()
                )],
                detail: detail(format!("{}, retrying", status.state.as_str())),
            },
        }
    }
}
