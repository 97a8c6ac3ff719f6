//! Evolve: a host daemon for sandboxed WebAssembly meta agents and health checkers.
//!
//! Data flows one way: [`api`] / [`cli`] → (mesh, registry, agents as they land) → [`runtime`] →
//! plugin.
//!
//! | module | concern |
//! |---|---|
//! | [`runtime`] | engine, plugin lifecycle, sandbox, limits, calls |
//! | [`reload`] | hot reload: watcher, reload pipeline, drain |
//! | [`mesh`] | service mesh: catalog, routing, load balancing, health, breakers, retries |
//! | [`events`] | the internal event bus |
//! | [`api`] | HTTP API (axum) |
//! | [`cli`] | the `evolve` command line, including `serve` which wires the daemon |
//! | [`config`] | daemon configuration |

pub mod api;
pub mod cli;
pub mod config;
pub mod events;
pub mod fsutil;
pub mod mesh;
pub mod reload;
pub mod runtime;
