//! Cluster benchmark, run by `bench/cluster/run.sh`: real `redis-server`, real
//! daemons, release build.
//!
//! 1. **Propagation**: a service registered on node A (API answer, fsynced) until node B has
//!    merged it into its routing table, seen as B's `cluster.catalog_merged` event arriving on
//!    Redis (followed by `evolve events tail --redis`). The floor, measured the same way in the
//!    same run: a raw `PUBLISH` to an event channel until the same follower prints it.
//! 2. **Convergence with N services**: node A holds N services (`[[mesh.services]]`); node B
//!    starts and merges them all. Reported: B's first full sync (read + merge, from
//!    `/v1/cluster`) and process spawn → all N merged.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use evolve_e2e::bench::{arg, percentile};
use evolve_e2e::http::Backend;
use evolve_e2e::redis::RedisServer;
use evolve_e2e::{Daemon, EVENT_TIMEOUT, Env, evolve_bin};
use serde_json::{Value, json};

fn node(redis: &RedisServer, id: &str, extra: &str) -> Env {
    let mut env = Env::new();
    env.extra_config.push_str(&format!(
        "[cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nheartbeat_ttl_s = 15\nheartbeat_interval_s = 5\nsync_interval_s = 10\n{extra}",
        redis.url()
    ));
    env
}

/// Follows `kind` on Redis; each printed event arrives with its arrival time.
fn follow(
    redis: &RedisServer,
    kind: &str,
) -> (std::process::Child, mpsc::Receiver<(Instant, Value)>) {
    let mut child = Command::new(evolve_bin())
        .args(["events", "tail", "--redis", &redis.url(), "--kind", kind])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && tx.send((now, value)).is_err()
            {
                break;
            }
        }
    });
    let channel = format!("evolve:events:{kind}");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while redis.command(&["PUBSUB", "NUMSUB", &channel])[1] == "0" {
        assert!(Instant::now() < deadline, "follower never subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, rx)
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}

fn merged_on(
    rx: &mpsc::Receiver<(Instant, Value)>,
    at_node: &str,
    pred: impl Fn(&Value) -> bool,
) -> Instant {
    loop {
        let (when, event) = rx.recv_timeout(EVENT_TIMEOUT).expect("merge event");
        if event["node"] == at_node && pred(&event["data"]) {
            return when;
        }
    }
}

fn main() {
    let rounds = arg("--rounds", 200);
    let services = arg("--services", 1_000);
    let redis = RedisServer::start();
    let backend = Backend::start(200);

    // --- 1. propagation between two daemons ---
    let a = node(&redis, "node-a", "").start();
    let b = node(&redis, "node-b", "").start();
    b.wait_event("cluster.connected", "node-b", |_| true);
    a.wait_event("cluster.connected", "node-a", |_| true);
    let (mut merged_tail, merged) = follow(&redis, "cluster.catalog_merged");
    let mut propagation = Vec::new();
    for i in 0..rounds {
        let name = format!("p{i:04}");
        let spec = json!({"name": name, "capabilities": ["bench"], "instances": [{"endpoint": backend.url()}]});
        let created = a.post("/v1/services", &spec);
        assert_eq!(created.status, 201, "{}", created.text());
        let acked = Instant::now();
        let seen = merged_on(&merged, "node-b", |d| {
            d["added"]
                .as_array()
                .is_some_and(|v| v.iter().any(|s| *s == name))
        });
        propagation.push(seen.duration_since(acked).as_secs_f64() * 1e3);
    }
    // The floor: one pub/sub hop to the same follower.
    let (mut raw_tail, raw) = follow(&redis, "bench.raw");
    let mut floor = Vec::new();
    for i in 0..rounds {
        let payload = json!({"i": i}).to_string();
        let sent = Instant::now();
        redis.command(&["PUBLISH", "evolve:events:bench.raw", &payload]);
        let (when, _) = raw.recv_timeout(EVENT_TIMEOUT).expect("raw message");
        floor.push(when.duration_since(sent).as_secs_f64() * 1e3);
    }
    summary(
        "registration on A -> merged on B (B's event on Redis)",
        propagation.clone(),
    );
    summary("floor: PUBLISH -> follower", floor.clone());
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    println!(
        "ratio of medians (daemon-to-daemon / raw hop): {:.1}",
        median(propagation) / median(floor)
    );
    drop((a, b));
    let _ = raw_tail.kill();
    // Killed daemons' records would linger for their TTL: start phase 2 from an empty Redis.
    redis.command(&["FLUSHALL"]);

    // --- 2. convergence with N services ---
    let mut config = String::new();
    for i in 0..services {
        config.push_str(&format!(
            "[[mesh.services]]\nname = \"s{i:05}\"\ncapabilities = [\"c{}\"]\ninstances = [{{ endpoint = \"{}\" }}]\n",
            i % 16,
            backend.url()
        ));
    }
    let owner = {
        let mut env = node(&redis, "node-owner", "");
        env.extra_config = format!("{config}{}", env.extra_config);
        env
    };
    let owner_daemon: Daemon = owner.start();
    owner_daemon.wait_event("cluster.connected", "node-owner", |_| true);
    let mut sync_ms = Vec::new();
    let mut join_ms = Vec::new();
    for round in 0..5 {
        let joiner = node(&redis, &format!("node-j{round}"), "");
        let spawned = Instant::now();
        let daemon = joiner.start();
        let all = merged_on(&merged, &format!("node-j{round}"), |d| {
            d["counts"]["added"].as_u64() == Some(services as u64)
        });
        join_ms.push(all.duration_since(spawned).as_secs_f64() * 1e3);
        let status = daemon.get("/v1/cluster").json();
        assert_eq!(status["catalog"]["remote_services"], services, "{status:#}");
        sync_ms.push(status["last_sync_ms"].as_f64().unwrap_or(f64::NAN));
        drop(daemon);
    }
    summary(
        &format!("first full sync of {services} services (read + merge)"),
        sync_ms,
    );
    summary(&format!("spawn -> all {services} services merged"), join_ms);
    let _ = merged_tail.kill();
}
