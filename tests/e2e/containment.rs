//! Hostile guests are contained, each with its specific error, while a well-behaved plugin keeps
//! answering in parallel and the daemon stays up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use evolve_e2e::Env;
use evolve_e2e::http::Backend;
use serde_json::{Value, json};

fn error_of(response: &evolve_e2e::http::Response) -> Value {
    response.json()["error"].clone()
}

/// Asserts that `response` is the error `code` with `status` and that its message holds every
/// one of `needles`.
fn expect_error(response: &evolve_e2e::http::Response, status: u16, code: &str, needles: &[&str]) {
    assert_eq!(response.status, status, "{}", response.text());
    let error = error_of(response);
    assert_eq!(error["code"], code, "{error:#}");
    let message = error["message"].as_str().unwrap_or_default();
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

#[test]
fn hostile_guests_fail_with_their_own_errors_while_echo_keeps_answering() {
    let env = Env::new();
    for name in [
        "echo",
        "spin-forever",
        "memory-hog",
        "trapper",
        "output-flood",
        "file-sneak",
    ] {
        env.install("testing", name, |_| {});
    }
    // file-sneak's read-only grant must exist; the host creates only writable ones.
    std::fs::create_dir_all(env.data_dir.join("docs")).unwrap();
    let mut daemon = env.start();
    let daemon_ref = &daemon;

    let hostile_done = AtomicBool::new(false);
    let echo_ok = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // A well-behaved plugin answering throughout.
        let echo = scope.spawn(|| {
            let daemon = daemon_ref;
            let mut failures = Vec::new();
            let deadline = std::time::Instant::now() + evolve_e2e::EVENT_TIMEOUT;
            while (!hostile_done.load(Ordering::SeqCst) || echo_ok.load(Ordering::SeqCst) < 5)
                && failures.is_empty()
                && std::time::Instant::now() < deadline
            {
                let response = daemon.post(
                    "/v1/agents/echo/run",
                    &json!({"task": "t", "input": {"k": 1}}),
                );
                if response.status == 200 && response.json()["outcome"]["output"] == json!({"k": 1})
                {
                    echo_ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.push(response.text());
                }
            }
            failures
        });

        let daemon = &daemon;
        let hostile = [
            ("spin-forever", ""),
            ("memory-hog", ""),
            ("trapper", ""),
            ("output-flood", "output"),
            ("file-sneak", "read"),
            ("file-sneak", "write-readonly"),
        ]
        .map(|(name, task)| {
            scope.spawn(move || {
                let response =
                    daemon.post(&format!("/v1/agents/{name}/run"), &json!({"task": task}));
                (name, task, response)
            })
        });
        let results: Vec<_> = hostile.into_iter().map(|h| h.join().unwrap()).collect();
        hostile_done.store(true, Ordering::SeqCst);

        for (name, task, response) in &results {
            let error = error_of(response);
            let message = error["message"].as_str().unwrap_or_default();
            match *name {
                "spin-forever" => {
                    assert_eq!(response.status, 504, "{error:#}");
                    assert_eq!(error["code"], "deadline_exceeded");
                    assert!(message.contains("500 ms"), "{message}");
                }
                "memory-hog" => {
                    assert_eq!(response.status, 502, "{error:#}");
                    assert_eq!(error["code"], "memory_limit");
                    assert!(message.contains(&(32u64 << 20).to_string()), "{message}");
                }
                "trapper" => {
                    assert_eq!(response.status, 502, "{error:#}");
                    assert_eq!(error["code"], "trap");
                    assert!(message.contains("trapper: deliberate panic"), "{message}");
                }
                "output-flood" => {
                    assert_eq!(response.status, 502, "{error:#}");
                    assert_eq!(error["code"], "output_too_large");
                    assert!(message.contains("max_output_kb"), "{message}");
                }
                "file-sneak" => {
                    assert_eq!(response.status, 422, "{error:#}");
                    assert_eq!(error["code"], "plugin_error");
                    assert_eq!(error["plugin_error"]["code"], "denied", "{error:#}");
                    // `read` reached outside its grants; `write-readonly` wrote into a read-only one.
                    let path = if *task == "read" {
                        "/etc/passwd"
                    } else {
                        "/in"
                    };
                    assert!(message.contains(path), "{task}: {message}");
                }
                _ => unreachable!(),
            }
        }
        let echo_failures = echo.join().unwrap();
        assert!(
            echo_failures.is_empty(),
            "echo failed while hostile guests ran: {echo_failures:?}"
        );
    });
    assert!(echo_ok.load(Ordering::SeqCst) >= 5);
    // Nothing was written through the read-only grant, and the plugin sees no environment.
    let docs: Vec<_> = std::fs::read_dir(env.data_dir.join("docs"))
        .unwrap()
        .collect();
    assert!(
        docs.is_empty(),
        "file-sneak wrote into its read-only grant: {docs:?}"
    );
    let seen = daemon.post("/v1/agents/file-sneak/run", &json!({"task": "env"}));
    assert_eq!(seen.status, 200, "{}", seen.text());
    let output = &seen.json()["outcome"]["output"];
    assert!(
        output.as_object().is_some_and(|o| o.is_empty())
            || output.as_array().is_some_and(|a| a.is_empty()),
        "the plugin saw environment variables: {output}"
    );

    // Every hostile plugin is still loaded and its failure recorded; the daemon is up.
    assert!(daemon.alive());
    for name in ["spin-forever", "memory-hog", "trapper", "output-flood"] {
        let plugin = daemon.plugin(name);
        assert_eq!(plugin["state"], "serving");
        assert_eq!(plugin["calls"]["failed"], 1, "{plugin:#}");
        assert!(plugin["last_error"]["message"].is_string(), "{plugin:#}");
    }
    // The next call to a plugin that trapped gets a fresh instance and the same clean error.
    let again = daemon.post("/v1/agents/trapper/run", &json!({}));
    assert_eq!(error_of(&again)["code"], "trap");
}

