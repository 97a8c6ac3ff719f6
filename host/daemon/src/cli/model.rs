//! `evolve model …`: the model registry from the command line. Every command talks to the
//! running daemon's API (readable tables, or the API's JSON with `--json`), except
//! `restore --db` and `backups --dir`, which work on files with the daemon stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::ApiArgs;
use super::client::call_ok;
use super::commands::print_table;
use evolve_registry::backup;

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

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// `key=value` pairs; a value that parses as JSON is JSON, else a string.
fn key_values(what: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{what} {pair:?} is not key=value");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        map.insert(key.to_string(), value);
    }
    Ok(map)
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn number(value: &Value, pointer: &str, decimals: usize) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .map_or("-".into(), |n| format!("{n:.decimals$}"))
}

fn aliases_text(model: &Value) -> String {
    model["aliases"]
        .as_object()
        .map(|aliases| {
            aliases
                .iter()
                .map(|(k, v)| format!("{k}→v{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

fn list_of(value: &Value, key: &str) -> Vec<Value> {
    value[key].as_array().cloned().unwrap_or_default()
}

pub async fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::List {
            task,
            tag,
            name,
            api,
        } => {
            let path = format!(
                "/v1/models{}",
                query_string(&[("task", task), ("tag", tag), ("name", name)])
            );
            let value = call_ok(&api, Method::GET, &path, None).await?;
            if api.json {
                return print_json(&value);
            }
            let mut rows =
                vec![["NAME", "TASK", "LATEST", "ALIASES", "TAGS", "CLASS"].map(String::from)];
            for m in list_of(&value, "models") {
                rows.push([
                    text(&m, "/name"),
                    text(&m, "/task_type"),
                    format!("v{}", text(&m, "/latest_version")),
                    aliases_text(&m),
                    m["tags"].as_array().map_or("-".into(), |t| {
                        t.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    }),
                    text(&m, "/model_class"),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        ModelCommand::Show { name, api } => {
            let model = call_ok(&api, Method::GET, &format!("/v1/models/{name}"), None).await?;
            let versions = call_ok(
                &api,
                Method::GET,
                &format!("/v1/models/{name}/versions"),
                None,
            )
            .await?;
            if api.json {
                return print_json(&json!({ "model": model, "versions": versions["versions"] }));
            }
            println!("{} ({})", text(&model, "/name"), text(&model, "/task_type"));
            for (label, pointer) in [
                ("description", "/description"),
                ("class", "/model_class"),
                ("artifact", "/artifact_uri"),
                ("sha256", "/sha256"),
                ("created", "/created_at"),
                ("created by", "/created_by"),
            ] {
                println!("  {label:<12} {}", text(&model, pointer));
            }
            println!("  {:<12} {}", "aliases", aliases_text(&model));
            println!();
            let mut rows = vec![
                [
                    "VERSION",
                    "STATUS",
                    "CREATED",
                    "BY",
                    "ARTIFACT",
                    "DESCRIPTION",
                ]
                .map(String::from),
            ];
            for v in list_of(&versions, "versions") {
                rows.push([
                    format!("v{}", text(&v, "/version")),
                    text(&v, "/status"),
                    text(&v, "/created_at"),
                    text(&v, "/created_by"),
                    text(&v, "/artifact_uri"),
                    text(&v, "/description"),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        ModelCommand::Register(args) => {
            let body = json!({
                "name": args.name,
                "task_type": args.task,
                "description": args.description,
                "model_class": args.model_class,
                "artifact_uri": args.artifact_uri,
                "sha256": args.sha256,
                "tags": args.tags,
                "dependencies": args.dependencies,
                "parameters": key_values("--param", &args.parameters)?,
            });
            let value = call_ok(&args.api, Method::POST, "/v1/models", Some(&body)).await?;
            if args.api.json {
                return print_json(&value);
            }
            println!(
                "registered {} ({})",
                text(&value, "/name"),
                text(&value, "/task_type")
            );
            Ok(())
        }
        ModelCommand::AddVersion(args) => {
            let body = json!({
                "description": args.description,
                "artifact_uri": args.artifact_uri,
                "sha256": args.sha256,
                "parameters": key_values("--param", &args.parameters)?,
                "metadata": key_values("--meta", &args.metadata)?,
                "status": args.status,
            });
            let value = call_ok(
                &args.api,
                Method::POST,
                &format!("/v1/models/{}/versions", args.name),
                Some(&body),
            )
            .await?;
            if args.api.json {
                return print_json(&value);
            }
            println!(
                "created {} v{}",
                text(&value, "/model"),
                text(&value, "/version")
            );
            Ok(())
        }
        ModelCommand::Status {
            name,
            version,
            status,
            api,
        } => {
            let value = call_ok(
                &api,
                Method::POST,
                &format!("/v1/models/{name}/versions/{version}/status"),
                Some(&json!({ "status": status })),
            )
            .await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "{name} v{} is {}",
                text(&value, "/version"),
                text(&value, "/status")
            );
            Ok(())
        }
        ModelCommand::Alias {
            name,
            alias,
            version,
            reason,
            api,
        } => {
            let path = format!("/v1/models/{name}/aliases/{alias}");
            let value = match version {
                Some(version) => {
                    let body = json!({ "version": version, "reason": reason });
                    call_ok(&api, Method::PUT, &path, Some(&body)).await?
                }
                None => call_ok(&api, Method::GET, &path, None).await?,
            };
            if api.json {
                return print_json(&value);
            }
            match version {
                None => println!("{name}@{alias} → v{}", text(&value, "/version")),
                Some(_) if value["moved"].is_null() => {
                    println!(
                        "{name}@{alias} already points at v{}",
                        text(&value, "/alias/version")
                    )
                }
                Some(_) => println!(
                    "{name}@{alias}: {} → v{}",
                    value
                        .pointer("/moved/from")
                        .and_then(Value::as_u64)
                        .map_or("(new)".into(), |v| format!("v{v}")),
                    text(&value, "/alias/version")
                ),
            }
            Ok(())
        }
        ModelCommand::Rollback {
            name,
            alias,
            reason,
            api,
        } => {
            let value = call_ok(
                &api,
                Method::POST,
                &format!("/v1/models/{name}/aliases/{alias}/rollback"),
                Some(&json!({ "reason": reason })),
            )
            .await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "{name}@{alias} rolled back: v{} → v{}",
                text(&value, "/from"),
                text(&value, "/to")
            );
            Ok(())
        }
        ModelCommand::History { name, alias, api } => {
            let value = call_ok(
                &api,
                Method::GET,
                &format!("/v1/models/{name}/aliases/{alias}/history"),
                None,
            )
            .await?;
            if api.json {
                return print_json(&value);
            }
            let version = |v: &Value, p: &str| match v.pointer(p).and_then(Value::as_u64) {
                Some(n) => format!("v{n}"),
                None => "-".into(),
            };
            let mut rows =
                vec![["WHEN", "ACTION", "FROM", "TO", "WHO", "REASON"].map(String::from)];
            for m in list_of(&value, "history") {
                rows.push([
                    text(&m, "/at"),
                    text(&m, "/action"),
                    version(&m, "/from"),
                    version(&m, "/to"),
                    text(&m, "/actor"),
                    text(&m, "/reason"),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        ModelCommand::Record {
            name,
            version,
            metrics,
            at,
            api,
        } => {
            let mut values = serde_json::Map::new();
            for pair in &metrics {
                let Some((metric, value)) = pair.split_once('=') else {
                    bail!("{pair:?} is not metric=value");
                };
                let value: f64 = value
                    .trim()
                    .parse()
                    .with_context(|| format!("{pair:?}: the value is not a number"))?;
                // Non-finite values go as strings so the daemon names the problem.
                let value = serde_json::Number::from_f64(value)
                    .map_or_else(|| Value::String(value.to_string()), Value::Number);
                values.insert(metric.to_string(), value);
            }
            let mut body = json!({ "version": version, "metrics": values });
            if let Some(at) = at {
                body["timestamp"] = Value::String(at);
            }
            let value = call_ok(
                &api,
                Method::POST,
                &format!("/v1/models/{name}/performance"),
                Some(&body),
            )
            .await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "recorded {} points for {name} v{version}",
                text(&value, "/recorded")
            );
            Ok(())
        }
        ModelCommand::Performance(args) => {
            let path = format!(
                "/v1/models/{}/performance{}",
                args.name,
                query_string(&[
                    ("version", args.version.map(|v| v.to_string())),
                    ("metric", args.metric),
                    ("days", args.days.map(|d| d.to_string())),
                    ("since", args.since),
                    ("until", args.until),
                    ("limit", args.limit.map(|l| l.to_string())),
                    ("bucket_s", args.bucket_s.map(|b| b.to_string())),
                ])
            );
            let value = call_ok(&args.api, Method::GET, &path, None).await?;
            if args.api.json {
                return print_json(&value);
            }
            let mut rows = vec![
                [
                    "VERSION", "METRIC", "COUNT", "MEAN", "MIN", "MAX", "FIRST", "LAST",
                ]
                .map(String::from),
            ];
            for a in list_of(&value, "aggregates") {
                rows.push([
                    format!("v{}", text(&a, "/version")),
                    text(&a, "/metric"),
                    text(&a, "/count"),
                    number(&a, "/mean", 4),
                    number(&a, "/min", 4),
                    number(&a, "/max", 4),
                    text(&a, "/first_at"),
                    text(&a, "/last_at"),
                ]);
            }
            print_table(&rows);
            let buckets = list_of(&value, "buckets");
            if !buckets.is_empty() {
                println!();
                let mut rows = vec![
                    [
                        "VERSION",
                        "METRIC",
                        "WINDOW START",
                        "COUNT",
                        "MEAN",
                        "MIN",
                        "MAX",
                    ]
                    .map(String::from),
                ];
                for b in buckets {
                    rows.push([
                        format!("v{}", text(&b, "/version")),
                        text(&b, "/metric"),
                        text(&b, "/start"),
                        text(&b, "/count"),
                        number(&b, "/mean", 4),
                        number(&b, "/min", 4),
                        number(&b, "/max", 4),
                    ]);
                }
                print_table(&rows);
            }
            println!(
                "\n{} points in range{}",
                list_of(&value, "points").len(),
                if value["truncated"] == true {
                    " (more exist: raise --limit)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        ModelCommand::Best { task, policy, api } => {
            let path = format!(
                "/v1/models/best{}",
                query_string(&[("task", Some(task)), ("policy", policy)])
            );
            let value = call_ok(&api, Method::GET, &path, None).await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "best {} model under policy '{}': {} v{} (score {})",
                text(&value, "/task_type"),
                text(&value, "/policy"),
                text(&value, "/winner/model"),
                text(&value, "/winner/version"),
                number(&value, "/winner/score", 4)
            );
            println!("{}\n", text(&value, "/explanation"));
            let candidates = list_of(&value, "candidates");
            let metric_names: Vec<String> = candidates
                .first()
                .and_then(|c| c["metrics"].as_array())
                .map(|m| m.iter().map(|s| text(s, "/metric")).collect())
                .unwrap_or_default();
            let mut header = vec![
                "RANK".to_string(),
                "MODEL".into(),
                "VERSION".into(),
                "SCORE".into(),
                "SAMPLES".into(),
            ];
            header.extend(metric_names.iter().map(|m| m.to_uppercase()));
            let mut rows = vec![header];
            for c in &candidates {
                let mut row = vec![
                    text(c, "/rank"),
                    text(c, "/model"),
                    format!("v{}", text(c, "/version")),
                    number(c, "/score", 4),
                    text(c, "/samples"),
                ];
                for m in c["metrics"].as_array().cloned().unwrap_or_default() {
                    row.push(format!(
                        "{} ({:+.3})",
                        number(&m, "/weighted_mean", 4),
                        m["contribution"].as_f64().unwrap_or(0.0)
                    ));
                }
                rows.push(row);
            }
            print_rows(&rows);
            for e in list_of(&value, "excluded") {
                println!(
                    "excluded {} v{}: {}",
                    text(&e, "/model"),
                    text(&e, "/version"),
                    text(&e, "/reason")
                );
            }
            Ok(())
        }
        ModelCommand::Policies { api } => {
            let value = call_ok(&api, Method::GET, "/v1/registry/policies", None).await?;
            if api.json {
                return print_json(&value);
            }
            let default = text(&value, "/default");
            let mut rows = vec![
                [
                    "POLICY",
                    "METRICS",
                    "WINDOW",
                    "HALF-LIFE",
                    "MIN SAMPLES",
                    "TIE-BREAK",
                ]
                .map(String::from),
            ];
            if let Some(policies) = value["policies"].as_object() {
                for (name, p) in policies {
                    let metrics: Vec<String> = p["metrics"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|m| {
                            format!(
                                "{}×{}{}",
                                text(m, "/name"),
                                text(m, "/weight"),
                                match m["direction"].as_str() {
                                    Some("down") => "↓",
                                    Some("up") => "↑",
                                    _ => "",
                                }
                            )
                        })
                        .collect();
                    rows.push([
                        if *name == default {
                            format!("{name} (default)")
                        } else {
                            name.clone()
                        },
                        metrics.join(" "),
                        format!("{} d", text(p, "/window_days")),
                        format!("{} d", text(p, "/half_life_days")),
                        text(p, "/min_samples"),
                        p["tie_break"].as_array().map_or("-".into(), |t| {
                            t.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        }),
                    ]);
                }
            }
            print_table(&rows);
            Ok(())
        }
        ModelCommand::Health { api } => {
            let (status, value) =
                super::client::call(&api, Method::GET, "/v1/registry", None).await?;
            if api.json {
                print_json(&value)?;
            } else {
                println!("registry    {}", text(&value, "/path"));
                println!(
                    "integrity   {}",
                    value["integrity_check"].as_array().map_or("-".into(), |l| l
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; "))
                );
                println!("schema      v{}", text(&value, "/schema_version"));
                println!(
                    "contents    {} models, {} versions, {} points",
                    text(&value, "/models"),
                    text(&value, "/versions"),
                    text(&value, "/points")
                );
                println!(
                    "size        {} bytes (+ {} bytes WAL)",
                    text(&value, "/db_bytes"),
                    text(&value, "/wal_bytes")
                );
                println!(
                    "backups     {} in {} (latest {})",
                    text(&value, "/backups"),
                    text(&value, "/backup_dir"),
                    text(&value, "/last_backup/file")
                );
            }
            if !status.is_success() {
                bail!("the registry is not healthy ({status})");
            }
            Ok(())
        }
        ModelCommand::Backup { api } => {
            let value = call_ok(&api, Method::POST, "/v1/registry/backups", None).await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "backup written: {} ({} bytes)",
                text(&value, "/path"),
                text(&value, "/bytes")
            );
            Ok(())
        }
        ModelCommand::Backups { dir, api } => {
            let value = match dir {
                Some(dir) => json!({ "backups": backup::list(&dir)? }),
                None => call_ok(&api, Method::GET, "/v1/registry/backups", None).await?,
            };
            if api.json {
                return print_json(&value);
            }
            let mut rows = vec![["FILE", "CREATED", "BYTES"].map(String::from)];
            for b in list_of(&value, "backups") {
                rows.push([
                    text(&b, "/file"),
                    text(&b, "/created_at"),
                    text(&b, "/bytes"),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        ModelCommand::Restore {
            backup: file,
            db,
            api,
        } => {
            if let Some(db) = db {
                let source = PathBuf::from(&file);
                let backup_dir = db
                    .parent()
                    .map(|p| p.join("backups").join("registry"))
                    .unwrap_or_default();
                let moved =
                    backup::restore_offline(&db, &source, &backup_dir).with_context(|| {
                        format!("cannot restore {} into {}", source.display(), db.display())
                    })?;
                if api.json {
                    return print_json(
                        &json!({ "restored": db, "from": source, "previous_moved_to": moved }),
                    );
                }
                println!("restored {} from {}", db.display(), source.display());
                if let Some(moved) = moved {
                    println!("the previous file was moved to {}", moved.display());
                }
                return Ok(());
            }
            let value = call_ok(
                &api,
                Method::POST,
                "/v1/registry/restore",
                Some(&json!({ "backup": file })),
            )
            .await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "restored from {file}; the previous content was saved as {}",
                text(&value, "/previous_saved_as/file")
            );
            Ok(())
        }
        ModelCommand::Export { out, api } => {
            let value = call_ok(&api, Method::GET, "/v1/registry/export", None).await?;
            let contents = serde_json::to_string_pretty(&value)?;
            match out {
                Some(path) => {
                    evolve_core::fsutil::write_atomic(
                        &path,
                        contents.as_bytes(),
                        ".evolve-export-",
                    )
                    .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "exported {} models to {}",
                        list_of(&value, "models").len(),
                        path.display()
                    );
                }
                None => println!("{contents}"),
            }
            Ok(())
        }
        ModelCommand::Import { file, api } => {
            let contents = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let body: Value = serde_json::from_str(&contents)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let value = call_ok(&api, Method::POST, "/v1/registry/import", Some(&body)).await?;
            if api.json {
                return print_json(&value);
            }
            println!(
                "imported {} models, {} points",
                text(&value, "/imported_models"),
                text(&value, "/imported_points")
            );
            Ok(())
        }
    }
}

/// Like [`print_table`] for rows whose width is known only at run time.
fn print_rows(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query_string(&[
                ("since", Some("2026-01-01T00:00:00+01:00".into())),
                ("tag", None)
            ]),
            "?since=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
        assert_eq!(query_string(&[("tag", None)]), "");
    }

    #[test]
    fn key_values_take_json_or_strings() {
        let map = key_values(
            "--param",
            &["lookback=30".into(), "mode=fast".into(), "w=[1,2]".into()],
        )
        .expect("valid");
        assert_eq!(map["lookback"], json!(30));
        assert_eq!(map["mode"], json!("fast"));
        assert_eq!(map["w"], json!([1, 2]));
        assert!(key_values("--param", &["novalue".into()]).is_err());
    }
}
