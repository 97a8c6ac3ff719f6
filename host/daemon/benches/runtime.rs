//! Runtime benchmarks (criterion). Results and method: BENCHMARKS.md.
//!
//! - `fresh_instance_describe/evolve`: one `describe()` through the full call path — admission,
//!   a fresh store with the plugin's WASI grants, instantiation from the pre-instance, the call,
//!   output checks — on the `echo` test guest.
//! - `fresh_instance_describe/plain_wasmtime`: the peer, measured in the same run: a plain
//!   wasmtime 48 host doing the same call the textbook way (default allocator, default
//!   `WasiCtx`, fresh store + instantiate + call).
//! - `start/warm_cache_8_plugins` vs `start/cold_cache_8_plugins`: a runtime start (engine,
//!   linkers, ticker) plus loading 8 plugins, with the AOT cache populated vs empty.
//!
//! Needs the built plugins: `cargo xtask build-plugins` (or `cargo xtask test`) first.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use evolve_core::events::EventBus;
use evolve_daemon::reload::{ReloadConfig, Reloader};
use evolve_runtime::bindings::meta_agent::{MetaAgent, MetaAgentPre};
use evolve_runtime::bindings::{config, inventory, logging, probes, types};
use evolve_runtime::{LimitValues, Runtime, RuntimeConfig, SupervisionConfig};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

fn echo_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/testing/echo");
    assert!(
        dir.join("plugin.toml").is_file(),
        "{} missing: run `cargo xtask build-plugins` first",
        dir.display()
    );
    dir
}

