//! Every kind of broken plugin is refused with a specific error naming the plugin, the file and
//! the cause, and a good plugin beside them loads and serves.

use evolve_e2e::{Env, built_plugin, cli};
use serde_json::{Value, json};

const CORE_MODULE: &[u8] = b"\0asm\x01\x00\x00\x00";

fn manifest(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"meta-agent\"\nwasm = \"p.wasm\"\n{extra}"
    )
}

#[test]
fn broken_plugins_get_specific_errors_and_do_not_disturb_a_good_one() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    env.install("testing", "wrong-world", |_| {});
    env.install("testing", "future-version", |_| {});
    env.install("bundled", "http-health", |m| {
        m["kind"] = "meta-agent".into();
    });
    let echo_wasm = std::fs::read(built_plugin("testing", "echo").join("echo.wasm")).unwrap();
    env.install_raw("bad-toml", "name = \"bad-toml\"\nversion = 0.1.0\n", None);
    env.install_raw(
        "bad-kind",
        &manifest("bad-kind", "").replace("meta-agent", "cron-job"),
        None,
    );
    env.install_raw("no-wasm", &manifest("no-wasm", ""), None);
    env.install_raw(
        "core-module",
        &manifest("core-module", ""),
        Some(("p.wasm", CORE_MODULE)),
    );
    env.install_raw(
        "bad-pin",
        &manifest("bad-pin", &format!("sha256 = \"{}\"\n", "0".repeat(64))),
        Some(("p.wasm", &echo_wasm)),
    );
    env.install_raw(
        "greedy",
        &manifest("greedy", "[limits]\nmemory_mb = 4096\n"),
        Some(("p.wasm", &echo_wasm)),
    );
    env.install_raw(
        "echo-twin",
        &manifest("echo", ""),
        Some(("p.wasm", &echo_wasm)),
    );
    // A grant over the plugins dir would let a plugin rewrite manifests, its own included.
    let grab = format!(
        "[[permissions.dirs]]\nhost = {:?}\nguest = \"/p\"\nwrite = true\n",
        env.plugins_dir.display().to_string()
    );
    env.install_raw(
        "grabby",
        &manifest("grabby", &grab),
        Some(("p.wasm", &echo_wasm)),
    );
    let daemon = env.start();

    assert_eq!(daemon.plugin("echo")["state"], "serving");
    let response = daemon.post("/v1/agents/echo/run", &json!({"input": [1, 2]}));
    assert_eq!(response.json()["outcome"]["output"], json!([1, 2]));

    let failures: Vec<Value> = daemon.get("/v1/plugins").json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "failed")
        .cloned()
        .collect();
    let failure = |dir: &str| -> (String, String) {
        let entry = failures
            .iter()
            .find(|f| f["dir"].as_str().unwrap().ends_with(dir))
            .unwrap_or_else(|| panic!("no failure for {dir}: {failures:#?}"));
        (
            entry["last_error"]["code"].as_str().unwrap().to_string(),
            entry["last_error"]["message"].as_str().unwrap().to_string(),
        )
    };
    let expect = |dir: &str, code: &str, needles: &[&str]| {
        let (actual, message) = failure(dir);
        assert_eq!(actual, code, "{dir}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{dir}: {message:?} lacks {needle:?}"
            );
        }
    };
    expect(
        "wrong-world",
        "world_mismatch",
        &[
            "wrong-world.wasm",
            "missing export evolve:plugin/agent@0.1.0",
            "wasi:cli/run",
        ],
    );
    expect(
        "future-version",
        "version_mismatch",
        &["evolve:plugin@0.2.0", "evolve:plugin@0.1.0"],
    );
    expect(
        "http-health",
        "world_mismatch",
        &["evolve:plugin/checker@0.1.0", "fix `kind`"],
    );
    expect("bad-toml", "manifest", &["bad-toml/plugin.toml", "line 2"]);
    expect(
        "bad-kind",
        "manifest",
        &["cron-job", "meta-agent", "health-checker"],
    );
    expect("no-wasm", "missing_file", &["no-wasm/p.wasm"]);
    expect(
        "core-module",
        "not_a_component",
        &["core WebAssembly module", "wasm32-wasip2"],
    );
    expect("bad-pin", "sha256_mismatch", &["pins 0000", "rebuild"]);
    expect(
        "greedy",
        "limit_above_ceiling",
        &["memory_mb = 4096", "ceiling"],
    );
    expect("echo-twin", "duplicate_name", &["already used"]);
    expect(
        "grabby",
        "dir_grant_refused",
        &["overlaps", "grant a directory of its own"],
    );
    assert_eq!(failures.len(), 11, "{failures:#?}");
}