#[test]
fn log_floods_are_capped_and_counted_not_fatal() {
    let env = Env::new();
    env.install("testing", "output-flood", |_| {});
    let daemon = env.start();
    let response = daemon.post("/v1/agents/output-flood/run", &json!({"task": "logs"}));
    assert_eq!(response.status, 200, "{}", response.text());
    let dropped = response.json()["logs_dropped"].as_u64().unwrap();
    // ~16 MiB logged through two channels against a 256 KiB budget.
    assert!(dropped > 8 << 20, "dropped only {dropped} bytes");
    // The drop warning is written after every line of the call, so once it is in the log the
    // call's lines are too.
    daemon.log.wait_for("the dropped-logs warning", |v| {
        v["plugin"] == "output-flood" && v["dropped_bytes"].is_u64()
    });
    let log = daemon.log.text();
    let plugin_lines = log
        .lines()
        .filter(|l| l.contains("\"plugin\":\"output-flood\""))
        .count();
    assert!(
        plugin_lines > 0,
        "no plugin log lines reached the daemon log"
    );
    let logged_bytes: usize = log
        .lines()
        .filter(|l| l.contains("\"plugin\":\"output-flood\"") && !l.contains("dropped"))
        .map(str::len)
        .sum();
    assert!(
        logged_bytes < 2 << 20,
        "{logged_bytes} bytes of plugin logs passed a 256 KiB budget"
    );
}

/// Elements that carry no text are charged too: a million empty artifacts is refused as too
/// many entries (naming the field and the host's cap), a flood of empty log records spends the
/// log budget, and a `describe()` claiming 100,000 empty capabilities is refused at load, so
/// `GET /v1/plugins` stays small; echo answers between each.
#[test]
fn empty_element_floods_are_charged_and_capped() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    let flood = env.install("testing", "output-flood", |m| {
        m["name"] = "describe-flood".into();
        let mut config = toml::Table::new();
        config.insert("describe_capabilities".into(), 100_000.into());
        m.insert("config".into(), config.into());
    });
    std::fs::rename(flood, env.plugins_dir.join("describe-flood")).unwrap();
    env.install("testing", "output-flood", |_| {});
    let daemon = env.start();
    let addr = daemon.addr();
    let run = |task: &str, count: usize| {
        daemon.post(
            "/v1/agents/output-flood/run",
            &json!({"task": task, "input": {"count": count}}),
        )
    };

    expect_error(
        &run("empty-artifacts", 1_000_000),
        502,
        "too_many_entries",
        &[
            "1000000 entries",
            "task-outcome.artifacts",
            "MAX_ARTIFACTS",
            "1024",
        ],
    );
    echo_answers(&addr);
    let within = run("empty-artifacts", 1_000);
    assert_eq!(within.status, 200, "{}", within.text());
    assert_eq!(
        within.json()["outcome"]["artifacts"]
            .as_array()
            .unwrap()
            .len(),
        1_000
    );

    let logged = run("empty-fields", 200_000);
    assert_eq!(logged.status, 200, "{}", logged.text());
    let dropped = logged.json()["logs_dropped"].as_u64().unwrap();
    assert!(
        dropped > 1 << 20,
        "200,000 empty records spent only {dropped} bytes past the budget"
    );
    echo_answers(&addr);

    let plugins = daemon.get("/v1/plugins");
    let describe_flood = plugins.json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "describe-flood")
        .cloned()
        .unwrap_or_else(|| panic!("describe-flood not listed: {}", plugins.text()));
    assert_eq!(describe_flood["state"], "failed", "{describe_flood:#}");
    let message = describe_flood["last_error"]["message"].as_str().unwrap();
    for needle in [
        "100001 entries",
        "agent-info.capabilities",
        "MAX_CAPABILITIES",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert!(
        plugins.text().len() < 256 << 10,
        "GET /v1/plugins answered {} bytes",
        plugins.text().len()
    );
}