fn runtime_config(root: &Path) -> RuntimeConfig {
    RuntimeConfig {
        pool_instances: 128,
        // Room for every slot at the ceiling: the budget's cost is measured, not its refusals.
        max_total_memory_mb: LimitValues::CEILINGS.memory_mb * 128,
        defaults: LimitValues::DEFAULTS,
        ceilings: LimitValues::CEILINGS,
        cache_dir: root.join("cache"),
        data_dir: root.join("data"),
        protected_dirs: Vec::new(),
        grant_policy: evolve_runtime::GrantPolicy::default(),
        aot_key_file: root.join("aot.key"),
        supervision: SupervisionConfig::default(),
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fresh_instance_describe(c: &mut Criterion) {
    let rt = tokio_rt();
    let scratch = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(runtime_config(scratch.path()), EventBus::new()).unwrap();
    let loaded = rt.block_on(runtime.open_checked(&echo_dir())).unwrap();
    let _serving = runtime.swap(std::sync::Arc::new(loaded)).unwrap();

    let peer = PlainHost::new(&echo_dir().join("echo.wasm"));

    let mut group = c.benchmark_group("fresh_instance_describe");
    group.bench_function("evolve", |b| {
        b.iter(|| rt.block_on(runtime.describe("echo")).unwrap());
    });
    group.bench_function("plain_wasmtime", |b| {
        b.iter(|| rt.block_on(peer.describe()));
    });
    group.finish();
}

fn start(c: &mut Criterion) {
    const PLUGINS: usize = 8;
    let rt = tokio_rt();
    let scratch = tempfile::tempdir().unwrap();
    let plugins_dir = scratch.path().join("plugins");
    let echo = echo_dir();
    for i in 0..PLUGINS {
        let dir = plugins_dir.join(format!("echo-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(echo.join("echo.wasm"), dir.join("echo.wasm")).unwrap();
        let manifest = std::fs::read_to_string(echo.join("plugin.toml"))
            .unwrap()
            .replace("name = \"echo\"", &format!("name = \"echo-{i}\""));
        std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    }
    // A daemon start: runtime, then every plugin dir through the reload pipeline.
    let start = |config: RuntimeConfig| {
        let runtime = Runtime::new(config, EventBus::new()).unwrap();
        let reloader = Reloader::new(
            runtime.clone(),
            EventBus::new(),
            plugins_dir.clone(),
            ReloadConfig::default(),
        );
        let summary = rt.block_on(reloader.reconcile_all(false)).unwrap();
        assert_eq!(summary.serving(), PLUGINS, "{:?}", summary.outcomes);
        runtime
    };
    // Populate the cache once.
    start(runtime_config(scratch.path()));

    let mut group = c.benchmark_group("start");
    group.sample_size(20);
    group.bench_function("warm_cache_8_plugins", |b| {
        b.iter(|| {
            let runtime = start(runtime_config(scratch.path()));
            assert_eq!(runtime.cache_stats().misses, 0);
        });
    });
    group.sample_size(10);
    group.bench_function("cold_cache_8_plugins", |b| {
        b.iter(|| {
            let cold = tempfile::tempdir().unwrap();
            let mut config = runtime_config(scratch.path());
            config.cache_dir = cold.path().to_path_buf();
            start(config);
        });
    });
    group.finish();
}

/// The peer: a plain wasmtime host, default engine settings, default WASI context.
struct PlainHost {
    pre: MetaAgentPre<PlainState>,
    engine: Engine,
}

struct PlainState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PlainHost {
    fn new(wasm: &Path) -> PlainHost {
        let engine = Engine::default();
        let component = Component::from_file(&engine, wasm).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        MetaAgent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
        let pre = MetaAgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        PlainHost { pre, engine }
    }

    async fn describe(&self) -> types::AgentInfo {
        let state = PlainState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        let instance = self.pre.instantiate_async(&mut store).await.unwrap();
        instance
            .evolve_plugin_agent()
            .call_describe(&mut store)
            .await
            .unwrap()
    }
}

impl WasiView for PlainState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PlainState {}

impl logging::Host for PlainState {
    fn log(&mut self, _: logging::Level, _: String, _: Vec<(String, String)>) {}
}

impl config::Host for PlainState {
    fn get_all(&mut self) -> String {
        "{}".into()
    }
    fn get(&mut self, _: String) -> Option<String> {
        None
    }
}

impl inventory::Host for PlainState {
    fn host(&mut self) -> inventory::HostSummary {
        inventory::HostSummary {
            version: String::new(),
            api_listen: String::new(),
            api_auth: false,
            uptime_s: 0,
        }
    }
    fn security(&mut self) -> inventory::SecurityPosture {
        inventory::SecurityPosture {
            token_names: Vec::new(),
            auth_reads: false,
            cluster_enabled: false,
            cluster_authenticated: false,
            allowed_dir_roots: Vec::new(),
            allowed_env: Vec::new(),
        }
    }
    fn plugins(&mut self) -> Vec<inventory::PluginSummary> {
        Vec::new()
    }
    fn services(&mut self) -> Vec<inventory::ServiceStatus> {
        Vec::new()
    }
    fn models(&mut self) -> Vec<inventory::ModelSummary> {
        Vec::new()
    }
    fn best_models(&mut self) -> Vec<inventory::ModelChoice> {
        Vec::new()
    }
    fn agents(&mut self) -> Vec<inventory::AgentSummary> {
        Vec::new()
    }
    fn plugin_sources(&mut self) -> Vec<inventory::PluginSource> {
        Vec::new()
    }
    fn api_endpoints(&mut self) -> Vec<inventory::ApiEndpoint> {
        Vec::new()
    }
}

impl probes::Host for PlainState {
    async fn probe_service(&mut self, _: String) -> probes::ProbeResult {
        unanswered()
    }
    async fn probe_checker(&mut self, _: String) -> probes::ProbeResult {
        unanswered()
    }
    async fn probe_best_model(&mut self, _: String) -> probes::ProbeResult {
        unanswered()
    }
    async fn probe_agent(&mut self, _: String) -> probes::ProbeResult {
        unanswered()
    }
}

fn unanswered() -> probes::ProbeResult {
    probes::ProbeResult {
        ok: false,
        detail: "the plain host has no system to probe".into(),
        latency_us: 0,
    }
}

criterion_group!(benches, fresh_instance_describe, start);
criterion_main!(benches);
