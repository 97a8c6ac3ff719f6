//! The running state of one instance: where it is, its weight, what is in flight, its latency
//! estimate, counters for metrics, its connection pool, and (under one small lock) its health,
//! outlier and breaker state and slow-start ramp.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::FailureAccrual;
use super::catalog::{InstanceSpec, Protocol};
use super::config::MeshConfig;
use super::health::state::ActiveHealth;
use super::outlier::OutlierState;
use super::pool::{InstancePool, PoolConfig};

/// How fast the latency estimate forgets, as Finagle's default decay time: a slow response
/// counts fully at once (peak) and fades over ~10 s.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Latency histogram bounds, seconds (Prometheus convention); the last bucket is +Inf.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Slow start begins at this share of the weight, so a returning instance gets some traffic
/// (its first requests warm it up and prove it).
const SLOW_START_FLOOR: f64 = 0.1;

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// Peak-sensitive exponentially weighted moving average of latency (Finagle's PeakEwma): a
/// sample above the estimate replaces it at once, a lower one is blended in by elapsed time, and
/// the estimate decays while no samples arrive, so a once-slow instance is tried again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeakEwma {
    value_us: f64,
    at: Option<Instant>,
}

impl PeakEwma {
    pub fn observe(&mut self, sample_us: f64, now: Instant) {
        let decayed = self.get(now);
        self.value_us = if sample_us > decayed || self.at.is_none() {
            sample_us
        } else {
            let w = self.weight(now);
            decayed * w + sample_us * (1.0 - w)
        };
        self.at = Some(now);
    }

    pub fn get(&self, now: Instant) -> f64 {
        self.value_us * self.weight(now)
    }

    fn weight(&self, now: Instant) -> f64 {
        let Some(at) = self.at else { return 1.0 };
        let x = now.saturating_duration_since(at).as_secs_f64() / EWMA_DECAY.as_secs_f64();
        decay(x)
    }
}

/// `e^-x`. Between requests `x` is tiny (microseconds over a 10 s decay): below 1e-3 the
/// series to x³ is exact to 1e-13 and costs a fraction of `exp`, which ran twice per request
/// for each instance considered.
fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

/// Counters read at scrape time.
#[derive(Debug, Default)]
pub struct InstanceStats {
    pub requests: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub connect_errors: AtomicU64,
    pub resets: AtomicU64,
    pub timeouts: AtomicU64,
    /// Attempts cut off by the caller's own shorter deadline: not counted against the
    /// instance (no failure, no latency sample), kept apart from `timeouts`.
    pub caller_deadlines: AtomicU64,
    pub ejections: AtomicU64,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    pub checks_errored: AtomicU64,
    /// Per bucket of [`LATENCY_BUCKETS_S`] plus +Inf (not cumulative).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    pub latency_sum_us: AtomicU64,
}

impl InstanceStats {
    pub fn observe_latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Mutable state under the instance's lock.
#[derive(Debug)]
pub struct InstanceStatus {
    pub health: ActiveHealth,
    pub outlier: OutlierState,
    pub breaker: FailureAccrual,
    pub ewma: PeakEwma,
    /// When the instance last came back into rotation (slow start ramps from here).
    pub returned_at: Option<Instant>,
}

/// Where requests to an instance go, in the forms a request needs, built once.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the endpoint: h2c's `:authority`, and (as `host_header`) HTTP/1.1's `Host`.
    pub authority: Option<http::uri::Authority>,
    pub host_header: Option<http::HeaderValue>,
    /// Path prefix of the endpoint, without a trailing `/` (often empty).
    pub prefix: String,
}

#[derive(Debug)]
pub struct InstanceState {
    /// Process-unique; keys balancer state.
    pub uid: u64,
    pub service: String,
    pub id: String,
    /// `x-evolve-service` / `x-evolve-instance` values, built once (None if not header-safe).
    pub service_header: Option<http::HeaderValue>,
    pub id_header: Option<http::HeaderValue>,
    pub spec: InstanceSpec,
    pub target: Target,
    pub weight: AtomicU32,
    pub in_flight: AtomicU32,
    pub stats: InstanceStats,
    /// Keep-alive connections to this instance; dropped (closing them) with the instance.
    pub pool: InstancePool,
    pub status: Mutex<InstanceStatus>,
}

