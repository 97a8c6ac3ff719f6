//! Evolve: a host daemon for sandboxed WebAssembly meta agents and health checkers.
//!
//! Data flows one way: [`api`] / [`cli`] → (mesh, registry, agents as they land) → [`runtime`] →
//! plugin.
//!
//! | module | concern |
//! |---|---|
//! | [`runtime`] | engine, plugin lifecycle, sandbox, limits, calls |
//! | [`registry`] | model registry: versions, aliases, performance, best-model selection, backups |
//! | [`reload`] | hot reload: watcher, reload pipeline, drain |
//! | [`agents`] | the meta-agent manager: runs, retries, schedules, health, run history |
//! | [`system`] | the daemon's inventory and probes: what plugins see of the whole system |
//! | [`mesh`] | service mesh: catalog, routing, load balancing, health, breakers, retries |
//! | [`events`] | the internal event bus |
//! | [`health`] | one system health: the parts and the rules that make `healthy` / `degraded` / `unhealthy` |
//! | [`cluster`] | several daemons, one mesh: events on Redis, the shared catalog |
//! | [`api`] | HTTP API (axum) |
//! | [`cli`] | the `evolve` command line, including `serve` which wires the daemon |
//! | [`config`] | daemon configuration |
//! | [`rng`] | a fast per-thread random source for balancing, retry and schedule jitter |
//! | [`testkit`] | the plugin test kit's core: a built plugin against a mocked host; scenario files |

pub mod agents;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod events;
pub mod fsutil;
pub mod health;
pub mod mesh;
pub mod registry;
pub mod reload;
pub mod rng;
pub mod runtime;
pub mod system;
pub mod testkit;
