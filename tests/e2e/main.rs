//! End-to-end tests of the `evolve` daemon, one harness binary (see `evolve_e2e`).
#![allow(clippy::unwrap_used)]

mod access;
mod agents;
mod api;
mod cluster;
mod containment;
mod demo;
mod dev;
mod health;
mod loading;
mod mesh;
mod plugin_kit;
mod polyglot;
mod registry;
mod reload;
mod routing_flow;
mod security;
mod serving;
