//! `GET /v1/health` and `evolve health` end to end: the parts follow real plugins, a real
//! backend's health and the registry file, with the status codes and exit codes README states.

use evolve_e2e::http::Backend;
use evolve_e2e::{Env, cli};
use serde_json::json;

#[test]
fn health_follows_plugins_services_and_the_registry_file() {
    // No plugin at all: nothing serves, the system is unhealthy (503, exit 1).
    let empty = Env::new();
    let daemon = empty.start();
    let answer = daemon.get("/v1/health");
    assert_eq!(answer.status, 503, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["parts"]["plugins"]["status"], "unhealthy", "{body:#}");
    assert_eq!(body["parts"]["registry"]["status"], "healthy", "{body:#}");
    assert_eq!(body["parts"]["cluster"]["detail"]["configured"], false);
    let (code, stdout, stderr) = cli(&["health", "--api", &daemon.url()], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.starts_with("system: unhealthy\n"), "{stdout}");
    assert!(stderr.contains("unhealthy"), "{stderr}");
    drop(daemon);

    // A serving checker and a broken plugin dir: degraded (200), the failure named.
    let env = Env::new();
    env.install("bundled", "http-health", |_| {});
    env.install_raw("broken", "name = \"broken\"\nthis is not toml", None);
    let daemon = env.start();
    let body = daemon.get("/v1/health").json();
    assert_eq!(body["status"], "degraded", "{body:#}");
    assert_eq!(body["parts"]["plugins"]["detail"]["serving"], 1);
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("plugins: plugin broken failed to load"),
        "{body:#}"
    );

    // A service whose only instance fails its checks: the services part is degraded and says so.
    let backend = Backend::start(503);
    let created = daemon.post(
        "/v1/services",
        &json!({
            "name": "quotes",
            "capabilities": ["quotes"],
            "instances": [{"id": "q1", "endpoint": backend.url()}],
            "health": {"checker": "http-health", "path": "/health", "interval_ms": 200,
                       "jitter_pct": 0, "unhealthy_threshold": 1, "healthy_threshold": 1},
        }),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    daemon.wait_event("health.changed", "quotes", |d| d["to"] == "unhealthy");
    let answer = daemon.get("/v1/health");
    assert_eq!(answer.status, 200);
    let body = answer.json();
    let services = &body["parts"]["services"];
    assert_eq!(services["status"], "degraded", "{body:#}");
    let reasons: Vec<&str> = services["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        reasons.contains(&"service quotes has no routable instance (1 instances)"),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"service quotes instance q1 is unhealthy"),
        "{reasons:?}"
    );
    let (code, stdout, _) = cli(&["health", "--api", &daemon.url()], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("services  degraded  1 services, 0/1 instances routable"),
        "{stdout}"
    );

    // The registry file disappears under the daemon: the store is unusable, 503.
    std::fs::remove_file(env.data_dir.join("registry.db")).unwrap();
    let answer = daemon.get("/v1/health");
    assert_eq!(answer.status, 503, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["parts"]["registry"]["status"], "unhealthy", "{body:#}");
    assert_eq!(body["parts"]["registry"]["detail"]["file_present"], false);
}
