//! Several daemons, one mesh, end to end: real `redis-server`s on free loopback
//! ports, real daemons, real backends. A service registered on one daemon is routed to from
//! another; a killed daemon's services expire; Redis killed and restarted under load loses no
//! routed request and converges; a daemon started without Redis serves and joins later; events
//! reach Redis per kind, tagged with their node. Who may act as a node: records and messages
//! written without the cluster key change nothing and are counted, a forged `Leave` removes
//! nothing, a key holder stays within the caps; the cluster reaches Redis over TLS as an ACL user.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use evolve_e2e::http::{Backend, Response, request};
use evolve_e2e::redis::RedisServer;
use evolve_e2e::{Daemon, EVENT_TIMEOUT, Env, evolve_bin};
use serde_json::{Value, json};

/// Heartbeat TTL of the test clusters, s (short, so expiry is observed quickly).
const TTL_S: u64 = 3;

fn node_env(redis: &RedisServer, node: &str, extra: &str) -> Env {
    cluster_env(&redis.url(), &redis.cluster_key_file(), node, extra)
}

/// A node of the cluster on `url` sharing the key in `key_file`.
fn cluster_env(url: &str, key_file: &std::path::Path, node: &str, extra: &str) -> Env {
    let mut env = Env::new();
    env.extra_config.push_str(&format!(
        "[mesh]\nslow_start_ms = 0\n[mesh.routes]\npredict = {{ capability = \"forecast\", path = \"/forecast\" }}\n\
         [cluster]\nredis_url = \"{url}\"\nkey_file = {:?}\nnode_id = \"{node}\"\nheartbeat_ttl_s = {TTL_S}\nheartbeat_interval_s = 1\nsync_interval_s = 1\nreconnect_max_ms = 500\n{extra}",
        key_file.display().to_string()
    ));
    env
}

fn service(name: &str, capability: &str, backend: &Backend) -> Value {
    json!({
        "name": name,
        "type": "model-server",
        "capabilities": [capability],
        "instances": [{"id": format!("{name}-1"), "endpoint": backend.url()}],
    })
}

fn register(daemon: &Daemon, spec: &Value) {
    let created = daemon.post("/v1/services", spec);
    assert_eq!(created.status, 201, "{}", created.text());
}

fn route(daemon: &Daemon) -> Response {
    request(
        &daemon.addr(),
        "POST",
        "/v1/route/predict",
        &[("content-type", "application/json")],
        Some(b"{\"horizon\":24}"),
    )
}

/// Waits until `node` merged `service` from `origin` (an update or a sync).
fn wait_merged(daemon: &Daemon, origin: &str, service: &str) -> Value {
    daemon.wait_event("cluster.catalog_merged", origin, |d| {
        d["added"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == service))
    })
}

/// Polls `GET /v1/cluster` until `pred` holds (an observed state; panics after the timeout).
/// `a` (node-a) stops cleanly: `b` hears it leave and withdraws its `fc` at once (no TTL wait).
fn leaves_and_is_withdrawn(a: Daemon, b: &Daemon) {
    assert!(a.terminate(), "a stops cleanly");
    let lost = b.wait_event("cluster.peer_lost", "node-a", |_| true);
    assert_eq!(lost["reason"], "left the cluster", "{lost}");
    assert_eq!(b.get("/v1/services/fc").status, 404);
}

