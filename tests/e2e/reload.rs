//! Hot reload: the daemon follows its plugins dir (add, change, rename, remove), never swaps in
//! a broken or half-written version, and lets calls finish on the generation they started on.

use evolve_e2e::{Env, built_plugin};
use serde_json::{Value, json};

fn tag_of(daemon: &evolve_e2e::Daemon) -> (u16, Value) {
    let response = daemon.post("/v1/agents/versioned/run", &json!({"task": "tag"}));
    let body = response.json();
    (response.status, body)
}

fn set_tag(env: &Env, tag: &str) {
    env.edit_manifest("versioned", |m| {
        m["config"]["tag"] = tag.into();
    });
}

#[test]
fn added_changed_renamed_and_removed_dirs_are_followed() {
    let env = Env::new();
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();

    // Added.
    env.install("testing", "echo", |_| {});
    daemon.wait_event("plugin.loaded", "echo", |_| true);
    assert_eq!(daemon.post("/v1/agents/echo/run", &json!({})).status, 200);

    // Changed: a new config is a new generation.
    set_tag(&env, "v2");
    daemon.wait_event("plugin.reloaded", "versioned", |d| d["generation"] == 2);
    let (status, body) = tag_of(&daemon);
    assert_eq!(status, 200);
    assert_eq!(body["outcome"]["output"]["tag"], "v2");
    assert_eq!(body["generation"], 2);

    // Renamed: the plugin moves with its dir.
    std::fs::rename(
        env.plugins_dir.join("echo"),
        env.plugins_dir.join("echo-moved"),
    )
    .unwrap();
    // Either a swap from the old dir's generation or, if the removal was seen first, a fresh
    // load: both end with echo serving from the new dir.
    daemon.log.wait_for("echo serving from echo-moved", |v| {
        (v["event"] == "plugin.loaded" || v["event"] == "plugin.reloaded")
            && v["subject"] == "echo"
            && v["data"].as_str().is_some_and(|d| d.contains("echo-moved"))
    });
    let echo = daemon.plugin("echo");
    assert!(
        echo["dir"].as_str().unwrap().ends_with("echo-moved"),
        "{echo:#}"
    );
    assert_eq!(daemon.post("/v1/agents/echo/run", &json!({})).status, 200);

    // Removed.
    std::fs::remove_dir_all(env.plugins_dir.join("versioned")).unwrap();
    daemon.wait_event("plugin.unloaded", "versioned", |_| true);
    assert_eq!(tag_of(&daemon).0, 404);
}

#[test]
fn a_half_written_component_never_replaces_the_serving_generation() {
    let env = Env::new();
    // Unpinned, so the half file reaches validation (a pin would refuse it even earlier).
    env.install("testing", "versioned", |m| {
        m.remove("sha256");
    });
    let daemon = env.start();
    let wasm = env.plugins_dir.join("versioned/versioned.wasm");
    let replacement = std::fs::read(built_plugin("testing", "echo").join("echo.wasm")).unwrap();

    // Truncate-then-write, stopping halfway.
    std::fs::write(&wasm, &replacement[..replacement.len() / 2]).unwrap();
    let failed = daemon.wait_event("plugin.reload_failed", "versioned", |_| true);
    assert_eq!(failed["serving_generation"], 1, "{failed:#}");
    assert_eq!(failed["code"], "compile", "{failed:#}");
    let (status, body) = tag_of(&daemon);
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["outcome"]["output"]["tag"], "v1");
    assert_eq!(body["generation"], 1);
    let plugin = daemon.plugin("versioned");
    assert_eq!(plugin["last_reload"]["outcome"], "failed", "{plugin:#}");

    // The rest of the file arrives: now it swaps.
    std::fs::write(&wasm, &replacement).unwrap();
    daemon.wait_event("plugin.reloaded", "versioned", |d| d["generation"] == 2);
    let response = daemon.post(
        "/v1/agents/versioned/run",
        &json!({"task": "t", "input": [7]}),
    );
    assert_eq!(
        response.json()["outcome"]["output"],
        json!([7]),
        "echo's code now serves"
    );
}

