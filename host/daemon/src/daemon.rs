//! The daemon as one value: [`Daemon::build`] turns a validated [`HostConfig`] into every part,
//! [`Daemon::run`] serves until a stop signal and drains.
//!
//! Start-up, in order (steps 1-4 fail with what to fix, before anything is served):
//! 1. **bind** the API listener, so a port conflict fails in milliseconds, not after compiles;
//! 2. **open the stores**: the agent run history (runs left running by a killed process are
//!    marked interrupted) and the model registry (a foreign or damaged file stops the daemon
//!    with how to restore it), whose own [`Maintenance`] starts with it;
//! 3. **build the parts**, lower first: runtime → agents → mesh (with the registry as its model
//!    selector) → cluster (never waits for Redis) → the system view plugins see;
//! 4. **check the plugins dir** is readable (the plugins load in step 5).
//!
//! Then [`Daemon::run`] serves the API (and the mesh's data-plane listener when configured) at
//! once and, beside it,
//! 5. **loads plugins**: the watcher first, so a plugin written during the load is not missed,
//!    then the first load of every dir, as many at once as there are cores
//!    (`plugins.load_parallelism`). Until a plugin's
//!    first load ends, calls by its name answer `503 loading` and `GET /v1/health` lists it;
//!    `GET /readyz` turns 200 once every dir has had its first load. Agents follow plugins as
//!    they load; the mesh's health checks start once every checker has had its first load.
//!
//! It serves until `stop` turns true, lets in-flight requests finish for
//! `server.shutdown_grace_s`, and withdraws this node from the cluster.
//!
//! The one cycle in the wiring is the plugins' system view: the runtime serves plugins that
//! read the agents, mesh and registry through [`DaemonInventory`] and probe them through
//! [`DaemonProbes`], and those parts are built on the runtime. So the runtime is built first and
//! the view is installed into it at step 3, before any plugin is loaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agents::{AgentManager, RunHistory};
use crate::api::{self, ApiState};
use crate::config::HostConfig;
use crate::reload::{self, Reloader};
use crate::system::{DaemonInventory, DaemonProbes, PluginChecks, RegistrySelector};
use evolve_cluster::Cluster;
use evolve_core::events::EventBus;
use evolve_mesh::Mesh;
use evolve_registry::Registry;
use evolve_registry::maintenance::Maintenance;
use evolve_runtime::{Runtime, SystemView};

/// How long a stopping daemon waits to withdraw its registrations from the cluster; past it,
/// peers expire them after the heartbeat TTL instead.
const CLUSTER_LEAVE_WAIT: Duration = Duration::from_secs(2);

