//! `evolve cluster` (this node's view of the cluster) and `evolve events tail` (follow events
//! live: every node's from Redis with `--redis`, else the daemon's own).

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::ApiArgs;
use super::client::call_ok;

/// How often `events tail` without `--redis` asks the daemon for its recent events.
const TAIL_POLL: Duration = Duration::from_millis(250);

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
    let mut emit = move |line: &str| -> bool {
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
        crate::cluster::tail::follow(url, &args.prefix, args.kind.as_deref(), emit).await?;
        return Ok(());
    }
    // From the daemon: poll its recent events and print the new ones, oldest first.
    let mut seen: HashSet<String> = HashSet::new();
    let mut newest = String::new();
    loop {
        let value = call_ok(&args.api, Method::GET, "/v1/events", None).await?;
        let mut next_seen = HashSet::new();
        for event in value["events"].as_array().into_iter().flatten() {
            let at = event["at"].as_str().unwrap_or_default().to_string();
            let line = event.to_string();
            if at < newest || seen.contains(&line) {
                next_seen.insert(line);
                continue;
            }
            next_seen.insert(line.clone());
            newest = newest.max(at);
            if args
                .kind
                .as_deref()
                .is_some_and(|k| event["kind"].as_str() != Some(k))
            {
                continue;
            }
            if !emit(&line) {
                return Ok(());
            }
        }
        seen = next_seen;
        tokio::time::sleep(TAIL_POLL).await;
    }
}
