//! A running service: its instances, concurrency limit, retry budget and balancer; choosing an
//! instance for a request (health, ejection, breaker, panic threshold, slow start) and recording
//! what happened to it (latency, breaker, outlier detection, events).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::breaker::{Admission, ConcurrencyLimit, Transition};
use super::catalog::{Protocol, ServiceSpec};
use super::config::MeshConfig;
use super::health::HealthState;
use super::instance::{InstanceState, InstanceStatus};
use super::lb::{Balancer, Candidate};
use super::outlier::OutlierVerdict;
use super::retry::RetryBudget;
use evolve_core::events::{Event, EventBus, EventKind};
use evolve_core::rng::with_thread_rng;

/// Where a service's definition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `[[mesh.services]]` in the config file.
    Config,
    /// The API or CLI (persisted in the catalog file).
    Api,
    /// Another daemon of the cluster, which owns it (`ServiceState::origin` names the node);
    /// merged in by the cluster module, never persisted here.
    Remote,
}

impl Source {
    /// Registered through this daemon (config file or API), so this daemon announces it.
    pub fn is_local(self) -> bool {
        !matches!(self, Source::Remote)
    }
}

/// Service-level counters.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub shed: AtomicU64,
    pub retries: AtomicU64,
    pub retries_denied_by_budget: AtomicU64,
    pub no_instance: AtomicU64,
}

pub struct ServiceState {
    pub spec: ServiceSpec,
    pub source: Source,
    pub instances: Vec<Arc<InstanceState>>,
    /// Some instance speaks h2c (the data-plane listener's fast path is HTTP/1.1 only).
    pub has_h2c: bool,
    pub limit: ConcurrencyLimit,
    pub budget: RetryBudget,
    pub balancer: Balancer,
    pub stats: ServiceStats,
    pub(super) checks: Mutex<Vec<AbortHandle>>,
    /// The cluster node that registered a [`Source::Remote`] service.
    pub origin: Option<String>,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("name", &self.spec.name)
            .field("instances", &self.instances.len())
            .finish_non_exhaustive()
    }
}

impl Drop for ServiceState {
    fn drop(&mut self) {
        if let Ok(checks) = self.checks.get_mut() {
            for check in checks.drain(..) {
                check.abort();
            }
        }
    }
}

impl ServiceState {
    /// `spec` must be validated. Instances of `previous` that are the same (id, endpoint,
    /// protocol) keep their state: a weight change must not reset a breaker or a latency.
    pub fn new(
        spec: ServiceSpec,
        source: Source,
        config: &MeshConfig,
        previous: Option<&ServiceState>,
    ) -> ServiceState {
        let instances = spec
            .instances
            .iter()
            .map(|instance| {
                match previous.and_then(|p| p.instances.iter().find(|i| i.same_as(instance))) {
                    Some(existing) => {
                        existing.weight.store(instance.weight, Ordering::Relaxed);
                        Arc::clone(existing)
                    }
                    None => Arc::new(InstanceState::new(&spec.name, instance, config)),
                }
            })
            .collect::<Vec<Arc<InstanceState>>>();
        ServiceState {
            has_h2c: instances.iter().any(|i| i.protocol() == Protocol::H2c),
            limit: ConcurrencyLimit::new(
                spec.max_in_flight.unwrap_or(config.breaker.max_in_flight),
                spec.max_pending.unwrap_or(config.breaker.max_pending),
            ),
            budget: RetryBudget::new(&config.retry),
            balancer: Balancer::new(spec.lb.unwrap_or(config.lb)),
            stats: ServiceStats::default(),
            checks: Mutex::new(Vec::new()),
            origin: None,
            instances,
            source,
            spec,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// An instance chosen for one attempt.
#[derive(Debug, Clone)]
pub struct Pick {
    pub service: Arc<ServiceState>,
    pub instance: Arc<InstanceState>,
    pub admission: Admission,
}

/// Why no instance could be chosen, with the counts an operator needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unavailable {
    pub instances: usize,
    pub drained: usize,
    pub unhealthy: usize,
    pub ejected: usize,
    pub circuit_open: usize,
    /// Left out because an earlier attempt of this request used them.
    pub already_tried: usize,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "none of {} instances can take the request ({} drained with weight 0, {} unhealthy, {} ejected, {} with an open circuit, {} already tried)",
            self.instances,
            self.drained,
            self.unhealthy,
            self.ejected,
            self.circuit_open,
            self.already_tried
        )
    }
}

