//! The agent manager and the four system agents, against real daemons.

use evolve_e2e::{Env, cli};
use serde_json::{Value, json};

fn error_of(response: &evolve_e2e::http::Response) -> Value {
    response.json()["error"].clone()
}

fn runs(daemon: &evolve_e2e::Daemon, agent: &str) -> Value {
    let response = daemon.get(&format!("/v1/agents/{agent}/runs"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn runs_are_recorded_and_survive_kill_9() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    env.install("bundled", "doc-generator", |_| {});
    let daemon = env.start();
    let first = daemon.post(
        "/v1/agents/echo/run",
        &json!({"task": "a", "input": {"n": 1}}),
    );
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["persisted"], true);
    assert_eq!(first["outcome"]["output"], json!({"n": 1}));
    let second = daemon.post("/v1/agents/echo/run", &json!({"task": "b"}));
    assert_eq!(second.status, 200, "{}", second.text());
    let ids = [
        first["run_id"].as_i64().unwrap(),
        second.json()["run_id"].as_i64().unwrap(),
    ];
    // SIGKILL: the answers above were acknowledged, so both runs must be on disk.
    drop(daemon);

    let daemon = env.start();
    let history = runs(&daemon, "echo");
    let listed: Vec<(i64, &str, &str)> = history["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["task"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![(ids[1], "b", "succeeded"), (ids[0], "a", "succeeded")]
    );
    assert_eq!(history["runs"][1]["output"], json!({"n": 1}));
    assert_eq!(history["runs"][1]["generation"], 1);
    assert_eq!(history["stats"]["runs"], 2);
    assert_eq!(history["stats"]["success_rate"], 1.0);
    let one = daemon.get(&format!("/v1/agents/echo/runs/{}", ids[0]));
    assert_eq!(one.json()["task"], "a");
    assert_eq!(daemon.get("/v1/agents/echo/runs/999999").status, 404);

    // Plugins see the same counts through the inventory, read back from the history.
    let deadline = std::time::Instant::now() + evolve_e2e::EVENT_TIMEOUT;
    loop {
        let response = daemon.post("/v1/agents/doc-generator/run", &json!({}));
        assert_eq!(response.status, 200, "{}", response.text());
        let markdown = std::fs::read_to_string(env.data_dir.join("docs/inventory.md")).unwrap();
        if markdown.contains("| echo | 0.1.0 | on demand | unchecked | 2 | 100% (2) |") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{markdown}");
        std::thread::yield_now();
    }
}

#[test]
fn deadline_and_trap_failures_are_recorded_and_the_manager_stays_healthy() {
    let env = Env::new();
    env.install("testing", "spin-forever", |_| {});
    env.install("testing", "trapper", |_| {});
    env.install("testing", "echo", |_| {});
    let daemon = env.start();

    let spun = daemon.post("/v1/agents/spin-forever/run", &json!({}));
    assert_eq!(spun.status, 504, "{}", spun.text());
    assert_eq!(error_of(&spun)["code"], "deadline_exceeded");
    let spun_id = error_of(&spun)["run_id"].as_i64().unwrap();
    let trapped = daemon.post("/v1/agents/trapper/run", &json!({}));
    assert_eq!(trapped.status, 502, "{}", trapped.text());
    let trapped_id = error_of(&trapped)["run_id"].as_i64().unwrap();
    // A run deadline shorter than the plugin's own stops it sooner, as a run failure.
    let short = daemon.post("/v1/agents/spin-forever/run", &json!({"deadline_ms": 100}));
    assert_eq!(short.status, 504, "{}", short.text());
    assert_eq!(error_of(&short)["code"], "run_deadline_exceeded");

    let spin_runs = runs(&daemon, "spin-forever");
    let recorded: Vec<(&str, &str)> = spin_runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["error_code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("failed", "run_deadline_exceeded"),
            ("failed", "deadline_exceeded")
        ]
    );
    assert_eq!(spin_runs["runs"][1]["id"], spun_id);
    assert!(
        spin_runs["runs"][1]["error"]
            .as_str()
            .unwrap()
            .contains("exceeded its deadline of 500 ms"),
        "{spin_runs:#}"
    );
    let trap_runs = runs(&daemon, "trapper");
    assert_eq!(trap_runs["runs"][0]["id"], trapped_id);
    assert_eq!(trap_runs["runs"][0]["outcome"], "failed");
    assert_eq!(trap_runs["runs"][0]["error_code"], "trap");
    assert_eq!(trap_runs["stats"]["success_rate"], 0.0);

    // The manager keeps serving: another agent runs, and the listing is whole.
    assert_eq!(daemon.post("/v1/agents/echo/run", &json!({})).status, 200);
    let health = daemon.get("/v1/agents/health").json();
    assert_eq!(health["manager"]["status"], "running");
    let agents = daemon.get("/v1/agents").json();
    let mut names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["echo", "spin-forever", "trapper"]);
}

