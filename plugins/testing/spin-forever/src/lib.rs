//! `spin-forever`: a hostile meta agent for tests. `run` never returns: it spins on the CPU
//! until the host's deadline interrupts it. `describe` and `health` behave, so the plugin loads,
//! unless config `spin_in_describe = true` makes `describe` spin too: a plugin whose first load
//! never ends on its own.

use core::hint::black_box;

use evolve_plugin_sdk::{AgentInfo, MetaAgent, PluginError, Task, TaskOutcome, export_meta_agent};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    spin_in_describe: bool,
}

struct SpinForever;

impl MetaAgent for SpinForever {
    fn describe() -> AgentInfo {
        if evolve_plugin_sdk::config::get::<Config>().is_ok_and(|c| c.spin_in_describe) {
            spin();
        }
        AgentInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            "Loops forever in run",
        )
        .with_capabilities(["testing"])
    }

    fn run(_task: Task) -> Result<TaskOutcome, PluginError> {
        spin()
    }
}

fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        // `black_box` makes the counter observable, so the optimiser can neither delete the
        // loop nor prove it has no side effects (an empty infinite loop is UB-adjacent and
        // may be compiled to `unreachable`, which would trap instead of spinning).
        counter = black_box(counter.wrapping_add(1));
    }
}

export_meta_agent!(SpinForever);
