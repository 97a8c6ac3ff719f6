//! The service mesh end to end: the bundled `http-health` plugin drives health transitions of
//! real backends, routing follows them, the catalog survives a restart, bad registrations get
//! specific 4xx errors, and the data-plane listener forwards any path with the mesh's retries.

use evolve_e2e::Env;
use evolve_e2e::http::{Backend, request};
use serde_json::{Value, json};

fn service(a: &Backend, b: &Backend) -> Value {
    json!({
        "name": "fc",
        "type": "model-server",
        "capabilities": ["forecast"],
        "instances": [
            {"id": "a", "endpoint": a.url(), "weight": 100},
            {"id": "b", "endpoint": b.url(), "weight": 100},
        ],
        "health": {
            "checker": "http-health",
            "path": "/health",
            "interval_ms": 200,
            "jitter_pct": 0,
            "healthy_threshold": 1,
            "unhealthy_threshold": 1,
        },
        "lb": "round_robin",
    })
}

#[test]
fn http_health_drives_routing_and_the_catalog_survives_a_restart() {
    let mut env = Env::new();
    env.install("bundled", "http-health", |_| {});
    env.extra_config.push_str(
        "[mesh]\nslow_start_ms = 0\n[mesh.routes]\npredict = { capability = \"forecast\", path = \"/forecast\" }\n[mesh.retry]\nmax_retries = 0\n",
    );
    let (a, b) = (Backend::start(200), Backend::start(200));
    let daemon = env.start();
    let created = daemon.post("/v1/services", &service(&a, &b));
    assert_eq!(created.status, 201, "{}", created.text());
    daemon.wait_event("service.registered", "fc", |_| true);
    for id in ["a", "b"] {
        daemon.wait_event("health.changed", "fc", |d| {
            d["instance"] == id && d["to"] == "healthy"
        });
    }

    let routed = daemon.post("/v1/route/predict", &json!({"horizon": 24}));
    assert_eq!(routed.status, 200, "{}", routed.text());
    assert_eq!(routed.header("x-evolve-service"), Some("fc"));
    assert!(matches!(
        routed.header("x-evolve-instance"),
        Some("a" | "b")
    ));

    // a starts failing its health checks: the checker sees 503 and a leaves rotation.
    a.set_status(503);
    daemon.wait_event("health.changed", "fc", |d| {
        d["instance"] == "a" && d["to"] == "unhealthy"
    });
    let a_connections = a.connections();
    for _ in 0..6 {
        let r = daemon.get("/v1/services/fc/proxy/work");
        assert_eq!(r.header("x-evolve-instance"), Some("b"), "{}", r.text());
    }
    // Only health checks (at most a few in this time) reach a, no proxied request.
    let health = daemon.get("/v1/services/health").json();
    let instance_a = &health["services"][0]["instances"][0];
    assert_eq!(instance_a["health"], "unhealthy", "{health:#}");
    assert_eq!(instance_a["last_check"]["result"], "unhealthy");
    assert!(
        instance_a["last_check"]["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"),
        "{health:#}"
    );
    assert!(a.connections() - a_connections <= 6);

    a.set_status(200);
    daemon.wait_event("health.changed", "fc", |d| {
        d["instance"] == "a" && d["to"] == "healthy"
    });
    let metrics = daemon.get("/metrics").text();
    assert!(
        metrics.contains("evolve_mesh_requests_total{service=\"fc\",instance=\"b\"}"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "evolve_mesh_health_checks_total{service=\"fc\",instance=\"a\",result=\"fail\"}"
    ));
    assert!(metrics.contains("evolve_mesh_request_duration_seconds_bucket"));
    // The test backend closes every connection, so each attempt on b opened one.
    let counter = |name: &str| -> u64 {
        let prefix = format!("{name}{{service=\"fc\",instance=\"b\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for b in:\n{metrics}"))
    };
    let attempts = counter("evolve_mesh_requests_total");
    assert!(attempts >= 6, "{attempts}");
    assert_eq!(
        counter("evolve_mesh_upstream_connections_opened_total"),
        attempts
    );
    assert_eq!(counter("evolve_mesh_upstream_requests_reused_total"), 0);

    // Restart: the registration was durable.
    assert!(daemon.terminate());
    let daemon = env.start();
    let list = daemon.get("/v1/services").json();
    assert_eq!(list["services"][0]["name"], "fc", "{list:#}");
    let (code, out, err) = evolve_e2e::cli(&["service", "list", "--api", &daemon.url()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fc (") && out.contains("weight 100"), "{out}");
    let removed = request(&daemon.addr(), "DELETE", "/v1/services/fc", &[], None);
    assert_eq!(removed.status, 200, "{}", removed.text());
    daemon.wait_event("service.deregistered", "fc", |_| true);
    assert_eq!(daemon.get("/v1/services/fc").status, 404);
}

#[test]
fn bad_registrations_get_specific_errors() {
    let env = Env::new();
    env.install("bundled", "http-health", |_| {});
    let backend = Backend::start(200);
    let daemon = env.start();
    let ok = json!({"name": "svc", "instances": [{"endpoint": backend.url()}]});
    assert_eq!(daemon.post("/v1/services", &ok).status, 201);

    let cases = [
        (409, "duplicate", ok.clone()),
        (
            422,
            "bad_url",
            json!({"name": "x", "instances": [{"endpoint": "ftp://nowhere"}]}),
        ),
        (
            422,
            "weight_out_of_range",
            json!({"name": "x", "instances": [{"endpoint": backend.url(), "weight": 1001}]}),
        ),
        (
            422,
            "unknown_checker",
            json!({"name": "x", "instances": [{"endpoint": backend.url()}], "health": {"checker": "nope"}}),
        ),
        (
            422,
            "bad_name",
            json!({"name": "Not A Name", "instances": [{"endpoint": backend.url()}]}),
        ),
        (
            422,
            "invalid_service",
            json!({"name": "x", "instances": []}),
        ),
        (
            422,
            "invalid_request",
            json!({"name": "x", "instances": [{"endpoint": backend.url()}], "colour": "red"}),
        ),
    ];
    for (status, code, body) in cases {
        let response = daemon.post("/v1/services", &body);
        let json = response.json();
        assert_eq!(response.status, status, "{body}: {json}");
        assert_eq!(json["error"]["code"], code, "{body}: {json}");
        assert!(json["error"]["message"].as_str().unwrap().len() > 20);
    }
    let routed = daemon.post("/v1/route/weather", &json!({}));
    assert_eq!(routed.status, 404);
    assert_eq!(routed.json()["error"]["code"], "no_route");
}

#[test]
fn the_data_plane_listener_forwards_any_path_with_retries_in_the_daemon() {
    use std::io::{Read, Write};
    let (a, b) = (Backend::start(503), Backend::start(200));
    let mut env = Env::new();
    let port = evolve_e2e::redis::free_port();
    env.extra_config.push_str(&format!(
        "[mesh]\nlisten = \"127.0.0.1:{port}\"\nlisten_service = \"fc\"\nslow_start_ms = 0\n\
         [mesh.retry]\nmax_retries = 1\nbackoff_base_ms = 1\nbackoff_max_ms = 1\n\
         [[mesh.services]]\nname = \"fc\"\ntype = \"http\"\ncapabilities = [\"forecast\"]\n\
         lb = \"round_robin\"\n\
         instances = [{{ id = \"a\", endpoint = \"{}\" }}, {{ id = \"b\", endpoint = \"{}\" }}]\n",
        a.url(),
        b.url()
    ));
    let daemon = env.start();
    let mut stream = evolve_e2e::wait_until("the data-plane listener accepts", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // Two requests at paths no API route has, pipelined on one connection; the last closes it.
    stream
        .write_all(
            b"GET /any/path?x=1 HTTP/1.1\r\nHost: t\r\n\r\n\
              POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let heads: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(heads.len(), 2, "{answer}");
    // The GET met a's 503 (round-robin starts there) and was retried on b.
    assert!(heads[0].starts_with("200"), "{answer}");
    assert!(heads[0].contains("x-evolve-service: fc\r\n"), "{answer}");
    assert!(heads[0].contains("x-evolve-instance: b\r\n"), "{answer}");
    assert!(heads[0].contains("x-evolve-attempts: 2\r\n"), "{answer}");
    // The POST is not idempotent: whichever instance it met answered it, once.
    let post_status = if heads[1].contains("x-evolve-instance: a\r\n") {
        "503"
    } else {
        "200"
    };
    assert!(heads[1].starts_with(post_status), "{answer}");
    assert!(heads[1].contains("x-evolve-attempts: 1\r\n"), "{answer}");
    assert!(heads[1].contains("connection: close\r\n"), "{answer}");

    let metrics = daemon.get("/metrics").text();
    let a_requests = metrics
        .lines()
        .find_map(|l| l.strip_prefix("evolve_mesh_requests_total{service=\"fc\",instance=\"a\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(a_requests >= Some(1), "{metrics}");
    assert!(
        metrics.contains("evolve_mesh_retries_total{service=\"fc\"} 1"),
        "{metrics}"
    );
}