#[test]
fn overlapping_runs_are_refused_and_a_run_can_be_cancelled() {
    let env = Env::new();
    env.install("testing", "spin-forever", |m| {
        m["agent"]["overlap"] = false.into();
        m["limits"]["deadline_ms"] = 30_000.into();
    });
    let daemon = env.start();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| daemon.post("/v1/agents/spin-forever/run", &json!({})));
        let running = wait_running(&daemon, "spin-forever");
        let refused = daemon.post("/v1/agents/spin-forever/run", &json!({}));
        assert_eq!(refused.status, 409, "{}", refused.text());
        assert_eq!(error_of(&refused)["code"], "already_running");
        assert_eq!(error_of(&refused)["running_run_id"], running);
        assert!(
            error_of(&refused)["message"]
                .as_str()
                .unwrap()
                .contains("overlap = true")
        );
        let cancel = daemon.post(
            &format!("/v1/agents/spin-forever/runs/{running}/cancel"),
            &json!({}),
        );
        assert_eq!(cancel.status, 200, "{}", cancel.text());
        let first = first.join().unwrap();
        assert_eq!(first.status, 409, "{}", first.text());
        assert_eq!(error_of(&first)["code"], "cancelled");
        let again = daemon.post(
            &format!("/v1/agents/spin-forever/runs/{running}/cancel"),
            &json!({}),
        );
        assert_eq!(again.status, 409, "{}", again.text());
        assert_eq!(error_of(&again)["code"], "run_finished");
    });
    let history = runs(&daemon, "spin-forever");
    assert_eq!(history["runs"][0]["outcome"], "cancelled");
}

/// Waits until the manager lists a recorded run of `agent` in progress; returns its id.
fn wait_running(daemon: &evolve_e2e::Daemon, agent: &str) -> i64 {
    let deadline = std::time::Instant::now() + evolve_e2e::EVENT_TIMEOUT;
    loop {
        let agents = daemon.get("/v1/agents").json();
        let running = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == agent)
            .and_then(|a| a["running"][0].as_i64())
            .filter(|id| *id > 0);
        if let Some(id) = running {
            return id;
        }
        assert!(std::time::Instant::now() < deadline, "{agent} never ran");
        std::thread::yield_now();
    }
}

#[test]
fn retryable_failures_are_retried_and_others_are_not() {
    let env = Env::new();
    env.install("testing", "flaky", |_| {});
    let daemon = env.start();
    let recovered = daemon.post(
        "/v1/agents/flaky/run",
        &json!({"task": "flaky", "input": {"fail_times": 2}}),
    );
    assert_eq!(recovered.status, 200, "{}", recovered.text());
    assert_eq!(recovered.json()["attempts"], 3);
    assert_eq!(recovered.json()["outcome"]["output"], json!({"calls": 3}));

    let fatal = daemon.post("/v1/agents/flaky/run", &json!({"task": "fatal"}));
    assert_eq!(fatal.status, 422, "{}", fatal.text());
    assert_eq!(error_of(&fatal)["attempts"], 1);

    // max_retries = 3 in its manifest: four attempts, then the last error.
    let exhausted = daemon.post(
        "/v1/agents/flaky/run",
        &json!({"task": "flaky", "input": {"fail_times": 100}}),
    );
    assert_eq!(exhausted.status, 422, "{}", exhausted.text());
    assert_eq!(error_of(&exhausted)["attempts"], 4);
    assert_eq!(error_of(&exhausted)["plugin_error"]["retryable"], true);
    let history = runs(&daemon, "flaky");
    assert_eq!(history["runs"][0]["attempts"], 4);
    assert_eq!(history["runs"][0]["error_code"], "plugin:unavailable");
}

