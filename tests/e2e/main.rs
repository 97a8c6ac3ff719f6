//! End-to-end tests of the `evolve` daemon, one harness binary (see `evolve_e2e`).
#![allow(clippy::unwrap_used)]

mod agents;
mod api;
mod containment;
mod dev;
mod loading;
mod mesh;
mod plugin_kit;
mod polyglot;
mod registry;
mod reload;
mod serving;
