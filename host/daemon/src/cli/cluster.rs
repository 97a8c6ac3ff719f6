//! `evolve cluster` (this node's view of the cluster) and `evolve events tail` (follow events
//! live: every node's from Redis with `--redis`, else the daemon's own).

use std::io::Write;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::ApiArgs;
use super::client::{call_ok, follow_lines, percent_encode};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Follow events as they happen, one JSON line each.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only events of this kind, e.g. service.registered.
    #[arg(long)]
    pub kind: Option<String>,
    /// Read every node's events straight from this Redis (e.g. redis://127.0.0.1:6379/);
    /// without it, the daemon at --api is asked for its own events.
    #[arg(long, env = "EVOLVE_REDIS_URL")]
    pub redis: Option<String>,
    /// The cluster's `channel_prefix`.
    #[arg(long, default_value = "evolve")]
    pub prefix: String,
    /// Stop after this many events (for scripts).
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn show(api: ApiArgs) -> anyhow::Result<()> {
    let value = call_ok(&api, Method::GET, "/v1/cluster", None).await?;
    if api.json {
        println!("{value}");
        return Ok(());
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    println!(
        "node {}  mode {}  state {}  since {}",
        text(&value["node"]),
        text(&value["mode"]),
        text(&value["state"]),
        text(&value["since"])
    );
    if value["enabled"] != true {
        println!("no cluster.redis_url: a single daemon (embedded event bus and catalog)");
        return Ok(());
    }
    println!("redis {}", text(&value["redis_url"]));
    if !value["last_error"].is_null() {
        println!("last error: {}", text(&value["last_error"]));
    }
    println!(
        "last sync {} ({} ms ago, took {} ms)   events: {} published, {} buffered, {} dropped",
        text(&value["last_sync_at"]),
        text(&value["sync_lag_ms"]),
        text(&value["last_sync_ms"]),
        value["events"]["published"],
        value["events"]["buffered"],
        value["events"]["dropped"]
    );
    println!(
        "catalog: {} announced, {} remote services merged",
        value["catalog"]["announced"], value["catalog"]["remote_services"]
    );
    println!(
        "{:<32} {:<22} {:>8} {:>14} {:>14}",
        "PEER", "API", "SERVICES", "HEARTBEAT AGE", "LAST SEEN AGO"
    );
    for peer in value["peers"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<22} {:>8} {:>12}ms {:>12}ms",
            text(&peer["node"]),
            text(&peer["api"]),
            peer["services"],
            peer["heartbeat_age_ms"],
            peer["last_seen_ago_ms"]
        );
    }
    Ok(())
}

pub async fn run_events(command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Tail(args) = command;
    let mut left = args.count;
    let emit = move |line: &str| -> bool {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return false; // stdout closed (e.g. piped into head)
        }
        match &mut left {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n > 0
            }
            None => true,
        }
    };
    if let Some(url) = &args.redis {
        evolve_cluster::tail::follow(url, &args.prefix, args.kind.as_deref(), emit).await?;
        return Ok(());
    }
    // From the daemon: its recent events, then each new one as it is published.
    let mut path = "/v1/events?follow=true".to_string();
    if let Some(kind) = &args.kind {
        path.push_str("&kind=");
        path.push_str(&percent_encode(kind));
    }
    follow_lines(&args.api, &path, emit).await
}
