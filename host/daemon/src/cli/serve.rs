//! `evolve serve`: wires config → runtime → API and runs until SIGTERM / Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ServeArgs;
use crate::agents::{AgentManager, RunHistory};
use crate::api::{self, ApiState};
use crate::config::{HostConfig, LogConfig, LogFormat};
use crate::reload::Reloader;
use crate::system::{DaemonInventory, DaemonProbes, PluginChecks};
use evolve_core::events::EventBus;
use evolve_mesh::Mesh;
use evolve_registry::Registry;
use evolve_runtime::Runtime;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = HostConfig::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(dir) = args.plugins_dir {
        config.plugins.dir = Some(dir);
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    config.validate()?;
    let log_dir = config.log.to_files.then(|| config.log_dir());
    // Kept until serve returns: dropping it flushes the log files.
    let _log_guard = init_tracing(&config.log, log_dir.as_deref())?;
    if config.server.allow_unauthenticated
        && config.server.tokens.is_empty()
        && !config.server.listen.ip().is_loopback()
    {
        tracing::warn!(listen = %config.server.listen, "server.allow_unauthenticated is set: the API is open to anyone who can reach {}", config.server.listen);
    }

    let plugins_dir = config.plugins_dir();
    for dir in [&config.data_dir, &plugins_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    // Bind before loading plugins so a port conflict fails in milliseconds, not after compiles.
    let listener = TcpListener::bind(config.server.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another daemon running? pass --listen or set EVOLVE_LISTEN",
            config.server.listen
        )
    })?;
    let listen = listener
        .local_addr()
        .context("listener has no local address")?;

    let events = EventBus::new();
    let runtime = Runtime::new(config.runtime_config(), events.clone())?;
    let started = Instant::now();

    // --- agents: run history, manager (registration, runs, schedules, health) ---
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
    let agents = AgentManager::new(
        runtime.clone(),
        events.clone(),
        history,
        config.agents.clone(),
    );
    // ---- model registry: open the store, refresh the inventory view, scheduled
    // backups. A foreign or damaged file stops the daemon with how to restore it.
    let registry_config = config.registry_config();
    let registry = {
        let opened = Instant::now();
        let to_open = registry_config.clone();
        let registry = tokio::task::spawn_blocking(move || Registry::open(to_open))
            .await
            .context("registry open task failed")?
            .context("cannot open the model registry")?;
        let health_points = registry.counts();
        if let Ok((models, versions, points)) = health_points {
            tracing::info!(
                path = %registry_config.db_path.display(),
                models, versions, points,
                ms = opened.elapsed().as_millis() as u64,
                "model registry opened"
            );
        }
        Arc::new(registry)
    };
    {
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REGISTRY_INVENTORY_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let registry = Arc::clone(&registry);
                let _ = tokio::task::spawn_blocking(move || registry.refresh_inventory()).await;
            }
        });
    }
    if config.registry.backup_interval_s > 0 {
        let registry = Arc::clone(&registry);
        let events = events.clone();
        let period = Duration::from_secs(config.registry.backup_interval_s);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let registry = Arc::clone(&registry);
                match tokio::task::spawn_blocking(move || registry.backup_now()).await {
                    Ok(Ok(backup)) => events.publish(evolve_core::events::Event::new(
                        evolve_core::events::EventKind::RegistryBackupWritten,
                        &backup.file,
                        serde_json::json!({ "path": backup.path, "bytes": backup.bytes, "scheduled": true }),
                    )),
                    Ok(Err(error)) => tracing::error!(%error, "scheduled registry backup failed"),
                    Err(error) => tracing::error!(%error, "scheduled registry backup task failed"),
                }
            }
        });
    }
    // ---- end model registry

    // ---- service mesh: catalog from the config file and the catalog file; health
    // checks start once the checker plugins are loaded (below). ----
    let mesh = Mesh::new(
        config.mesh.clone(),
        config.mesh_catalog_file(),
        Arc::new(PluginChecks(runtime.clone())),
        events.clone(),
    )
    .context("cannot start the service mesh")?;
    tracing::info!(
        services = mesh.services().len(),
        catalog = %config.mesh_catalog_file().display(),
        "mesh catalog loaded"
    );
    // Model-aware routes ask the registry which model to send.
    mesh.set_model_selector(Arc::new(crate::system::RegistrySelector {
        registry: Arc::clone(&registry),
    }));
    // ---- end service mesh ----
    // ---- cluster: with [cluster] redis_url, events go to Redis and the catalog is
    // shared; never waits for Redis (an unreachable one is retried in the background). ----
    let node_id = config
        .cluster
        .node_id
        .clone()
        .unwrap_or_else(|| evolve_cluster::config::default_node_id(listen.port()));
    let cluster = evolve_cluster::Cluster::start(
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
    // ---- end cluster ----
    runtime.set_system_inventory(Arc::new(DaemonInventory {
        listen: listen.to_string(),
        auth: !config.server.tokens.is_empty(),
        started,
        agents: agents.clone(),
        registry: Some(Arc::clone(&registry)),
        mesh: Some(mesh.clone()),
        api_endpoints: crate::api::inventory_endpoints(),
    }));
    runtime.set_system_probes(Arc::new(DaemonProbes {
        runtime: runtime.clone(),
        registry: Some(Arc::clone(&registry)),
        mesh: Some(mesh.clone()),
    }));
    let reloader = Reloader::new(
        runtime.clone(),
        events.clone(),
        plugins_dir.clone(),
        config.reload.clone(),
    );
    // Watch first, then scan: a plugin written during the initial load is not missed.
    if config.reload.watch {
        reloader.spawn_watcher();
    }
    let summary = reloader
        .reconcile_all(false)
        .await
        .with_context(|| format!("cannot read plugins dir {}", plugins_dir.display()))?;
    mesh.start_health_checks(); // service mesh: checkers are loaded now
    let cache = runtime.cache_stats();
    tracing::info!(
        dir = %plugins_dir.display(),
        loaded = summary.serving(),
        failed = summary.failed(),
        aot_hits = cache.hits,
        aot_misses = cache.misses,
        ms = started.elapsed().as_millis() as u64,
        "plugins loaded"
    );

    agents.start();

    let grace = Duration::from_secs(config.server.shutdown_grace_s);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let app = api::router(
        ApiState::new(runtime, reloader, events, Arc::new(config), agents)
            .with_registry(registry)
            .with_mesh(mesh.clone())
            .with_cluster(cluster.clone())
            .with_stop(stop_rx.clone()),
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(addr = %listen, "evolve API listening on http://{listen}");

    // ---- service mesh: the optional data-plane listener ----
    if let (Some(addr), Some(service)) =
        (mesh.config().listen, mesh.config().listen_service.clone())
    {
        let socket = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on mesh.listen = {addr}"))?;
        tracing::info!(addr = %addr, service = %service, "mesh listener forwarding to {service}");
        // Its own thread and current-thread runtime: see `mesh::listener::start`. Not joined:
        // the process ends after the API's grace, and the listener's runtime ends by then too.
        evolve_mesh::listener::start(socket, mesh.clone(), service, stop_rx.clone(), grace)
            .context("cannot start the mesh listener's thread")?;
    }
    // ---- end service mesh ----
    let mut graceful_rx = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
        tracing::info!("shutting down: finishing in-flight requests");
    });
    tokio::select! {
        result = server => result.context("API server failed")?,
        _ = async {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_s = grace.as_secs(), "shutdown grace elapsed with requests still in flight");
        }
    }
    cluster.shutdown(CLUSTER_LEAVE_WAIT).await; // cluster: withdraw this node's services
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Installs the global subscriber: text or JSON lines on stderr, and JSON lines into daily
/// files under `file_dir` when given, all filtered by `log.level`. The returned guard flushes
/// the files when dropped.
pub fn init_tracing(
    log: &LogConfig,
    file_dir: Option<&std::path::Path>,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .with_context(|| format!("log.level = \"{}\" is not a valid filter", log.level))?;
    let stderr = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (files, guard) = match file_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create log directory {} (log.dir)", dir.display())
            })?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("evolve")
                .filename_suffix("log")
                .max_log_files(log.files_kept)
                .build(dir)
                .with_context(|| format!("cannot open log files in {} (log.dir)", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_ansi(false)
                .with_writer(writer)
                .boxed();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(files)
        .try_init();
    // Already installed (e.g. by an embedding test): keep the existing one.
    let _ = result;
    Ok(guard)
}

/// How often the registry's inventory view (models, best per task) is recomputed when it
/// changed: plugins see registry writes at most this late.
const REGISTRY_INVENTORY_REFRESH: Duration = Duration::from_secs(1);

/// How long a stopping daemon waits to withdraw its registrations from the cluster; past it,
/// peers expire them after the heartbeat TTL instead.
const CLUSTER_LEAVE_WAIT: Duration = Duration::from_secs(2);
