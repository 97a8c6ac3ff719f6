//! `memory-hog`: a hostile meta agent for tests. `run` allocates memory in 1 MiB chunks and
//! writes to every page of each, keeping them all alive, until the host's memory limit stops it
//! (the allocation fails and the guest aborts, or the host refuses to grow memory).

use core::hint::black_box;

use evolve_plugin_sdk::{
    AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent, info,
};

const CHUNK: usize = 1 << 20;

struct MemoryHog;

impl MetaAgent for MemoryHog {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Allocates memory in 1 MiB chunks forever",
        )
        .with_capabilities(["testing"])
    }

    fn run(_task: Task) -> Result<TaskOutcome, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // A non-zero fill has to be written out, whereas a zeroed allocation could be
            // served by fresh, untouched pages; `black_box` keeps the optimiser from eliding it.
            let chunk = vec![black_box(0xA5u8); CHUNK];
            hoard.push(black_box(chunk));
            if hoard.len().is_multiple_of(16) {
                info!("holding {} MiB", hoard.len());
            }
        }
    }
}

export_meta_agent!(MemoryHog);
