//! Reload latency: from the moment a changed file is closed (renamed into place) to the new
//! generation serving, through the real watcher, debounce, settle check and pipeline. Prints
//! medians and p99 per scenario, split into the pipeline's steps. Results: BENCHMARKS.md.
//!
//! Scenarios, 40 reloads each:
//! - `config-change`: a new `[config]` with the same component (AOT hit: nothing compiles);
//! - `new-component`: new component bytes each time (a custom section appended), so every
//!   reload compiles;
//! - `switch-back`: alternating between two components both compiled before (AOT hits).
//!
//! The peer, measured in the same run: `Component::new` of the same bytes (the compile a
//! reload cannot avoid when the bytes are new).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use evolve_core::events::{EventBus, EventKind};
use evolve_daemon::reload::{ReloadConfig, Reloader};
use evolve_runtime::{LimitValues, Runtime, RuntimeConfig, SupervisionConfig};

const RUNS: usize = 40;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// Appends a custom section named `bench` holding `payload` (valid anywhere in a component).
fn with_custom_section(wasm: &[u8], payload: u32) -> Vec<u8> {
    let name = b"bench";
    let body_len = 1 + name.len() + 4;
    let mut out = wasm.to_vec();
    out.push(0x00);
    out.push(body_len as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload.to_le_bytes());
    out
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(".bench.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

struct Sample {
    total_ms: f64,
    load_ms: f64,
    validate_ms: f64,
    canary_ms: f64,
    swap_ms: f64,
}

async fn run() {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/testing/versioned");
    assert!(
        source.join("plugin.toml").is_file(),
        "run `cargo xtask build-plugins` first"
    );
    let scratch = tempfile::tempdir().unwrap();
    let plugins_dir = scratch.path().join("plugins");
    let dir = plugins_dir.join("versioned");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = std::fs::read(source.join("versioned.wasm")).unwrap();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(source.join("plugin.toml")).unwrap()).unwrap();
    let manifest_with = |tag: &str| {
        let mut m = manifest.clone();
        m.remove("sha256");
        m["config"]["tag"] = tag.into();
        toml::to_string(&m).unwrap()
    };
    std::fs::write(dir.join("versioned.wasm"), &wasm).unwrap();
    std::fs::write(dir.join("plugin.toml"), manifest_with("start")).unwrap();

    let events = EventBus::new();
    let runtime = Runtime::new(
        RuntimeConfig {
            pool_instances: 64,
            // Room for every slot at the ceiling: the budget's cost is measured, not its refusals.
            max_total_memory_mb: LimitValues::CEILINGS.memory_mb * 128,
            defaults: LimitValues::DEFAULTS,
            ceilings: LimitValues::CEILINGS,
            cache_dir: scratch.path().join("cache"),
            data_dir: scratch.path().join("data"),
            protected_dirs: vec![plugins_dir.clone()],
            grant_policy: evolve_runtime::GrantPolicy::default(),
            aot_key_file: scratch.path().join("aot.key"),
            supervision: SupervisionConfig::default(),
        },
        events.clone(),
    )
    .unwrap();
    let config = ReloadConfig {
        watch_window_s: 0,
        ..ReloadConfig::default()
    };
    let debounce_ms = config.debounce_ms;
    let reloader = Reloader::new(runtime.clone(), events.clone(), plugins_dir.clone(), config);
    reloader.spawn_watcher();
    reloader.reconcile_all(false).await.unwrap();
    let mut rx = events.subscribe();

    println!(
        "reload latency, {RUNS} reloads per scenario, debounce {debounce_ms} ms (+ 20 ms settle)"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>9} {:>12} {:>9} {:>9} {:>13}",
        "scenario", "median ms", "p99 ms", "load", "validate*", "canary", "swap", "debounce+wait"
    );
    let alt = with_custom_section(&wasm, u32::MAX);
    let mut compile_ms = Vec::new();
    for scenario in ["config-change", "new-component", "switch-back"] {
        let mut samples = Vec::new();
        for i in 0..RUNS {
            // Drain anything left over (retired events of the previous reload).
            while rx.try_recv().is_ok() {}
            let started = Instant::now();
            match scenario {
                "config-change" => write_atomic(
                    &dir.join("plugin.toml"),
                    manifest_with(&format!("c{i}")).as_bytes(),
                ),
                "new-component" => {
                    let bytes = with_custom_section(&wasm, i as u32);
                    if i == 0 {
                        // The peer, same bytes shape: a plain compile.
                        for k in 0..5 {
                            let b = with_custom_section(&wasm, 1_000_000 + k);
                            let t = Instant::now();
                            wasmtime::component::Component::new(runtime.engine(), &b).unwrap();
                            compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    write_atomic(&dir.join("versioned.wasm"), &bytes);
                }
                _ => {
                    let bytes = if i % 2 == 0 { &alt } else { &wasm };
                    write_atomic(&dir.join("versioned.wasm"), bytes);
                }
            }
            let data = loop {
                let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .expect("a reload within 30 s")
                    .unwrap();
                match event.kind {
                    EventKind::PluginReloaded => break event.data,
                    EventKind::PluginReloadFailed => panic!("reload failed: {}", event.data),
                    _ => {}
                }
            };
            let total_ms = started.elapsed().as_secs_f64() * 1e3;
            let t = &data["timings"];
            let ms = |key: &str| t[key].as_u64().unwrap_or(0) as f64 / 1e3;
            samples.push(Sample {
                total_ms,
                load_ms: ms("load_us"),
                validate_ms: ms("validate_prepare_us"),
                canary_ms: ms("canary_us"),
                swap_ms: ms("swap_us"),
            });
            if scenario == "switch-back" && i == 1 {
                // Both versions are compiled now; from here on every switch is a cache hit.
                samples.clear();
            }
        }
        let median = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        let mut totals: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
        totals.sort_by(f64::total_cmp);
        let pipeline = median(|s| s.load_ms + s.validate_ms + s.canary_ms + s.swap_ms);
        println!(
            "{:<16} {:>10.2} {:>10.2} {:>9.3} {:>12.3} {:>9.3} {:>9.3} {:>13.2}",
            scenario,
            percentile(&totals, 0.5),
            percentile(&totals, 0.99),
            median(|s| s.load_ms),
            median(|s| s.validate_ms),
            median(|s| s.canary_ms),
            median(|s| s.swap_ms),
            percentile(&totals, 0.5) - pipeline,
        );
    }
    compile_ms.sort_by(f64::total_cmp);
    println!(
        "peer: Component::new of the same bytes, median {:.2} ms ({} runs); validate* includes compile on a cache miss",
        percentile(&compile_ms, 0.5),
        compile_ms.len()
    );
    println!("aot cache: {:?}", runtime.cache_stats());
}
