//! Power of two choices over peak-EWMA (Finagle / Linkerd): sample two distinct candidates with
//! probability proportional to weight, and send to the one with the lower cost
//! `(ewma_latency + 1 µs) × (in_flight + 1)`. Weight acts through the sampling only (so
//! equally fast, equally loaded instances share traffic by weight); latency and load act through
//! the cost. Two random choices avoid the herd that a global "best" creates, and the
//! peak-sensitive latency reacts to a slowing instance at once (see
//! [`crate::instance::PeakEwma`]).

use super::Candidate;
use evolve_core::rng::Rng;

#[derive(Debug, Default)]
pub struct P2cEwma;

impl P2cEwma {
    pub fn pick(&self, candidates: &[Candidate], rng: &mut Rng) -> usize {
        let total: f64 = candidates.iter().map(|c| c.weight).sum();
        let first = weighted_sample(candidates, total, rng, None);
        let rest = total - candidates[first].weight;
        let second = if rest > 0.0 {
            weighted_sample(candidates, rest, rng, Some(first))
        } else {
            first
        };
        if cost(&candidates[second]) < cost(&candidates[first]) {
            second
        } else {
            first
        }
    }
}

fn cost(c: &Candidate) -> f64 {
    (c.ewma_us + 1.0) * f64::from(c.in_flight + 1)
}

/// A candidate drawn with probability weight / total, skipping `except`.
fn weighted_sample(
    candidates: &[Candidate],
    total: f64,
    rng: &mut Rng,
    except: Option<usize>,
) -> usize {
    let mut point = rng.next_f64() * total;
    let mut last = 0;
    for (i, c) in candidates.iter().enumerate() {
        if Some(i) == except {
            continue;
        }
        last = i;
        if point < c.weight {
            return i;
        }
        point -= c.weight;
    }
    // Rounding left `point` a hair above the sum: the last eligible candidate.
    last
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, candidates};
    use crate::catalog::LbKind;
    use evolve_core::rng::Rng;

    #[test]
    fn the_cheaper_of_two_wins() {
        let lb = Balancer::new(LbKind::P2cEwma);
        let mut c = candidates(&[100.0, 100.0]);
        c[0].ewma_us = 50_000.0;
        c[1].ewma_us = 1_000.0;
        let mut rng = Rng::seeded(9);
        for _ in 0..100 {
            assert_eq!(lb.pick(&c, &mut rng), Some(1));
        }
        // Load counts too: the fast instance with 100 in flight costs more than the slow idle one.
        c[1].in_flight = 100;
        assert_eq!(lb.pick(&c, &mut rng), Some(0));
    }

    #[test]
    fn equal_instances_share_by_weight() {
        let lb = Balancer::new(LbKind::P2cEwma);
        let c = candidates(&[300.0, 100.0, 100.0]);
        let mut rng = Rng::seeded(11);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[lb.pick(&c, &mut rng).expect("pick")] += 1;
        }
        // Equal cost: the first sample wins ties, so shares follow the sampling weights.
        assert!((5_700..6_300).contains(&counts[0]), "{counts:?}");
        assert!((1_700..2_300).contains(&counts[1]), "{counts:?}");
    }
}
