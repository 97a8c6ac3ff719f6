//! `evolve-demo`: `up` runs the whole demo; `backend` serves one backend alone.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use evolve_demo::server::{self, Backend, Role};
use evolve_demo::{data, up};

/// The Evolve demo: forecast and analysis backends over bundled price data.
#[derive(Debug, Parser)]
#[command(name = "evolve-demo", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the backends of the demo config, the daemon, seed its registry; Ctrl-C stops all.
    Up(up::UpArgs),
    /// Serve one backend (until Ctrl-C).
    Backend {
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        listen: SocketAddr,
        /// The instance id reported in answers (default: the listen address).
        #[arg(long)]
        instance: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Forecast,
    Analysis,
}

#[tokio::main]
async fn main() {
    if let Err(error) = run(Cli::parse()).await {
        eprintln!("evolve-demo: {error:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::up(args).await,
        Command::Backend {
            role,
            listen,
            instance,
        } => {
            let role = match role {
                RoleArg::Forecast => Role::Forecast,
                RoleArg::Analysis => Role::Analysis,
            };
            let listener = server::bind(listen, role.as_str()).await?;
            let backend = Arc::new(Backend {
                role,
                instance: instance.unwrap_or_else(|| listen.to_string()),
                data: Arc::new(data::parse(data::BUNDLED_CSV)?),
            });
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            println!("evolve-demo: {} backend on http://{listen}", role.as_str());
            tokio::select! {
                () = server::serve(listener, backend, stop_rx) => {}
                _ = tokio::signal::ctrl_c() => { let _ = stop_tx.send(true); }
            }
            Ok(())
        }
    }
}
