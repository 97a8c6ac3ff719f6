//! `evolve serve`: the config from its file, the command line and the environment; logging;
//! then the [`Daemon`], run until SIGTERM / Ctrl-C.

use anyhow::Context;
use tokio::sync::watch;

use super::ServeArgs;
use crate::config::{HostConfig, LogConfig, LogFormat};
use crate::daemon::Daemon;

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
    let daemon = Daemon::build(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    daemon.run(stop_rx).await
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
