//! The API's edges: bad bodies get JSON errors that say what is wrong; auth guards mutating
//! endpoints; a public listen address without a token refuses to start.

use evolve_e2e::Env;
use evolve_e2e::http::request;
use serde_json::json;

#[test]
fn bad_requests_get_specific_json_errors() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    env.install("bundled", "http-health", |_| {});
    let daemon = env.start();
    let addr = daemon.addr();
    let json_header = [("content-type", "application/json")];

    let cases: Vec<(u16, &str, evolve_e2e::http::Response)> = vec![
        (
            400,
            "malformed_json",
            request(
                &addr,
                "POST",
                "/v1/agents/echo/run",
                &json_header,
                Some(b"{\"task\": "),
            ),
        ),
        (
            415,
            "unsupported_media_type",
            request(&addr, "POST", "/v1/agents/echo/run", &[], Some(b"{}")),
        ),
        (
            422,
            "invalid_request",
            daemon.post("/v1/agents/echo/run", &json!({"task": 7})),
        ),
        (
            422,
            "invalid_request",
            daemon.post("/v1/agents/echo/run", &json!({"tsak": "x"})),
        ),
        (
            404,
            "not_found",
            daemon.post("/v1/agents/nobody/run", &json!({})),
        ),
        (
            409,
            "wrong_kind",
            daemon.post("/v1/agents/http-health/run", &json!({})),
        ),
        (
            409,
            "wrong_kind",
            daemon.post(
                "/v1/checkers/echo/check",
                &json!({"name": "s", "endpoint": "http://127.0.0.1:1"}),
            ),
        ),
        (
            422,
            "invalid_request",
            daemon.post(
                "/v1/checkers/http-health/check",
                &json!({"name": "s", "endpoint": "not a url"}),
            ),
        ),
        (
            422,
            "invalid_request",
            daemon.post(
                "/v1/checkers/http-health/check",
                &json!({"name": "s", "endpoint": "ftp://x.com"}),
            ),
        ),
        (
            422,
            "invalid_request",
            daemon.post(
                "/v1/checkers/http-health/check",
                &json!({"name": "s", "endpoint": "http://x.com", "weight": 5000}),
            ),
        ),
        (404, "not_found", daemon.get("/v1/plugins/nobody")),
        (404, "not_found", daemon.get("/v2/nothing")),
        (405, "method_not_allowed", daemon.get("/v1/agents/echo/run")),
    ];
    for (status, code, response) in cases {
        let body = response.json();
        assert_eq!(response.status, status, "{body:#}");
        assert_eq!(body["error"]["code"], code, "{body:#}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // Still serving after all of that.
    assert_eq!(daemon.post("/v1/agents/echo/run", &json!({})).status, 200);
}

#[test]
fn oversized_bodies_are_refused() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let big = format!("{{\"input\": \"{}\"}}", "x".repeat(2 << 20));
    let response = request(
        &daemon.addr(),
        "POST",
        "/v1/agents/echo/run",
        &[("content-type", "application/json")],
        Some(big.as_bytes()),
    );
    assert_eq!(response.status, 413, "{}", response.text());
}

#[test]
fn tokens_guard_mutating_endpoints() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    let token = "a-test-token-of-decent-length";
    let daemon = env.start_with(&[], &[("EVOLVE_AUTH_TOKEN", token)]);
    let addr = daemon.addr();
    let json_header = ("content-type", "application/json");

    let anonymous = request(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        &[json_header],
        Some(b"{}"),
    );
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"]["code"], "unauthorized");
    let wrong = request(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        &[
            json_header,
            ("authorization", "Bearer not-the-token-at-all"),
        ],
        Some(b"{}"),
    );
    assert_eq!(wrong.status, 401);
    let bearer = format!("Bearer {token}");
    let right = request(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        &[json_header, ("authorization", &bearer)],
        Some(b"{}"),
    );
    assert_eq!(right.status, 200, "{}", right.text());
    // Reads stay open.
    assert_eq!(daemon.get("/v1/plugins").status, 200);
}

#[test]
fn public_listen_without_a_token_refuses_to_start() {
    let env = Env::new();
    let daemon = env.spawn(&["--listen", "0.0.0.0:0"], &[]);
    let (code, log) = daemon.wait_exit();
    assert_ne!(code, Some(0));
    assert!(log.contains("auth token is required"), "{log}");
}

