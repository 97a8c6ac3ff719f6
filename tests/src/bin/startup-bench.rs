//! Start-up benchmark, run by `bench/startup/run.sh`: a release daemon with N cached plugins
//! (copies of the `echo` test guest under distinct names, so one AOT artifact serves them all
//! after the warm-up start). Per start it measures, from process spawn:
//!
//! 1. **API answers**: the first `GET /healthz` that gets `200`;
//! 2. **all serve**: the first `GET /readyz` that gets `200` (every dir had its first load),
//!    then checked: N plugins serving.
//!
//! Each round starts the daemon with `plugins.load_parallelism = 0` (one load per core, the
//! default) and with `= 1` (one at a time: what start-up did before loading moved beside the
//! API, when the API answered only once all had loaded), alternating, so both see the same
//! machine state.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use evolve_e2e::bench::{arg, percentile};
use evolve_e2e::{Env, START_TIMEOUT};

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    percentile(&ms, 0.5)
}

/// Polls `path` every millisecond until it answers `200`; the time since `spawned`.
fn until_ok(addr: &str, path: &str, spawned: Instant) -> Duration {
    loop {
        if evolve_e2e::http::request(addr, "GET", path, &[], None).status == 200 {
            return spawned.elapsed();
        }
        assert!(
            spawned.elapsed() < START_TIMEOUT,
            "{path} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One start: (API answers, all serve), in ms.
fn start(env: &Env, plugins: usize) -> (f64, f64) {
    let spawned = Instant::now();
    let daemon = env.spawn(&[], &[]);
    daemon.wait_listening();
    let addr = daemon.addr();
    let api = until_ok(&addr, "/healthz", spawned);
    let ready = until_ok(&addr, "/readyz", spawned);
    let list = daemon.get("/v1/plugins").json();
    let serving = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "serving")
        .count();
    assert_eq!(serving, plugins, "{list:#}");
    (api.as_secs_f64() * 1e3, ready.as_secs_f64() * 1e3)
}

fn main() {
    let plugins = arg("--plugins", 50);
    let rounds = arg("--rounds", 5);
    let mut envs: Vec<(&str, Env)> = Vec::new();
    for (label, parallelism) in [("concurrent (one per core)", 0), ("sequential", 1)] {
        let mut env = Env::new();
        env.extra_config
            .push_str(&format!("[plugins]\nload_parallelism = {parallelism}\n"));
        for i in 0..plugins {
            let name = format!("echo-{i:03}");
            let dir = env.install("testing", "echo", |m| {
                m["name"] = name.clone().into();
            });
            std::fs::rename(dir, env.plugins_dir.join(&name)).unwrap();
        }
        envs.push((label, env));
    }
    // Warm-up: the shared AOT cache holds the component from here on.
    for (_, env) in &envs {
        start(env, plugins);
    }
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); envs.len()];
    for _ in 0..rounds {
        for (i, (_, env)) in envs.iter().enumerate() {
            let (api, ready) = start(env, plugins);
            results[i].0.push(api);
            results[i].1.push(ready);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{plugins} cached plugins, {rounds} starts each, {cores} cores; medians from spawn:");
    println!("| loading | API answers (ms) | all serve (ms) |");
    println!("|---|---|---|");
    let mut ready_medians = Vec::new();
    for ((label, _), (api, ready)) in envs.iter().zip(results) {
        let ready = median(ready);
        ready_medians.push(ready);
        println!("| {label} | {:.1} | {ready:.1} |", median(api));
    }
    println!(
        "all serve, concurrent / sequential: {:.2}×",
        ready_medians[0] / ready_medians[1]
    );
}
