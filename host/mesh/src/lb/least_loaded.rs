//! Least-loaded: the candidate with the fewest requests in flight per unit of weight
//! (`(in_flight + 1) / weight`, so weight still splits an idle pool), ties broken at random so
//! an idle pool does not send every request to its first instance.

use super::Candidate;
use evolve_core::rng::Rng;

#[derive(Debug, Default)]
pub struct LeastLoaded;

impl LeastLoaded {
    pub fn pick(&self, candidates: &[Candidate], rng: &mut Rng) -> usize {
        let load = |c: &Candidate| f64::from(c.in_flight + 1) / c.weight;
        let mut best = 0;
        let mut best_load = f64::INFINITY;
        let mut ties = 0usize;
        for (i, c) in candidates.iter().enumerate() {
            let l = load(c);
            if l < best_load {
                best = i;
                best_load = l;
                ties = 1;
            } else if l == best_load {
                // Reservoir sampling over the tied minimum: each tie is chosen with equal odds.
                ties += 1;
                if rng.below(ties) == 0 {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, candidates};
    use crate::catalog::LbKind;
    use evolve_core::rng::Rng;

    #[test]
    fn fewest_in_flight_wins_and_ties_spread() {
        let lb = Balancer::new(LbKind::LeastLoaded);
        let mut c = candidates(&[100.0, 100.0, 100.0]);
        c[0].in_flight = 3;
        c[1].in_flight = 1;
        c[2].in_flight = 2;
        let mut rng = Rng::seeded(3);
        assert_eq!(lb.pick(&c, &mut rng), Some(1));
        c[1].in_flight = 2;
        let mut seen = [0; 3];
        for _ in 0..1_000 {
            seen[lb.pick(&c, &mut rng).expect("pick")] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 400 && seen[2] > 400, "{seen:?}");
    }

    #[test]
    fn weight_scales_load() {
        let lb = Balancer::new(LbKind::LeastLoaded);
        let mut c = candidates(&[300.0, 100.0]);
        c[0].in_flight = 2;
        c[1].in_flight = 1;
        // 3/300 < 2/100: the heavier instance takes more concurrent requests.
        assert_eq!(lb.pick(&c, &mut Rng::seeded(1)), Some(0));
    }
}