#[test]
fn malformed_config_refuses_to_start_naming_the_key() {
    let mut env = Env::new();
    env.extra_config
        .push_str("[server]\nlisen = \"127.0.0.1:1\"\n");
    let (code, log) = env.spawn(&[], &[]).wait_exit();
    assert_ne!(code, Some(0));
    assert!(
        log.contains("lisen") && log.contains("evolve.toml"),
        "{log}"
    );
}

/// `evolve events tail` without Redis follows the daemon's own bus: its recent events first,
/// then each new one as it is published; a daemon that stops ends the stream instead of
/// holding its graceful shutdown for the whole grace.
#[test]
fn events_tail_replays_recent_events_then_follows_live_and_ends_with_the_daemon() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let env = Env::new();
    let daemon = env.start();
    let backend = evolve_e2e::http::Backend::start(200);
    let register = |name: &str| {
        let created = daemon.post(
            "/v1/services",
            &json!({"name": name, "capabilities": ["forecast"],
                    "instances": [{"endpoint": backend.url()}]}),
        );
        assert_eq!(created.status, 201, "{}", created.text());
    };
    register("before");

    let mut tail = Command::new(evolve_e2e::evolve_bin())
        .args(["events", "tail", "--api", &daemon.url()])
        .args(["--kind", "service.registered", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let subject = |line: std::io::Result<String>| -> String {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(event["kind"], "service.registered", "{event}");
        event["subject"].as_str().unwrap().to_string()
    };
    // Replayed: the follow has subscribed by the time it sends its first line.
    assert_eq!(subject(lines.next().unwrap()), "before");
    register("after");
    assert_eq!(subject(lines.next().unwrap()), "after", "followed live");
    assert!(tail.wait().unwrap().success(), "exits after --count 2");

    // A follower that never stops by itself...
    let mut follower = Command::new(evolve_e2e::evolve_bin())
        .args(["events", "tail", "--api", &daemon.url()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().is_ok(), "following");
    // ...does not hold the daemon's shutdown, and its stream ends cleanly.
    let log = std::sync::Arc::clone(&daemon.log);
    assert!(daemon.terminate(), "the daemon stops cleanly");
    assert!(
        follower.wait().unwrap().success(),
        "the tail ends with the stream"
    );
    let text = log.text();
    assert!(
        !text.contains("shutdown grace elapsed"),
        "the follow held the shutdown:\n{text}"
    );
}

/// Opens `GET /v1/events?follow=true` and reads its head: the stream (still open) and the
/// status.
fn follow_events(addr: &str) -> (std::net::TcpStream, u16, String) {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(evolve_e2e::EVENT_TIMEOUT))
        .unwrap();
    write!(
        stream,
        "GET /v1/events?follow=true HTTP/1.1\r\nhost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad head {head:?}"));
    (stream, status, head)
}

/// Event followers are capped: one past the cap gets a 503 that says why, and a slot frees
/// once a follower goes.
#[test]
fn event_followers_are_capped_with_a_clear_refusal() {
    const MAX_FOLLOWERS: usize = 64;
    let env = Env::new();
    let daemon = env.start();
    let addr = daemon.addr();
    let mut followers: Vec<std::net::TcpStream> = (0..MAX_FOLLOWERS)
        .map(|_| {
            let (stream, status, head) = follow_events(&addr);
            assert_eq!(status, 200, "{head}");
            stream
        })
        .collect();

    let refused = request(&addr, "GET", "/v1/events?follow=true", &[], None);
    assert_eq!(refused.status, 503, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "too_many_followers", "{error}");
    assert_eq!(error["max_followers"], MAX_FOLLOWERS);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("without follow"),
        "{error}"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Reading the recent events stays open to everyone.
    assert_eq!(daemon.get("/v1/events").status, 200);

    // One follower goes. The daemon notices when it next writes to it, so events are
    // published until a new follower is let in.
    drop(followers.pop());
    let backend = evolve_e2e::http::Backend::start(200);
    let mut published = 0;
    let (_admitted, _, _) = evolve_e2e::wait_until("a follower slot to free", || {
        published += 1;
        let created = daemon.post(
            "/v1/services",
            &json!({"name": format!("s{published}"), "capabilities": ["c"],
                    "instances": [{"endpoint": backend.url()}]}),
        );
        assert_eq!(created.status, 201, "{}", created.text());
        let (stream, status, head) = follow_events(&addr);
        (status == 200).then_some((stream, status, head))
    });
}
