//! API callers end to end (SECURITY.md, boundary 1): tokens with scopes, the tokens file, the
//! audit log, and the browser checks (`Host`, `Origin`, media type). Each test fails without
//! the control it names.

use evolve_e2e::http::{Response, request};
use evolve_e2e::{Env, cli};
use serde_json::{Value, json};

const READER: &str = "reader-token-0123456789abcdef";
const OPERATOR: &str = "operator-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// An environment with the echo agent and three tokens, one per scope.
fn scoped_env() -> Env {
    let mut env = Env::new();
    env.install("testing", "echo", |_| {});
    env.extra_config.push_str(&format!(
        "[[server.tokens]]\nname = \"reader\"\ntoken = \"{READER}\"\nscopes = [\"read\"]\n\
         [[server.tokens]]\nname = \"operator\"\ntoken = \"{OPERATOR}\"\nscopes = [\"operate\"]\n\
         [[server.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\nscopes = [\"admin\"]\n"
    ));
    env
}

fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    let text = body.map(Value::to_string);
    request(
        addr,
        method,
        path,
        &headers,
        text.as_deref().map(str::as_bytes),
    )
}

/// A `read` token sees state but cannot run an agent or write the registry; `operate` runs
/// agents but cannot register a service; `admin` can.
#[test]
fn each_scope_allows_its_endpoints_and_refuses_the_rest() {
    let env = scoped_env();
    let daemon = env.start();
    let addr = daemon.addr();
    let run = json!({"task": "scoped"});

    assert_eq!(
        call(&addr, "GET", "/v1/agents", Some(READER), None).status,
        200
    );
    let refused = call(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        Some(READER),
        Some(&run),
    );
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "forbidden");
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("\"reader\"") && message.contains("needs operate"),
        "the refusal names the token and the scope: {message}"
    );
    // Nothing ran for the refused call.
    let runs = call(&addr, "GET", "/v1/agents/echo/runs", Some(READER), None).json();
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");

    let ran = call(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        Some(OPERATOR),
        Some(&run),
    );
    assert_eq!(ran.status, 200, "{}", ran.text());
    let spec = json!({
        "name": "svc",
        "type": "model-server",
        "capabilities": ["echo"],
        "instances": [{"id": "a", "endpoint": "http://127.0.0.1:9"}],
    });
    let as_operator = call(&addr, "POST", "/v1/services", Some(OPERATOR), Some(&spec));
    assert_eq!(as_operator.status, 403, "{}", as_operator.text());
    let as_admin = call(&addr, "POST", "/v1/services", Some(ADMIN), Some(&spec));
    assert_eq!(as_admin.status, 201, "{}", as_admin.text());
    // Anonymous reads stay open on a loopback listen (server.auth_reads defaults to off here).
    assert_eq!(daemon.get("/v1/plugins").status, 200);
}

/// `server.auth_reads = true` puts reads behind the `read` scope.
#[test]
fn reads_need_a_token_when_auth_reads_is_on() {
    let mut env = scoped_env();
    env.extra_config = format!("[server]\nauth_reads = true\n{}", env.extra_config);
    let daemon = env.start();
    let anonymous = daemon.get("/v1/registry/export");
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(
        call(&daemon.addr(), "GET", "/v1/plugins", Some(READER), None).status,
        200
    );
}

