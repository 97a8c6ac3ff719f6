//! The demo end to end, as a newcomer meets it: `evolve-demo up` exactly as `cargo xtask serve`
//! runs it (only the working directory and the daemon's log file differ), then the README's
//! quick-start lines (read from README.md, so the two cannot drift) each giving what the README
//! says, the seed's complete workflow (`examples/workflow.sh`), and a restart that changes
//! nothing the user changed.
//!
//! The demo's addresses are fixed by `examples/demo/evolve.toml` (the README's lines name
//! `localhost:7070`), so this is the one e2e test that uses fixed ports: 7070, 7101, 7102, 7111,
//! 7112 must be free.

use std::net::TcpStream;

use evolve_e2e::demo::{Demo, quickstart_lines, sh};
use evolve_e2e::http::request;
use evolve_e2e::{evolve_bin, wait_until};
use serde_json::{Value, json};

const API: &str = "127.0.0.1:7070";

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn get(path: &str) -> Value {
    request(API, "GET", path, &[], None).json()
}

#[test]
fn the_demo_answers_the_readme_quick_start_and_runs_the_seed_workflow() {
    for port in [7070, 7101, 7102, 7111, 7112] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} is taken (a running `cargo xtask serve`?); the demo test needs it"
        );
    }
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path();
    let demo = Demo::up(cwd);
    let printed = demo.output();

    let lines = quickstart_lines();
    assert_eq!(lines.len(), 4, "README quick start: {lines:?}");
    for line in &lines {
        assert!(
            printed.contains(line.as_str()),
            "up did not print {line:?}:\n{printed}"
        );
    }

    // 1. A routed forecast: served by one of the two forecast instances, with its backtest.
    let (code, out, err) = sh(cwd, &lines[0], &[]);
    assert_eq!(code, 0, "{err}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(head, "x-evolve-service"), Some("forecast"), "{head}");
    let instance = header(head, "x-evolve-instance").unwrap();
    assert!(matches!(instance, "forecast-a" | "forecast-b"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["instance"], instance,
        "the backend that answered is the one named"
    );
    assert_eq!(body["symbol"], "ACME");
    let forecast = body["forecast"].as_array().unwrap();
    assert_eq!(forecast.len(), 5, "{body:#}");
    assert_eq!(
        forecast[0]["date"], "2025-12-01",
        "the first weekday after the data"
    );
    let outcome = header(head, "x-evolve-outcome").unwrap();
    let mae: f64 = outcome
        .strip_prefix("mae=")
        .and_then(|rest| rest.split(';').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("x-evolve-outcome: {outcome}"));
    assert!(
        (mae - body["backtest"]["mae"].as_f64().unwrap()).abs() < 1e-5,
        "{outcome} vs {body}"
    );
    assert_eq!(header(head, "x-evolve-model"), Some("ses"), "{head}");
    assert_eq!(header(head, "x-evolve-model-version"), Some("2"), "{head}");
    assert_eq!(body["model"]["name"], "ses", "{body:#}");
    assert_eq!(body["method"], "simple exponential smoothing, alpha fitted");

    // 2. System health: healthy, one line per part.
    let (code, out, err) = sh(cwd, &lines[1], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("system: healthy\n"), "{out}");
    assert!(
        out.contains("plugins   healthy   7 serving, 0 failed"),
        "{out}"
    );
    assert!(
        out.contains("services  healthy   2 services, 4/4 instances routable, 0 breakers open"),
        "{out}"
    );
    assert!(out.contains("cluster   healthy   not configured"), "{out}");

    // 3. The integration tester: every check passes, the best forecast model among them.
    let (code, out, err) = sh(cwd, &lines[2], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all 9 checks passed"), "{out}");
    assert!(out.contains("PASS best-model forecast"), "{out}");
    assert!(
        out.contains("PASS service forecast") && out.contains("PASS service analysis"),
        "{out}"
    );

    // The routed forecast's outcome is recorded (off the response path) on the champion, ses
    // v2, beside its five seeded points.
    wait_until("the routed outcome recorded on ses v2", || {
        let points = get("/v1/models/ses/performance?version=2&metric=mae");
        (points["points"].as_array().unwrap().len() > 5).then_some(())
    });

    // 4. Generated docs: the models with the champion alias and the best per task type. The
    // agents' view of the registry is refreshed every second (README), so the docs name the
    // registry's best once that refresh has seen the recorded outcome.
    let best = get("/v1/models/best?task=forecast");
    assert_eq!(best["policy"], "forecast-error", "{best:#}");
    let winner = format!(
        "| forecast | {} v{} |",
        best["winner"]["model"].as_str().unwrap(),
        best["winner"]["version"]
    );
    let out = wait_until("the docs to name the registry's best model", || {
        let (code, out, err) = sh(cwd, &lines[3], &[]);
        assert_eq!(code, 0, "{out}{err}");
        out.contains(&winner).then_some(out)
    });
    assert!(
        out.contains("| ses | forecast | v2 | champion → v2 | demo |"),
        "{out}"
    );

    // The seed's complete workflow, through the public API and CLI only.
    let evolve = evolve_bin();
    let (code, out, err) = sh(
        cwd,
        &format!("{}/examples/workflow.sh", evolve_e2e::root().display()),
        &[("EVOLVE", evolve.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{out}{err}");
    let expected_best = format!(
        "Best model: {} v{}",
        best["winner"]["model"].as_str().unwrap(),
        best["winner"]["version"]
    );
    assert!(out.starts_with("System health: healthy\n"), "{out}");
    assert!(out.contains(&expected_best), "{out}");
    assert!(
        out.contains("Forecast response: 200 from forecast/forecast-"),
        "{out}"
    );
    assert!(out.contains("Documentation generated: wrote /out/inventory.md: 7 plugins, 4 services, 3 models, 5 agents"), "{out}");

    // The analysis route reaches an analysis backend with real figures.
    let analysis = request(
        API,
        "POST",
        "/v1/route/analysis",
        &[("content-type", "application/json")],
        Some(json!({"symbol": "GLOBEX"}).to_string().as_bytes()),
    );
    assert_eq!(analysis.status, 200, "{}", analysis.text());
    let analysis = analysis.json();
    assert_eq!(analysis["partial"], false, "{analysis:#}");
    let parts: Vec<Value> = analysis["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["body"].clone())
        .collect();
    assert_eq!(parts.len(), 2);
    for part in &parts {
        let drawdown = part["max_drawdown"]["value"].as_f64().unwrap();
        assert!(drawdown > 0.0 && drawdown < 1.0, "{part:#}");
        assert_eq!(part["window"], 500);
    }

    // A restart changes nothing the user changed and adds nothing twice.
    let moved = request(
        API,
        "PUT",
        "/v1/models/ses/aliases/champion",
        &[("content-type", "application/json")],
        Some(br#"{"version": 1, "reason": "test"}"#),
    );
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert!(demo.stop(), "evolve-demo did not exit cleanly");
    assert!(
        TcpStream::connect(API).is_err(),
        "the daemon outlived the demo"
    );
    let demo = Demo::up(cwd);
    assert!(
        !demo.output().contains("registry seeded"),
        "{}",
        demo.output()
    );
    assert_eq!(get("/v1/models/ses/aliases/champion")["version"], 1);
    assert_eq!(
        get("/v1/models/ses/versions")["versions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let points = get("/v1/models/ses/performance?version=1");
    assert_eq!(
        points["points"].as_array().unwrap().len(),
        10,
        "5 days × mae, mape: {points:#}"
    );
    assert!(demo.stop());
}
