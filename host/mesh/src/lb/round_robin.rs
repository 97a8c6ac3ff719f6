//! Round-robin: candidate `n mod len` for the `n`th pick. Weights are ignored (weight 0 drains
//! because drained instances are never candidates); choose `weighted` to honour them.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Candidate;

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn pick(&self, candidates: &[Candidate]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, candidates};
    use crate::catalog::LbKind;
    use evolve_core::rng::Rng;

    #[test]
    fn each_candidate_in_turn() {
        let lb = Balancer::new(LbKind::RoundRobin);
        let c = candidates(&[100.0, 1.0, 50.0]);
        let mut rng = Rng::seeded(1);
        let picks: Vec<_> = (0..6).filter_map(|_| lb.pick(&c, &mut rng)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}
