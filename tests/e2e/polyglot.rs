//! Plugins in Python and JavaScript beside their Rust counterparts: one test body per behaviour,
//! run against each language's build, and the AOT cache that makes their multi-second compile
//! a one-time cost.
//!
//! | Rust | twin | built with |
//! |---|---|---|
//! | `bundled/http-health` | `bundled/http-health-py` | componentize-py |
//! | `testing/inventory-digest` | `bundled/inventory-digest-js` | componentize-js |

use evolve_e2e::http::Backend;
use evolve_e2e::{Daemon, Env};
use serde_json::{Value, json};

/// The checker's whole contract: grading by status code, an unreachable target, a target
/// without an endpoint, and its description.
fn checker_behaviour(set: &str, name: &str) {
    let env = Env::new();
    // A latency threshold no loopback answer reaches, so the status depends on the code alone.
    env.install(set, name, |m| {
        m["config"]["degraded_ms"] = 60_000.into();
    });
    let daemon = env.start();
    let plugin = daemon.plugin(name);
    assert_eq!(plugin["state"], "serving", "{plugin:#}");
    assert_eq!(plugin["kind"], "health-checker", "{plugin:#}");

    let up = Backend::start(200);
    let not_found = Backend::start(404);
    let moved = Backend::start(302);
    let down = Backend::start(503);
    let check = |endpoint: &str| {
        let response = daemon.post(
            &format!("/v1/checkers/{name}/check"),
            &json!({"name": "svc", "endpoint": endpoint}),
        );
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["report"].clone()
    };
    for (backend, status, code) in [
        (&up, "healthy", 200),
        (&not_found, "degraded", 404),
        (&moved, "degraded", 302),
        (&down, "unhealthy", 503),
    ] {
        let report = check(&backend.url());
        assert_eq!(report["status"], status, "{name}: {report:#}");
        let detail = report["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("HTTP {code} in ")) && detail.ends_with(" ms"),
            "{name}: {report:#}"
        );
        assert!(report["checked_at_ms"].as_u64().unwrap() > 0, "{report:#}");
        assert_eq!(backend.connections(), 1, "{name}: one GET per check");
    }

    // Nothing listens on a port we just freed: unhealthy, and the report says what was tried.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let report = check(&format!("http://{closed}"));
    assert_eq!(report["status"], "unhealthy", "{name}: {report:#}");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("GET http://{closed}/health: ")),
        "{name}: {report:#}"
    );

    // A lower threshold than any answer's latency: a 2xx is degraded, and says why.
    env.edit_manifest(name, |m| {
        m["config"]["degraded_ms"] = 0.into();
    });
    daemon.wait_event("plugin.reloaded", name, |d| d["generation"] == 2);
    let report = check(&up.url());
    assert_eq!(report["status"], "degraded", "{name}: {report:#}");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .ends_with("(slower than 0 ms)"),
        "{name}: {report:#}"
    );

    // A config key the checker does not know is the checker's error, not a health fact.
    env.edit_manifest(name, |m| {
        m["config"]
            .as_table_mut()
            .unwrap()
            .insert("paht".into(), "/typo".into());
    });
    daemon.wait_event("plugin.reloaded", name, |d| d["generation"] == 3);
    let response = daemon.post(
        &format!("/v1/checkers/{name}/check"),
        &json!({"name": "svc", "endpoint": up.url()}),
    );
    assert_eq!(response.status, 422, "{}", response.text());
    let error = &response.json()["error"];
    assert_eq!(error["code"], "plugin_error", "{error:#}");
    assert_eq!(error["plugin_error"]["code"], "invalid-input", "{error:#}");
    assert_eq!(error["plugin_error"]["retryable"], false, "{error:#}");
    assert!(
        error["plugin_error"]["message"]
            .as_str()
            .unwrap()
            .contains("paht"),
        "{error:#}"
    );
}

#[test]
fn rust_http_health_passes_the_checker_behaviour_tests() {
    checker_behaviour("bundled", "http-health");
}

#[test]
fn python_http_health_passes_the_checker_behaviour_tests() {
    checker_behaviour("bundled", "http-health-py");
}

fn run(daemon: &Daemon, agent: &str, body: &Value) -> (u16, Value) {
    let response = daemon.post(&format!("/v1/agents/{agent}/run"), body);
    (response.status, response.json())
}