/// Every mutation, allowed or refused, is in the audit log with who, what, from where and the
/// result, both in `<log dir>/audit.jsonl` and at `GET /v1/audit`, which only `admin` may read.
#[test]
fn every_mutation_appears_in_the_audit_log() {
    let env = scoped_env();
    let daemon = env.start();
    let addr = daemon.addr();
    assert_eq!(
        call(
            &addr,
            "POST",
            "/v1/agents/echo/run",
            Some(OPERATOR),
            Some(&json!({}))
        )
        .status,
        200
    );
    assert_eq!(
        call(
            &addr,
            "POST",
            "/v1/plugins/echo/reload",
            Some(OPERATOR),
            None
        )
        .status,
        200
    );
    assert_eq!(
        call(
            &addr,
            "POST",
            "/v1/agents/echo/run",
            Some(READER),
            Some(&json!({}))
        )
        .status,
        403
    );
    assert_eq!(
        call(&addr, "POST", "/v1/agents/echo/run", None, Some(&json!({}))).status,
        401
    );
    // A read is not a mutation.
    assert_eq!(
        call(&addr, "GET", "/v1/agents", Some(READER), None).status,
        200
    );

    assert_eq!(
        call(&addr, "GET", "/v1/audit", Some(OPERATOR), None).status,
        403
    );
    let audit = call(&addr, "GET", "/v1/audit", Some(ADMIN), None);
    assert_eq!(audit.status, 200, "{}", audit.text());
    let entries = audit.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let summary: Vec<(Value, String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["caller"].clone(),
                e["path"].as_str().unwrap_or_default().to_string(),
                e["result"].as_str().unwrap_or_default().to_string(),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    // Newest first; the refused GET /v1/audit by the operator is on record too.
    assert_eq!(
        summary,
        vec![
            (json!(null), "/v1/audit".into(), "refused".into(), 403),
            (
                json!(null),
                "/v1/agents/echo/run".into(),
                "refused".into(),
                401
            ),
            (
                json!(null),
                "/v1/agents/echo/run".into(),
                "refused".into(),
                403
            ),
            (
                json!("operator"),
                "/v1/plugins/echo/reload".into(),
                "ok".into(),
                200
            ),
            (
                json!("operator"),
                "/v1/agents/echo/run".into(),
                "ok".into(),
                200
            ),
        ],
        "{entries:#?}"
    );
    assert!(
        entries.iter().all(|e| e["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:"))
            && e["time"].as_str().is_some()),
        "{entries:#?}"
    );
    assert_eq!(entries[3]["scope"], "operate");
    let file = std::fs::read_to_string(env.data_dir.join("logs/audit.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 5, "{file}");
}

/// Tokens can live in a file only the daemon's user may read; a file others may read stops
/// the start with the fix. The CLI reads its token from EVOLVE_TOKEN or a token file, so it
/// never needs one in argv.
#[test]
fn tokens_come_from_a_private_file_and_the_cli_reads_env_or_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new();
    env.install("testing", "echo", |_| {});
    let tokens_file = env.temp.path().join("tokens.toml");
    std::fs::write(
        &tokens_file,
        format!("[[tokens]]\nname = \"ci\"\ntoken = \"{OPERATOR}\"\nscopes = [\"operate\"]\n"),
    )
    .unwrap();
    std::fs::set_permissions(&tokens_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    env.extra_config = format!(
        "[server]\ntokens_file = {:?}\n{}",
        tokens_file.display().to_string(),
        env.extra_config
    );
    let (code, log) = env.spawn(&[], &[]).wait_exit();
    assert_ne!(code, Some(0));
    assert!(
        log.contains("server.tokens_file") && log.contains("chmod 600"),
        "{log}"
    );

    std::fs::set_permissions(&tokens_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = env.start();
    let api = daemon.url();
    let args = [
        "agent",
        "run",
        "echo",
        "--task",
        "from-cli",
        "--api",
        api.as_str(),
    ];
    let (code, _, stderr) = cli(&args, &[]);
    assert_ne!(code, 0, "no token: refused");
    assert!(
        stderr.contains("Bearer") || stderr.contains("unauthorized"),
        "{stderr}"
    );
    let (code, stdout, stderr) = cli(&args, &[("EVOLVE_TOKEN", OPERATOR)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let token_file = env.temp.path().join("cli-token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_path = token_file.display().to_string();
    let (code, stdout, stderr) = cli(&args, &[("EVOLVE_TOKEN_FILE", token_path.as_str())]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = cli(&args, &[("EVOLVE_TOKEN_FILE", token_path.as_str())]);
    assert_ne!(code, 0);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// Browsers: a DNS-rebound name (`Host: evil.example`) gets 421 from a loopback daemon
/// without tokens, a cross-site `Origin` cannot act, and a simple request's body types
/// (`text/plain`, forms) are refused, so a web page cannot reach the API through the user's
/// browser.
#[test]
fn a_rebinding_host_and_a_cross_site_origin_are_refused() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let addr = daemon.addr();
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();

    let rebound = request(
        &addr,
        "GET",
        "/v1/registry/export",
        &[("host", &format!("evil.example:{port}"))],
        None,
    );
    assert_eq!(rebound.status, 421, "{}", rebound.text());
    assert_eq!(rebound.json()["error"]["code"], "host_not_allowed");
    let local = request(
        &addr,
        "GET",
        "/v1/registry/export",
        &[("host", &format!("localhost:{port}"))],
        None,
    );
    assert_eq!(local.status, 200, "{}", local.text());
    let twice = request(
        &addr,
        "GET",
        "/v1/plugins",
        &[("host", &addr), ("host", &addr)],
        None,
    );
    assert_eq!(twice.status, 400, "{}", twice.text());

    let cross_site = request(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        &[
            ("origin", "https://evil.example"),
            ("content-type", "application/json"),
        ],
        Some(b"{}"),
    );
    assert_eq!(cross_site.status, 403, "{}", cross_site.text());
    assert_eq!(cross_site.json()["error"]["code"], "origin_not_allowed");
    assert!(
        !cross_site
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("access-control-allow-origin")),
        "no CORS for an origin that is not configured"
    );
    let simple = request(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        &[("content-type", "text/plain")],
        Some(b"{}"),
    );
    assert_eq!(simple.status, 415, "{}", simple.text());
    let runs = daemon.get("/v1/agents/echo/runs").json();
    assert_eq!(
        runs["runs"].as_array().map(Vec::len),
        Some(0),
        "nothing ran: {runs}"
    );

    let own_origin = format!("http://127.0.0.1:{port}");
    let same_origin = request(
        &addr,
        "POST",
        "/v1/agents/echo/run",
        &[
            ("origin", &own_origin),
            ("content-type", "application/json"),
        ],
        Some(b"{}"),
    );
    assert_eq!(same_origin.status, 200, "{}", same_origin.text());
}

/// A configured origin gets CORS answers (preflight and the response), others none.
#[test]
fn cors_is_answered_only_for_configured_origins() {
    let mut env = Env::new();
    env.extra_config
        .push_str("[server]\nallowed_origins = [\"https://console.example.com\"]\n");
    let daemon = env.start();
    let addr = daemon.addr();
    let preflight = |origin: &str| {
        request(
            &addr,
            "OPTIONS",
            "/v1/plugins/echo/reload",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            None,
        )
    };
    let allowed = preflight("https://console.example.com");
    assert_eq!(allowed.status, 204, "{}", allowed.text());
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://console.example.com")
    );
    let other = preflight("https://evil.example");
    assert_eq!(other.status, 403, "{}", other.text());
    assert_eq!(other.header("access-control-allow-origin"), None);
    let read = request(
        &addr,
        "GET",
        "/v1/plugins",
        &[("origin", "https://console.example.com")],
        None,
    );
    assert_eq!(
        read.header("access-control-allow-origin"),
        Some("https://console.example.com")
    );
}
