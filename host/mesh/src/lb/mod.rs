//! Load balancing: one file per algorithm, all picking from the same [`Candidate`] list.
//!
//! The caller builds the candidates: instances that may take traffic now (not drained, not
//! unhealthy or ejected, breaker admitting), each with its effective weight (slow start applied),
//! requests in flight and peak-EWMA latency. An algorithm only chooses among them.
//!
//! | file | algorithm |
//! |---|---|
//! | [`round_robin`] | each candidate in turn |
//! | [`least_loaded`] | fewest in flight per unit of weight, ties broken at random |
//! | [`weighted`] | nginx's smooth weighted round-robin |
//! | [`p2c_ewma`] | power of two choices over peak-EWMA latency × in-flight (the default) |

pub mod least_loaded;
pub mod p2c_ewma;
pub mod round_robin;
pub mod weighted;

use crate::catalog::LbKind;
use evolve_core::rng::Rng;

/// One instance a request may go to.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Process-unique id of the instance (keys per-instance balancer state).
    pub uid: u64,
    /// Effective weight: configured weight × slow-start ramp; always > 0.
    pub weight: f64,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Peak-EWMA latency, µs (0 before the first response).
    pub ewma_us: f64,
}

impl Candidate {
    /// A placeholder for storage not yet filled.
    pub const EMPTY: Candidate = Candidate {
        uid: 0,
        weight: 0.0,
        in_flight: 0,
        ewma_us: 0.0,
    };
}

/// A balancer with its state, for one pool of instances (a service or a route).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    LeastLoaded(least_loaded::LeastLoaded),
    Weighted(weighted::SmoothWeighted),
    P2cEwma(p2c_ewma::P2cEwma),
}

impl Balancer {
    pub fn new(kind: LbKind) -> Balancer {
        match kind {
            LbKind::RoundRobin => Balancer::RoundRobin(round_robin::RoundRobin::default()),
            LbKind::LeastLoaded => Balancer::LeastLoaded(least_loaded::LeastLoaded),
            LbKind::Weighted => Balancer::Weighted(weighted::SmoothWeighted::default()),
            LbKind::P2cEwma => Balancer::P2cEwma(p2c_ewma::P2cEwma),
        }
    }

    pub fn kind(&self) -> LbKind {
        match self {
            Balancer::RoundRobin(_) => LbKind::RoundRobin,
            Balancer::LeastLoaded(_) => LbKind::LeastLoaded,
            Balancer::Weighted(_) => LbKind::Weighted,
            Balancer::P2cEwma(_) => LbKind::P2cEwma,
        }
    }

    /// The index into `candidates` of the chosen one; `None` only when `candidates` is empty.
    pub fn pick(&self, candidates: &[Candidate], rng: &mut Rng) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            _ => Some(match self {
                Balancer::RoundRobin(b) => b.pick(candidates),
                Balancer::LeastLoaded(b) => b.pick(candidates, rng),
                Balancer::Weighted(b) => b.pick(candidates),
                Balancer::P2cEwma(b) => b.pick(candidates, rng),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) fn candidates(weights: &[f64]) -> Vec<Candidate> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Candidate {
            uid: i as u64,
            weight: *w,
            in_flight: 0,
            ewma_us: 1_000.0,
        })
        .collect()
}
