//! The `evolve` command line. This is the binary's edge: errors are `anyhow` here, with the
//! library's typed errors as their sources.

mod agent;
mod client;
mod cluster;
mod commands;
mod dev;
mod health;
pub mod model;
mod plugin;
mod render;
mod serve;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use self::serve::{init_tracing, serve};

/// Warnings only, for one-shot commands.
pub fn init_quiet_tracing() -> anyhow::Result<()> {
    let log = crate::config::LogConfig {
        level: std::env::var("EVOLVE_LOG").unwrap_or_else(|_| "warn".into()),
        format: crate::config::LogFormat::Text,
        ..crate::config::LogConfig::default()
    };
    init_tracing(&log, None).map(drop)
}

/// Evolve: runs sandboxed WebAssembly meta agents and health checkers.
///
/// `evolve --version` prints the version; it is not propagated to the subcommands, several of
/// which take a model `--version` of their own.
#[derive(Debug, Parser)]
#[command(name = "evolve", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load plugins, serve the HTTP API.
    Serve(ServeArgs),
    /// Inspect and validate plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with meta agents: list, health, run, history, cancel.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Run the bundled system jobs (by the capability of the agent that does them).
    #[command(subcommand)]
    System(SystemCommand),
    /// Work with health checkers.
    #[command(subcommand)]
    Checker(CheckerCommand),
    /// The model registry: models, versions, aliases, performance, best model, backups.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Plugin dev loop: rebuild a plugin project (Rust, Python, JavaScript) on every change and
    /// hot-reload it into a running daemon, one line per attempt.
    Dev(DevArgs),
    /// The service mesh catalog: register, list, remove, health, probe.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// The whole system's health: plugins, services, registry, agents, cluster (exit 1 when
    /// unhealthy).
    Health(ApiArgs),
    /// This node's view of the cluster: Redis connection, peers, last sync, events.
    Cluster(ApiArgs),
    /// Follow the host's events live (every node's, from Redis, with --redis).
    #[command(subcommand)]
    Events(cluster::EventsCommand),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The plugin project (plugin.toml and Cargo.toml, app.py or app.js). Python / JavaScript
    /// toolchains are taken from $EVOLVE_PLUGIN_TOOLS (see `evolve plugin setup`).
    pub path: PathBuf,
    /// The daemon's plugins dir (default: asked from the daemon's API).
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// Build once, install, reload, and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML); defaults are used for anything it leaves out.
    #[arg(long, env = "EVOLVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of plugin directories (overrides plugins.dir).
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// API listen address (overrides server.listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// State directory (overrides data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Where the daemon's API is, for commands that talk to a running daemon.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Base URL of the daemon's API.
    #[arg(
        long,
        env = "EVOLVE_API",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub api: String,
    /// Bearer token (prefer EVOLVE_TOKEN or --token-file: an argument shows in `ps`). When none
    /// is given, EVOLVE_AUTH_TOKEN (the daemon's own variable) is used.
    #[arg(long, env = "EVOLVE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the bearer token (its first line); refused when its group or others may
    /// read it.
    #[arg(
        long,
        env = "EVOLVE_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the running daemon's plugins.
    List(ApiArgs),
    /// Validate a plugin directory (or a bare component) without a daemon: load, compile, check
    /// its world and version, and call describe(). Exits non-zero with the reason on failure.
    Check {
        /// A plugin directory (with plugin.toml) or a .wasm component.
        path: PathBuf,
        /// Host config whose limits and ceilings apply.
        #[arg(long, env = "EVOLVE_CONFIG")]
        config: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Author(plugin::AuthorCommand),
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List the meta agents: policy, schedule, health and run stats.
    List(ApiArgs),
    /// Every agent's latest health and its history.
    Health(ApiArgs),
    /// Run a task on a meta agent in the running daemon (recorded in its history).
    Run {
        name: String,
        /// Task name (the agent's default task when omitted).
        #[arg(long, default_value = "")]
        task: String,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An agent's run history, newest first, with its stats.
    Runs {
        name: String,
        /// Most runs to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a run in progress.
    Cancel {
        name: String,
        run_id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How to run: input, deadline, waiting.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Task input as JSON.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Deadline of the whole run (attempts and backoffs), ms.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Print the run id and return at once instead of waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Check services, health checkers, the registry and agents (integration-tester).
    IntegrationTests(SystemArgs),
    /// Analyze the daemon's logs: counts, bursts, top errors (log-analyzer).
    LogAnalysis(SystemArgs),
    /// Write markdown documentation of the live system (doc-generator).
    Documentation(SystemArgs),
    /// Audit permissions, exposure, transport and limits (security-auditor).
    SecurityAudit(SystemArgs),
}

#[derive(Debug, Args)]
pub struct SystemArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum CheckerCommand {
    /// Check a service endpoint with a health checker in the running daemon.
    Check {
        name: String,
        /// Base URL of the service instance, e.g. http://127.0.0.1:9000.
        #[arg(long)]
        endpoint: String,
        /// Service name to report.
        #[arg(long, default_value = "adhoc")]
        service: String,
        /// Health route of the service, passed as its `health_path` metadata (checkers such as
        /// http-health use it over their configured path).
        #[arg(long)]
        path: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Dev(args) => dev::dev(args).await,
        Command::Model(command) => model::run(command).await,
        Command::Service(command) => service::run(command).await,
        Command::Health(api) => health::health(&api).await,
        Command::Cluster(api) => cluster::show(api).await,
        Command::Events(command) => cluster::run_events(command).await,
        Command::Plugin(PluginCommand::List(api)) => commands::plugin_list(&api).await,
        Command::Plugin(PluginCommand::Check { path, config, json }) => {
            commands::plugin_check(&path, config.as_deref(), json).await
        }
        Command::Plugin(PluginCommand::Author(command)) => plugin::run(command),
        Command::Agent(command) => agent::agent(command).await,
        Command::System(command) => agent::system(command).await,
        Command::Checker(CheckerCommand::Check {
            name,
            endpoint,
            service,
            path,
            api,
        }) => commands::checker_check(&api, &name, &service, &endpoint, path.as_deref()).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap checks a command's definition only in debug builds, and only for the subcommand a
    /// run parses: this checks every one, so two arguments with one name (a subcommand's
    /// `--version` beside a propagated version flag) fail here instead of panicking a user's
    /// debug build.
    #[test]
    fn every_subcommand_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