#[test]
fn a_full_plugin_answers_overloaded_with_retry_after() {
    let env = Env::new();
    env.install("testing", "spin-forever", |m| {
        m["limits"]["max_concurrency"] = 1.into();
        m["limits"]["max_queue"] = 0.into();
        m["limits"]["deadline_ms"] = 3_000.into();
    });
    let daemon = env.start();
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| daemon.post("/v1/agents/spin-forever/run", &json!({})));
        // Wait until the first call holds the only slot (an observed state, not a sleep).
        daemon.wait_in_flight("spin-forever");
        let refused = daemon.post("/v1/agents/spin-forever/run", &json!({}));
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert_eq!(error_of(&refused)["code"], "overloaded");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(busy.join().unwrap().status, 504);
    });
    assert_eq!(daemon.plugin("spin-forever")["calls"]["overloaded"], 1);
}

#[test]
fn checker_may_reach_its_target_but_no_other_host() {
    let env = Env::new();
    let target = Backend::start(200);
    let forbidden = Backend::start(200);
    env.install("testing", "http-sneak", |m| {
        m["config"]["forbidden_host"] = forbidden.addr.clone().into();
        m["config"]["also_target"] = true.into();
    });
    let daemon = env.start();
    let response = daemon.post(
        "/v1/checkers/http-sneak/check",
        &json!({"name": "svc", "endpoint": target.url()}),
    );
    let error = error_of(&response);
    assert_eq!(response.status, 502, "{error:#}");
    assert_eq!(error["code"], "permission_denied", "{error:#}");
    assert!(
        error["message"].as_str().unwrap().contains(&forbidden.addr),
        "{error:#}"
    );
    assert_eq!(target.connections(), 1, "the target host is allowed");
    assert_eq!(
        forbidden.connections(),
        0,
        "the refused host was never contacted"
    );
}

/// What the daemon's text log lines start with, as `log-forger` copies it into its text.
const FAKE_TIMESTAMP: &str = "2026-01-01T00:00:00.000000Z";

/// Characters that would break or rewrite a text log line if guest text carried them raw.
const RAW_CONTROLS: [char; 7] = [
    '\r', '\u{1b}', '\u{9b}', '\u{2028}', '\u{2029}', '\u{202e}', '\u{0}',
];

/// Runs echo once and checks its answer: the well-behaved neighbour still serves.
fn echo_answers(addr: &str) {
    let body = json!({"task": "t", "input": {"k": 1}}).to_string();
    let response = evolve_e2e::http::request(
        addr,
        "POST",
        "/v1/agents/echo/run",
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["outcome"]["output"], json!({"k": 1}));
}