/// The digest agent's whole contract, in a daemon where both twins and a checker are loaded
/// (so each sees the same inventory).
fn agent_behaviour(name: &str) {
    let env = Env::new();
    env.install("testing", "inventory-digest", |_| {});
    env.install("bundled", "inventory-digest-js", |_| {});
    env.install("bundled", "http-health", |_| {});
    let daemon = env.start();
    let plugin = daemon.plugin(name);
    assert_eq!(plugin["state"], "serving", "{plugin:#}");
    assert_eq!(plugin["kind"], "meta-agent", "{plugin:#}");

    let (status, body) = run(&daemon, name, &json!({"task": "digest"}));
    assert_eq!(status, 200, "{body:#}");
    let output = &body["outcome"]["output"];
    assert_eq!(
        *output,
        json!({
            "plugins": 3,
            "plugins_by_kind": {"meta-agent": 2, "health-checker": 1},
            "services": 0,
            "unhealthy_services": [],
            "models": 0,
            "agents": 2,
        }),
        "{name}: {body:#}"
    );
    assert_eq!(
        body["outcome"]["summary"], "3 plugins, 0 services (0 unhealthy), 0 models, 2 agents",
        "{body:#}"
    );
    // The info log line reaches the daemon's log, tagged with the plugin.
    daemon.log.wait_for("the digest log line", |line| {
        line.to_string().contains(name) && line.to_string().contains("digest: 3 plugins")
    });

    let (status, body) = run(
        &daemon,
        name,
        &json!({"task": "digest", "input": {"unhealthy_only": true}}),
    );
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["outcome"]["output"], json!({"unhealthy_services": []}));
    assert_eq!(body["outcome"]["summary"], "0 unhealthy services");

    for (request, needle) in [
        (json!({"task": "nope"}), "unknown task `nope`"),
        (json!({"task": "digest", "input": [1]}), "input must be"),
        (
            json!({"task": "digest", "input": {"unhealthy_only": 1}}),
            "input must be",
        ),
        (
            json!({"task": "digest", "input": {"verbose": true}}),
            "input must be",
        ),
    ] {
        let (status, body) = run(&daemon, name, &request);
        assert_eq!(status, 422, "{name} {request}: {body:#}");
        let error = &body["error"]["plugin_error"];
        assert_eq!(error["code"], "invalid-input", "{name} {request}: {body:#}");
        assert_eq!(error["retryable"], false, "{body:#}");
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{name} {request}: {body:#}"
        );
        // Not retried: the agent said the same input fails again.
        assert_eq!(body["error"]["attempts"], 1, "{body:#}");
    }

    let health = daemon.get(&format!("/v1/agents/{name}/health"));
    assert_eq!(health.status, 200, "{}", health.text());
    let report = &health.json()["report"];
    assert_eq!(report["status"], "healthy", "{report:#}");
    assert_eq!(report["detail"], "ready", "{report:#}");
}

#[test]
fn rust_inventory_digest_passes_the_agent_behaviour_tests() {
    agent_behaviour("inventory-digest");
}

#[test]
fn js_inventory_digest_passes_the_agent_behaviour_tests() {
    agent_behaviour("inventory-digest-js");
}

#[test]
fn a_second_start_compiles_nothing_for_python_and_js_plugins() {
    // Not starved by a nested cargo build while the first start compiles.
    let _cpu = evolve_e2e::cpu_heavy();
    // A private cache, so the first start must compile whatever other tests did before.
    let env = Env::with_cache(None);
    env.install("bundled", "http-health-py", |_| {});
    env.install("bundled", "inventory-digest-js", |_| {});
    let plugins = ["http-health-py", "inventory-digest-js"];

    let daemon = env.start();
    for name in plugins {
        let plugin = daemon.plugin(name);
        assert_eq!(plugin["state"], "serving", "{plugin:#}");
        assert_eq!(plugin["aot"], "compiled", "{plugin:#}");
    }
    let cache = daemon.get("/v1/plugins").json()["aot_cache"].clone();
    assert_eq!(cache["misses"], 2, "{cache:#}");
    assert_eq!(cache["hits"], 0, "{cache:#}");
    assert!(daemon.terminate(), "the daemon did not stop cleanly");

    let daemon = env.start();
    for name in plugins {
        let plugin = daemon.plugin(name);
        assert_eq!(plugin["state"], "serving", "{plugin:#}");
        assert_eq!(plugin["aot"], "hit", "{plugin:#}");
    }
    let cache = daemon.get("/v1/plugins").json()["aot_cache"].clone();
    assert_eq!(cache["misses"], 0, "{cache:#}");
    assert_eq!(cache["hits"], 2, "{cache:#}");
    assert_eq!(cache["compile_ms_total"], 0, "{cache:#}");
    // And they serve from the mapped artifacts.
    let (status, body) = run(&daemon, "inventory-digest-js", &json!({"task": "digest"}));
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["outcome"]["output"]["plugins"], 2, "{body:#}");
}
