//! A small, fast, non-cryptographic random source for load balancing and jitter. Quality needs
//! are modest (spread picks, de-synchronise timers); a per-thread xorshift avoids a lock and a
//! dependency. Tests seed it to make picks reproducible.

use std::cell::Cell;
use std::time::Duration;

/// xorshift64* (Vigna): 64 bits of state, passes the statistical tests balancing needs.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift's state must not be zero).
    pub fn seeded(seed: u64) -> Rng {
        Rng {
            state: splitmix(seed) | 1,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

thread_local! {
    static THREAD_RNG: Cell<u64> = Cell::new(thread_seed());
}

fn thread_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    // The stack address differs per thread, so threads started in the same nanosecond differ.
    nanos ^ (std::ptr::addr_of!(local) as u64).rotate_left(32)
}

/// Runs `f` with this thread's generator.
pub fn with_thread_rng<T>(f: impl FnOnce(&mut Rng) -> T) -> T {
    THREAD_RNG.with(|cell| {
        let mut rng = Rng::seeded(cell.get());
        let out = f(&mut rng);
        cell.set(rng.next_u64());
        out
    })
}

/// `base` varied uniformly by ± `pct` %.
pub fn jitter(base: Duration, pct: u32) -> Duration {
    if pct == 0 || base.is_zero() {
        return base;
    }
    let spread = f64::from(pct.min(100)) / 100.0;
    let factor = with_thread_rng(|rng| 1.0 - spread + 2.0 * spread * rng.next_f64());
    base.mul_f64(factor.max(0.0))
}

/// A uniform duration in `[0, max]`, at millisecond resolution.
pub fn up_to(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let sample = with_thread_rng(|rng| rng.next_u64());
    Duration::from_millis(sample % max_ms.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_uniform_enough() {
        let mut rng = Rng::seeded(7);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[rng.below(4)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let base = Duration::from_millis(1_000);
        for _ in 0..1_000 {
            let j = jitter(base, 20);
            assert!(j >= Duration::from_millis(800) && j <= Duration::from_millis(1_200));
        }
        assert_eq!(jitter(base, 0), base);
    }

    #[test]
    fn jitter_stays_within_its_bound_and_varies() {
        let bound = Duration::from_secs(30);
        let samples: Vec<Duration> = (0..200).map(|_| up_to(bound)).collect();
        assert!(samples.iter().all(|d| *d <= bound));
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 100,
            "only {} distinct values",
            distinct.len()
        );
        assert_eq!(up_to(Duration::ZERO), Duration::ZERO);
    }
}
