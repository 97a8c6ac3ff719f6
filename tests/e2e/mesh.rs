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

#[test]
fn a_percent_encoded_service_name_reaches_the_service() {
    let env = Env::new();
    let backend = Backend::start(200);
    let daemon = env.start();
    let created = daemon.post(
        "/v1/services",
        &json!({
            "name": "fc.v2",
            "capabilities": ["forecast"],
            "instances": [{"id": "a", "endpoint": backend.url(), "weight": 100}],
        }),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    // `%2E` is `.`, as a client that encodes every non-alphanumeric byte writes it.
    let shown = daemon.get("/v1/services/fc%2Ev2");
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json()["name"], "fc.v2");
    let proxied = daemon.get("/v1/services/fc%2Ev2/proxy/work");
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    assert_eq!(proxied.header("x-evolve-service"), Some("fc.v2"));
    assert_eq!(proxied.header("x-evolve-instance"), Some("a"));
}

/// A daemon whose data-plane listener serves `fc`, one instance at `endpoint`, with a breaker
/// and outlier detection that react to three failures in a row; returns it with the
/// listener's port once that accepts.
fn edge_daemon(env: &mut Env, endpoint: &str) -> (evolve_e2e::Daemon, u16) {
    let port = evolve_e2e::redis::free_port();
    env.extra_config.push_str(&format!(
        "[mesh]\nlisten = \"127.0.0.1:{port}\"\nlisten_service = \"fc\"\nslow_start_ms = 0\n\
         timeout_ms = 5000\n\
         [mesh.retry]\nmax_retries = 0\n\
         [mesh.breaker]\nconsecutive_failures = 3\n\
         [mesh.outlier]\nconsecutive_errors = 3\nmax_ejected_pct = 100\n\
         [[mesh.services]]\nname = \"fc\"\ntype = \"http\"\ncapabilities = [\"forecast\"]\n\
         instances = [{{ id = \"a\", endpoint = \"{endpoint}\" }}]\n",
    ));
    let daemon = env.start();
    evolve_e2e::wait_until("the data-plane listener accepts", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (daemon, port)
}

/// Writes `request` on a fresh connection to `addr` and reads until the peer closes.
fn raw(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(evolve_e2e::EVENT_TIMEOUT))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn deadline_0_on_the_proxy_and_the_listener_opens_no_circuit_and_ejects_nothing() {
    let backend = evolve_e2e::echo::EchoBackend::start("a");
    let mut env = Env::new();
    let (daemon, port) = edge_daemon(&mut env, &backend.url());
    let listener = format!("127.0.0.1:{port}");
    // The instance answers nothing until released: every request meets the caller's deadline.
    backend.hold();
    for _ in 0..50 {
        let r = request(
            &daemon.addr(),
            "GET",
            "/v1/services/fc/proxy/work",
            &[("x-evolve-deadline-ms", "0")],
            None,
        );
        assert_eq!(r.status, 504, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "upstream_timeout");
        let answer = raw(
            &listener,
            b"GET /work HTTP/1.1\r\nHost: t\r\nx-evolve-deadline-ms: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    }
    let health = daemon.get("/v1/services/health").json();
    let instance = &health["services"][0]["instances"][0];
    assert_eq!(instance["circuit"], "closed", "{health:#}");
    assert_eq!(instance["ejected"], false, "{health:#}");
    assert_eq!(
        instance["ewma_latency_us"], 0,
        "a caller's deadline is no latency sample"
    );

    backend.release();
    let served = daemon.get("/v1/services/fc/proxy/work");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.header("x-evolve-instance"), Some("a"));
    let answer = raw(
        &listener,
        b"GET /work HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A loopback backend answering every request with `response` and closing; it records each
/// request head as it came.
struct RawBackend {
    addr: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawBackend {
    fn start(response: &'static str) -> RawBackend {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&heads);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let seen = std::sync::Arc::clone(&seen);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let (mut head, mut length) = (String::new(), 0usize);
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line.trim_end().is_empty() => break,
                            Ok(_) => {}
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.trim().eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0; length.min(1 << 20)];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(head);
                    let _ = stream.write_all(response.as_bytes());
                });
            }
        });
        RawBackend { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn last(&self) -> String {
        self.heads()
            .last()
            .cloned()
            .expect("the backend received a request")
    }
}

const FRAMED_TWICE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

#[test]
fn the_edge_keeps_its_header_hygiene_on_the_proxy_and_the_listener() {
    let backend = RawBackend::start(FRAMED_TWICE);
    let mut env = Env::new();
    let (daemon, port) = edge_daemon(&mut env, &format!("{}/api", backend.url()));
    let api = daemon.addr();
    let listener = format!("127.0.0.1:{port}");
    // The same request on both data paths: one names the service's path after `/proxy`.
    let both = |path: &str, extra: &str| -> [String; 2] {
        [
            raw(
                &api,
                format!("GET /v1/services/fc/proxy{path} HTTP/1.1\r\nHost: {api}\r\n{extra}Connection: close\r\n\r\n")
                    .as_bytes(),
            ),
            raw(
                &listener,
                format!("GET {path} HTTP/1.1\r\nHost: {api}\r\n{extra}Connection: close\r\n\r\n")
                    .as_bytes(),
            ),
        ]
    };

    // A response framed twice reaches the client with its coding only.
    for answer in both("/work", "") {
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert!(
            body.contains("hello") && body.ends_with("0\r\n\r\n"),
            "{body:?}"
        );
    }

    // X-Forwarded-For is appended to; X-Forwarded-Host and -Proto are the mesh's.
    let spoofed = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n";
    for (path, answer) in ["proxy", "listener"]
        .into_iter()
        .zip(both("/work", spoofed))
    {
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let head = backend.last().to_ascii_lowercase();
        assert_eq!(
            head.matches("x-forwarded-for:").count(),
            1,
            "{path}: {head}"
        );
        assert!(
            head.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\r\n"),
            "{path}: {head}"
        );
        assert!(
            head.contains(&format!("x-forwarded-host: {api}\r\n")),
            "{path}: {head}"
        );
        assert!(
            head.contains("x-forwarded-proto: http\r\n"),
            "{path}: {head}"
        );
        assert!(
            !head.contains("evil.example") && !head.contains("https"),
            "{path}: {head}"
        );
    }

    // Dot-segments never leave the endpoint's `/api` prefix.
    for (target, seen) in [
        ("/a/../../admin", "GET /api/admin "),
        ("/%2e%2e/admin", "GET /api/admin "),
        ("/x/./y/.%2E/z", "GET /api/x/z "),
    ] {
        for (path, answer) in ["proxy", "listener"].into_iter().zip(both(target, "")) {
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "{path} {target}: {answer}"
            );
            let head = backend.last();
            assert!(head.starts_with(seen), "{path} {target}: {head}");
        }
    }

    // Refused with 400 before any instance sees them: a dot-segment behind an encoded
    // separator or a parameter, and two Host headers.
    let received = backend.heads().len();
    for target in ["/..;/admin", "/..%2fadmin"] {
        for (path, answer) in ["proxy", "listener"].into_iter().zip(both(target, "")) {
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{path} {target}: {answer}"
            );
        }
    }
    for (path, answer) in ["proxy", "listener"]
        .into_iter()
        .zip(both("/work", &format!("Host: {api}\r\n")))
    {
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("more than one Host"), "{path}: {answer}");
    }
    assert_eq!(
        backend.heads().len(),
        received,
        "a refused request reached the backend"
    );
}