#[test]
fn a_schedule_runs_the_agent_by_itself() {
    let env = Env::new();
    env.install("testing", "echo", |m| {
        let mut schedule = toml::Table::new();
        schedule.insert("every".into(), "1s".into());
        schedule.insert("task".into(), "tick".into());
        m["agent"]
            .as_table_mut()
            .unwrap()
            .insert("schedule".into(), schedule.into());
    });
    let daemon = env.start();
    let run = daemon.wait_event("agent.run_finished", "echo", |d| d["trigger"] == "schedule");
    assert_eq!(run["outcome"], "succeeded");
    let agents = daemon.get("/v1/agents").json();
    assert_eq!(agents["agents"][0]["schedule"]["spec"], "every 1s");
    assert_eq!(runs(&daemon, "echo")["runs"][0]["task"], "tick");
}

#[test]
fn a_bad_schedule_is_refused_at_load_with_the_field_named() {
    let env = Env::new();
    env.install("testing", "echo", |m| {
        let mut schedule = toml::Table::new();
        schedule.insert("cron".into(), "61 * * * *".into());
        m["agent"]
            .as_table_mut()
            .unwrap()
            .insert("schedule".into(), schedule.into());
    });
    let daemon = env.start();
    let plugins = daemon.get("/v1/plugins").json();
    let text = plugins.to_string();
    assert!(
        text.contains("agent.schedule: cron") && text.contains("outside 0-59"),
        "{plugins:#}"
    );
}

/// 2026-01-01 12:00:00 UTC, ms.
const T0: u64 = 1_767_268_800_000;

fn log_line(at_ms: u64, level: &str, target: &str, message: &str) -> String {
    let secs = at_ms / 1000;
    let (m, s) = (secs / 60 % 60, secs % 60);
    let h = secs / 3600 % 24;
    format!(
        r#"{{"timestamp":"2026-01-01T{h:02}:{m:02}:{s:02}.{:03}Z","level":"{level}","target":"{target}","message":"{message}","plugin":"echo"}}"#,
        at_ms % 1000
    )
}

#[test]
fn the_log_analyzer_finds_planted_bursts() {
    let env = Env::new();
    env.install("bundled", "log-analyzer", |_| {});
    let logs = env.data_dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut lines = Vec::new();
    for minute in 0..30u64 {
        lines.push(log_line(
            T0 + minute * 60_000,
            "INFO",
            "evolve_host::api",
            "ok",
        ));
    }
    // Two bursts: 12:05-12:06 (7 errors a minute) and 12:20 (9 errors); one stray error.
    for (minute, count) in [(5u64, 7u64), (6, 7), (20, 9)] {
        for i in 0..count {
            lines.push(log_line(
                T0 + minute * 60_000 + i * 1_000,
                "ERROR",
                "evolve::plugin",
                &format!("order {} rejected by venue {}", 1000 + i, i % 3),
            ));
        }
    }
    lines.push(log_line(
        T0 + 14 * 60_000,
        "ERROR",
        "evolve_host::mesh",
        "stray",
    ));
    std::fs::write(logs.join("evolve.2026-01-01.log"), lines.join("\n")).unwrap();
    let daemon = env.start();

    let response = daemon.post(
        "/v1/system/log-analysis",
        &json!({"input": {"until_ms": T0 + 30 * 60_000, "window_minutes": 30}}),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let output = &response.json()["outcome"]["output"];
    let bursts: Vec<(&str, u64, u64)> = output["bursts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start"].as_str().unwrap(),
                b["minutes"].as_u64().unwrap(),
                b["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bursts,
        vec![
            ("2026-01-01 12:05:00 UTC", 2, 14),
            ("2026-01-01 12:20:00 UTC", 1, 9)
        ]
    );
    assert_eq!(output["errors"], 24);
    assert_eq!(
        output["top_errors"][0]["message"],
        "order <n> rejected by venue <n>"
    );
    assert_eq!(output["top_errors"][0]["count"], 23);
    let markdown = output["markdown"].as_str().unwrap();
    assert!(markdown.contains("## Errors over time"), "{markdown}");
    assert!(markdown.contains("12:20 |"), "{markdown}");
    // The run is recorded under the agent that offers the capability.
    assert_eq!(
        runs(&daemon, "log-analyzer")["runs"][0]["outcome"],
        "succeeded"
    );
}

#[test]
fn the_daemon_writes_json_lines_logs_the_analyzer_reads() {
    let env = Env::new();
    env.install("bundled", "log-analyzer", |_| {});
    env.install("testing", "trapper", |_| {});
    let daemon = env.start();
    assert_eq!(
        daemon.post("/v1/agents/trapper/run", &json!({})).status,
        502
    );
    // The run's failure is a warning line in today's log file, as JSON.
    let logs = env.data_dir.join("logs");
    let deadline = std::time::Instant::now() + evolve_e2e::EVENT_TIMEOUT;
    loop {
        let text: String = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        if text.lines().any(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["message"] == "agent run failed" && v["agent"] == "trapper")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line in {}",
            logs.display()
        );
        std::thread::yield_now();
    }
    let response = daemon.post("/v1/system/log-analysis", &json!({}));
    assert_eq!(response.status, 200, "{}", response.text());
    let output = &response.json()["outcome"]["output"];
    assert!(
        output["lines_in_window"].as_u64().unwrap() > 0,
        "{output:#}"
    );
    let plugins = output["by_plugin"].to_string();
    assert!(plugins.contains("trapper"), "{output:#}");
}