#[test]
fn calls_in_flight_finish_on_the_generation_they_started_on() {
    let mut env = Env::new();
    // No rollback window: the old generation retires as soon as it has drained.
    env.extra_config.push_str("[reload]\nwatch_window_s = 0\n");
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            daemon.post(
                "/v1/agents/versioned/run",
                &json!({"task": "slow", "input": {"ms": 1500}}),
            )
        });
        daemon.wait_in_flight("versioned");
        set_tag(&env, "v2");
        daemon.wait_event("plugin.reloaded", "versioned", |d| d["generation"] == 2);
        // New calls go to the new generation while the old one drains.
        let (_, body) = tag_of(&daemon);
        assert_eq!(body["outcome"]["output"]["tag"], "v2");
        let plugins = daemon.get("/v1/plugins").json();
        let draining =
            plugins["plugins"].as_array().unwrap().iter().any(|p| {
                p["name"] == "versioned" && p["state"] == "draining" && p["generation"] == 1
            });
        assert!(draining, "generation 1 should be draining: {plugins:#}");

        let slow = slow.join().unwrap();
        assert_eq!(slow.status, 200, "{}", slow.text());
        assert_eq!(
            slow.json()["outcome"]["output"]["tag"],
            "v1",
            "started on v1, finished on v1"
        );
        assert_eq!(slow.json()["generation"], 1);
    });
    let retired = daemon.wait_event("plugin.retired", "versioned", |d| d["generation"] == 1);
    assert_eq!(retired["drained"], true, "{retired:#}");
}

#[test]
fn an_unhealthy_canary_keeps_the_old_generation() {
    let env = Env::new();
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();
    env.edit_manifest("versioned", |m| {
        m["config"]["tag"] = "v2".into();
        m["config"]["healthy"] = false.into();
    });
    let failed = daemon.wait_event("plugin.reload_failed", "versioned", |_| true);
    assert_eq!(failed["code"], "canary_unhealthy", "{failed:#}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("tag v2 is configured unhealthy")
    );
    let (_, body) = tag_of(&daemon);
    assert_eq!(body["outcome"]["output"]["tag"], "v1");
}

#[test]
fn the_reload_endpoint_reports_unchanged_forced_and_failed() {
    let mut env = Env::new();
    // Without the watcher, only the endpoint reloads.
    env.extra_config.push_str("[reload]\nwatch = false\n");
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();

    let unchanged = daemon.post("/v1/plugins/versioned/reload", &json!({}));
    assert_eq!(unchanged.status, 200, "{}", unchanged.text());
    assert_eq!(unchanged.json()["outcome"], "unchanged");

    let forced = daemon.post("/v1/plugins/versioned/reload?force=true", &json!({}));
    assert_eq!(forced.json()["outcome"], "reloaded", "{}", forced.text());
    assert_eq!(forced.json()["generation"], 2);

    std::fs::write(
        env.plugins_dir.join("versioned/versioned.wasm"),
        b"not wasm",
    )
    .unwrap();
    let failed = daemon.post("/v1/plugins/versioned/reload", &json!({}));
    assert_eq!(failed.status, 422, "{}", failed.text());
    let error = &failed.json()["error"];
    assert_eq!(error["code"], "reload_failed");
    assert_eq!(error["reload"]["serving_generation"], 2, "{error:#}");
    assert_eq!(tag_of(&daemon).0, 200, "generation 2 still serves");

    assert_eq!(
        daemon.post("/v1/plugins/nobody/reload", &json!({})).status,
        404
    );
}

