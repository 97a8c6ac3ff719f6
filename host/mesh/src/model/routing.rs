//! The glue of model-aware routing: [`ModelRouting`] holds the selector, its cache and the
//! outcome queue; [`RouteStats`] counts what happened, for `/metrics`; [`records_outcomes`]
//! says whose reported outcomes are believed at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cache::{CacheKey, SelectionCache};
use super::outcome::{OutcomeError, parse_outcome_header, parse_outcome_json};
use super::selector::{ModelSelector, NoModel, Selection};
use super::wire::{FIELD_OUTCOME, HEADER_OUTCOME};
use crate::config::{ModelWanted, RouteConfig};
use crate::service::ServiceState;
use evolve_core::events::EventBus;

/// Outcomes waiting to be written; beyond this they are dropped and counted, never waited for.
const OUTCOME_QUEUE: usize = 1_024;

/// Counters of model-aware routing and fan-out, read by `/metrics`.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// (route, part result `ok` | `error_status` | `timeout` | `failed`) → fan-out parts.
    pub fanout_parts: Mutex<HashMap<(String, &'static str), u64>>,
    /// (route, source kind `alias` | `best` | `none`) → selections.
    pub selections: Mutex<HashMap<(String, &'static str), u64>>,
    pub outcomes_recorded: AtomicU64,
    /// Malformed outcomes (header or field), never recorded.
    pub outcomes_rejected: AtomicU64,
    /// Outcomes dropped because the queue was full, or the registry refused them.
    pub outcomes_dropped: AtomicU64,
    pub outcomes_failed: AtomicU64,
}

impl RouteStats {
    pub fn count_selection(&self, route: &str, source: &'static str) {
        if let Ok(mut map) = self.selections.lock() {
            *map.entry((route.to_string(), source)).or_default() += 1;
        }
    }

    pub fn count_part(&self, route: &str, result: &'static str) {
        if let Ok(mut map) = self.fanout_parts.lock() {
            *map.entry((route.to_string(), result)).or_default() += 1;
        }
    }
}

/// Whether the outcome a backend of `service` reports on `route` is recorded: only on a route
/// that says `record_outcomes = true`, and only from this daemon's own services (config file or
/// API). An outcome moves the registry's best model for every caller, so it is believed only
/// from a backend the operator vouched for; a remote service was announced by a cluster peer,
/// and nothing yet proves the peer is who it says.
pub fn records_outcomes(route: &RouteConfig, service: &ServiceState) -> bool {
    route.record_outcomes && service.source.is_local()
}

/// One outcome to record.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedOutcome {
    pub model: String,
    pub version: u32,
    pub metrics: Vec<(String, f64)>,
    /// `route:<type>`.
    pub source: String,
}

/// The selector, its cache, and the outcome queue: everything model-aware routing runs on.
pub struct ModelRouting {
    selector: Arc<dyn ModelSelector>,
    cache: SelectionCache,
    outcomes: mpsc::Sender<RoutedOutcome>,
    pub stats: Arc<RouteStats>,
}

impl ModelRouting {
    /// Starts the outcome worker on the current tokio runtime.
    pub fn start(
        selector: Arc<dyn ModelSelector>,
        events: &EventBus,
        stats: Arc<RouteStats>,
    ) -> ModelRouting {
        let (sender, mut receiver) = mpsc::channel::<RoutedOutcome>(OUTCOME_QUEUE);
        let worker_stats = Arc::clone(&stats);
        let worker_selector = Arc::clone(&selector);
        tokio::spawn(async move {
            while let Some(outcome) = receiver.recv().await {
                let selector = Arc::clone(&worker_selector);
                let written = tokio::task::spawn_blocking(move || {
                    let result = selector.record_outcome(
                        &outcome.model,
                        outcome.version,
                        &outcome.metrics,
                        &outcome.source,
                    );
                    (outcome, result)
                })
                .await;
                match written {
                    Ok((_, Ok(()))) => {
                        worker_stats
                            .outcomes_recorded
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((outcome, Err(error))) => {
                        worker_stats.outcomes_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(model = %outcome.model, version = outcome.version, source = %outcome.source, %error, "outcome metrics not recorded");
                    }
                    Err(error) => {
                        worker_stats.outcomes_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "outcome recording task failed");
                    }
                }
            }
        });
        ModelRouting {
            selector,
            cache: SelectionCache::new(events),
            outcomes: sender,
            stats,
        }
    }

    /// The model for the route (cached; see [`SELECTION_TTL`](super::SELECTION_TTL)).
    pub async fn select(
        &self,
        task: &str,
        wanted: &ModelWanted,
        policy: Option<&str>,
    ) -> Result<Selection, NoModel> {
        let key: CacheKey = (task.to_string(), wanted.clone(), policy.map(str::to_string));
        if let Some(hit) = self.cache.get(&key, Instant::now()) {
            return hit;
        }
        let asked = Instant::now();
        let selector = Arc::clone(&self.selector);
        let (task, wanted_owned, policy_owned) = key.clone();
        let selection = tokio::task::spawn_blocking(move || {
            selector.select(&task, &wanted_owned, policy_owned.as_deref())
        })
        .await
        .unwrap_or_else(|error| {
            Err(NoModel {
                reason: "registry_error",
                detail: format!("the model query failed: {error}"),
            })
        });
        // Stamped with the time asked, so an answer never outlives the TTL from its query.
        self.cache.put(key, asked, selection.clone());
        selection
    }

    /// Queues `outcome` for recording; a full queue drops it (counted) rather than wait.
    pub fn record(&self, outcome: RoutedOutcome) {
        if self.outcomes.try_send(outcome).is_err() {
            self.stats.outcomes_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Parses the outcome a response reported in its headers and queues it; `Ok(false)` when
    /// the headers carry none.
    pub fn record_from_headers(
        &self,
        headers: &HeaderMap,
        selection: &Selection,
        route_source: &str,
        backend: &str,
    ) -> bool {
        let Some(value) = headers.get(HEADER_OUTCOME) else {
            return false;
        };
        let parsed = value
            .to_str()
            .map_err(|_| OutcomeError::NotText)
            .and_then(parse_outcome_header);
        self.accept(parsed, selection, route_source, backend);
        true
    }

    /// Queues an outcome parsed from a JSON body's `evolve_outcome`, if the body has one.
    pub fn record_from_json_body(
        &self,
        body: &[u8],
        selection: &Selection,
        route_source: &str,
        backend: &str,
    ) {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let Some(field) = object.get(FIELD_OUTCOME) else {
            return;
        };
        self.accept(parse_outcome_json(field), selection, route_source, backend);
    }

    fn accept(
        &self,
        parsed: Result<Vec<(String, f64)>, OutcomeError>,
        selection: &Selection,
        route_source: &str,
        backend: &str,
    ) {
        match parsed {
            Ok(metrics) => self.record(RoutedOutcome {
                model: selection.name.clone(),
                version: selection.version,
                metrics,
                source: route_source.to_string(),
            }),
            Err(error) => {
                self.stats.outcomes_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(backend, model = %selection.name, version = selection.version, %error, "malformed outcome metrics from the backend; not recorded");
            }
        }
    }
}