fn wait_cluster(daemon: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let status = daemon.get("/v1/cluster").json();
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "never: {what}; last /v1/cluster: {status:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_service_registered_on_one_daemon_is_routed_to_from_the_other() {
    let redis = RedisServer::start();
    let backend = Backend::start(200);
    let a = node_env(&redis, "node-a", "").start();
    a.wait_event("cluster.connected", "node-a", |_| true);
    register(&a, &service("fc", "forecast", &backend));

    // b joins after the registration: its first full sync merges it.
    let b = node_env(&redis, "node-b", "").start();
    let merged = wait_merged(&b, "node-a", "fc");
    assert_eq!(merged["cause"], "sync", "{merged}");
    let routed = route(&b);
    assert_eq!(routed.status, 200, "{}", routed.text());
    assert_eq!(routed.header("x-evolve-service"), Some("fc"));
    assert_eq!(routed.header("x-evolve-instance"), Some("fc-1"));
    let shown = b.get("/v1/services/fc").json();
    assert_eq!(shown["source"], "remote", "{shown}");
    assert_eq!(shown["origin"], "node-a", "{shown}");

    // A later registration arrives as an incremental update, well within one sync interval.
    let other = Backend::start(200);
    register(&a, &service("fc2", "forecast2", &other));
    let merged = wait_merged(&b, "node-a", "fc2");
    assert_eq!(merged["cause"], "update", "{merged}");
    assert_eq!(b.get("/v1/services/fc2").json()["origin"], "node-a");

    // A remote service cannot be removed here: its node owns it.
    let refused = request(&b.addr(), "DELETE", "/v1/services/fc", &[], None);
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(
        refused.json()["error"]["code"],
        "registered_on_another_node"
    );

    // Each side sees the other as a peer; b reports which node saw which health.
    let status = wait_cluster(&b, "node-a listed with its services", |s| {
        s["peers"].as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["node"] == "node-a" && p["services"] == 2 && p["health"]["fc"]["fc-1"].is_string()
            })
        })
    });
    assert_eq!(status["state"], "connected");
    assert_eq!(status["mode"], "cluster");
    assert!(status["last_sync_at"].is_string(), "{status:#}");
    let entries = status["remote_services"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["service"] == "fc" && e["node"] == "node-a" && e["status"] == "routed"),
        "{status:#}"
    );
    let peer_a = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "node-a")
        .unwrap();
    assert_eq!(peer_a["health"]["fc"]["fc-1"], "unknown", "{peer_a}");
    assert_eq!(peer_a["api"], a.addr());

    // Removing on a withdraws it from b.
    let removed = request(&a.addr(), "DELETE", "/v1/services/fc2", &[], None);
    assert_eq!(removed.status, 200, "{}", removed.text());
    b.wait_event("cluster.catalog_merged", "node-a", |d| {
        d["removed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s == "fc2"))
    });
    assert_eq!(b.get("/v1/services/fc2").status, 404);
    assert!(backend.connections() >= 1);

    // A clean stop withdraws a's services at once (no TTL wait).
    leaves_and_is_withdrawn(a, &b);
}

#[test]
fn a_killed_daemon_s_services_expire_on_the_other_and_come_back_with_it() {
    let redis = RedisServer::start();
    let backend = Backend::start(200);
    let env_a = node_env(&redis, "node-a", "");
    let a = env_a.start();
    let b = node_env(&redis, "node-b", "").start();
    b.wait_event("cluster.connected", "node-b", |_| true);
    register(&a, &service("fc", "forecast", &backend));
    wait_merged(&b, "node-a", "fc");

    let killed = Instant::now();
    a.kill9();
    // No goodbye was possible: b keeps routing to fc until the heartbeat lapses.
    assert_eq!(b.get("/v1/services/fc").status, 200);
    let lost = b.wait_event("cluster.peer_lost", "node-a", |_| true);
    let expired_after = killed.elapsed();
    assert_eq!(lost["reason"], "heartbeat expired", "{lost}");
    assert_eq!(lost["services_removed"], 1, "{lost}");
    assert_eq!(b.get("/v1/services/fc").status, 404);
    assert_eq!(route(&b).status, 404, "no service offers forecast any more");
    eprintln!(
        "node-a's services expired on node-b {} ms after kill -9 (ttl {TTL_S} s, sync 1 s)",
        expired_after.as_millis()
    );

    // Restarted (same node id, its catalog file still has fc): it re-announces.
    let a = env_a.start();
    a.wait_event("cluster.connected", "node-a", |_| true);
    b.log.wait_for_nth("node-a joining again", 2, |v| {
        v["event"] == "cluster.peer_joined" && v["subject"] == "node-a"
    });
    wait_cluster(&b, "fc routable again", |_| {
        b.get("/v1/services/fc").status == 200
    });
    assert_eq!(route(&b).status, 200);
}

