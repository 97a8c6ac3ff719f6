//! The test kit against bundled plugins (built by `cargo xtask build-plugins`, which `cargo
//! xtask test` runs first): the Rust and Python http checkers against fake hosts, the Rust
//! digest agent against a scripted inventory, production limits and loader checks.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use evolve_plugin_testkit::types::{ErrorCode, HealthStatus};
use evolve_plugin_testkit::{
    CallError, FakeHttp, FakeResponse, Inventory, Kit, KitError, ProbeKind, service,
};
use evolve_runtime::LoadError;
use serde_json::json;

fn built(set: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(set)
        .join(name)
}

/// The same checks for both languages: one test body, as authors would write it.
fn checker_grades_fake_hosts(name: &str) {
    let kit = Kit::builder(built("bundled", name))
        .config("degraded_ms", 60_000)
        .http(
            FakeHttp::new()
                .route("up.test:80", FakeResponse::body(200, "ok"))
                .route("down.test:80", FakeResponse::status(503))
                .route("moved.test:8080", FakeResponse::status(302))
                .route("slow.test:80", FakeResponse::Timeout),
        )
        .load()
        .unwrap();
    let status = |endpoint: &str| kit.check(service("svc", endpoint)).unwrap().unwrap();

    assert_eq!(status("http://up.test").status, HealthStatus::Healthy);
    assert_eq!(status("http://down.test").status, HealthStatus::Unhealthy);
    assert_eq!(
        status("http://moved.test:8080/").status,
        HealthStatus::Degraded
    );
    let timeout = status("http://slow.test");
    assert_eq!(timeout.status, HealthStatus::Unhealthy);
    // No route: the connection is refused, which is a health fact too.
    let refused = status("http://nobody.test");
    assert_eq!(refused.status, HealthStatus::Unhealthy, "{refused:?}");
    assert!(
        refused.detail.starts_with("GET http://nobody.test/health"),
        "{refused:?}"
    );

    assert_eq!(
        kit.http_requests(),
        [
            "GET http://up.test/health",
            "GET http://down.test/health",
            "GET http://moved.test:8080/health",
            "GET http://slow.test/health",
            "GET http://nobody.test/health",
        ]
    );

    // A service's own health_path wins over the config's path.
    let mut custom = service("svc", "http://up.test");
    custom
        .metadata
        .push(("health_path".into(), "/ready".into()));
    assert_eq!(
        kit.check(custom).unwrap().unwrap().status,
        HealthStatus::Healthy
    );
    assert_eq!(
        kit.http_requests().last().unwrap(),
        "GET http://up.test/ready"
    );

    // A target with no endpoint is the caller's error, not a health fact.
    let err = kit.check(service("svc", " ")).unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput, "{err:?}");
}

#[test]
fn rust_checker_grades_fake_hosts() {
    checker_grades_fake_hosts("http-health");
}

#[test]
fn python_checker_grades_fake_hosts() {
    checker_grades_fake_hosts("http-health-py");
}

#[test]
fn scripted_config_reaches_the_plugin() {
    let kit = Kit::builder(built("bundled", "http-health"))
        .config("degraded_ms", 0)
        .http(FakeHttp::new().route("up.test:80", FakeResponse::status(200)))
        .load()
        .unwrap();
    let report = kit
        .check(service("svc", "http://up.test"))
        .unwrap()
        .unwrap();
    assert_eq!(report.status, HealthStatus::Degraded, "{report:?}");

    let kit = Kit::builder(built("bundled", "http-health"))
        .config("paht", "/typo")
        .load()
        .unwrap();
    let err = kit
        .check(service("svc", "http://up.test"))
        .unwrap()
        .unwrap_err();
    assert!(err.message.contains("paht"), "{err:?}");
}

#[test]
fn an_agent_sees_the_scripted_inventory_and_its_logs_are_captured() {
    let inventory = Inventory::new()
        .service(service("b-api", "http://b"), Some(HealthStatus::Unhealthy))
        .service(service("a-api", "http://a"), Some(HealthStatus::Unhealthy))
        .service(service("c-api", "http://c"), Some(HealthStatus::Healthy))
        .service(service("d-api", "http://d"), None)
        .model("momentum", "forecasting", 3)
        .agent("doc-generator");
    let kit = Kit::builder(built("testing", "inventory-digest"))
        .inventory(inventory)
        .load()
        .unwrap();
    kit.clear_logs();

    let outcome = kit.run("digest", json!({})).unwrap().unwrap();
    let output: serde_json::Value = serde_json::from_str(&outcome.output).unwrap();
    assert_eq!(
        output,
        json!({
            "plugins": 1,
            "plugins_by_kind": {"meta-agent": 1, "health-checker": 0},
            "services": 4,
            "unhealthy_services": ["a-api", "b-api"],
            "models": 1,
            "agents": 1,
        })
    );
    let logs = kit.logs();
    assert_eq!(logs.len(), 1, "{logs:#?}");
    assert_eq!(logs[0].level, "INFO");
    assert_eq!(logs[0].message, format!("digest: {}", outcome.summary));
    assert_eq!(logs[0].stream, None);

    let err = kit.run("nope", json!({})).unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    assert!(!err.retryable);
    assert_eq!(kit.health().unwrap().status, HealthStatus::Healthy);
}

#[test]
fn production_limits_apply() {
    // memory-hog allocates until stopped; its manifest says 32 MiB, the kit lowers it to 8.
    let kit = Kit::builder(built("testing", "memory-hog"))
        .limit("memory_mb", 8)
        .load()
        .unwrap();
    match kit.run("hog", json!({})) {
        Err(CallError::MemoryLimit { limit_bytes, .. }) => assert_eq!(limit_bytes, 8 << 20),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    // The next call gets a fresh instance and is stopped the same way: the kit, like the
    // daemon, survives a plugin that misbehaves.
    assert!(matches!(
        kit.run("hog", json!({})),
        Err(CallError::MemoryLimit { .. })
    ));

    let kit = Kit::builder(built("testing", "spin-forever"))
        .limit("deadline_ms", 100)
        .load()
        .unwrap();
    assert!(matches!(
        kit.run("spin", json!({})),
        Err(CallError::DeadlineExceeded {
            deadline_ms: 100,
            ..
        })
    ));
}

#[test]
fn the_loader_refuses_what_the_daemon_refuses() {
    let err = Kit::builder(built("bundled", "http-health"))
        .limit("memory_mb", 1 << 20)
        .load()
        .unwrap_err();
    assert!(
        matches!(
            err,
            KitError::Load(LoadError::LimitAboveCeiling {
                key: "memory_mb",
                ..
            })
        ),
        "{err}"
    );
    let err = Kit::load(built("testing", "wrong-world")).unwrap_err();
    assert!(
        matches!(err, KitError::Load(LoadError::WorldMismatch { .. })),
        "{err}"
    );
}

#[test]
fn unscripted_probes_fail_and_scripted_ones_answer() {
    // The integration tester probes what the inventory lists; script one service as passing.
    let kit = Kit::builder(built("bundled", "integration-tester"))
        .inventory(Inventory::new().service(service("api", "http://api"), None))
        .probe(ProbeKind::Service, "api", true, "HTTP 200")
        .load()
        .unwrap();
    let outcome = kit.run("", json!({})).unwrap();
    let text = format!("{outcome:?}");
    assert!(text.contains("HTTP 200"), "{text}");
}
