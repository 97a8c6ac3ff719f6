//! `evolve serve`: wires config → runtime → API and runs until SIGTERM / Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ServeArgs;
use crate::api::{self, ApiState};
use crate::config::{HostConfig, LogConfig, LogFormat};
use crate::events::EventBus;
use crate::mesh::Mesh;
use crate::reload::Reloader;
use crate::runtime::bindings::inventory::{HostSummary, ServiceStatus};
use crate::runtime::{Runtime, SystemInventory};

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
    init_tracing(&config.log)?;

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
    // ---- service mesh (issue 4): catalog from the config file and the catalog file; health
    // checks start once the checker plugins are loaded (below). ----
    let mesh = Mesh::new(
        config.mesh.clone(),
        config.mesh_catalog_file(),
        Arc::new(runtime.clone()),
        events.clone(),
    )
    .context("cannot start the service mesh")?;
    tracing::info!(
        services = mesh.services().len(),
        catalog = %config.mesh_catalog_file().display(),
        "mesh catalog loaded"
    );
    // ---- end service mesh ----
    runtime.set_system_inventory(Arc::new(DaemonInventory {
        listen: listen.to_string(),
        auth: !config.server.tokens.is_empty(),
        started,
        mesh: mesh.clone(),
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

    let grace = Duration::from_secs(config.server.shutdown_grace_s);
    let app = api::router(
        ApiState::new(runtime, reloader, events, Arc::new(config)).with_mesh(mesh.clone()), // service mesh
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(addr = %listen, "evolve API listening on http://{listen}");

    // ---- service mesh: the optional data-plane listener ----
    if let (Some(addr), Some(service)) =
        (mesh.config().listen, mesh.config().listen_service.clone())
    {
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on mesh.listen = {addr}"))?;
        tracing::info!(addr = %addr, service = %service, "mesh listener forwarding to {service}");
        tokio::spawn(crate::mesh::listener::serve(
            socket,
            mesh.clone(),
            service,
            stop_rx.clone(),
        ));
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

/// Installs the global subscriber: text or JSON lines on stderr, filtered by `log.level`.
pub fn init_tracing(log: &LogConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .with_context(|| format!("log.level = \"{}\" is not a valid filter", log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (e.g. by an embedding test): keep the existing one.
    let _ = result;
    Ok(())
}

/// The daemon's own part of the plugin inventory.
struct DaemonInventory {
    listen: String,
    auth: bool,
    started: Instant,
    mesh: Mesh,
}

impl SystemInventory for DaemonInventory {
    fn host(&self) -> HostSummary {
        HostSummary {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_listen: self.listen.clone(),
            api_auth: self.auth,
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    fn services(&self) -> Vec<ServiceStatus> {
        self.mesh.inventory()
    }
}
