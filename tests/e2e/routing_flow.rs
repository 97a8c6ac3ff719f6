//! Model-aware routing and fan-out end to end: a real daemon, real registry, real
//! backends that echo what they received ([`EchoBackend`]).

use evolve_e2e::echo::EchoBackend;
use evolve_e2e::http::{Response, request};
use evolve_e2e::{Daemon, Env, wait_until};
use serde_json::{Value, json};

const ROUTES: &str = r#"
[mesh]
slow_start_ms = 0
[mesh.retry]
max_retries = 0
[registry.policies.accuracy]
metrics = [{ name = "mae" }]
window_days = 0.0
half_life_days = 0.0
[mesh.routes.forecast]
capability = "forecast"
task = "forecast"
model = "champion"
[mesh.routes.best]
capability = "forecast"
path = "/forecast"
task = "forecast"
model = "best"
policy = "accuracy"
record_outcomes = true
[mesh.routes.unrecorded]
capability = "forecast"
path = "/forecast"
task = "forecast"
model = "best"
policy = "accuracy"
[mesh.routes.lonely]
capability = "forecast"
path = "/forecast"
task = "sentiment"
[mesh.routes.strict]
capability = "forecast"
path = "/forecast"
task = "sentiment"
model_fallback = "reject"
[mesh.routes.analysis]
capability = "analysis"
fanout = "all"
timeout_ms = 400
task = "forecast"
model = "champion"
[mesh.routes.analysis_first]
capability = "analysis"
path = "/analysis"
fanout = "all"
aggregate = "first_success"
timeout_ms = 400
[mesh.routes.analysis_quorum]
capability = "analysis"
path = "/analysis"
fanout = "all"
aggregate = "quorum"
quorum = 2
timeout_ms = 400
[mesh.routes.analysis_unanimous]
capability = "analysis"
path = "/analysis"
fanout = "all"
aggregate = "quorum"
quorum = 3
timeout_ms = 400
[mesh.routes.analysis_top2]
capability = "analysis"
path = "/analysis"
fanout = "best_n"
fanout_n = 2
timeout_ms = 400
"#;

/// A daemon with the routes above; the environment lives as long as the test holds it.
fn start() -> (Env, Daemon) {
    let mut env = Env::new();
    env.extra_config.push_str(ROUTES);
    let daemon = env.start();
    (env, daemon)
}

