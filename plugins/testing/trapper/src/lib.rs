//! `trapper`: a hostile meta agent for tests, failing each way a plugin can fail below its own
//! error handling. By task:
//!
//! - `recurse`: recursion without end, each frame holding a 1 KiB buffer, until a stack (the
//!   shadow stack in linear memory, or the host's wasm stack) runs out;
//! - `exit`: `std::process::exit(3)`, which is `wasi:cli/exit` instead of a return;
//! - `resources`: holds 2,000 `wasi:cli/stdout` streams at once, past the host's resource cap;
//! - anything else: panics; on wasm a panic prints its message to stderr and then executes
//!   `unreachable`, so the host sees a trap.

use core::hint::black_box;

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};

struct Trapper;

impl MetaAgent for Trapper {
    fn describe() -> AgentInfo {
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Panics in run (or recurses, exits, or exhausts resources, by task)",
        )
        .with_capabilities(["testing"])
    }

    fn run(task: Task) -> Result<TaskOutcome, PluginError> {
        match task.name.as_str() {
            "recurse" => {
                let depth = recurse(black_box(u64::MAX));
                Ok(TaskOutcome::new(format!("returned from depth {depth}")))
            }
            "exit" => std::process::exit(3),
            "resources" => {
                let streams: Vec<_> = (0..2_000).map(|_| wasi::cli::stdout::get_stdout()).collect();
                Ok(TaskOutcome::new(format!("held {} streams", streams.len())))
            }
            _ => panic!("trapper: deliberate panic"),
        }
    }
}

/// Never returns for a large `n`: each frame keeps a buffer the optimiser cannot drop.
fn recurse(n: u64) -> u64 {
    let buffer = black_box([n as u8; 1024]);
    if n == 0 {
        return 0;
    }
    recurse(n - 1).wrapping_add(u64::from(black_box(buffer)[n as usize % 1024]))
}

export_meta_agent!(Trapper);