#[test]
fn killing_and_restarting_redis_under_load_loses_no_routed_request_and_converges() {
    let mut redis = RedisServer::start();
    let backend = Backend::start(200);
    let a = node_env(&redis, "node-a", "").start();
    let b = Arc::new(node_env(&redis, "node-b", "").start());
    b.wait_event("cluster.connected", "node-b", |_| true);
    register(&a, &service("fc", "forecast", &backend));
    wait_merged(&b, "node-a", "fc");

    // A client routes through b continuously for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let client = {
        let (b, stop, ok) = (Arc::clone(&b), Arc::clone(&stop), Arc::clone(&ok));
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let response = route(&b);
                if response.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.push(format!("{} {}", response.status, response.text()));
                }
            }
            failures
        })
    };
    let wait_more = |n: u64| {
        let target = ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while ok.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "routing stalled");
            std::thread::yield_now();
        }
    };
    wait_more(20);

    redis.kill9();
    b.wait_event("cluster.disconnected", "node-b", |_| true);
    a.wait_event("cluster.disconnected", "node-a", |_| true);
    // Routing goes on on the last known catalog, past the TTL (which only Redis enforces).
    let status = wait_cluster(&b, "b disconnected", |s| s["state"] == "disconnected");
    assert!(status["last_error"].is_string(), "{status:#}");
    wait_more(50);
    let down_since = Instant::now();
    while down_since.elapsed().as_secs() <= TTL_S {
        wait_more(1);
    }
    assert_eq!(b.get("/v1/services/fc").json()["origin"], "node-a");
    // A registration during the outage works locally and is buffered for the cluster.
    let late_backend = Backend::start(200);
    register(&a, &service("late", "late", &late_backend));
    wait_cluster(&a, "a buffering events", |s| {
        s["events"]["buffered"].as_u64() > Some(0)
    });

    redis.spawn();
    a.log.wait_for_nth("a reconnected", 2, |v| {
        v["event"] == "cluster.connected" && v["subject"] == "node-a"
    });
    b.log.wait_for_nth("b reconnected", 2, |v| {
        v["event"] == "cluster.connected" && v["subject"] == "node-b"
    });
    wait_merged(&b, "node-a", "late");
    wait_more(20);
    stop.store(true, Ordering::SeqCst);
    let failures = client.join().unwrap();
    assert!(failures.is_empty(), "routed requests failed: {failures:?}");
    let status = wait_cluster(&a, "a's buffer flushed", |s| s["events"]["buffered"] == 0);
    assert_eq!(status["events"]["dropped"], 0, "{status:#}");
    assert_eq!(status["state"], "connected");
    assert_eq!(
        redis.command(&["HEXISTS", "evolve:services:node-a", "late"]),
        ["1"]
    );
    eprintln!(
        "{} requests routed through node-b, none failed",
        ok.load(Ordering::SeqCst)
    );
}

#[test]
fn without_redis_at_start_the_daemon_serves_buffers_events_and_joins_when_redis_starts() {
    let mut redis = RedisServer::reserve();
    let env = node_env(&redis, "node-a", "event_buffer = 4\n");
    let a = env.start();
    assert_eq!(a.get("/healthz").status, 200);
    let status = wait_cluster(&a, "disconnected with an error", |s| {
        s["state"] == "disconnected" && s["last_error"].is_string()
    });
    assert_eq!(status["enabled"], true);
    assert!(status["next_attempt_at"].is_string(), "{status:#}");
    a.log
        .wait_for("the warning that Redis is unreachable", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Redis is unreachable: serving locally"))
        });
    // The mesh works without Redis; six events overflow a buffer of four.
    let backend = Backend::start(200);
    for i in 0..6 {
        register(&a, &service(&format!("s{i}"), "forecast", &backend));
    }
    assert_eq!(route(&a).status, 200);
    let status = wait_cluster(&a, "two events dropped", |s| s["events"]["dropped"] == 2);
    assert_eq!(status["events"]["buffered"], 4, "{status:#}");

    redis.spawn();
    a.wait_event("cluster.connected", "node-a", |_| true);
    let status = wait_cluster(&a, "connected and flushed", |s| {
        s["state"] == "connected" && s["events"]["buffered"] == 0
    });
    assert!(
        status["events"]["published"].as_u64() >= Some(4),
        "{status:#}"
    );
    assert_eq!(status["catalog"]["announced"], 6, "{status:#}");
    assert_eq!(redis.command(&["HLEN", "evolve:services:node-a"]), ["6"]);
    let ttl: i64 = redis.command(&["TTL", "evolve:node:node-a"])[0]
        .parse()
        .unwrap();
    assert!(
        ttl > 0 && ttl <= TTL_S as i64,
        "node record expires: ttl {ttl}"
    );
}