/// Instances a service usually has at most: up to this many, [`choose`] keeps its
/// candidates on the stack, since two heap allocations were a tenth of its cost per request.
const INLINE_CANDIDATES: usize = 16;

/// Instances that passed the filters, before balancing: what the balancer sees of each
/// (`candidates`) beside where it is (`chosen`: service and instance index), kept apart so a
/// pick needs no copying, and as indices so only the chosen instance's `Arc` is cloned. The
/// first `len` entries of each are in use.
struct Eligible<'a> {
    candidates: &'a mut [Candidate],
    chosen: &'a mut [(usize, usize)],
    len: usize,
}

impl Eligible<'_> {
    fn push(&mut self, service: usize, instance: usize, candidate: Candidate) {
        self.candidates[self.len] = candidate;
        self.chosen[self.len] = (service, instance);
        self.len += 1;
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn candidates(&self) -> &[Candidate] {
        &self.candidates[..self.len]
    }

    fn swap_remove(&mut self, index: usize) -> (usize, usize) {
        let last = self.len - 1;
        self.candidates.swap(index, last);
        self.chosen.swap(index, last);
        self.len = last;
        self.chosen[last]
    }
}

/// Chooses an instance among `services` with `balancer`, skipping instances whose uid is in
/// `exclude`, at `now` (the caller's clock reading for this attempt).
///
/// Per service: 1. every instance is filtered (weight, breaker, health, ejection, already
/// tried) and counted for the error; 2. when too few of its instances are healthy (panic
/// mode), its eligible set is rebuilt ignoring health and ejection, so the service degrades
/// instead of failing entirely. Then 3. the balancer picks, and 4. the breaker admits (or,
/// when another request took the half-open probe meanwhile, the next pick is tried).
pub fn choose(
    services: &[Arc<ServiceState>],
    balancer: &Balancer,
    exclude: &[u64],
    config: &MeshConfig,
    now: Instant,
) -> Result<Pick, Unavailable> {
    let slow_start = Duration::from_millis(config.slow_start_ms);
    let mut why = Unavailable::default();
    let total: usize = services.iter().map(|s| s.instances.len()).sum();
    let mut inline = (
        [Candidate::EMPTY; INLINE_CANDIDATES],
        [(0, 0); INLINE_CANDIDATES],
    );
    let mut heap: (Vec<Candidate>, Vec<(usize, usize)>);
    let (candidates, chosen) = if total <= INLINE_CANDIDATES {
        (&mut inline.0[..], &mut inline.1[..])
    } else {
        heap = (vec![Candidate::EMPTY; total], vec![(0, 0); total]);
        (&mut heap.0[..], &mut heap.1[..])
    };
    let mut eligible = Eligible {
        candidates,
        chosen,
        len: 0,
    };
    for (s, service) in services.iter().enumerate() {
        // Step 1.
        let start = eligible.len;
        let mut weighted = 0usize;
        let mut sick = 0usize;
        for (i, instance) in service.instances.iter().enumerate() {
            why.instances += 1;
            let weight = instance.weight.load(Ordering::Relaxed);
            if weight == 0 {
                why.drained += 1;
                continue;
            }
            weighted += 1;
            let mut status = instance.lock();
            let ejected = status.ejected(now);
            let unhealthy = status.health.state == HealthState::Unhealthy;
            let admits = status.breaker.would_admit(now);
            let candidate = candidate(instance, &status, weight, slow_start, now);
            drop(status);
            if unhealthy || ejected {
                sick += 1;
            }
            let tried = exclude.contains(&instance.uid);
            if !admits {
                why.circuit_open += 1;
                continue;
            }
            if tried {
                why.already_tried += 1;
            }
            if unhealthy {
                why.unhealthy += 1;
            } else if ejected {
                why.ejected += 1;
            } else if !tried {
                eligible.push(s, i, candidate);
            }
        }
        // Step 2.
        let healthy = weighted - sick;
        let in_panic = weighted > 0
            && (healthy as u64) * 100
                < u64::from(config.outlier.panic_threshold_pct) * weighted as u64;
        if in_panic {
            eligible.truncate(start);
            for (i, instance) in service.instances.iter().enumerate() {
                let weight = instance.weight.load(Ordering::Relaxed);
                if weight == 0 || exclude.contains(&instance.uid) {
                    continue;
                }
                let status = instance.lock();
                if !status.breaker.would_admit(now) {
                    continue;
                }
                let candidate = candidate(instance, &status, weight, slow_start, now);
                drop(status);
                eligible.push(s, i, candidate);
            }
        }
    }
    loop {
        // Step 3.
        let Some(index) = with_thread_rng(|rng| balancer.pick(eligible.candidates(), rng)) else {
            return Err(why);
        };
        let (service, instance) = eligible.swap_remove(index);
        let instance = &services[service].instances[instance];
        // Step 4.
        let admission = instance.lock().breaker.admit(now);
        if admission != Admission::Refused {
            return Ok(Pick {
                service: Arc::clone(&services[service]),
                instance: Arc::clone(instance),
                admission,
            });
        }
        // Another request took the half-open probe between the filter and now.
        why.circuit_open += 1;
    }
}