/// A daemon whose parts are built, ready to [`run`](Daemon::run) (which loads the plugins).
pub struct Daemon {
    config: Arc<HostConfig>,
    listener: TcpListener,
    listen: SocketAddr,
    events: EventBus,
    runtime: Runtime,
    agents: AgentManager,
    registry: Arc<Registry>,
    /// Held for the daemon's life: dropping it stops the registry's background work.
    registry_maintenance: Maintenance,
    mesh: Mesh,
    cluster: Cluster,
    reloader: Arc<Reloader>,
    /// Every mutation and refusal of the API (`<log dir>/audit.jsonl`).
    audit: Arc<api::audit::AuditLog>,
    /// When start-up began, for the "plugins loaded" line's timing.
    started: Instant,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Steps 1–4 of the module docs. `config` must be validated ([`HostConfig::validate`]).
    pub async fn build(mut config: HostConfig) -> anyhow::Result<Daemon> {
        let plugins_dir = config.plugins_dir();
        for dir in [&config.data_dir, &plugins_dir] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        // 1. bind.
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; is another daemon running? pass --listen or set EVOLVE_LISTEN",
                    config.server.listen
                )
            })?;
        let listen = listener
            .local_addr()
            .context("listener has no local address")?;
        // From here on the config says where the API really is (port 0 asked for any port):
        // the daemon's own origins, which the access check allows, are on this port.
        config.server.listen = listen;

        let events = EventBus::new();
        let runtime = Runtime::new(config.runtime_config(), events.clone())?;
        let started = Instant::now();

        // 2. the stores.
        let history = open_run_history(&config).await?;
        let registry = open_registry(&config).await?;
        let registry_maintenance = Maintenance::start(
            Arc::clone(&registry),
            (config.registry.backup_interval_s > 0)
                .then(|| Duration::from_secs(config.registry.backup_interval_s)),
            events.clone(),
        );

        // 3. the parts, lower first.
        let agents = AgentManager::new(
            runtime.clone(),
            events.clone(),
            history,
            config.agents.clone(),
        );
        let mesh = Mesh::with_model_selector(
            config.mesh.clone(),
            config.mesh_catalog_file(),
            Arc::new(PluginChecks(runtime.clone())),
            Some(Arc::new(RegistrySelector {
                registry: Arc::clone(&registry),
            })),
            events.clone(),
        )
        .context("cannot start the service mesh")?;
        tracing::info!(
            services = mesh.services().len(),
            catalog = %config.mesh_catalog_file().display(),
            "mesh catalog loaded"
        );
        let cluster = start_cluster(&config, listen, &mesh, &events)?;
        runtime.install_system_view(SystemView {
            inventory: Arc::new(DaemonInventory {
                listen: listen.to_string(),
                auth: !config.server.tokens.is_empty(),
                started,
                agents: agents.clone(),
                registry: Some(Arc::clone(&registry)),
                mesh: Some(mesh.clone()),
                api_endpoints: api::inventory_endpoints(),
                security: security_posture(&config),
            }),
            probes: Arc::new(DaemonProbes {
                runtime: runtime.clone(),
                registry: Some(Arc::clone(&registry)),
                mesh: Some(mesh.clone()),
            }),
        });

        // 4. plugins: read the dir now, so a missing or unreadable one fails before serving;
        // the loading itself happens while the API serves (see `run`).
        reload::plugin_dirs(&plugins_dir)
            .with_context(|| format!("cannot read plugins dir {}", plugins_dir.display()))?;
        let reloader = Reloader::new(
            runtime.clone(),
            events.clone(),
            plugins_dir.clone(),
            config.reload.clone(),
        );
        let audit = Arc::new(
            api::audit::AuditLog::open(&config.log_dir()).context("cannot open the audit log")?,
        );

        Ok(Daemon {
            started,
            audit,
            config: Arc::new(config),
            listener,
            listen,
            events,
            runtime,
            agents,
            registry,
            registry_maintenance,
            mesh,
            cluster,
            reloader,
        })
    }

    /// The API's address (the bound port when `server.listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Serves until `stop` turns true, then drains (see the module docs).
    pub async fn run(self, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Daemon {
            started,
            audit,
            config,
            listener,
            listen,
            events,
            runtime,
            agents,
            registry,
            registry_maintenance,
            mesh,
            cluster,
            reloader,
        } = self;
        let grace = Duration::from_secs(config.server.shutdown_grace_s);
        let mesh_listen = mesh
            .config()
            .listen
            .zip(mesh.config().listen_service.clone());
        // 5. plugins load while the API serves: one whose describe() never returns delays
        // only itself. The watcher starts first, so nothing written during the load is missed;
        // agents follow the plugins as they load, the mesh's health checks start once every
        // checker has had its first load.
        if config.reload.watch {
            reloader.spawn_watcher();
        }
        agents.start();
        tokio::spawn(load_plugins(
            Arc::clone(&reloader),
            runtime.clone(),
            mesh.clone(),
            config.plugins.load_parallelism(),
            started,
        ));
        let app = api::router(
            ApiState::new(runtime, reloader, events, config, agents)
                .with_registry(registry)
                .with_mesh(mesh.clone())
                .with_cluster(cluster.clone())
                .with_stop(stop.clone())
                .with_audit(audit),
        );
        tracing::info!(addr = %listen, "evolve API listening on http://{listen}");
        if let Some((addr, service)) = mesh_listen {
            let socket = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on mesh.listen = {addr}"))?;
            tracing::info!(addr = %addr, service = %service, "mesh listener forwarding to {service}");
            // Its own thread and current-thread runtime: see `evolve_mesh::listener::start`. Not
            // joined: the process ends after the API's grace, and the listener's runtime by then.
            evolve_mesh::listener::start(socket, mesh, service, stop.clone(), grace)
                .context("cannot start the mesh listener's thread")?;
        }
        let mut graceful = stop.clone();
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
            tracing::info!("shutting down: finishing in-flight requests");
        });
        let mut stopped = stop;
        tokio::select! {
            result = server => result.context("API server failed")?,
            _ = async {
                let _ = stopped.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_s = grace.as_secs(), "shutdown grace elapsed with requests still in flight");
            }
        }
        cluster.shutdown(CLUSTER_LEAVE_WAIT).await;
        drop(registry_maintenance);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Step 5: the first load of every plugin dir, `parallelism` at once.
