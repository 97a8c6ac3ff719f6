//! The one shared [`Engine`]: pooling allocator, epoch interruption and the ticker thread that
//! drives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

/// Epoch tick. A running guest yields to the async executor at every tick and is interrupted at
/// the first tick past its deadline, so this is both the scheduling quantum and the deadline's
/// precision. 2 ms keeps ticker wake-ups negligible and deadline overshoot small.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Core instances, tables and memories reserved per component slot. A Rust wasm32-wasip2
/// component has 3 core instances, 2 tables and 1 memory; componentize-py/js ones a few more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const TABLES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 2;

/// Bytes of a linear memory reset in place (memset of touched pages) rather than decommitted.
/// A Rust guest's shadow stack ends at 1 MiB and its data and heap start there, so 2 MiB covers
/// what a typical call touches.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 2 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// Decommits flushed together, amortising one TLB shootdown over several calls.
const DECOMMIT_BATCH: usize = 8;

/// Engine settings that matter for AOT compatibility and capacity.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Component instances alive at once across all plugins (pool slots).
    pub pool_instances: u32,
    /// Largest linear memory any plugin may have (the host's memory ceiling), bytes.
    pub max_memory_bytes: u64,
}

/// Builds the engine. Fails only on an impossible configuration.
pub fn build_engine(settings: EngineSettings) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    let slots = settings.pool_instances.max(1);
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_tables(slots.saturating_mul(TABLES_PER_COMPONENT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_stacks(slots)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_memory_size(usize::try_from(settings.max_memory_bytes).unwrap_or(usize::MAX))
        // Reset what a call dirtied with memset instead of madvise: madvise costs a TLB
        // shootdown (an IPI to every core) per call, which profiling showed as the largest
        // single cost of a fresh-instance call. PAGEMAP_SCAN (Linux >= 6.7; ignored where
        // unsupported) finds the pages actually touched, so only those are reset.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        // What still needs an madvise (slots past keep-resident) is flushed in batches.
        .decommit_batch_size(DECOMMIT_BATCH);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Increments the engine's epoch every [`EPOCH_TICK`] until dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let engine = engine.clone();
            std::thread::Builder::new()
                .name("evolve-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
