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
