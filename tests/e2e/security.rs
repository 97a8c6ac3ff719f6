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
    for (n, method) in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .into_iter()
        .enumerate()
    {
        let body: Option<&[u8]> = match method {
            "GET" | "HEAD" | "OPTIONS" => None,
            _ => Some(b"{}"),
        };
        let answer = request(
            &daemon.addr(),
            method,
            "/v1/services/svc/proxy/anything",
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer),
                ("x-trace", method),
            ],
            body,
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

/// Plugins → the host: an allowed NAME does not make its addresses reachable. A checker allowed
/// `localhost:<port>` (which resolves to loopback) is refused before connecting, the error says
/// which address and why, and the checked target on loopback stays reachable.
#[test]
fn an_allowed_name_that_resolves_to_loopback_is_refused_but_the_target_is_not() {
    let env = Env::new();
    let target = evolve_e2e::http::Backend::start(200);
    let other = evolve_e2e::http::Backend::start(200);
    let port = other.addr.rsplit_once(':').unwrap().1.to_string();
    let sneaky = format!("localhost:{port}");
    env.install("testing", "http-sneak", |m| {
        let mut permissions = toml::Table::new();
        permissions.insert("http_hosts".into(), vec![sneaky.clone()].into());
        m.insert("permissions".into(), permissions.into());
        m["config"]["forbidden_host"] = sneaky.clone().into();
        m["config"]["also_target"] = true.into();
    });
    let daemon = env.start();
    let response = daemon.post(
        "/v1/checkers/http-sneak/check",
        &json!({"name": "svc", "endpoint": target.url()}),
    );
    let error = response.json()["error"].clone();
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(error["code"], "permission_denied", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(&sneaky), "{message}");
    assert!(message.contains("is loopback"), "{message}");
    assert_eq!(target.connections(), 1, "the checked target is reachable");
    assert_eq!(
        other.connections(),
        0,
        "the loopback address was never contacted"
    );
}

/// Plugins → the host: a directory grant that climbs out of the allowed roots (`../..`), names
/// a system directory (`/etc`) or the daemon's own data dir, and an environment variable the
/// operator did not allow, are each refused at load with a message naming the grant, the
/// allowed list and the config key; a plugin granted what the operator allows serves.
#[test]
fn grants_out_of_the_allowed_roots_or_of_the_data_dir_are_refused_at_load() {
    let env = Env::new();
    let wasm =
        std::fs::read(evolve_e2e::built_plugin("testing", "file-sneak").join("file_sneak.wasm"))
            .unwrap();
    std::fs::create_dir_all(env.data_dir.join("docs")).unwrap();
    let data_dir = env.data_dir.display().to_string();
    let root = env.data_dir.canonicalize().unwrap().display().to_string();
    let dir_grabs = [
        ("climber", "../..", "overlaps"),
        ("data-grab", data_dir.as_str(), "the data dir"),
        ("etc-grab", "/etc", "outside every allowed root"),
    ];
    for (name, host, _) in dir_grabs {
        env.install_raw(
            name,
            &format!(
                "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"meta-agent\"\nwasm = \"p.wasm\"\n\
                 [[permissions.dirs]]\nhost = {host:?}\nguest = \"/in\"\n"
            ),
            Some(("p.wasm", &wasm)),
        );
    }
    env.install_raw(
        "env-grab",
        "name = \"env-grab\"\nversion = \"0.1.0\"\nkind = \"meta-agent\"\nwasm = \"p.wasm\"\n\
         [permissions]\nenv = [\"HOME\"]\n",
        Some(("p.wasm", &wasm)),
    );
    env.install("testing", "file-sneak", |_| {});
    let daemon = env.start();
    assert_eq!(daemon.plugin("file-sneak")["state"], "serving");

    let plugins = daemon.get("/v1/plugins").json();
    let refused = |name: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["state"] == "failed" && p["dir"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} was not refused: {plugins:#}"))["last_error"]
            .clone()
    };
    for (name, host, why) in dir_grabs {
        let error = refused(name);
        assert_eq!(error["code"], "dir_grant_refused", "{error:#}");
        let message = error["message"].as_str().unwrap();
        for needle in [
            format!("\"{host}\""),
            root.clone(),
            "runtime.allowed_dir_roots".to_string(),
            why.to_string(),
        ] {
            assert!(
                message.contains(&needle),
                "{name}: {message:?} lacks {needle:?}"
            );
        }
    }
    let error = refused("env-grab");
    assert_eq!(error["code"], "env_grant_refused", "{error:#}");
    let message = error["message"].as_str().unwrap();
    for needle in ["\"HOME\"", "runtime.allowed_env"] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

/// Plugins → the host: a cached AOT artifact whose bytes changed is never mapped: the restart
/// recompiles it, and the refusal is counted in `GET /v1/runtime` and `/metrics`.
#[test]
fn a_tampered_aot_artifact_is_recompiled_and_counted_not_mapped() {
    // A private cache (under the data dir) this test may alter.
    let env = Env::with_cache(None);
    env.install("testing", "echo", |_| {});
    let first = env.start();
    assert_eq!(first.plugin("echo")["aot"], "compiled");
    assert!(first.terminate());

    let cache = env.data_dir.join("cache/aot");
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let mut bytes = std::fs::read(&artifacts[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&artifacts[0], &bytes).unwrap();

    let second = env.start();
    assert_eq!(
        second.plugin("echo")["aot"],
        "compiled",
        "the tampered artifact was mapped"
    );
    let runtime = second.get("/v1/runtime").json();
    assert_eq!(runtime["aot_cache"]["rejected"], 1, "{runtime:#}");
    assert_eq!(runtime["aot_cache"]["hits"], 0, "{runtime:#}");
    let metrics = second.get("/metrics").text();
    assert!(metrics.contains("evolve_aot_rejected_total 1"), "{metrics}");
    let response = second.post("/v1/agents/echo/run", &json!({"input": 1}));
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Plugins → the host: an AOT cache directory its group may write is refused at start, with the
/// key to change.
#[cfg(unix)]
#[test]
fn a_group_writable_aot_cache_dir_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::with_cache(None);
    let cache = env.data_dir.join("cache/aot");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, log) = env.spawn(&[], &[]).wait_exit();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("770") && log.contains("runtime.cache_dir"),
        "{log}"
    );
}

