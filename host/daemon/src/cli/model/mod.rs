//! `evolve model …`: the model registry from the command line. Every command talks to the
//! running daemon's API (readable tables, or the API's JSON with `--json`), except
//! `restore --db` and `backups --dir`, which work on files with the daemon stopped.
//!
//! The clap types and the dispatch live here; the handlers are grouped by what they work on:
//! [`catalog`] (models and versions), [`aliases`], [`performance`] (metrics, scoring) and
//! [`registry`] (the registry file itself: health, backups, export).

mod aliases;
mod catalog;
mod performance;
mod registry;
mod render;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ApiArgs;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// List models (optionally by task type, tag or part of the name).
    List {
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Part of the name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one model with its versions and aliases.
    Show {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Register a model.
    Register(RegisterArgs),
    /// Create the next version of a model.
    AddVersion(AddVersionArgs),
    /// Set a version's status: registered, validated or archived (archived is never chosen).
    Status {
        name: String,
        /// A version number or an alias.
        version: String,
        status: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Point an alias at a version (promote), or show where it points without VERSION.
    Alias {
        name: String,
        alias: String,
        version: Option<u32>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move an alias back to its previous target.
    Rollback {
        name: String,
        alias: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every move of an alias: when, from, to, why, who.
    History {
        name: String,
        alias: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Record metrics of a version: `evolve model record m --version 3 sharpe_ratio=1.4 win_rate=0.56`.
    Record {
        name: String,
        #[arg(long)]
        version: u32,
        /// metric=value pairs.
        #[arg(required = true)]
        metrics: Vec<String>,
        /// When they were measured (RFC 3339); default now.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Metric history and aggregates of a model.
    Performance(PerformanceArgs),
    /// The best model of a task type under a scoring policy, with every candidate's score.
    Best {
        #[arg(long)]
        task: String,
        #[arg(long)]
        policy: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The scoring policies the daemon knows.
    Policies {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Registry health: counts, sizes, integrity_check, backups.
    Health {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write an online backup now.
    Backup {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List backups, newest first (from the daemon, or from a directory with --dir).
    Backups {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Restore a backup: by file name through the daemon, or with the daemon stopped
    /// `--db <registry.db> <backup file path>`.
    Restore {
        backup: String,
        /// Restore offline into this registry file (the daemon must be stopped).
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write the whole registry as JSON (to stdout or --out).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Load a JSON export into an empty registry.
    Import {
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    pub name: String,
    /// forecasting, classification, regression, anomaly_detection, portfolio_optimisation, or
    /// your own.
    #[arg(long)]
    pub task: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Model class, e.g. `lstm`, `xgboost`.
    #[arg(long = "class", default_value = "")]
    pub model_class: String,
    #[arg(long)]
    pub artifact_uri: Option<String>,
    #[arg(long)]
    pub sha256: Option<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long = "dependency")]
    pub dependencies: Vec<String>,
    /// key=value; the value is JSON when it parses as JSON, else a string.
    #[arg(long = "param")]
    pub parameters: Vec<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct AddVersionArgs {
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    #[arg(long)]
    pub artifact_uri: Option<String>,
    #[arg(long)]
    pub sha256: Option<String>,
    /// key=value (JSON or string).
    #[arg(long = "param")]
    pub parameters: Vec<String>,
    /// key=value (JSON or string).
    #[arg(long = "meta")]
    pub metadata: Vec<String>,
    #[arg(long, default_value = "registered")]
    pub status: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct PerformanceArgs {
    pub name: String,
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long)]
    pub metric: Option<String>,
    #[arg(long)]
    pub days: Option<f64>,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub limit: Option<u32>,
    /// Aggregate per window of this many seconds.
    #[arg(long)]
    pub bucket_s: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::List {
            task,
            tag,
            name,
            api,
        } => catalog::list(&api, task, tag, name).await,
        ModelCommand::Show { name, api } => catalog::show(&api, &name).await,
        ModelCommand::Register(args) => catalog::register(&args).await,
        ModelCommand::AddVersion(args) => catalog::add_version(&args).await,
        ModelCommand::Status {
            name,
            version,
            status,
            api,
        } => catalog::set_status(&api, &name, &version, &status).await,
        ModelCommand::Alias {
            name,
            alias,
            version,
            reason,
            api,
        } => aliases::alias(&api, &name, &alias, version, &reason).await,
        ModelCommand::Rollback {
            name,
            alias,
            reason,
            api,
        } => aliases::rollback(&api, &name, &alias, &reason).await,
        ModelCommand::History { name, alias, api } => aliases::history(&api, &name, &alias).await,
        ModelCommand::Record {
            name,
            version,
            metrics,
            at,
            api,
        } => performance::record(&api, &name, version, &metrics, at).await,
        ModelCommand::Performance(args) => performance::performance(args).await,
        ModelCommand::Best { task, policy, api } => performance::best(&api, task, policy).await,
        ModelCommand::Policies { api } => performance::policies(&api).await,
        ModelCommand::Health { api } => registry::health(&api).await,
        ModelCommand::Backup { api } => registry::backup_now(&api).await,
        ModelCommand::Backups { dir, api } => registry::backups(&api, dir.as_deref()).await,
        ModelCommand::Restore {
            backup: file,
            db,
            api,
        } => registry::restore(&api, &file, db.as_deref()).await,
        ModelCommand::Export { out, api } => registry::export(&api, out.as_deref()).await,
        ModelCommand::Import { file, api } => registry::import(&api, &file).await,
    }
}