#[test]
fn the_doc_generator_documents_what_is_registered_and_every_endpoint_is_routed() {
    let env = Env::new();
    env.install("bundled", "doc-generator", |_| {});
    env.install("bundled", "http-health", |_| {});
    env.install("testing", "echo", |_| {});
    let backend = evolve_e2e::http::Backend::start(200);
    let daemon = env.start();
    let service = daemon.post(
        "/v1/services",
        &json!({
            "name": "quotes",
            "type": "data-feed",
            "capabilities": ["quotes"],
            "instances": [{"endpoint": backend.url()}],
        }),
    );
    assert_eq!(service.status, 201, "{}", service.text());
    let model = daemon.post(
        "/v1/models",
        &json!({"name": "momentum", "task_type": "forecasting"}),
    );
    assert_eq!(model.status, 201, "{}", model.text());
    // The inventory's registry view refreshes within a second; regenerate until it shows.
    let deadline = std::time::Instant::now() + evolve_e2e::EVENT_TIMEOUT;
    let markdown = loop {
        let response = daemon.post("/v1/system/documentation", &json!({}));
        assert_eq!(response.status, 200, "{}", response.text());
        let markdown = std::fs::read_to_string(env.data_dir.join("docs/inventory.md")).unwrap();
        if markdown.contains("| momentum | forecasting |") {
            break markdown;
        }
        assert!(std::time::Instant::now() < deadline, "{markdown}");
        std::thread::yield_now();
    };
    let services =
        &markdown[markdown.find("## Services").unwrap()..markdown.find("## Models").unwrap()];
    assert!(
        services.contains(&format!("| quotes | data-feed | {} |", backend.url())),
        "{services}"
    );
    for plugin in ["doc-generator", "http-health", "echo"] {
        assert!(
            markdown.contains(&format!("| {plugin} | 0.1.0 |")),
            "{markdown}"
        );
    }
    let agents = &markdown[markdown.find("## Agents").unwrap()..markdown.find("## API").unwrap()];
    assert!(
        agents.contains("| doc-generator | 0.1.0 | every 30m |"),
        "{agents}"
    );
    assert!(agents.contains("| echo | 0.1.0 | on demand |"), "{agents}");
    assert!(
        !agents.contains("http-health"),
        "a checker is not an agent: {agents}"
    );

    let api = &markdown[markdown.find("## API").unwrap()..];
    let endpoints: Vec<(String, String)> = api
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[2].starts_with('`'))
                .then(|| (cells[1].to_string(), cells[2].trim_matches('`').to_string()))
        })
        .collect();
    assert!(endpoints.len() >= 15, "{api}");
    assert!(endpoints.contains(&("POST".into(), "/v1/system/security-audit".into())));
    for (method, path) in &endpoints {
        let path = path
            .replace("{name}", "echo")
            .replace("{id}", "1")
            .replace("{version}", "1")
            .replace("{alias}", "champion")
            .replace("{path}", "x")
            .replace("{type}", "forecast");
        let response = match method.as_str() {
            "GET" | "ANY" => daemon.get(&path),
            other => evolve_e2e::http::request(
                &daemon.addr(),
                other,
                &path,
                &[("content-type", "application/json")],
                Some(b"{}"),
            ),
        };
        let text = response.text();
        assert!(
            response.status != 405 && !text.contains("no such endpoint"),
            "{method} {path} is documented but not routed: {} {text}",
            response.status
        );
    }
}

