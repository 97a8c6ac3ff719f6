//! Trust boundaries end to end, one section per boundary of SECURITY.md. Each test names the
//! control it proves and fails without it.

use evolve_e2e::Env;
use evolve_e2e::echo::EchoBackend;
use evolve_e2e::http::request;
use serde_json::json;

const TOKEN: &str = "security-e2e-token-0123456789";

/// API callers: the daemon's bearer token is the caller's credential for the daemon, never
/// something a backend gets to see, on any method.
#[test]
fn the_daemon_token_never_reaches_a_backend_on_any_method() {
    let env = Env::new();
    let daemon = env.start_with(&[], &[("EVOLVE_AUTH_TOKEN", TOKEN)]);
    let backend = EchoBackend::start("b");
    let bearer = format!("Bearer {TOKEN}");
    let spec = json!({
        "name": "svc",
        "type": "model-server",
        "capabilities": ["echo"],
        "instances": [{"id": "b", "endpoint": backend.url()}],
    });
    let created = request(
        &daemon.addr(),
        "POST",
        "/v1/services",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        Some(spec.to_string().as_bytes()),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    for (n, method) in ["GET", "POST", "PUT", "PATCH", "DELETE"]
        .into_iter()
        .enumerate()
    {
        let answer = request(
            &daemon.addr(),
            method,
            "/v1/services/svc/proxy/anything",
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer),
                ("x-trace", method),
            ],
            Some(b"{}"),
        );
        assert_eq!(answer.status, 200, "{method}: {}", answer.text());
        backend.wait_requests(n + 1);
        let seen = backend.last();
        assert_eq!(seen.header("x-trace"), Some(method), "the request arrived");
        assert_eq!(
            seen.header("authorization"),
            None,
            "{method}: the daemon's token was forwarded to the backend"
        );
    }
}

/// API callers: however the token is spelled (a lowercase scheme, behind another
/// `Authorization` header), it is not forwarded either.
#[test]
fn the_daemon_token_is_not_forwarded_in_any_spelling() {
    let env = Env::new();
    let daemon = env.start_with(&[], &[("EVOLVE_AUTH_TOKEN", TOKEN)]);
    let backend = EchoBackend::start("b");
    let spec = json!({
        "name": "svc",
        "type": "model-server",
        "capabilities": ["echo"],
        "instances": [{"id": "b", "endpoint": backend.url()}],
    });
    let bearer = format!("Bearer {TOKEN}");
    let created = request(
        &daemon.addr(),
        "POST",
        "/v1/services",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        Some(spec.to_string().as_bytes()),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let lowercase = format!("bearer {TOKEN}");
    let spellings: [&[(&str, &str)]; 2] = [
        &[("authorization", &lowercase)],
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", &bearer),
        ],
    ];
    for (n, headers) in spellings.into_iter().enumerate() {
        let answer = request(
            &daemon.addr(),
            "GET",
            "/v1/services/svc/proxy/x",
            headers,
            None,
        );
        assert_eq!(answer.status, 200, "{headers:?}: {}", answer.text());
        backend.wait_requests(n + 1);
        assert_eq!(
            backend.last().header("authorization"),
            None,
            "{headers:?}: an Authorization header was forwarded"
        );
    }
}

/// API callers: a token presented on a read is checked like one on a write, so a wrong or
/// revoked token is never taken as anonymous.
#[test]
fn a_wrong_token_is_refused_on_reads_too() {
    let env = Env::new();
    let daemon = env.start_with(&[], &[("EVOLVE_AUTH_TOKEN", TOKEN)]);
    let wrong = request(
        &daemon.addr(),
        "GET",
        "/v1/plugins",
        &[("authorization", "Bearer not-the-daemon-token-at-all")],
        None,
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(wrong.json()["error"]["code"], "unauthorized");
    let right = request(
        &daemon.addr(),
        "GET",
        "/v1/plugins",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    assert_eq!(right.status, 200, "{}", right.text());
    // Anonymous reads stay open until reads are put behind a scope.
    assert_eq!(daemon.get("/v1/plugins").status, 200);
}