#[test]
fn plugin_text_cannot_forge_lines_in_the_daemons_text_log() {
    let env = Env::new();
    env.install("testing", "log-forger", |_| {});
    env.install("testing", "echo", |_| {});
    // The text format is the one a newline can forge lines in; the harness's reader keeps
    // every stderr line whatever its format. `NO_COLOR` keeps each line starting with its
    // timestamp.
    let daemon = env.spawn(&[], &[("EVOLVE_LOG_FORMAT", "text"), ("NO_COLOR", "1")]);
    const LISTENING: &str = "evolve API listening on http://";
    let addr = evolve_e2e::wait_until("the daemon's listen line", || {
        let log = daemon.log.text();
        let at = log.find(LISTENING)? + LISTENING.len();
        let addr: String = log[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        Some(addr)
    });
    evolve_e2e::wait_until("the end of the plugins' first load", || {
        daemon.log.text().contains("plugins loaded").then_some(())
    });
    let run = |task: &str| {
        let body = json!({ "task": task }).to_string();
        evolve_e2e::http::request(
            &addr,
            "POST",
            "/v1/agents/log-forger/run",
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
    };

    let logged = run("log");
    assert_eq!(logged.status, 200, "{}", logged.text());
    echo_answers(&addr);
    let trapped = run("trap");
    assert_eq!(trapped.status, 502, "{}", trapped.text());
    let message = error_of(&trapped)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("FORGED-TRAP") && !message.contains('\n'),
        "a trap's error quotes the guest's stderr on one line: {message:?}"
    );
    echo_answers(&addr);
    let failed = run("error");
    assert_eq!(failed.status, 422, "{}", failed.text());
    echo_answers(&addr);

    // Each forged text is in the log (the runtime's warning of the trap and the agent
    // manager's of the failed run are the last lines of their calls).
    let log = evolve_e2e::wait_until("every forged text in the log", || {
        let log = daemon.log.text();
        [
            "FORGED-MESSAGE",
            "FORGED-KEY",
            "FORGED-VALUE",
            "FORGED-TRAP",
            "FORGED-ERROR",
        ]
        .iter()
        .all(|marker| {
            log.lines()
                .any(|l| l.contains(marker) && !l.contains("stream"))
        })
        .then_some(log)
    });
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines {
        assert!(
            !line.starts_with(FAKE_TIMESTAMP),
            "a plugin forged a daemon log line: {line:?}\nlog:\n{log}"
        );
        if line.contains("FORGED") {
            assert!(
                line.starts_with(|c: char| c.is_ascii_digit()),
                "forged text starts a line: {line:?}"
            );
            assert!(
                !line.contains(RAW_CONTROLS),
                "forged text carries a raw control character: {line:?}"
            );
        }
    }
    // The whole log message, its field key and value stayed on the plugin's one line.
    let message_line = lines.iter().find(|l| l.contains("FORGED-MESSAGE")).unwrap();
    for part in [
        "innocent start",
        "evolve::plugin",
        "FORGED-CR",
        "FORGED-ANSI",
        "FORGED-LS",
        "FORGED-BIDI",
        "FORGED-KEY",
        "FORGED-VALUE",
        "log-forger",
    ] {
        assert!(
            message_line.contains(part),
            "{part} not on {message_line:?}"
        );
    }
    // The runtime's warning of the trap quotes the panic whole on its own line.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("deliberate") && l.contains("FORGED-TRAP") && l.contains("WARN")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed") && l.contains("FORGED-ERROR")),
        "{log}"
    );
}

#[test]
fn plugin_log_text_reaches_the_json_log_escaped() {
    let env = Env::new();
    env.install("testing", "log-forger", |_| {});
    let daemon = env.start();
    let response = daemon.post("/v1/agents/log-forger/run", &json!({"task": "log"}));
    assert_eq!(response.status, 200, "{}", response.text());
    let line = daemon.log.wait_for("log-forger's log line", |v| {
        v["plugin"] == "log-forger"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("FORGED-MESSAGE"))
    });
    // A consumer printing the decoded message or fields gets one line, no control characters.
    let message = line["message"].as_str().unwrap();
    let fields = line["fields"].as_str().unwrap();
    for text in [message, fields] {
        assert!(!text.contains('\n'), "{text:?}");
        assert!(!text.contains(RAW_CONTROLS), "{text:?}");
    }
    assert!(message.starts_with("innocent start\\n"), "{message:?}");
    assert!(message.contains("\\u{1b}[2J"), "{message:?}");
    assert!(
        fields.contains("FORGED-KEY") && fields.contains("FORGED-VALUE"),
        "{fields:?}"
    );
}