async fn load_plugins(
    reloader: Arc<Reloader>,
    runtime: Runtime,
    mesh: Mesh,
    parallelism: usize,
    started: Instant,
) {
    let dir = reloader.plugins_dir().display().to_string();
    match reloader.load_initial(parallelism).await {
        Ok(summary) => {
            let cache = runtime.cache_stats();
            tracing::info!(
                dir = %dir,
                loaded = summary.serving(),
                failed = summary.failed(),
                parallelism,
                aot_hits = cache.hits,
                aot_misses = cache.misses,
                ms = started.elapsed().as_millis() as u64,
                "plugins loaded"
            );
        }
        // Readable a moment ago (start-up checked): the watcher's rescan loads them once it is
        // readable again.
        Err(error) => {
            tracing::error!(dir = %dir, %error, "cannot read the plugins dir; plugins load once it is readable again")
        }
    }
    mesh.start_health_checks();
}

async fn open_run_history(config: &HostConfig) -> anyhow::Result<RunHistory> {
    let agents_db = config.agents_db();
    let (history, interrupted) = tokio::task::spawn_blocking(move || RunHistory::open(&agents_db))
        .await
        .context("opening the agent run history")??;
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "agent runs left running by the previous process were marked interrupted"
        );
    }
    Ok(history)
}

async fn open_registry(config: &HostConfig) -> anyhow::Result<Arc<Registry>> {
    let registry_config = config.registry_config();
    let opened = Instant::now();
    let to_open = registry_config.clone();
    let registry = tokio::task::spawn_blocking(move || Registry::open(to_open))
        .await
        .context("registry open task failed")?
        .context("cannot open the model registry")?;
    if let Ok((models, versions, points)) = registry.counts() {
        tracing::info!(
            path = %registry_config.db_path.display(),
            models, versions, points,
            ms = opened.elapsed().as_millis() as u64,
            "model registry opened"
        );
    }
    Ok(Arc::new(registry))
}

/// With `[cluster] redis_url`, events go to Redis and the catalog is shared; never waits for
/// Redis (an unreachable one is retried in the background).
fn start_cluster(
    config: &HostConfig,
    listen: SocketAddr,
    mesh: &Mesh,
    events: &EventBus,
) -> anyhow::Result<Cluster> {
    let node_id = config
        .cluster
        .node_id
        .clone()
        .unwrap_or_else(|| evolve_cluster::config::default_node_id(listen.port()));
    let cluster = Cluster::start(
        config.cluster.clone(),
        node_id.clone(),
        listen.to_string(),
        Arc::new(mesh.clone()),
        events.clone(),
    )
    .context("cannot start the cluster")?;
    if config.cluster.enabled() {
        tracing::info!(node = %node_id, redis = %evolve_cluster::config::redact_url(config.cluster.redis_url.as_deref().unwrap_or_default()), "cluster: joining over Redis");
    } else {
        tracing::info!(node = %node_id, "cluster: disabled (no cluster.redis_url): a single daemon");
    }
    Ok(cluster)
}

/// What the security auditor is told of the daemon's own guards (names, never secrets).
fn security_posture(config: &HostConfig) -> evolve_runtime::bindings::inventory::SecurityPosture {
    evolve_runtime::bindings::inventory::SecurityPosture {
        token_names: config
            .server
            .tokens
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        auth_reads: config.server.reads_need_token(),
        cluster_enabled: config.cluster.enabled(),
        cluster_authenticated: config.cluster.authenticated(),
        allowed_dir_roots: config
            .runtime
            .allowed_dir_roots
            .iter()
            // Grants are reported resolved, so the roots are too.
            .map(|root| {
                std::fs::canonicalize(root)
                    .unwrap_or_else(|_| root.clone())
                    .display()
                    .to_string()
            })
            .collect(),
        allowed_env: config.runtime.allowed_env.clone(),
    }
}