#[test]
fn a_replaced_plugins_dir_keeps_serving_and_is_watched_again() {
    let env = Env::new();
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();
    // Replace the directory: build the new one beside it, remove the old, move the new in.
    let staging = env.temp.path().join("plugins.new");
    std::fs::create_dir_all(staging.join("versioned")).unwrap();
    for entry in std::fs::read_dir(env.plugins_dir.join("versioned")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            staging.join("versioned").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::remove_dir_all(&env.plugins_dir).unwrap();
    // Missing for a moment: still serving.
    assert_eq!(tag_of(&daemon).0, 200);
    std::fs::rename(&staging, &env.plugins_dir).unwrap();
    // The second watch: the first was set up at start.
    daemon
        .log
        .wait_for_nth("the watch on the new plugins dir", 2, |v| {
            v["message"] == "watching plugins dir for changes"
        });
    // The new directory is followed: a plugin added to it loads.
    env.install("testing", "echo", |_| {});
    daemon.wait_event("plugin.loaded", "echo", |_| true);
    let (status, body) = tag_of(&daemon);
    assert_eq!(status, 200);
    assert_eq!(body["generation"], 1, "identical files are not reloaded");
}

#[test]
fn a_version_that_fails_after_its_swap_is_rolled_back_and_its_files_quarantined() {
    let mut env = Env::new();
    env.extra_config
        .push_str("[reload]\nwatch_window_s = 120\nrollback_failures = 3\n");
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();

    // v2 passes its canary (describe, health) but traps on every run.
    env.edit_manifest("versioned", |m| {
        m["config"]["tag"] = "v2".into();
        m["config"]["trap"] = true.into();
    });
    daemon.wait_event("plugin.reloaded", "versioned", |d| d["generation"] == 2);
    for _ in 0..3 {
        let (status, body) = tag_of(&daemon);
        assert_eq!(status, 502, "{body:#}");
        assert_eq!(body["error"]["code"], "trap");
    }
    let rolled = daemon.wait_event("plugin.rolled_back", "versioned", |_| true);
    assert_eq!(
        (
            rolled["from_generation"].as_u64(),
            rolled["to_generation"].as_u64()
        ),
        (Some(2), Some(1))
    );
    daemon.wait_event("plugin.quarantined", "versioned", |d| d["generation"] == 2);

    let (status, body) = tag_of(&daemon);
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["outcome"]["output"]["tag"], "v1");
    assert_eq!(body["generation"], 1);
    let plugin = daemon.plugin("versioned");
    assert_eq!(
        plugin["last_reload"]["outcome"], "rolled_back",
        "{plugin:#}"
    );
    assert_eq!(plugin["state"], "rolled_back", "{plugin:#}");

    // The same files are not tried again...
    let again = daemon.post("/v1/plugins/versioned/reload", &json!({}));
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["error"]["code"], "quarantined");
    // ...until they change; generation numbers keep counting up.
    env.edit_manifest("versioned", |m| {
        m["config"]["tag"] = "v3".into();
        m["config"]["trap"] = false.into();
    });
    daemon.wait_event("plugin.reloaded", "versioned", |d| d["generation"] == 3);
    assert_eq!(tag_of(&daemon).1["outcome"]["output"]["tag"], "v3");
}

#[test]
fn a_plugin_that_keeps_failing_is_quarantined_with_backoff_and_released_by_a_canary() {
    let mut env = Env::new();
    env.extra_config.push_str(
        "[runtime.supervision]\nquarantine_after_failures = 3\nquarantine_base_ms = 300\n",
    );
    env.install("testing", "trapper", |_| {});
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let run = || daemon.post("/v1/agents/trapper/run", &json!({}));

    for _ in 0..3 {
        assert_eq!(run().json()["error"]["code"], "trap");
    }
    let first = daemon.wait_event("plugin.quarantined", "trapper", |d| d["strikes"] == 1);
    assert_eq!(first["backoff_ms"], 300, "{first:#}");
    let refused = run();
    if refused.status == 503 {
        assert_eq!(refused.json()["error"]["code"], "quarantined");
        assert!(refused.header("retry-after").is_some());
    } else {
        // The 300 ms may already have passed on a loaded machine; then the canary released it.
        daemon.wait_event("plugin.released", "trapper", |_| true);
    }
    // Others are not affected.
    assert_eq!(daemon.post("/v1/agents/echo/run", &json!({})).status, 200);

    // describe() and health() work, so the canary releases it...
    daemon.wait_event("plugin.released", "trapper", |_| true);
    // ...and when it keeps trapping, the next quarantine is twice as long.
    for _ in 0..3 {
        assert_eq!(run().json()["error"]["code"], "trap");
    }
    let second = daemon.wait_event("plugin.quarantined", "trapper", |d| d["strikes"] == 2);
    assert_eq!(second["backoff_ms"], 600, "{second:#}");
}

