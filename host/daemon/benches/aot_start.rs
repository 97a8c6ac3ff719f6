//! Time to first serve of a bundled plugin per language, with a cold AOT cache (the component is
//! compiled) vs a cache hit (the compiled artifact is mapped), criterion. Results: BENCHMARKS.md.
//!
//! One iteration is what the daemon does before a plugin serves, through the test kit
//! (`evolve_plugin_testkit::Kit`): a runtime start (engine, pool, linkers), load (manifest, sha256
//! pin), validate (the component compiled or fetched from the AOT cache; world, WIT version,
//! limits), prepare (pre-instance) and the canary `describe()` on a fresh instance.
//!
//! | id | plugin | language |
//! |---|---|---|
//! | `first_serve/rust_*` | `bundled/http-health` | Rust (SDK) |
//! | `first_serve/python_*` | `bundled/http-health-py` | Python (componentize-py) |
//! | `first_serve/js_*` | `bundled/inventory-digest-js` | JavaScript (componentize-js) |
//!
//! `*_cold_cache`: an empty cache dir per iteration; `*_cache_hit` (the peer of each cold one):
//! a cache dir the same component was loaded from once before.
//!
//! Needs the built plugins: `cargo xtask build-plugins` (or `cargo xtask test`) first.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use evolve_plugin_testkit::Kit;

fn bundled(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins/bundled")
        .join(name);
    assert!(
        dir.join("plugin.toml").is_file(),
        "{} missing: run `cargo xtask build-plugins` first",
        dir.display()
    );
    dir
}

/// Loads the plugin and returns once its canary passed, i.e. once it would serve.
fn first_serve(dir: &Path, cache: &Path) {
    let kit = Kit::builder(dir).cache_dir(cache).load().unwrap();
    assert!(!kit.name().is_empty());
}

fn aot_start(c: &mut Criterion) {
    let mut group = c.benchmark_group("first_serve");
    // An interpreter-carrying component compiles for seconds: few samples, no long warm-up.
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(20));
    for (lang, plugin) in [
        ("rust", "http-health"),
        ("python", "http-health-py"),
        ("js", "inventory-digest-js"),
    ] {
        let dir = bundled(plugin);
        group.bench_function(format!("{lang}_cold_cache"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                // Returned, so removing the cache dir is not timed.
                |cache| {
                    first_serve(&dir, cache.path());
                    cache
                },
                BatchSize::PerIteration,
            );
        });
        let warm = tempfile::tempdir().unwrap();
        first_serve(&dir, warm.path());
        group.bench_function(format!("{lang}_cache_hit"), |b| {
            b.iter(|| first_serve(&dir, warm.path()));
        });
    }
    group.finish();
}

criterion_group!(benches, aot_start);
criterion_main!(benches);
