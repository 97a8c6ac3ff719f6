//! The model registry through a real daemon: the API with auth and errors, the CLI, the plugin
//! inventory, export / import between daemons, refusal of a damaged file, and durability of
//! acknowledged writes across 100 SIGKILLs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evolve_e2e::http::request;
use evolve_e2e::{EVENT_TIMEOUT, Env, cli};
use serde_json::{Value, json};

const TOKEN: &str = "registry-e2e-token-0123456789";

fn post_auth(addr: &str, path: &str, body: &Value, method: &str) -> evolve_e2e::http::Response {
    let bearer = format!("Bearer {TOKEN}");
    let text = body.to_string();
    request(
        addr,
        method,
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        Some(text.as_bytes()),
    )
}

#[test]
fn registry_api_cli_inventory_and_export_import() {
    let env = Env::new();
    env.install("bundled", "doc-generator", |_| {});
    let daemon = env.start_with(&[], &[("EVOLVE_AUTH_TOKEN", TOKEN)]);
    let addr = daemon.addr();
    let post = |path: &str, body: Value| post_auth(&addr, path, &body, "POST");

    let created = post(
        "/v1/models",
        json!({"name": "momentum", "task_type": "forecasting", "tags": ["equities"], "model_class": "lstm"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["created_by"], "env");
    for _ in 0..2 {
        assert_eq!(post("/v1/models/momentum/versions", json!({})).status, 201);
    }
    // Writes need the token.
    let anonymous = daemon.post("/v1/models/momentum/versions", &json!({}));
    assert_eq!(anonymous.status, 401);

    let batch = post(
        "/v1/models/momentum/performance",
        json!({"points": [
            {"version": 1, "metric": "sharpe_ratio", "value": 1.1},
            {"version": 1, "metric": "max_drawdown", "value": 0.2},
            {"version": 1, "metric": "win_rate", "value": 0.5},
            {"version": 2, "metric": "sharpe_ratio", "value": 1.6},
            {"version": 2, "metric": "max_drawdown", "value": 0.1},
            {"version": 2, "metric": "win_rate", "value": 0.55}
        ]}),
    );
    assert_eq!(batch.status, 201, "{}", batch.text());
    assert_eq!(batch.json()["recorded"], 6);

    // Clear 4xx errors for NaN, infinity, unknown model, unknown version; nothing stored.
    let cases = [
        (
            "/v1/models/momentum/performance",
            json!({"version": 1, "metric": "sharpe_ratio", "value": "NaN"}),
            422,
            "non_finite_value",
        ),
        (
            "/v1/models/momentum/performance",
            json!({"version": 1, "metrics": {"sharpe_ratio": "-inf"}}),
            422,
            "non_finite_value",
        ),
        (
            "/v1/models/ghost/performance",
            json!({"version": 1, "metric": "x", "value": 1.0}),
            404,
            "model_not_found",
        ),
        (
            "/v1/models/momentum/performance",
            json!({"version": 9, "metric": "x", "value": 1.0}),
            404,
            "version_not_found",
        ),
        (
            "/v1/models/momentum/performance",
            json!({"version": 1}),
            422,
            "invalid_request",
        ),
        (
            "/v1/models",
            json!({"name": "momentum", "task_type": "forecasting"}),
            409,
            "model_exists",
        ),
    ];
    for (path, body, status, code) in cases {
        let response = post(path, body.clone());
        assert_eq!(response.status, status, "{body}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], code, "{body}");
    }
    let history = daemon
        .get("/v1/models/momentum/performance?limit=100")
        .json();
    assert_eq!(
        history["points"].as_array().unwrap().len(),
        6,
        "{history:#}"
    );

    // Alias moves carry the token's name; rollback moves back.
    for (version, reason) in [(1, "first"), (2, "better sharpe")] {
        let moved = post_auth(
            &addr,
            "/v1/models/momentum/aliases/champion",
            &json!({"version": version, "reason": reason}),
            "PUT",
        );
        assert_eq!(moved.status, 200, "{}", moved.text());
    }
    let rolled = post(
        "/v1/models/momentum/aliases/champion/rollback",
        json!({"reason": "drawdown alert"}),
    );
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(
        (rolled.json()["from"].clone(), rolled.json()["to"].clone()),
        (json!(2), json!(1))
    );
    let moves = daemon
        .get("/v1/models/momentum/aliases/champion/history")
        .json();
    let summary: Vec<(Value, Value, Value, Value)> = moves["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["action"].clone(),
                m["to"].clone(),
                m["reason"].clone(),
                m["actor"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!("set"), json!(1), json!("first"), json!("env")),
            (json!("set"), json!(2), json!("better sharpe"), json!("env")),
            (
                json!("rollback"),
                json!(1),
                json!("drawdown alert"),
                json!("env")
            ),
        ]
    );
    let event = daemon.wait_event("model.alias_moved", "momentum", |d| {
        d["action"] == "rollback"
    });
    assert_eq!(
        (
            event["from"].clone(),
            event["to"].clone(),
            event["actor"].clone()
        ),
        (json!(2), json!(1), json!("env"))
    );
    let nothing = post("/v1/models/momentum/aliases/champion/rollback", json!({}));
    assert_eq!(nothing.status, 409);

    // Best model, explained, through the API and the CLI.
    let best = daemon.get("/v1/models/best?task=forecasting").json();
    assert_eq!(best["winner"]["version"], 2, "{best:#}");
    assert!(
        best["explanation"]
            .as_str()
            .unwrap()
            .contains("momentum v2 has the highest score"),
        "{best:#}"
    );
    let (code, stdout, stderr) = cli(
        &[
            "model",
            "best",
            "--task",
            "forecasting",
            "--api",
            &daemon.url(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("momentum v2 (score 1.0000)") && stdout.contains("RANK"),
        "{stdout}"
    );
    let (code, stdout, _) = cli(
        &[
            "model",
            "history",
            "momentum",
            "champion",
            "--api",
            &daemon.url(),
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains("rollback") && stdout.contains("drawdown alert"),
        "{stdout}"
    );
    assert_eq!(
        daemon
            .get("/v1/models/best?task=forecasting&policy=nope")
            .status,
        404
    );

    // Plugins see the models and the best per task through the inventory (refreshed ≤ 1 s
    // after a change: poll the observed state, not a clock).
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let run = post("/v1/agents/doc-generator/run", json!({"task": "generate"}));
        assert_eq!(run.status, 200, "{}", run.text());
        let written = std::fs::read_to_string(env.data_dir.join("docs/inventory.md")).unwrap();
        if written.contains("momentum") && written.contains("champion") {
            assert!(written.contains("forecasting"), "{written}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inventory never listed the model:\n{written}"
        );
        std::thread::yield_now();
    }

    // Export from this daemon, import into a fresh one through the CLI: equal registries.
    let export_path = env.temp.path().join("export.json");
    let (code, _, stderr) = cli(
        &[
            "model",
            "export",
            "--out",
            export_path.to_str().unwrap(),
            "--api",
            &daemon.url(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let other_env = Env::new();
    let other = other_env.start();
    let (code, stdout, stderr) = cli(
        &[
            "model",
            "import",
            export_path.to_str().unwrap(),
            "--api",
            &other.url(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("imported 1 models, 6 points"), "{stdout}");
    let first = daemon.get("/v1/registry/export").json();
    let second = other.get("/v1/registry/export").json();
    assert_eq!(first["models"], second["models"]);

    // Health with integrity_check.
    let health = daemon.get("/v1/registry").json();
    assert_eq!(health["integrity_check"], json!(["ok"]), "{health:#}");
}

#[test]
fn a_damaged_registry_file_stops_the_daemon_with_how_to_restore() {
    let env = Env::new();
    std::fs::create_dir_all(&env.data_dir).unwrap();
    let db = env.data_dir.join("registry.db");
    std::fs::write(&db, b"definitely not a sqlite file, just some bytes").unwrap();
    let (code, log) = env.spawn(&[], &[]).wait_exit();
    assert_ne!(code, Some(0));
    assert!(log.contains("is not an Evolve model registry"), "{log}");
    assert!(log.contains("evolve model restore --db"), "{log}");
    // Untouched.
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"definitely not a sqlite file, just some bytes"
    );
}

/// A small xorshift generator: the kill points are random but reproducible from the seed the
/// test prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One POST that reports failure instead of panicking (the daemon may die mid-request).
fn try_post(addr: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(EVENT_TIMEOUT))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {response:?}")))?;
    Ok((status, response))
}

/// Points per batch; a batch's values are `batch * 1000 + i`.
const BATCH_POINTS: u64 = 20;
const KILLS: usize = 100;

#[test]
fn registry_kill9_keeps_every_acknowledged_write() {
    let seed = std::env::var("REGISTRY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("registry_kill9 seed {seed} (set REGISTRY_KILL_SEED to replay)");
    let mut rng = Rng(seed);
    let env = Env::new();
    let next_batch = Arc::new(AtomicU64::new(0));
    let acknowledged: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut total_acked_before_kill = 0usize;

    for round in 0..=KILLS {
        let daemon = env.start();
        let addr = daemon.addr();
        if round == 0 {
            let model = daemon.post(
                "/v1/models",
                &json!({"name": "durable", "task_type": "regression"}),
            );
            assert_eq!(model.status, 201, "{}", model.text());
            assert_eq!(
                daemon
                    .post("/v1/models/durable/versions", &json!({}))
                    .status,
                201
            );
        }

        // Every write acknowledged so far is present, every batch whole or absent, and the
        // store is sound.
        let history = daemon
            .get("/v1/models/durable/performance?metric=v&limit=100000")
            .json();
        let mut per_batch: BTreeMap<u64, u64> = BTreeMap::new();
        for point in history["points"].as_array().unwrap() {
            let value = point["value"].as_f64().unwrap() as u64;
            *per_batch.entry(value / 1000).or_default() += 1;
        }
        for batch in acknowledged.lock().unwrap().iter() {
            assert_eq!(
                per_batch.get(batch),
                Some(&BATCH_POINTS),
                "round {round} (seed {seed}): acknowledged batch {batch} is missing or partial"
            );
        }
        for (batch, count) in &per_batch {
            assert_eq!(
                *count, BATCH_POINTS,
                "round {round} (seed {seed}): batch {batch} is partial"
            );
        }
        let health = daemon.get("/v1/registry").json();
        assert_eq!(
            health["integrity_check"],
            json!(["ok"]),
            "round {round}: {health:#}"
        );
        if round == KILLS {
            let acked = acknowledged.lock().unwrap().len();
            eprintln!(
                "registry_kill9: {KILLS} kills, {acked} batches acknowledged and present, {} present without an acknowledgement (in flight at a kill)",
                per_batch.len() - acked
            );
            assert!(
                total_acked_before_kill >= KILLS,
                "too few writes were acknowledged before kills to mean anything: {total_acked_before_kill}"
            );
            break;
        }

        // A writer sends batches until the daemon dies under it.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (next_batch, acknowledged, stop) = (
                Arc::clone(&next_batch),
                Arc::clone(&acknowledged),
                Arc::clone(&stop),
            );
            let addr = addr.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let batch = next_batch.fetch_add(1, Ordering::SeqCst) + 1;
                    let points: Vec<Value> = (0..BATCH_POINTS)
                        .map(|i| json!({"version": 1, "metric": "v", "value": batch * 1000 + i}))
                        .collect();
                    let body = json!({ "points": points }).to_string();
                    match try_post(&addr, "/v1/models/durable/performance", &body) {
                        Ok((201, _)) => {
                            acknowledged.lock().unwrap().insert(batch);
                        }
                        Ok((status, response)) => panic!("batch {batch}: {status} {response}"),
                        Err(_) => break,
                    }
                }
            })
        };
        // A random kill point: after 0-7 acknowledged batches of this round, plus 0-3 ms.
        let target = acknowledged.lock().unwrap().len() + rng.below(8) as usize;
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while acknowledged.lock().unwrap().len() < target {
            assert!(Instant::now() < deadline, "writes stalled in round {round}");
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        total_acked_before_kill = acknowledged.lock().unwrap().len();
        daemon.kill9();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
    }
}

/// The export is streamed (chunked, never one buffered body) and is the document an import
/// takes.
#[test]
fn the_export_is_streamed_in_chunks() {
    let env = Env::new();
    let daemon = env.start();
    let addr = daemon.addr();
    let created = daemon.post(
        "/v1/models",
        &json!({"name": "lin", "task_type": "forecast"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let version = daemon.post("/v1/models/lin/versions", &json!({}));
    assert_eq!(version.status, 201, "{}", version.text());
    let points: Vec<Value> = (0..5_000)
        .map(|i| json!({"version": 1, "metric": "mae", "value": f64::from(i) / 7.0}))
        .collect();
    let recorded = daemon.post("/v1/models/lin/performance", &json!({"points": points}));
    assert_eq!(recorded.status, 201, "{}", recorded.text());

    let export = request(&addr, "GET", "/v1/registry/export", &[], None);
    assert_eq!(export.status, 200, "{}", export.text());
    assert_eq!(export.header("transfer-encoding"), Some("chunked"));
    assert_eq!(export.header("content-length"), None);
    assert_eq!(export.header("content-type"), Some("application/json"));
    let document = export.json();
    assert_eq!(document["format"], "evolve-model-registry");
    let models = document["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["metrics"].as_array().unwrap().len(), 5_000);

    // What was streamed imports into an empty daemon.
    let other_env = Env::new();
    let other = other_env.start();
    let imported = other.post("/v1/registry/import", &document);
    assert_eq!(imported.status, 201, "{}", imported.text());
    assert_eq!(imported.json()["imported_points"], 5_000);
}