/// An instance a fan-out may send a part to.
pub struct Target {
    pub service: Arc<ServiceState>,
    pub instance: Arc<InstanceState>,
    pub candidate: Candidate,
}

/// Every instance of `services` that can take a request now: weight above 0, not unhealthy,
/// not ejected, circuit admitting. Unlike [`choose`] there is no panic mode: a fan-out reaches
/// the healthy instances only. With why the others cannot, for the 503 when none can.
pub fn healthy_targets(
    services: &[Arc<ServiceState>],
    config: &MeshConfig,
) -> (Vec<Target>, Unavailable) {
    let now = Instant::now();
    let slow_start = Duration::from_millis(config.slow_start_ms);
    let mut why = Unavailable::default();
    let mut targets = Vec::new();
    for service in services {
        for instance in &service.instances {
            why.instances += 1;
            let weight = instance.weight.load(Ordering::Relaxed);
            if weight == 0 {
                why.drained += 1;
                continue;
            }
            let mut status = instance.lock();
            let ejected = status.ejected(now);
            if status.health.state == HealthState::Unhealthy {
                why.unhealthy += 1;
                continue;
            }
            if ejected {
                why.ejected += 1;
                continue;
            }
            if !status.breaker.would_admit(now) {
                why.circuit_open += 1;
                continue;
            }
            let candidate = candidate(instance, &status, weight, slow_start, now);
            drop(status);
            targets.push(Target {
                service: Arc::clone(service),
                instance: Arc::clone(instance),
                candidate,
            });
        }
    }
    (targets, why)
}

/// `targets` in the order `balancer` would choose them, the first `n` only.
pub fn balancer_order(mut targets: Vec<Target>, balancer: &Balancer, n: usize) -> Vec<Target> {
    let mut ordered = Vec::with_capacity(n.min(targets.len()));
    while ordered.len() < n {
        let candidates: Vec<Candidate> = targets.iter().map(|t| t.candidate).collect();
        let Some(index) = with_thread_rng(|rng| balancer.pick(&candidates, rng)) else {
            break;
        };
        ordered.push(targets.swap_remove(index));
    }
    ordered
}

/// How one attempt ended, for breakers, outlier detection and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Response headers arrived with this status.
    Status(u16),
    ConnectError,
    /// The request was sent but the connection failed before response headers.
    Reset,
    Timeout,
    /// The caller's own deadline (`x-evolve-deadline-ms`, shorter than the route's timeout)
    /// passed before response headers: it ends the caller's wait but says nothing about the
    /// instance, or one header could open every circuit.
    CallerDeadline,
    /// The caller went away before an answer: says nothing about the instance.
    Cancelled,
}

impl AttemptOutcome {
    /// 5xx, connect errors and timeouts count against an instance.
    pub fn is_failure(self) -> bool {
        match self {
            AttemptOutcome::Status(status) => status >= 500,
            AttemptOutcome::ConnectError | AttemptOutcome::Reset | AttemptOutcome::Timeout => true,
            AttemptOutcome::CallerDeadline | AttemptOutcome::Cancelled => false,
        }
    }
}