#[test]
fn fifty_reloads_under_continuous_load_fail_no_call() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let mut env = Env::new();
    // Quarantine off, so the only errors a trapping version causes are its own traps.
    env.extra_config.push_str(
        "[reload]\ndebounce_ms = 20\nwatch_window_s = 120\nrollback_failures = 3\n\
         [runtime.supervision]\nquarantine_after_failures = 0\n",
    );
    env.install("testing", "versioned", |m| {
        m.remove("sha256");
    });
    env.install("testing", "echo", |_| {});
    let daemon = env.start();
    let dir = env.plugins_dir.join("versioned");
    let wasm_path = dir.join("versioned.wasm");
    let good_wasm = std::fs::read(&wasm_path).unwrap();
    let manifest_text = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    let manifest_with = |tag: &str, trap: bool| {
        let mut m: toml::Table = toml::from_str(&manifest_text).unwrap();
        m["config"]["tag"] = tag.into();
        m["config"]["trap"] = trap.into();
        toml::to_string(&m).unwrap()
    };

    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let traps = AtomicU64::new(0);
    let unexpected = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (daemon, stop, ok, traps, unexpected) = (&daemon, &stop, &ok, &traps, &unexpected);
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let plugin = if (n + worker).is_multiple_of(2) {
                        "echo"
                    } else {
                        "versioned"
                    };
                    let response =
                        daemon.post(&format!("/v1/agents/{plugin}/run"), &json!({"task": "tag"}));
                    let code = if response.status == 200 {
                        None
                    } else {
                        response.json()["error"]["code"]
                            .as_str()
                            .map(str::to_string)
                    };
                    match (response.status, code.as_deref()) {
                        (200, _) => ok.fetch_add(1, Ordering::Relaxed),
                        // A trapping version's own traps, not the reload's doing.
                        (502, Some("trap")) if plugin == "versioned" => {
                            traps.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("{plugin}: {}", response.text()));
                            0
                        }
                    };
                }
            });
        }

        let mut generation = 1;
        let (mut failed_reloads, mut rollbacks) = (0, 0);
        for step in 0..50 {
            match step % 4 {
                0 => {
                    env.write_atomic(
                        &dir.join("plugin.toml"),
                        manifest_with(&format!("good-{step}"), false).as_bytes(),
                    );
                    generation += 1;
                    daemon.wait_event("plugin.reloaded", "versioned", |d| {
                        d["generation"] == generation
                    });
                }
                1 => {
                    env.write_atomic(&wasm_path, b"\0asm\x0d\x00\x01\x00garbage");
                    failed_reloads += 1;
                    daemon
                        .log
                        .wait_for_nth("a failed reload", failed_reloads, |v| {
                            v["event"] == "plugin.reload_failed" && v["subject"] == "versioned"
                        });
                }
                2 => {
                    // Truncate-then-write, stopped halfway.
                    std::fs::write(&wasm_path, &good_wasm[..good_wasm.len() / 2]).unwrap();
                    failed_reloads += 1;
                    daemon
                        .log
                        .wait_for_nth("a failed reload", failed_reloads, |v| {
                            v["event"] == "plugin.reload_failed" && v["subject"] == "versioned"
                        });
                }
                _ => {
                    env.write_atomic(&wasm_path, &good_wasm);
                    env.write_atomic(
                        &dir.join("plugin.toml"),
                        manifest_with(&format!("trap-{step}"), true).as_bytes(),
                    );
                    generation += 1;
                    daemon.wait_event("plugin.reloaded", "versioned", |d| {
                        d["generation"] == generation
                    });
                    rollbacks += 1;
                    daemon.log.wait_for_nth("a rollback", rollbacks, |v| {
                        v["event"] == "plugin.rolled_back" && v["subject"] == "versioned"
                    });
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let unexpected = unexpected.into_inner().unwrap();
    assert!(
        unexpected.is_empty(),
        "{} calls failed because of reloads: {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "50 reloads in {elapsed:.1} s under load: {ok} calls ok ({:.0}/s), {} traps of trapping versions",
        ok as f64 / elapsed,
        traps.load(Ordering::Relaxed)
    );
    assert!(ok > 0);
    // The last good version serves (the last trapping one was rolled back).
    let (status, body) = tag_of(&daemon);
    assert_eq!(status, 200);
    assert_eq!(body["outcome"]["output"]["tag"], "good-48");
}

#[test]
fn a_manifest_that_renames_the_plugin_retires_the_old_name() {
    let env = Env::new();
    env.install("testing", "versioned", |_| {});
    let daemon = env.start();
    env.edit_manifest("versioned", |m| {
        m["name"] = "renamed".into();
    });
    daemon.wait_event("plugin.loaded", "renamed", |_| true);
    daemon.wait_event("plugin.unloaded", "versioned", |d| {
        d["renamed_to"] == "renamed"
    });
    assert_eq!(tag_of(&daemon).0, 404, "the old name no longer serves");
    let response = daemon.post("/v1/agents/renamed/run", &json!({"task": "tag"}));
    assert_eq!(response.status, 200, "{}", response.text());
    let names: Vec<Value> = daemon.get("/v1/plugins").json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "serving")
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("renamed")]);
}
