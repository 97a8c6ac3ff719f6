//! The bundled plugins serve; the AOT cache makes a second start compile nothing; the CLI works
//! against a running daemon; SIGTERM stops it cleanly.

use evolve_e2e::http::Backend;
use evolve_e2e::{Env, cli};
use serde_json::json;

#[test]
fn bundled_plugins_are_ready_and_doc_generator_writes_the_inventory() {
    let mut env = Env::new();
    env.extra_config
        .push_str("[agents]\nhealth_interval_s = 86400\n");
    env.install("bundled", "doc-generator", |_| {});
    env.install("bundled", "http-health", |_| {});
    let daemon = env.start();

    for name in ["doc-generator", "http-health"] {
        let plugin = daemon.plugin(name);
        assert_eq!(plugin["state"], "serving", "{plugin:#}");
        assert_eq!(plugin["wit_version"], "0.1.0");
        assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
        assert!(
            plugin["sha256_pinned"].as_bool().unwrap(),
            "xtask pins bundled plugins"
        );
    }

    let response = daemon.post("/v1/agents/doc-generator/run", &json!({"task": "generate"}));
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["outcome"]["artifacts"], json!(["/out/inventory.md"]));
    let written = std::fs::read_to_string(env.data_dir.join("docs/inventory.md")).unwrap();
    for needle in ["doc-generator", "http-health", "health-checker", "/out"] {
        assert!(
            written.contains(needle),
            "inventory.md lacks {needle}:\n{written}"
        );
    }

    // The CLI against the running daemon: agent run and plugin list.
    let (code, stdout, stderr) = cli(
        &["agent", "run", "doc-generator", "--api", &daemon.url()],
        &[],
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("artifact: /out/inventory.md"), "{stdout}");
    let (code, stdout, _) = cli(&["plugin", "list", "--api", &daemon.url()], &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("doc-generator") && stdout.contains("serving"),
        "{stdout}"
    );

    let stats = daemon.plugin("doc-generator");
    // The load-time canary (describe and health) plus the two runs; the agent manager's
    // first health check is a day away.
    assert_eq!(stats["calls"]["ok"], 4, "{stats:#}");
    assert!(
        daemon.terminate(),
        "SIGTERM should stop the daemon with success"
    );
}

#[test]
fn second_start_compiles_nothing() {
    // A private cache, so the first start must compile and the second must not.
    let env = Env::with_cache(None);
    env.install("bundled", "doc-generator", |_| {});
    env.install("testing", "echo", |_| {});

    let first = env.start();
    let runtime = first.get("/v1/runtime").json();
    assert_eq!(runtime["aot_cache"]["misses"], 2, "{runtime:#}");
    assert_eq!(runtime["aot_cache"]["hits"], 0, "{runtime:#}");
    assert!(first.terminate());

    let second = env.start();
    let runtime = second.get("/v1/runtime").json();
    assert_eq!(
        runtime["aot_cache"]["misses"], 0,
        "second start compiled: {runtime:#}"
    );
    assert_eq!(runtime["aot_cache"]["hits"], 2, "{runtime:#}");
    assert_eq!(second.plugin("echo")["aot"], "hit");
    let metrics = second.get("/metrics").text();
    assert!(
        metrics.contains("evolve_aot_cache_hits_total 2"),
        "{metrics}"
    );
    let response = second.post("/v1/agents/echo/run", &json!({"input": {"n": 1}}));
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn http_health_reports_status_by_code_and_the_cli_prints_it() {
    let env = Env::new();
    // A latency threshold no loopback answer reaches, so the status depends on the code alone.
    env.install("bundled", "http-health", |m| {
        m["config"]["degraded_ms"] = 60_000.into();
    });
    let daemon = env.start();
    let up = Backend::start(200);
    let not_found = Backend::start(404);
    let down = Backend::start(503);

    let check = |endpoint: &str| {
        let response = daemon.post(
            "/v1/checkers/http-health/check",
            &json!({"name": "svc", "endpoint": endpoint}),
        );
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["report"].clone()
    };
    let healthy = check(&up.url());
    assert_eq!(healthy["status"], "healthy", "{healthy:#}");
    assert!(
        healthy["detail"].as_str().unwrap().contains("200"),
        "{healthy:#}"
    );
    assert_eq!(check(&not_found.url())["status"], "degraded");
    let unhealthy = check(&down.url());
    assert_eq!(unhealthy["status"], "unhealthy", "{unhealthy:#}");
    assert!(
        unhealthy["detail"].as_str().unwrap().contains("503"),
        "{unhealthy:#}"
    );

    let (code, stdout, stderr) = cli(
        &[
            "checker",
            "check",
            "http-health",
            "--endpoint",
            &down.url(),
            "--api",
            &daemon.url(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("unhealthy"), "{stdout}");
}