/// Records an attempt's outcome on its instance and publishes resulting events; the attempt
/// took `elapsed` and ended at `now`.
pub fn record(
    pick: &Pick,
    outcome: AttemptOutcome,
    elapsed: Duration,
    now: Instant,
    config: &MeshConfig,
    events: &EventBus,
) {
    let instance = &pick.instance;
    let stats = &instance.stats;
    match outcome {
        AttemptOutcome::Status(status) => {
            stats.observe_latency(elapsed);
            if status >= 500 {
                stats.responses_5xx.fetch_add(1, Ordering::Relaxed);
            } else if status >= 400 {
                stats.responses_4xx.fetch_add(1, Ordering::Relaxed);
            }
        }
        AttemptOutcome::ConnectError => {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        }
        AttemptOutcome::Reset => {
            stats.resets.fetch_add(1, Ordering::Relaxed);
        }
        AttemptOutcome::Timeout => {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        AttemptOutcome::CallerDeadline => {
            stats.caller_deadlines.fetch_add(1, Ordering::Relaxed);
        }
        AttemptOutcome::Cancelled => {}
    }
    // Neither a failure nor a latency sample: the caller chose how long to wait.
    if matches!(
        outcome,
        AttemptOutcome::Cancelled | AttemptOutcome::CallerDeadline
    ) {
        if pick.admission == Admission::Probe {
            instance.lock().breaker.abandon_probe();
        }
        return;
    }
    let failure = outcome.is_failure();
    let (transition, wants_ejection) = {
        let mut status = instance.lock();
        if !matches!(outcome, AttemptOutcome::ConnectError) {
            status.ewma.observe(elapsed.as_micros() as f64, now);
        }
        let transition = status
            .breaker
            .record(pick.admission, failure, &config.breaker, now);
        if transition == Some(Transition::Closed) {
            status.returned_at = Some(now);
        }
        let verdict = status.outlier.record(failure, &config.outlier);
        (transition, verdict == OutlierVerdict::WantsEjection)
    };
    match transition {
        Some(Transition::Opened { for_, openings }) => events.publish(Event::new(
            EventKind::CircuitOpened,
            instance.service.clone(),
            json!({
                "instance": instance.id,
                "open_ms": for_.as_millis() as u64,
                "openings": openings,
                "last_outcome": describe(outcome),
            }),
        )),
        Some(Transition::Closed) => events.publish(Event::new(
            EventKind::CircuitClosed,
            instance.service.clone(),
            json!({ "instance": instance.id }),
        )),
        None => {}
    }
    if wants_ejection {
        eject_if_allowed(pick, outcome, config, events, now);
    }
}

fn eject_if_allowed(
    pick: &Pick,
    outcome: AttemptOutcome,
    config: &MeshConfig,
    events: &EventBus,
    now: Instant,
) {
    let service = &pick.service;
    let total = service.instances.len() as u64;
    let ejected = service
        .instances
        .iter()
        .filter(|i| i.lock().outlier.is_ejected(now))
        .count() as u64;
    // Envoy's rule: eject while the ejected share is below the maximum.
    if ejected * 100 >= u64::from(config.outlier.max_ejected_pct) * total {
        return;
    }
    let instance = &pick.instance;
    let period = {
        let mut status = instance.lock();
        if status.outlier.is_ejected(now) {
            return;
        }
        status.outlier.eject(&config.outlier, now)
    };
    instance.stats.ejections.fetch_add(1, Ordering::Relaxed);
    events.publish(Event::new(
        EventKind::InstanceEjected,
        instance.service.clone(),
        json!({
            "instance": instance.id,
            "ejected_ms": period.as_millis() as u64,
            "last_outcome": describe(outcome),
        }),
    ));
}

fn describe(outcome: AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Status(status) => format!("HTTP {status}"),
        AttemptOutcome::ConnectError => "connect error".into(),
        AttemptOutcome::Reset => "connection reset".into(),
        AttemptOutcome::Timeout => "timeout".into(),
        AttemptOutcome::CallerDeadline => "the caller's deadline".into(),
        AttemptOutcome::Cancelled => "cancelled".into(),
    }
}

/// What a balancer sees of an instance at `now`: its weight on the slow-start ramp, in-flight
/// count and latency EWMA.
fn candidate(
    instance: &InstanceState,
    status: &InstanceStatus,
    weight: u32,
    slow_start: Duration,
    now: Instant,
) -> Candidate {
    Candidate {
        uid: instance.uid,
        weight: f64::from(weight) * status.slow_start_factor(slow_start, now),
        in_flight: instance.in_flight.load(Ordering::Relaxed),
        ewma_us: status.ewma.get(now),
    }
}
