//! `evolve-daemon`: the `evolve` binary and everything at the top of the data flow.
//!
//! Data flows one way: [`api`] / [`cli`] → mesh (`evolve-mesh`), registry (`evolve-registry`),
//! [`agents`] → runtime (`evolve-runtime`) → plugin. The lower crates never import this one; the
//! conversions between their plain types and the plugins' WIT types happen here, in [`system`].
//!
//! | module | concern |
//! |---|---|
//! | [`agents`] | the meta-agent manager: runs, retries, schedules, health, run history |
//! | [`reload`] | hot reload: watcher, reload pipeline, drain, rollback window |
//! | [`system`] | the daemon's inventory and probes: what plugins see of the whole system |
//! | [`health`] | one system health: the parts and the rules that make `healthy` / `degraded` / `unhealthy` |
//! | [`api`] | HTTP API (axum) |
//! | [`cli`] | the `evolve` command line, including `serve`, which runs the [`daemon`] |
//! | [`daemon`] | the [`daemon::Daemon`]: built from config (bind → stores → parts → plugins), run until stopped |
//! | [`config`] | daemon configuration |
//!
//! The crates below: `evolve-core` (events, rng, backoff, rolling window, health vocabulary),
//! `evolve-runtime` (engine, plugin lifecycle, sandbox, limits, AOT cache), `evolve-registry`
//! (model registry on SQLite), `evolve-mesh` (service mesh), `evolve-cluster` (Redis), and
//! `evolve-plugin-testkit` (the plugin test kit, which `evolve plugin test` runs).

pub mod access;
pub mod agents;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod health;
pub mod reload;
pub mod system;