#[test]
fn output_too_deep_or_not_json_is_invalid_output_naming_why_and_good_output_is_served_whole() {
    let env = Env::new();
    env.install("testing", "bad-json", |_| {});
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let run = |task: &str| daemon.post("/v1/agents/bad-json/run", &json!({ "task": task }));

    let deep = run("deep");
    let error = error_of(&deep);
    assert_eq!(deep.status, 502, "{error:#}");
    assert_eq!(error["code"], "invalid_output", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("deeper than 64 levels") && message.contains("line 1 column"),
        "{message}"
    );
    echo_answers(&daemon.addr());

    let surrogate = run("surrogate");
    let error = error_of(&surrogate);
    assert_eq!(surrogate.status, 502, "{error:#}");
    assert_eq!(error["code"], "invalid_output", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("escape") && message.contains("line 1 column"),
        "{message}"
    );
    echo_answers(&daemon.addr());

    // What the runtime accepts, the API serves as the document, in the answer and from the
    // history alike, up to the nesting limit.
    for (task, levels) in [("limit", 64), ("fine", 3)] {
        let response = run(task);
        assert_eq!(response.status, 200, "{task}: {}", response.text());
        let body = response.json();
        let output = &body["outcome"]["output"];
        let stored = daemon
            .get(&format!("/v1/agents/bad-json/runs/{}", body["run_id"]))
            .json();
        assert_eq!(&stored["output"], output, "{stored:#}");
        let mut depth = 0;
        let mut node = output;
        while let Some(inner) = node
            .as_array()
            .and_then(|a| a.last())
            .or_else(|| node.as_object().and_then(|o| o.values().next_back()))
        {
            depth += 1;
            node = inner;
        }
        assert_eq!(depth, levels, "{task}: served as {output}");
    }
    echo_answers(&daemon.addr());
}

#[test]
fn a_plugin_claiming_another_name_is_known_by_its_manifest_name_with_one_warning() {
    let env = Env::new();
    env.install("testing", "echo", |_| {});
    env.install("testing", "name-thief", |_| {});
    let daemon = env.start();
    let warning = daemon.wait_event("plugin.name_mismatch", "name-thief", |d| {
        d["claimed_name"] == "echo"
    });
    assert!(
        warning["message"].as_str().unwrap().contains("name-thief"),
        "{warning:#}"
    );

    // The API lists it under its manifest name; only `claimed_name` shows the claim.
    let thief = daemon.plugin("name-thief");
    assert_eq!(thief["info"]["name"], "name-thief", "{thief:#}");
    assert_eq!(thief["claimed_name"], "echo", "{thief:#}");
    let echo = daemon.plugin("echo");
    assert_eq!(echo["info"]["name"], "echo", "{echo:#}");
    assert!(echo["claimed_name"].is_null(), "{echo:#}");
    let plugins = daemon.get("/v1/plugins").json();
    let named_echo = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "echo" || p["info"]["name"] == "echo")
        .count();
    assert_eq!(named_echo, 1, "{plugins:#}");

    // Calls by each name reach each plugin, and are counted under its own name.
    let ok_calls = |plugin: &str| -> u64 {
        let metrics = daemon.get("/metrics").text();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("evolve_plugin_calls")
                    && l.contains(&format!("plugin=\"{plugin}\""))
                    && l.contains("outcome=\"ok\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no ok-calls series of {plugin} in\n{metrics}"))
    };
    let (thief_before, echo_before) = (ok_calls("name-thief"), ok_calls("echo"));
    let stolen = daemon.post("/v1/agents/name-thief/run", &json!({"task": "t"}));
    assert_eq!(stolen.status, 200, "{}", stolen.text());
    assert_eq!(stolen.json()["plugin"], "name-thief");
    assert_eq!(stolen.json()["outcome"]["output"], json!({"thief": true}));
    assert_eq!(ok_calls("name-thief"), thief_before + 1);
    assert_eq!(ok_calls("echo"), echo_before);
    echo_answers(&daemon.addr());
    assert_eq!(ok_calls("echo"), echo_before + 1);

    // One warning for the load: the events log and the log line each have exactly one.
    let events = daemon.get("/v1/events?kind=plugin.name_mismatch").json();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["subject"], "name-thief");
    let warnings = daemon
        .log
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "plugin.name_mismatch")
        .count();
    assert_eq!(warnings, 1);
}