impl InstanceState {
    /// `spec` must be validated (its id filled in).
    pub fn new(service: &str, spec: &InstanceSpec, config: &MeshConfig) -> InstanceState {
        let id = spec.id.clone().unwrap_or_else(|| spec.endpoint.clone());
        let (origin, prefix) = split_endpoint(&spec.endpoint);
        // The spec is validated, so the endpoint parses; were it not, the pool fails to connect
        // and says where.
        let authority = origin
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.authority().cloned());
        let (host, port) = authority.as_ref().map_or((origin.as_str(), 80), |a| {
            (a.host(), a.port_u16().unwrap_or(80))
        });
        let pool = InstancePool::new(
            PoolConfig::from_mesh(config),
            host,
            port,
            spec.protocol == Protocol::H2c,
        );
        InstanceState {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            service: service.to_string(),
            service_header: http::HeaderValue::from_str(service).ok(),
            id_header: http::HeaderValue::from_str(&id).ok(),
            id,
            spec: spec.clone(),
            target: Target {
                host_header: authority
                    .as_ref()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
                authority,
                prefix,
            },
            pool,
            weight: AtomicU32::new(spec.weight),
            in_flight: AtomicU32::new(0),
            stats: InstanceStats::default(),
            status: Mutex::new(InstanceStatus {
                health: ActiveHealth::default(),
                outlier: OutlierState::default(),
                breaker: FailureAccrual::new(&config.breaker, Instant::now()),
                ewma: PeakEwma::default(),
                returned_at: None,
            }),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.spec.protocol
    }

    /// Whether a replacement spec describes the same instance (its state carries over).
    pub fn same_as(&self, spec: &InstanceSpec) -> bool {
        spec.id.as_deref() == Some(self.id.as_str())
            && spec.endpoint == self.spec.endpoint
            && spec.protocol == self.spec.protocol
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, InstanceStatus> {
        // A poisoned lock means a panic while it was held; the state is plain data and still
        // usable, and the proxy must keep serving.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl InstanceStatus {
    /// Whether the instance is ejected at `now`; an ejection that just ended starts its slow
    /// start.
    pub fn ejected(&mut self, now: Instant) -> bool {
        let (ejected, returned) = self.outlier.check(now);
        if returned {
            self.returned_at = Some(now);
        }
        ejected
    }

    /// Weight multiplier of the slow-start ramp at `now`: from [`SLOW_START_FLOOR`] to 1 over
    /// `window`.
    pub fn slow_start_factor(&self, window: Duration, now: Instant) -> f64 {
        match self.returned_at {
            Some(at) if !window.is_zero() => {
                let progress =
                    now.saturating_duration_since(at).as_secs_f64() / window.as_secs_f64();
                (SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * progress).min(1.0)
            }
            _ => 1.0,
        }
    }
}

/// `http://host:port/prefix/` → (`http://host:port`, `/prefix`).
fn split_endpoint(endpoint: &str) -> (String, String) {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.find("://").map_or(0, |i| i + 3);
    match trimmed[after_scheme..].find('/') {
        Some(slash) => (
            trimmed[..after_scheme + slash].to_string(),
            trimmed[after_scheme + slash..].to_string(),
        ),
        None => (trimmed.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_matches_exp_on_both_sides_of_the_series_cutoff() {
        for x in [0.0_f64, 1e-9, 1e-6, 5e-4, 9.99e-4, 1e-3, 0.01, 0.5, 3.0] {
            let exact = (-x).exp();
            assert!(
                (decay(x) - exact).abs() <= 1e-13,
                "decay({x}) = {} but e^-x = {exact}",
                decay(x)
            );
        }
    }

    #[test]
    fn endpoints_split_into_origin_and_prefix() {
        assert_eq!(
            split_endpoint("http://a:1"),
            ("http://a:1".into(), String::new())
        );
        assert_eq!(
            split_endpoint("http://a:1/v1/"),
            ("http://a:1".into(), "/v1".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let mut ewma = PeakEwma::default();
        ewma.observe(1_000.0, Instant::now());
        ewma.observe(50_000.0, Instant::now());
        assert_eq!(ewma.get(Instant::now()), 50_000.0);
        tokio::time::advance(EWMA_DECAY).await;
        let decayed = ewma.get(Instant::now());
        assert!(
            (decayed - 50_000.0 / std::f64::consts::E).abs() < 1.0,
            "{decayed}"
        );
        ewma.observe(1_000.0, Instant::now());
        let blended = ewma.get(Instant::now());
        assert!(blended < decayed && blended > 1_000.0, "{blended}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_from_the_floor() {
        let config = MeshConfig::default();
        let spec = InstanceSpec {
            id: Some("a".into()),
            endpoint: "http://a:1".into(),
            weight: 100,
            protocol: Protocol::Http1,
            metadata: Default::default(),
        };
        let instance = InstanceState::new("s", &spec, &config);
        let window = Duration::from_secs(10);
        {
            let mut status = instance.lock();
            assert_eq!(status.slow_start_factor(window, Instant::now()), 1.0);
            status.returned_at = Some(Instant::now());
            assert!((status.slow_start_factor(window, Instant::now()) - 0.1).abs() < 1e-9);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let status = instance.lock();
        assert!((status.slow_start_factor(window, Instant::now()) - 0.55).abs() < 1e-9);
        assert_eq!(
            status.slow_start_factor(window, Instant::now() + window),
            1.0
        );
    }
}
