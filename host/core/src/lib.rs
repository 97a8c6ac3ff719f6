//! `evolve-core`: the small primitives every Evolve crate shares, so each idea is written once.
//!
//! | module | what |
//! |---|---|
//! | [`events`] | the internal event bus: versioned [`events::Event`]s, the recent-events ring |
//! | [`health`] | the health vocabulary: [`health::Status`], [`health::Part`] |
//! | [`rng`] | a fast per-thread random source, jitter |
//! | [`backoff`] | exponential backoff with a cap and a jitter style: every retry and quarantine |
//! | [`window`] | a rolling window of per-second counters |
//! | [`sync`] | taking a lock even when poisoned, and why that is safe here |
//! | [`fsutil`] | file helpers (durable writes) |
//! | [`untrusted`] | guest and peer text made safe to log ([`untrusted::escape_untrusted`]) |
//!
//! Nothing here knows about plugins, services or models; the crates above build on it:
//! `evolve-runtime` (plugins), `evolve-registry` (models), `evolve-mesh` (services),
//! `evolve-cluster` (several daemons), and `evolve-daemon` on top.

pub mod backoff;
pub mod events;
pub mod fsutil;
pub mod health;
pub mod rng;
pub mod sync;
pub mod untrusted;
pub mod window;
