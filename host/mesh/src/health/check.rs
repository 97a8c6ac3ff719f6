//! The check loop: one task per instance checks it through the [`CheckRunner`] every
//! `interval_ms` (± `jitter_pct`) and applies the verdict to its [`ActiveHealth`].
//!
//! A report `healthy` or `degraded` passes; `unhealthy` or no answer within the check's
//! `timeout_ms` fails. A check the checker could not make (its own error: denied host, bad
//! config; or the plugin is missing, quarantined or overloaded) is recorded and counted but
//! moves no state: a broken checker must not take a working service out of rotation.
//!
//! [`ActiveHealth`]: super::state::ActiveHealth

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::state::{CheckReport, CheckVerdict, HealthState, InstanceRecord, LastCheck};
use crate::catalog::HealthCheckSpec;
use crate::instance::InstanceState;
use evolve_core::events::{Event, EventBus, EventKind};
use evolve_core::rng::{jitter, with_thread_rng};

/// What one check produced.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    Report(CheckReport),
    /// The check could not be made; the message says why.
    Error(String),
}

/// Runs checks; the daemon's runs health-checker plugins through the runtime, tests use their
/// own.
#[async_trait::async_trait]
pub trait CheckRunner: Send + Sync + 'static {
    /// Whether a health-checker plugin named `name` is loaded.
    fn has_checker(&self, name: &str) -> bool;
    async fn check(&self, checker: &str, target: InstanceRecord) -> CheckOutcome;
}

/// What a check task needs besides its instance.
#[derive(Clone)]
pub struct CheckContext {
    pub runner: Arc<dyn CheckRunner>,
    pub events: EventBus,
    pub service_type: String,
    pub capabilities: Vec<String>,
}

/// Starts one check loop per instance; the handles stop them.
pub fn spawn_checks(
    instances: &[Arc<InstanceState>],
    spec: &HealthCheckSpec,
    context: &CheckContext,
) -> Vec<AbortHandle> {
    instances
        .iter()
        .map(|instance| {
            let instance = Arc::clone(instance);
            let spec = spec.clone();
            let context = context.clone();
            tokio::spawn(async move { check_loop(instance, spec, context).await }).abort_handle()
        })
        .collect()
}

async fn check_loop(instance: Arc<InstanceState>, spec: HealthCheckSpec, context: CheckContext) {
    let interval = Duration::from_millis(spec.interval_ms);
    // The first check comes soon but spread over a share of the interval, so a daemon restart
    // does not check every instance in the same millisecond.
    let spread = interval.mul_f64(f64::from(spec.jitter_pct.min(100)) / 100.0);
    let mut delay = spread.mul_f64(with_thread_rng(|rng| rng.next_f64()));
    loop {
        tokio::time::sleep(delay).await;
        check_once(&instance, &spec, &context).await;
        delay = jitter(interval, spec.jitter_pct);
    }
}

/// Runs one check of `instance` and applies its verdict.
pub async fn check_once(
    instance: &InstanceState,
    spec: &HealthCheckSpec,
    context: &CheckContext,
) -> Option<(HealthState, HealthState)> {
    let mut metadata: Vec<(String, String)> = instance
        .spec
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "health_path")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.push(("health_path".into(), spec.path.clone()));
    let target = InstanceRecord {
        name: instance.service.clone(),
        service_type: context.service_type.clone(),
        endpoint: instance.spec.endpoint.clone(),
        capabilities: context.capabilities.clone(),
        weight: instance.weight.load(std::sync::atomic::Ordering::Relaxed),
        metadata,
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(spec.timeout_ms);
    let outcome =
        match tokio::time::timeout(timeout, context.runner.check(&spec.checker, target)).await {
            Ok(outcome) => outcome,
            Err(_) => CheckOutcome::Report(CheckReport {
                status: CheckVerdict::Unhealthy,
                latency_us: timeout.as_micros() as u64,
                detail: format!(
                    "no verdict within the check timeout of {} ms",
                    spec.timeout_ms
                ),
                checked_at_ms: Utc::now().timestamp_millis().max(0) as u64,
            }),
        };
    let stats = &instance.stats;
    let (passed, last) = match outcome {
        CheckOutcome::Report(report) => {
            let passed = report.status != CheckVerdict::Unhealthy;
            let counter = if passed {
                &stats.checks_passed
            } else {
                &stats.checks_failed
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let last = LastCheck {
                result: report.status.as_str(),
                detail: report.detail.clone(),
                latency_us: report.latency_us,
                at: Utc::now(),
                report: Some(report),
            };
            (Some(passed), last)
        }
        CheckOutcome::Error(message) => {
            stats
                .checks_errored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let last = LastCheck {
                result: "error",
                detail: message,
                latency_us: started.elapsed().as_micros() as u64,
                at: Utc::now(),
                report: None,
            };
            (None, last)
        }
    };
    let detail = last.detail.clone();
    let change = {
        let mut status = instance.lock();
        status.health.last = Some(last);
        let change = passed.and_then(|p| status.health.record(p, spec));
        if let Some((HealthState::Unhealthy, HealthState::Healthy)) = change {
            status.returned_at = Some(Instant::now());
        }
        change
    };
    if let Some((from, to)) = change {
        context.events.publish(Event::new(
            EventKind::HealthChanged,
            instance.service.clone(),
            json!({
                "instance": instance.id,
                "from": from.as_str(),
                "to": to.as_str(),
                "detail": detail,
            }),
        ));
    }
    change
}