#[test]
fn events_reach_redis_per_kind_tagged_with_their_node_and_the_cli_follows_them() {
    let redis = RedisServer::start();
    let a = node_env(&redis, "node-a", "").start();
    a.wait_event("cluster.connected", "node-a", |_| true);
    let mut tail = Command::new(evolve_bin())
        .args(["events", "tail", "--redis", &redis.url()])
        .args(["--kind", "service.registered", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Subscribed (an observed state of Redis), then the event.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while redis.command(&["PUBSUB", "NUMSUB", "evolve:events:service.registered"])[1] != "1" {
        assert!(Instant::now() < deadline, "the tail never subscribed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let backend = Backend::start(200);
    register(&a, &service("fc", "forecast", &backend));
    let mut line = String::new();
    BufReader::new(tail.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(tail.wait().unwrap().success(), "tail exits after --count 1");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "service.registered", "{event}");
    assert_eq!(event["subject"], "fc");
    assert_eq!(event["node"], "node-a");
    assert_eq!(event["v"], 1);
    assert!(event["seq"].as_u64() > Some(0), "{event}");

    // `evolve cluster` prints the node's view.
    let (code, out, err) = evolve_e2e::cli(&["cluster", "--api", &a.url()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("node node-a  mode cluster  state connected"),
        "{out}"
    );
}

/// Anti-entropy for this node's own registrations: a services hash that vanishes while the
/// node's record lives on (deleted by hand, evicted) is written again at the next heartbeat.
#[test]
fn registrations_deleted_from_redis_are_announced_again_by_the_next_heartbeat() {
    let redis = RedisServer::start();
    let a = node_env(&redis, "node-a", "").start();
    a.wait_event("cluster.connected", "node-a", |_| true);
    let backend = Backend::start(200);
    register(&a, &service("fc", "forecast", &backend));
    let key = "evolve:services:node-a";
    let announced = || {
        let fields = redis.command(&["HKEYS", key]);
        fields.iter().any(|f| f == "fc").then_some(())
    };
    evolve_e2e::wait_until("fc announced", announced);

    assert_eq!(redis.command(&["DEL", key]), ["1"]);
    evolve_e2e::wait_until("fc announced again", announced);
    let sealed = redis.command(&["GET", "evolve:node:node-a"]);
    let sealed: Value = serde_json::from_str(&sealed[0]).unwrap();
    assert_eq!(sealed["v"], 2, "{sealed}");
    assert_eq!(sealed["tag"].as_str().map(str::len), Some(64), "{sealed}");
    let record: Value = serde_json::from_str(sealed["body"].as_str().unwrap()).unwrap();
    assert_eq!(record["services"], 1, "{record}");
    assert!(record["specs"]["fc"].is_string(), "{record}");
}

/// `/v1/cluster`'s `auth` counter `reason` (e.g. `unsigned`, `refused`).
fn refused(status: &Value, reason: &str) -> u64 {
    status["auth"][reason].as_u64().unwrap_or(0)
}

/// A v2 envelope as a node writes it, with `tag` in place of a signature.
fn envelope(kind: &str, node: &str, seq: u64, body: &Value, tag: Option<&str>) -> String {
    let mut envelope = json!({
        "v": 2,
        "kind": kind,
        "node": node,
        "seq": seq,
        "body": body.to_string(),
    });
    if let Some(tag) = tag {
        envelope["tag"] = json!(tag);
    }
    envelope.to_string()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn records_and_messages_written_without_the_cluster_key_change_nothing_and_are_counted() {
    let redis = RedisServer::start();
    let backend = Backend::start(200);
    let attacker = Backend::start(200);
    let a = node_env(&redis, "node-a", "").start();
    let b = node_env(&redis, "node-b", "").start();
    b.wait_event("cluster.connected", "node-b", |_| true);
    register(&a, &service("fc", "forecast", &backend));
    wait_merged(&b, "node-a", "fc");
    let evil_fc = service("fc", "forecast", &attacker);
    let now = now_rfc3339();
    let seq = u64::MAX / 2;

    // Pushed updates: one unsigned (the version 1 form) claiming node-a, one with a made-up tag
    // from a node whose id sorts first (it would win the name), one reusing node-a's real tag.
    let v1 = json!({"v": 1, "node": "node-a", "at": now, "op": "upsert", "spec": evil_fc});
    redis.command(&["PUBLISH", "evolve:catalog", &v1.to_string()]);
    wait_cluster(&b, "the unsigned update refused", |s| {
        refused(s, "unsigned") >= 1
    });
    let upsert = json!({"node": "0000", "at": now, "op": "upsert", "spec": evil_fc});
    let forged = envelope("update", "0000", seq, &upsert, Some(&"00".repeat(32)));
    redis.command(&["PUBLISH", "evolve:catalog", &forged]);
    let real: Value =
        serde_json::from_str(&redis.command(&["GET", "evolve:node:node-a"])[0]).unwrap();
    let upsert_a = json!({"node": "node-a", "at": now, "op": "upsert", "spec": evil_fc});
    let reused = envelope("update", "node-a", seq, &upsert_a, real["tag"].as_str());
    redis.command(&["PUBLISH", "evolve:catalog", &reused]);
    wait_cluster(&b, "both forged updates refused", |s| {
        refused(s, "bad_tag") >= 2
    });

    // Records: a node that never had the key, and node-a's hash tampered with (fc pointed at
    // the attacker, a service its record never listed).
    let record = json!({
        "node": "evil", "api": "127.0.0.1:1", "started_at": now, "heartbeat_at": now,
        "services": 1, "specs": {}, "health": {},
    });
    let unsigned = envelope("record", "evil", seq, &record, None);
    redis.command(&["SET", "evolve:node:evil", &unsigned, "EX", "60"]);
    let evil_svc = service("evil", "forecast", &attacker);
    redis.command(&[
        "HSET",
        "evolve:services:evil",
        "evil",
        &evil_svc.to_string(),
    ]);
    let before = refused(&b.get("/v1/cluster").json(), "unsigned");
    wait_cluster(&b, "the unsigned record refused", |s| {
        refused(s, "unsigned") > before
    });
    let before = refused(&b.get("/v1/cluster").json(), "bad_tag");
    redis.command(&[
        "HSET",
        "evolve:services:node-a",
        "fc",
        &evil_fc.to_string(),
        "extra",
        &service("extra", "forecast", &attacker).to_string(),
    ]);
    let status = wait_cluster(&b, "the tampered registrations refused", |s| {
        refused(s, "bad_tag") >= before + 2
    });

    // Nothing changed on either node: fc is node-a's and routes to its backend only.
    assert_eq!(status["auth"]["mode"], "hmac-sha256", "{status:#}");
    assert!(refused(&status, "refused") >= 5, "{status:#}");
    let peers: Vec<&Value> = status["peers"].as_array().unwrap().iter().collect();
    assert_eq!(peers.len(), 1, "{status:#}");
    assert_eq!(peers[0]["node"], "node-a");
    for daemon in [&a, &b] {
        for name in ["evil", "extra"] {
            assert_eq!(daemon.get(&format!("/v1/services/{name}")).status, 404);
        }
        let fc = daemon.get("/v1/services/fc").json();
        assert_eq!(fc["instances"][0]["endpoint"], backend.url(), "{fc}");
        for _ in 0..5 {
            assert_eq!(route(daemon).status, 200);
        }
    }
    assert_eq!(b.get("/v1/services/fc").json()["origin"], "node-a");
    assert_eq!(
        attacker.connections(),
        0,
        "no request reached the forged endpoint"
    );
    assert!(refused(&a.get("/v1/cluster").json(), "refused") >= 3);
    let count = b.metric("evolve_cluster_refused");
    assert!(count >= Some(5.0), "{}", b.get("/metrics").text());
}

#[test]
fn a_forged_leave_removes_nothing_and_only_the_node_itself_can_leave() {
    let redis = RedisServer::start();
    let backend = Backend::start(200);
    let a = node_env(&redis, "node-a", "").start();
    let b = node_env(&redis, "node-b", "").start();
    b.wait_event("cluster.connected", "node-b", |_| true);
    register(&a, &service("fc", "forecast", &backend));
    wait_merged(&b, "node-a", "fc");

    let leave = json!({"node": "node-a", "at": now_rfc3339(), "op": "leave"});
    let v1 = json!({"v": 1, "node": "node-a", "at": now_rfc3339(), "op": "leave"});
    let real: Value =
        serde_json::from_str(&redis.command(&["GET", "evolve:node:node-a"])[0]).unwrap();
    let seq = real["seq"].as_u64().unwrap() + 1_000_000;
    for forged in [
        v1.to_string(),
        envelope("update", "node-a", seq, &leave, None),
        envelope("update", "node-a", seq, &leave, Some(&"ab".repeat(32))),
        // node-a's genuine tag, moved onto a Leave.
        envelope("update", "node-a", seq, &leave, real["tag"].as_str()),
    ] {
        redis.command(&["PUBLISH", "evolve:catalog", &forged]);
    }
    let status = wait_cluster(&b, "four forged leaves refused", |s| {
        refused(s, "unsigned") >= 2 && refused(s, "bad_tag") >= 2
    });
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node"] == "node-a"),
        "{status:#}"
    );
    assert_eq!(b.get("/v1/services/fc").json()["origin"], "node-a");
    assert_eq!(route(&b).status, 200);
    assert!(
        !b.log.text().contains("cluster.peer_lost"),
        "a forged leave removed node-a"
    );

    // The node itself leaves with its signature and a newer sequence.
    leaves_and_is_withdrawn(a, &b);
}

/// A key holder (this test, signing as a node would) cannot make a node hold more than the
/// caps: services per node, instances per service; and its older record is a replay.
#[test]
fn a_key_holder_stays_within_the_caps_and_an_older_record_of_it_is_a_replay() {
    use evolve_cluster::seal::{SealKind, Sealer};
    use evolve_cluster::wire;
    use evolve_mesh::ServiceSpec;
    use evolve_mesh::remote::{MAX_REMOTE_INSTANCES_PER_SPEC, MAX_REMOTE_SPECS_PER_NODE};
    let redis = RedisServer::start();
    let b = node_env(&redis, "node-b", "").start();
    b.wait_event("cluster.connected", "node-b", |_| true);
    let key = evolve_cluster::config::read_key_file(&redis.cluster_key_file()).unwrap();
    let sealer = Sealer::new(Some(key), "evolve");
    let spec = |name: &str, instances: usize| -> ServiceSpec {
        let instances: Vec<Value> = (0..instances)
            .map(|i| json!({"id": format!("i{i}"), "endpoint": format!("http://127.0.0.1:{}", 20_000 + i)}))
            .collect();
        serde_json::from_value(json!({"name": name, "capabilities": ["x"], "instances": instances}))
            .unwrap()
    };
    // "a-wide" sorts first: inside the per-node cap, over the instance cap; the last listed
    // service is one past the per-node cap.
    let mut specs = vec![spec("a-wide", MAX_REMOTE_INSTANCES_PER_SPEC + 1)];
    specs.extend((0..MAX_REMOTE_SPECS_PER_NODE).map(|i| spec(&format!("s{i:05}"), 1)));
    let mut hset = vec!["HSET".to_string(), "evolve:services:rogue".to_string()];
    for s in &specs {
        hset.push(s.name.clone());
        hset.push(wire::spec_json(s));
    }
    let args: Vec<&str> = hset.iter().map(String::as_str).collect();
    redis.command(&args);
    let digests: serde_json::Map<String, Value> = specs
        .iter()
        .map(|s| (s.name.clone(), json!(wire::spec_digest(s))))
        .collect();
    let sealed = |seq: u64| {
        let now = now_rfc3339();
        let record = json!({
            "node": "rogue", "api": "127.0.0.1:1", "started_at": now, "heartbeat_at": now,
            "services": specs.len(), "specs": digests, "health": {},
        });
        sealer.seal(SealKind::Record, "rogue", seq, &record.to_string())
    };
    let seq = 1_000_000;
    redis.command(&["SET", "evolve:node:rogue", &sealed(seq), "EX", "60"]);
    let merged = MAX_REMOTE_SPECS_PER_NODE - 1;
    let status = wait_cluster(&b, "the rogue node merged up to the caps", |s| {
        s["catalog"]["remote_services"] == merged
    });
    // One listed past the per-node cap, one over the instance cap.
    assert!(
        status["catalog"]["capped"].as_u64() >= Some(2),
        "{status:#}"
    );
    assert_eq!(
        refused(&status, "refused"),
        0,
        "a key holder is not refused"
    );
    assert_eq!(b.get("/v1/services/a-wide").status, 404);
    assert_eq!(b.get("/v1/services/s00000").status, 200);

    // The same node's older record, written back, is a replay and changes nothing.
    redis.command(&["SET", "evolve:node:rogue", &sealed(seq - 1), "EX", "60"]);
    let status = wait_cluster(&b, "the older record refused", |s| {
        refused(s, "replayed") >= 1
    });
    assert_eq!(status["catalog"]["remote_services"], merged, "{status:#}");
}

/// Two nodes reach a Redis that demands TLS (a private CA) and an ACL user with a password read
/// from a `0600` file; the password is not in the URL and no connection uses the plain port.
#[test]
fn the_cluster_reaches_redis_over_tls_as_an_acl_user() {
    let redis = RedisServer::start_secured("evolve-node", "node-password-1234");
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("redis.password");
    evolve_e2e::redis::write_secret(&password_file, b"node-password-1234\n");
    let extra = format!(
        "redis_username = \"evolve-node\"\nredis_password_file = {:?}\nredis_ca_file = {:?}\n",
        password_file.display().to_string(),
        redis.ca_file().display().to_string()
    );
    let backend = Backend::start(200);
    let key = redis.cluster_key_file();
    let a = cluster_env(&redis.tls_url(), &key, "node-a", &extra).start();
    let b = cluster_env(&redis.tls_url(), &key, "node-b", &extra).start();
    b.wait_event("cluster.connected", "node-b", |_| true);
    register(&a, &service("fc", "forecast", &backend));
    wait_merged(&b, "node-a", "fc");
    assert_eq!(route(&b).status, 200);

    let tls_port = format!("laddr=127.0.0.1:{}", redis.tls_port());
    let clients = redis.command(&["CLIENT", "LIST"]).join("\n");
    let nodes: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains("user=evolve-node"))
        .collect();
    assert!(
        !nodes.is_empty(),
        "no connection as the ACL user:\n{clients}"
    );
    assert!(
        nodes.iter().all(|l| l.contains(&tls_port)),
        "a node connected without TLS:\n{clients}"
    );
    let status = b.get("/v1/cluster").json();
    let shown = status.to_string();
    assert!(!shown.contains("node-password-1234"), "{status:#}");
}