/// The host memory budget bounds the linear memory of all calls in flight together: with a
/// 64 MiB budget, two 32 MiB calls hold it all, a third call waits for its deadline and is
/// refused `503 memory_budget` naming the budget and its key, and answers once they end; a
/// plugin asking more than the whole budget is refused at load.
#[test]
fn calls_past_the_host_memory_budget_wait_then_are_refused_naming_it() {
    let mut env = Env::new();
    env.extra_config.push_str("max_total_memory_mb = 64\n");
    env.install("testing", "spin-forever", |m| {
        m["limits"]["memory_mb"] = 32.into();
        m["limits"]["deadline_ms"] = 4_000.into();
        m["limits"]["max_concurrency"] = 2.into();
    });
    let big = env.install("testing", "echo", |m| {
        m["name"] = "big-echo".into();
        m["limits"]["memory_mb"] = 128.into();
    });
    std::fs::rename(big, env.plugins_dir.join("big-echo")).unwrap();
    env.install("testing", "echo", |m| {
        m["limits"]["memory_mb"] = 32.into();
        m["limits"]["deadline_ms"] = 300.into();
    });
    let daemon = env.start();
    let budget = daemon.get("/v1/runtime").json()["memory_budget"].clone();
    assert_eq!(budget["total_mb"], 64, "{budget:#}");

    std::thread::scope(|scope| {
        let spins: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| daemon.post("/v1/agents/spin-forever/run", &json!({}))))
            .collect();
        // Both spinning calls hold their reservation (an observed state, not a sleep).
        evolve_e2e::wait_until("both 32 MiB calls reserved", || {
            (daemon.get("/v1/runtime").json()["memory_budget"]["reserved_mb"] == 64).then_some(())
        });
        expect_error(
            &daemon.post("/v1/agents/echo/run", &json!({"task": "t", "input": {}})),
            503,
            "memory_budget",
            &[
                "32 MiB",
                "runtime.max_total_memory_mb = 64 MiB",
                "64 MiB by calls in flight",
            ],
        );
        assert_eq!(
            daemon.metric("evolve_memory_budget_reserved_mb"),
            Some(64.0)
        );
        for spin in spins {
            assert_eq!(error_of(&spin.join().unwrap())["code"], "deadline_exceeded");
        }
    });
    let answered = daemon.post(
        "/v1/agents/echo/run",
        &json!({"task": "t", "input": {"k": 1}}),
    );
    assert_eq!(answered.status, 200, "{}", answered.text());

    let plugins = daemon.get("/v1/plugins").json();
    let big = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "big-echo")
        .cloned()
        .unwrap_or_else(|| panic!("big-echo not listed: {plugins:#}"));
    assert_eq!(big["state"], "failed", "{big:#}");
    assert_eq!(big["last_error"]["code"], "limit_above_budget", "{big:#}");
    let message = big["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("runtime.max_total_memory_mb") && message.contains("64 MiB"),
        "{message}"
    );
}

/// Failures below a plugin's own error handling get errors its author can act on: a stack that
/// runs out says which stack and how to grow it, an exit is `exited` with its status, and a
/// full resource table is `resource_limit` naming the host's cap; echo answers between each.
#[test]
fn stack_exhaustion_exits_and_resource_floods_name_their_cause() {
    let env = Env::new();
    env.install("testing", "trapper", |_| {});
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let addr = daemon.addr();
    let run = |task: &str| daemon.post("/v1/agents/trapper/run", &json!({"task": task}));

    let recursed = run("recurse");
    assert_eq!(recursed.status, 502, "{}", recursed.text());
    let error = error_of(&recursed);
    assert_eq!(error["code"], "trap", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("shadow stack") || message.contains("max_wasm_stack"),
        "a stack overflow that does not say so: {message}"
    );
    echo_answers(&addr);

    expect_error(&run("exit"), 502, "exited", &["wasi:cli/exit", "status 1"]);
    echo_answers(&addr);

    expect_error(
        &run("resources"),
        502,
        "resource_limit",
        &["1024", "MAX_RESOURCES"],
    );
    echo_answers(&addr);
}

/// A call's requests through `probes` are capped: within `max_probes` they reach the system
/// (and fail there: no such service), past it they are refused without reaching it and the
/// call fails `probe_quota` naming the limit.
#[test]
fn a_call_past_its_probe_quota_fails_naming_it() {
    let env = Env::new();
    env.install("testing", "output-flood", |m| {
        let limits = m["limits"].as_table_mut().unwrap();
        limits.insert("max_probes".into(), 8.into());
    });
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let run = |count: usize| {
        daemon.post(
            "/v1/agents/output-flood/run",
            &json!({"task": "probe-flood", "input": {"count": count}}),
        )
    };
    let within = run(8);
    assert_eq!(within.status, 200, "{}", within.text());
    assert_eq!(within.json()["outcome"]["summary"], "8 of 8 probes failed");

    expect_error(
        &run(4_000),
        502,
        "probe_quota",
        &[
            "more than 8 requests",
            "max_probes",
            "3992 more were refused",
        ],
    );
    echo_answers(&daemon.addr());
}