#[test]
fn the_security_auditor_flags_a_wildcard_host_and_a_public_api_without_auth() {
    let mut env = Env::new();
    env.extra_config
        .push_str("[server]\nallow_unauthenticated = true\n");
    env.install("bundled", "security-auditor", |_| {});
    env.install("bundled", "http-health", |m| {
        let mut permissions = toml::Table::new();
        permissions.insert(
            "http_hosts".into(),
            toml::Value::Array(vec!["*.example.com".into()]),
        );
        m.insert("permissions".into(), permissions.into());
    });
    env.install("testing", "echo", |_| {});
    let daemon = env.start_with(&["--listen", "0.0.0.0:0"], &[]);
    assert!(daemon.log.text().contains("allow_unauthenticated is set"));

    let response = daemon.post("/v1/system/security-audit", &json!({}));
    assert_eq!(response.status, 200, "{}", response.text());
    let output = &response.json()["outcome"]["output"];
    let findings = evolve_e2e::audit_findings(output);
    assert_eq!(
        findings
            .iter()
            .filter(|f| f.0 == "critical" || f.0 == "high")
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            (
                "critical".into(),
                "api.public-without-auth".into(),
                "api".into()
            ),
            (
                "high".into(),
                "plugin.wildcard-host".into(),
                "http-health".into()
            ),
        ],
        "{output:#}"
    );
    assert_eq!(output["counts"]["critical"], 1);

    // The same through the CLI.
    let (code, stdout, stderr) = cli(
        &["system", "security-audit", "--api", &daemon.url(), "--json"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let cli_output: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(cli_output["outcome"]["output"]["counts"]["critical"], 1);
}

#[test]
fn the_integration_tester_reports_exactly_the_unreachable_service() {
    let env = Env::new();
    env.install("bundled", "integration-tester", |_| {});
    env.install("bundled", "http-health", |_| {});
    env.install("testing", "echo", |_| {});
    let quotes = evolve_e2e::http::Backend::start(200);
    // A port that was just free: nothing listens there.
    let unreachable = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let daemon = env.start();
    let register = |name: &str, endpoint: String, checked: bool| {
        let mut body = json!({
            "name": name,
            "type": "data-feed",
            "capabilities": [name],
            "instances": [{"endpoint": endpoint}],
        });
        if checked {
            body["health"] = json!({"checker": "http-health", "path": "/health"});
        }
        let response = daemon.post("/v1/services", &body);
        assert_eq!(response.status, 201, "{}", response.text());
    };
    register("quotes", quotes.url(), true);
    register("ledger", format!("http://127.0.0.1:{unreachable}"), false);
    let model = daemon.post(
        "/v1/models",
        &json!({"name": "momentum", "task_type": "forecasting"}),
    );
    assert_eq!(model.status, 201, "{}", model.text());
    assert_eq!(
        daemon
            .post("/v1/models/momentum/versions", &json!({}))
            .status,
        201
    );
    let recorded = daemon.post(
        "/v1/models/momentum/performance",
        &json!({"version": 1, "metrics": {"sharpe_ratio": 1.2, "max_drawdown": 0.1, "win_rate": 0.55}}),
    );
    assert_eq!(recorded.status, 201, "{}", recorded.text());
    // Plugins see registry writes within the inventory's refresh; wait for the model to show.
    let deadline = std::time::Instant::now() + evolve_e2e::EVENT_TIMEOUT;
    let output = loop {
        let response = daemon.post("/v1/system/integration-tests", &json!({}));
        assert_eq!(response.status, 200, "{}", response.text());
        let output = response.json()["outcome"]["output"].clone();
        let has_model_check = output["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "best-model");
        if has_model_check {
            break output;
        }
        assert!(std::time::Instant::now() < deadline, "{output:#}");
        std::thread::yield_now();
    };
    let checks: Vec<(String, String, bool)> = output["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_string(),
                c["target"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        vec![
            ("service".into(), "ledger".into(), false),
            ("service".into(), "quotes".into(), true),
            ("checker".into(), "http-health".into(), true),
            ("best-model".into(), "forecasting".into(), true),
            ("agent".into(), "echo".into(), true),
        ],
        "{output:#}"
    );
    assert_eq!(output["failed"], 1);
    let report = output["report"].as_str().unwrap();
    assert!(
        report.lines().any(|l| l.starts_with("FAIL service ledger")),
        "{report}"
    );
    assert_eq!(
        report.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{report}"
    );
}
