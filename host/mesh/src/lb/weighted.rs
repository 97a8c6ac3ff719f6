//! Smooth weighted round-robin (nginx, `ngx_http_upstream_get_peer`): every pick adds each
//! candidate's weight to its running score, takes the highest score and subtracts the total
//! weight from it. Over any `total` picks each candidate gets exactly its share, interleaved
//! (5:1:1 gives a a b a c a a, not a a a a a b c).
//!
//! Scores are kept per instance uid, so a candidate that leaves the pool (ejected, drained)
//! and returns keeps its place; scores of instances gone for good are pruned.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Candidate;

/// Weights are scaled to integers so slow-start fractions keep exact arithmetic.
const WEIGHT_SCALE: f64 = 1_000.0;

#[derive(Debug, Default)]
pub struct SmoothWeighted {
    scores: Mutex<HashMap<u64, i64>>,
}

impl SmoothWeighted {
    pub fn pick(&self, candidates: &[Candidate]) -> usize {
        let Ok(mut scores) = self.scores.lock() else {
            // A poisoned lock only means another pick panicked mid-update; scores are advisory.
            return 0;
        };
        let mut total = 0i64;
        let mut best = 0;
        let mut best_score = i64::MIN;
        for (i, c) in candidates.iter().enumerate() {
            let weight = ((c.weight * WEIGHT_SCALE).round() as i64).max(1);
            total += weight;
            let score = scores.entry(c.uid).or_insert(0);
            *score += weight;
            if *score > best_score {
                best_score = *score;
                best = i;
            }
        }
        if let Some(score) = scores.get_mut(&candidates[best].uid) {
            *score -= total;
        }
        if scores.len() > candidates.len() * 4 + 16 {
            let live: std::collections::HashSet<u64> = candidates.iter().map(|c| c.uid).collect();
            scores.retain(|uid, _| live.contains(uid));
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
    fn weights_are_honoured_within_one_percent_over_10k_picks() {
        let lb = Balancer::new(LbKind::Weighted);
        let weights = [500.0, 300.0, 150.0, 50.0];
        let c = candidates(&weights);
        let mut rng = Rng::seeded(1);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[lb.pick(&c, &mut rng).expect("pick")] += 1;
        }
        let total: f64 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = 10_000.0 * w / total;
            let got = f64::from(counts[i]);
            assert!(
                (got - expected).abs() <= 100.0,
                "instance {i}: {got} picks, expected {expected} ± 1% of 10k ({counts:?})"
            );
        }
    }

    #[test]
    fn picks_are_interleaved_like_nginx() {
        let lb = Balancer::new(LbKind::Weighted);
        let c = candidates(&[5.0, 1.0, 1.0]);
        let mut rng = Rng::seeded(1);
        let picks: Vec<_> = (0..7).filter_map(|_| lb.pick(&c, &mut rng)).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }
}