/// The auditor sees the daemon's own guards: a loopback API with no token is a finding; once a
/// token is set it is not, and a cluster joined without a key (`allow_unauthenticated`) is
/// critical.
#[test]
fn the_security_auditor_flags_a_missing_token_and_an_unauthenticated_cluster() {
    let findings = |daemon: &evolve_e2e::Daemon, headers: &[(&str, &str)]| {
        let answer = request(
            &daemon.addr(),
            "POST",
            "/v1/system/security-audit",
            &[&[("content-type", "application/json")], headers].concat(),
            Some(b"{}"),
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        evolve_e2e::audit_findings(&answer.json()["outcome"]["output"])
            .into_iter()
            .map(|(severity, rule, _)| (severity, rule))
            .collect::<Vec<_>>()
    };
    let no_token = ("medium".to_string(), "api.no-token".to_string());
    let open_cluster = (
        "critical".to_string(),
        "cluster.unauthenticated".to_string(),
    );

    let env = Env::new();
    env.install("bundled", "security-auditor", |_| {});
    let open = env.start();
    let seen = findings(&open, &[]);
    assert!(seen.contains(&no_token), "{seen:?}");
    assert!(!seen.contains(&open_cluster), "no cluster here: {seen:?}");
    drop(open);

    let redis = evolve_e2e::redis::RedisServer::start();
    let mut env = Env::new();
    env.extra_config.push_str(&format!(
        "[cluster]\nredis_url = \"{}\"\nallow_unauthenticated = true\nnode_id = \"audited\"\n",
        redis.url()
    ));
    env.install("bundled", "security-auditor", |_| {});
    let guarded = env.start_with(&[], &[("EVOLVE_AUTH_TOKEN", TOKEN)]);
    let seen = findings(&guarded, &[("authorization", &format!("Bearer {TOKEN}"))]);
    assert!(seen.contains(&open_cluster), "{seen:?}");
    assert!(!seen.contains(&no_token), "a token is set: {seen:?}");
}