fn register_service(daemon: &Daemon, name: &str, capability: &str, backends: &[&EchoBackend]) {
    let instances: Vec<Value> = backends
        .iter()
        .map(|b| json!({"id": b.id, "endpoint": b.url(), "weight": 100}))
        .collect();
    let created = daemon.post(
        "/v1/services",
        &json!({"name": name, "capabilities": [capability], "instances": instances, "lb": "round_robin"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
}

fn send(daemon: &Daemon, method: &str, path: &str, body: &Value) -> Response {
    let text = body.to_string();
    request(
        &daemon.addr(),
        method,
        path,
        &[("content-type", "application/json")],
        Some(text.as_bytes()),
    )
}

/// A model of task `forecast` with `versions` versions.
fn register_model(daemon: &Daemon, name: &str, versions: u32) {
    let created = daemon.post(
        "/v1/models",
        &json!({"name": name, "task_type": "forecast"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    for _ in 0..versions {
        let version = daemon.post(&format!("/v1/models/{name}/versions"), &json!({}));
        assert_eq!(version.status, 201, "{}", version.text());
    }
}

fn move_alias(daemon: &Daemon, model: &str, alias: &str, version: u32) {
    let moved = send(
        daemon,
        "PUT",
        &format!("/v1/models/{model}/aliases/{alias}"),
        &json!({"version": version, "reason": "test"}),
    );
    assert_eq!(moved.status, 200, "{}", moved.text());
}

/// The points of `model`'s metric `metric` as (version, value).
fn points(daemon: &Daemon, model: &str, metric: &str) -> Vec<(u64, f64)> {
    let history = daemon.get(&format!(
        "/v1/models/{model}/performance?metric={metric}&limit=100000"
    ));
    assert_eq!(history.status, 200, "{}", history.text());
    history.json()["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["version"].as_u64().unwrap(), p["value"].as_f64().unwrap()))
        .collect()
}

#[test]
fn the_routed_request_carries_the_champion_and_an_alias_move_reaches_the_next_request() {
    let (_env, daemon) = start();
    let backend = EchoBackend::start("m1");
    register_service(&daemon, "fc", "forecast", &[&backend]);
    register_model(&daemon, "arima", 2);
    move_alias(&daemon, "arima", "champion", 1);

    let routed = send(
        &daemon,
        "POST",
        "/v1/route/forecast",
        &json!({"horizon": 5}),
    );
    assert_eq!(routed.status, 200, "{}", routed.text());
    assert_eq!(routed.header("x-evolve-model"), Some("arima"));
    assert_eq!(routed.header("x-evolve-model-version"), Some("1"));
    assert_eq!(
        routed.header("x-evolve-model-source"),
        Some("alias:champion")
    );
    assert_eq!(routed.header("x-evolve-service"), Some("fc"));
    assert_eq!(routed.header("x-evolve-instance"), Some("m1"));
    let seen = backend.last();
    assert_eq!(seen.header("x-evolve-model"), Some("arima"));
    assert_eq!(seen.header("x-evolve-model-version"), Some("1"));
    assert_eq!(seen.header("x-evolve-model-source"), Some("alias:champion"));
    let body = seen.json();
    assert_eq!(body["horizon"], 5, "{body}");
    assert_eq!(
        body["evolve_model"],
        json!({"name": "arima", "version": 1, "source": "alias:champion"})
    );

    // Moving the alias changes the very next request's model (the selection cache is emptied
    // by the move's event, not by its 1 s lifetime).
    move_alias(&daemon, "arima", "champion", 2);
    let routed = send(
        &daemon,
        "POST",
        "/v1/route/forecast",
        &json!({"horizon": 6}),
    );
    assert_eq!(routed.header("x-evolve-model-version"), Some("2"));
    assert_eq!(backend.last().json()["evolve_model"]["version"], 2);

    // A body that is not a JSON object reaches the backend unchanged, the model in headers.
    let plain = request(
        &daemon.addr(),
        "POST",
        "/v1/route/forecast",
        &[("content-type", "text/plain")],
        Some(b"just text"),
    );
    assert_eq!(plain.status, 200, "{}", plain.text());
    let seen = backend.last();
    assert_eq!(seen.body, b"just text");
    assert_eq!(seen.header("x-evolve-model-version"), Some("2"));

    // No model for the task: the default fallback forwards without one and says why...
    let lonely = send(&daemon, "POST", "/v1/route/lonely", &json!({"q": 1}));
    assert_eq!(lonely.status, 200, "{}", lonely.text());
    assert_eq!(lonely.header("x-evolve-model-source"), Some("none"));
    assert_eq!(lonely.header("x-evolve-model-fallback"), Some("no_model"));
    assert_eq!(lonely.header("x-evolve-model"), None);
    let seen = backend.last();
    assert_eq!(seen.header("x-evolve-model"), None);
    assert_eq!(seen.json(), json!({"q": 1}));
    // ...and "reject" answers 503 no_model without reaching the backend.
    let before = backend.seen().len();
    let strict = send(&daemon, "POST", "/v1/route/strict", &json!({"q": 1}));
    assert_eq!(strict.status, 503, "{}", strict.text());
    assert_eq!(strict.json()["error"]["code"], "no_model");
    assert!(
        strict.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sentiment")
    );
    assert_eq!(backend.seen().len(), before);

    let selections = daemon.get("/metrics").text();
    assert!(
        selections
            .contains("evolve_route_model_selections_total{route=\"forecast\",source=\"alias\"} 3"),
        "{selections}"
    );
    assert!(
        selections.contains(
            "evolve_route_model_selections_total{route=\"strict\",source=\"rejected\"} 1"
        ),
        "{selections}"
    );
}

#[test]
fn outcome_metrics_land_in_the_registry_and_switch_the_best_model() {
    let (_env, daemon) = start();
    let backend = EchoBackend::start("m1");
    register_service(&daemon, "fc", "forecast", &[&backend]);
    register_model(&daemon, "lin", 2);
    let seeded = daemon.post(
        "/v1/models/lin/performance",
        &json!({"points": [
            {"version": 1, "metric": "mae", "value": 0.1},
            {"version": 2, "metric": "mae", "value": 0.5},
        ]}),
    );
    assert_eq!(seeded.status, 201, "{}", seeded.text());

    let routed = send(&daemon, "POST", "/v1/route/best", &json!({}));
    assert_eq!(routed.status, 200, "{}", routed.text());
    assert_eq!(routed.header("x-evolve-model"), Some("lin"));
    assert_eq!(routed.header("x-evolve-model-version"), Some("1"));
    assert_eq!(
        routed.header("x-evolve-model-source"),
        Some("best:accuracy")
    );

    // The header outcome is recorded against the version that served.
    backend.set_outcome_header(Some("mae=0.25; latency_ms=3"));
    let routed = send(&daemon, "POST", "/v1/route/best", &json!({}));
    assert_eq!(
        routed.header("x-evolve-outcome"),
        Some("mae=0.25; latency_ms=3")
    );
    wait_until("the header outcome in the registry", || {
        points(&daemon, "lin", "mae")
            .contains(&(1, 0.25))
            .then_some(())
    });
    assert!(points(&daemon, "lin", "latency_ms").contains(&(1, 3.0)));

    // A JSON response's evolve_outcome field counts too.
    backend.set_outcome_header(None);
    backend.set_outcome_field(Some(json!({"mae": 0.3})));
    let routed = send(&daemon, "POST", "/v1/route/best", &json!({}));
    assert_eq!(routed.json()["evolve_outcome"]["mae"], 0.3);
    wait_until("the field outcome in the registry", || {
        points(&daemon, "lin", "mae")
            .contains(&(1, 0.3))
            .then_some(())
    });

    // A malformed outcome is not recorded; the response is still returned unchanged.
    backend.set_outcome_field(None);
    backend.set_outcome_header(Some("mae=NaN"));
    let routed = send(&daemon, "POST", "/v1/route/best", &json!({"n": 1}));
    assert_eq!(routed.status, 200);
    assert_eq!(routed.json()["body"]["n"], 1);
    assert_eq!(
        daemon.metric("evolve_route_outcomes_total{result=\"rejected\"}"),
        Some(1.0)
    );
    daemon
        .log
        .wait_for("the malformed outcome warning", |line| {
            line["level"] == "WARN"
                && line["backend"] == "fc/m1"
                && line["fields"]["message"]
                    .as_str()
                    .or(line["message"].as_str())
                    .is_some_and(|m| m.contains("malformed outcome"))
        });

    // Live traffic reports version 1 doing badly: the best model moves to version 2 and the
    // `best` route follows (within the selection cache's 1 s).
    backend.set_outcome_header(Some("mae=9"));
    wait_until("the best route to switch to version 2", || {
        let routed = send(&daemon, "POST", "/v1/route/best", &json!({}));
        (routed.header("x-evolve-model-version") == Some("2")).then_some(())
    });
    let best = daemon.get("/v1/models/best?task=forecast&policy=accuracy");
    assert_eq!(best.json()["winner"]["version"], 2, "{}", best.text());
    assert!(points(&daemon, "lin", "mae").contains(&(1, 9.0)));
}

#[test]
fn fan_out_returns_every_healthy_part_marks_a_held_one_partial_and_aggregates() {
    let (_env, daemon) = start();
    let (a, b, c) = (
        EchoBackend::start("a"),
        EchoBackend::start("b"),
        EchoBackend::start("c"),
    );
    register_service(&daemon, "an", "analysis", &[&a, &b, &c]);
    register_model(&daemon, "arima", 1);
    move_alias(&daemon, "arima", "champion", 1);

    let all = send(
        &daemon,
        "POST",
        "/v1/route/analysis",
        &json!({"window": 20}),
    );
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(all.header("x-evolve-fanout-parts"), Some("3"));
    assert_eq!(all.header("x-evolve-model"), Some("arima"));
    let envelope = all.json();
    assert_eq!(envelope["request_type"], "analysis");
    assert_eq!(envelope["aggregate"], "all");
    assert_eq!(envelope["partial"], false, "{envelope:#}");
    let parts = envelope["parts"].as_array().unwrap();
    let mut instances: Vec<&str> = parts
        .iter()
        .map(|p| p["instance"].as_str().unwrap())
        .collect();
    instances.sort_unstable();
    assert_eq!(instances, ["a", "b", "c"]);
    for part in parts {
        assert_eq!(part["service"], "an");
        assert_eq!(part["status"], 200);
        assert_eq!(part["error"], Value::Null);
        assert!(part["latency_ms"].as_f64().unwrap() > 0.0);
        // Every part got the same selected model, in headers and body.
        assert_eq!(part["body"]["model"], "arima", "{part}");
        assert_eq!(part["body"]["model_version"], "1");
        assert_eq!(part["body"]["body"]["window"], 20);
        assert_eq!(part["body"]["body"]["evolve_model"]["name"], "arima");
    }

    // c stops answering: its part times out at the route's 400 ms and the answer is partial.
    c.hold();
    let all = send(&daemon, "POST", "/v1/route/analysis", &json!({}));
    assert_eq!(all.status, 200, "{}", all.text());
    let envelope = all.json();
    assert_eq!(envelope["partial"], true, "{envelope:#}");
    let parts = envelope["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for part in parts {
        if part["instance"] == "c" {
            assert_eq!(part["status"], Value::Null, "{part}");
            assert!(
                part["error"].as_str().unwrap().starts_with("timed out"),
                "{part}"
            );
        } else {
            assert_eq!(part["status"], 200, "{part}");
        }
    }

    // Quorum 2 of 3: a and b suffice; c's part is not waited for.
    let quorum = send(&daemon, "POST", "/v1/route/analysis_quorum", &json!({}));
    assert_eq!(quorum.status, 200, "{}", quorum.text());
    let envelope = quorum.json();
    assert_eq!(envelope["successes"], 2, "{envelope:#}");
    assert_eq!(envelope["parts"].as_array().unwrap().len(), 2);
    assert_eq!(envelope["cancelled"], 1);
    assert_eq!(envelope["partial"], false);

    // Quorum 3 of 3 cannot be met while c is held: 502 with the envelope.
    let unanimous = send(&daemon, "POST", "/v1/route/analysis_unanimous", &json!({}));
    assert_eq!(unanimous.status, 502, "{}", unanimous.text());
    let envelope = unanimous.json();
    assert_eq!(envelope["partial"], true);
    assert_eq!(envelope["successes"], 2);

    // first_success: one part, the first 2xx.
    let first = send(&daemon, "POST", "/v1/route/analysis_first", &json!({}));
    assert_eq!(first.status, 200, "{}", first.text());
    let envelope = first.json();
    let parts = envelope["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{envelope:#}");
    assert_eq!(parts[0]["status"], 200);
    assert!(matches!(parts[0]["instance"].as_str(), Some("a" | "b")));
    // Not model-aware: the parts carry no model.
    assert_eq!(parts[0]["body"]["model"], Value::Null);

    // best_n: two parts.
    let top = send(&daemon, "POST", "/v1/route/analysis_top2", &json!({}));
    assert_eq!(top.header("x-evolve-fanout-parts"), Some("2"));
    assert_eq!(top.json()["parts"].as_array().unwrap().len(), 2);

    // Parts are counted like single requests, and by result.
    assert!(
        daemon
            .metric("evolve_route_fanout_parts_total{route=\"analysis\",result=\"timeout\"}")
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        daemon.metric("evolve_route_fanout_parts_total{route=\"analysis\",result=\"ok\"}"),
        Some(5.0)
    );
    assert!(
        daemon
            .metric("evolve_mesh_errors_total{service=\"an\",instance=\"c\",class=\"timeout\"}")
            .is_some_and(|n| n >= 2.0),
        "{}",
        daemon.get("/metrics").text()
    );
    c.release();
}

#[test]
fn outcomes_are_recorded_only_on_a_route_that_says_record_outcomes() {
    let (_env, daemon) = start();
    let backend = EchoBackend::start("m1");
    register_service(&daemon, "fc", "forecast", &[&backend]);
    register_model(&daemon, "lin", 1);
    // `best` picks among versions with a score, so lin v1 needs one to be chosen at all.
    let seeded = daemon.post(
        "/v1/models/lin/performance",
        &json!({"points": [{"version": 1, "metric": "mae", "value": 0.5}]}),
    );
    assert_eq!(seeded.status, 201, "{}", seeded.text());

    // The same model-aware route without `record_outcomes`: the client sees the backend's
    // report, the registry does not.
    backend.set_outcome_header(Some("mae=0.7"));
    let unrecorded = send(&daemon, "POST", "/v1/route/unrecorded", &json!({}));
    assert_eq!(unrecorded.status, 200, "{}", unrecorded.text());
    assert_eq!(unrecorded.header("x-evolve-model"), Some("lin"));
    assert_eq!(unrecorded.header("x-evolve-outcome"), Some("mae=0.7"));
    backend.set_outcome_header(None);
    backend.set_outcome_field(Some(json!({"mae": 0.8})));
    let unrecorded = send(&daemon, "POST", "/v1/route/unrecorded", &json!({}));
    assert_eq!(unrecorded.json()["evolve_outcome"]["mae"], 0.8);

    // With it, the report lands. Outcomes are written in the order they were queued, so once
    // this one is in, the earlier ones would be too had they been queued.
    backend.set_outcome_field(None);
    backend.set_outcome_header(Some("mae=0.9"));
    let recorded = send(&daemon, "POST", "/v1/route/best", &json!({}));
    assert_eq!(recorded.status, 200, "{}", recorded.text());
    wait_until("the recording route's outcome in the registry", || {
        points(&daemon, "lin", "mae")
            .contains(&(1, 0.9))
            .then_some(())
    });
    let mut recorded_points = points(&daemon, "lin", "mae");
    recorded_points.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(
        recorded_points,
        [(1, 0.5), (1, 0.9)],
        "only the seed and the recorded outcome"
    );
    assert_eq!(
        daemon.metric("evolve_route_outcomes_total{result=\"recorded\"}"),
        Some(1.0)
    );
}