#[test]
fn plugin_check_validates_without_a_daemon() {
    let data = tempfile::tempdir().unwrap();
    // doc-generator grants `docs` under the data dir: the operator allows it.
    let config = data.path().join("evolve.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nallowed_dir_roots = [{:?}]\n",
            data.path().join("docs")
        ),
    )
    .unwrap();
    let envs = [
        ("EVOLVE_DATA_DIR", data.path().to_str().unwrap()),
        ("EVOLVE_CONFIG", config.to_str().unwrap()),
    ];
    let good = built_plugin("bundled", "doc-generator");
    let (code, stdout, stderr) = cli(&["plugin", "check", good.to_str().unwrap()], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok: doc-generator 0.1.0 (meta-agent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/out ->") && stdout.contains("read-write"),
        "{stdout}"
    );

    // A bare component: the kind is found from its exports.
    let wasm = built_plugin("bundled", "http-health").join("http_health.wasm");
    let (code, stdout, stderr) = cli(&["plugin", "check", wasm.to_str().unwrap()], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(health-checker"), "{stdout}");

    let bad = built_plugin("testing", "future-version");
    let (code, _, stderr) = cli(&["plugin", "check", bad.to_str().unwrap()], &envs);
    assert_ne!(code, 0);
    assert!(stderr.contains("evolve:plugin@0.2.0"), "{stderr}");
    let (code, _, stderr) = cli(&["plugin", "check", "/nonexistent/plugin"], &envs);
    assert_ne!(code, 0);
    assert!(stderr.contains("no such plugin directory"), "{stderr}");
}

/// A plugin whose first load does not end on its own (its `describe()` spins until a long
/// deadline) delays only itself: the API answers at once, a plugin beside it loads and serves,
/// `/v1/health`, `/v1/plugins` and `/readyz` say which plugin is still loading, and a call to
/// it answers `503 loading` rather than "no such plugin".
#[test]
fn the_api_and_other_plugins_serve_while_one_plugin_is_still_loading() {
    let env = Env::new();
    env.install("testing", "spin-forever", |m| {
        // Far longer than the test: the load is still under way when the daemon is killed.
        m["limits"]["deadline_ms"] = 120_000.into();
        let mut config = toml::Table::new();
        config.insert("spin_in_describe".into(), true.into());
        m.insert("config".into(), config.into());
    });
    env.install("testing", "echo", |_| {});
    let daemon = env.start_listening();
    daemon.wait_event("plugin.loaded", "echo", |_| true);

    assert_eq!(daemon.get("/healthz").status, 200);
    let run = daemon.post(
        "/v1/agents/echo/run",
        &json!({"task": "t", "input": {"k": 1}}),
    );
    assert_eq!(run.status, 200, "{}", run.text());
    assert_eq!(run.json()["outcome"]["output"], json!({"k": 1}));

    let health = daemon.get("/v1/health");
    assert_eq!(health.status, 200, "{}", health.text());
    let health = health.json();
    assert_eq!(
        health["parts"]["plugins"]["status"], "degraded",
        "{health:#}"
    );
    assert_eq!(
        health["parts"]["plugins"]["detail"]["loading"][0]["name"], "spin-forever",
        "{health:#}"
    );
    let reasons: Vec<&str> = health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("plugins: plugin spin-forever is still loading")),
        "{reasons:?}"
    );

    let ready = daemon.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["status"], "loading");
    assert_eq!(ready.json()["loading"][0]["name"], "spin-forever");
    assert_eq!(daemon.plugin("spin-forever")["state"], "loading");

    let refused = daemon.post("/v1/agents/spin-forever/run", &json!({"task": "t"}));
    assert_eq!(refused.status, 503, "{}", refused.text());
    let error = refused.json()["error"].clone();
    assert_eq!(error["code"], "loading", "{error:#}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("agent 'spin-forever' is still loading"),
        "{error:#}"
    );
}

/// The first load runs the canary a reload runs: a meta agent whose `health()` says unhealthy
/// is refused with `canary_unhealthy`; `/readyz` turns ready once every dir had its first load.
#[test]
fn a_first_load_runs_the_health_canary_and_readyz_turns_ready() {
    let env = Env::new();
    env.install("testing", "versioned", |m| {
        m["config"]["healthy"] = false.into();
    });
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let refused = daemon.plugin("versioned");
    assert_eq!(refused["state"], "failed", "{refused:#}");
    assert_eq!(
        refused["last_error"]["code"], "canary_unhealthy",
        "{refused:#}"
    );
    assert_eq!(daemon.plugin("echo")["state"], "serving");
    let ready = daemon.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
}

/// Plugin dirs load side by side, yet two dirs that claim one name resolve as a one-by-one
/// load would: the first dir in sorted order serves, the other is refused naming it.
#[test]
fn two_dirs_with_one_name_resolve_in_sorted_order() {
    let env = Env::new();
    for dir in ["b-echo", "a-echo"] {
        let installed = env.install("testing", "echo", |_| {});
        std::fs::rename(installed, env.plugins_dir.join(dir)).unwrap();
    }
    let daemon = env.start();
    let echo = daemon.plugin("echo");
    assert_eq!(echo["state"], "serving", "{echo:#}");
    assert!(
        echo["dir"].as_str().unwrap().ends_with("/a-echo"),
        "{echo:#}"
    );
    let plugins = daemon.get("/v1/plugins").json();
    let clash = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["state"] == "failed")
        .unwrap_or_else(|| panic!("b-echo was not refused: {plugins:#}"));
    assert!(
        clash["dir"].as_str().unwrap().ends_with("/b-echo"),
        "{clash:#}"
    );
    assert_eq!(clash["last_error"]["code"], "duplicate_name", "{clash:#}");
    assert!(
        clash["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("a-echo"),
        "{clash:#}"
    );
}
