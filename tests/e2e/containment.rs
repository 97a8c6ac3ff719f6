//! Hostile guests are contained, each with its specific error, while a well-behaved plugin keeps
//! answering in parallel and the daemon stays up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use evolve_e2e::Env;
use evolve_e2e::http::Backend;
use serde_json::{Value, json};

fn error_of(response: &evolve_e2e::http::Response) -> Value {
    response.json()["error"].clone()
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
