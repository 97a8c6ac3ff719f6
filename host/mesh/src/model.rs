//! Model-aware routing: which model a route's request carries, and what the backend reported
//! about it.
//!
//! The mesh does not know the registry: it asks a [`ModelSelector`] (the daemon implements it
//! over the registry in `system.rs`). Per model-aware request:
//! 1. the selection comes from a [`SelectionCache`] (at most [`SELECTION_TTL`] old; emptied at
//!    once when a `model.*` event says an alias moved or a version appeared, so an alias move
//!    reaches the very next request) or, on a miss, from the selector on a blocking thread;
//! 2. the request gets the `x-evolve-model*` headers and, for a JSON object body of known
//!    length under the cap, the `evolve_model` field ([`inject_model_field`]);
//! 3. the response gets the same headers; an outcome in `x-evolve-outcome` or, for a JSON
//!    response, in its `evolve_outcome` field ([`parse_outcome_header`], [`parse_outcome_json`])
//!    goes to the [`OutcomeRecorder`]'s bounded queue, which a worker drains into the selector
//!    without ever holding up a response.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::config::ModelWanted;
use evolve_core::events::{Event, EventBus, EventKind};

/// Name of the model sent to the backend and returned to the client.
pub const HEADER_MODEL: &str = "x-evolve-model";
/// Version number of that model.
pub const HEADER_MODEL_VERSION: &str = "x-evolve-model-version";
/// `alias:<alias>`, `best:<policy>`, or `none` when the route fell back.
pub const HEADER_MODEL_SOURCE: &str = "x-evolve-model-source";
/// Why a model-aware route sent no model (`no_registry`, `no_model`, `alias_not_set`, ...).
pub const HEADER_MODEL_FALLBACK: &str = "x-evolve-model-fallback";
/// Outcome metrics of a response: `mae=0.12; latency_ms=4.1`.
pub const HEADER_OUTCOME: &str = "x-evolve-outcome";
/// JSON field of the request body naming the model.
pub const FIELD_MODEL: &str = "evolve_model";
/// JSON field of a response body carrying outcome metrics.
pub const FIELD_OUTCOME: &str = "evolve_outcome";

/// A selection is reused for at most this long, so the hot path does not query SQLite per
/// request; alias moves and new versions empty the cache at once (see the module docs), so only
/// performance-driven changes of the best model wait up to this long.
pub const SELECTION_TTL: Duration = Duration::from_secs(1);
/// Selections cached at most (routes × tasks × policies in practice: a handful).
const MAX_CACHED_SELECTIONS: usize = 1_024;
/// Longest `x-evolve-outcome` header read, bytes.
pub const MAX_OUTCOME_HEADER_BYTES: usize = 1_024;
/// Most metrics one outcome records.
pub const MAX_OUTCOME_METRICS: usize = 16;
/// Longest metric name, as the registry accepts it.
const MAX_METRIC_NAME: usize = 128;
/// JSON response bodies up to this size are scanned for `evolve_outcome` as they stream by;
/// larger (or non-JSON) bodies pass untouched, bytes.
pub const MAX_OUTCOME_SCAN_BYTES: usize = 256 * 1024;
/// Outcomes waiting to be written; beyond this they are dropped and counted, never waited for.
const OUTCOME_QUEUE: usize = 1_024;

/// The model a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub name: String,
    pub version: u32,
    /// `alias:<alias>` or `best:<policy>`.
    pub source: String,
}

/// Why there is no model for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoModel {
    /// A short token for the `x-evolve-model-fallback` header and metrics.
    pub reason: &'static str,
    /// For humans: the registry's own words.
    pub detail: String,
}

/// What the mesh needs of a model registry.
pub trait ModelSelector: Send + Sync {
    /// The model for `task`: the alias's target, or the best under `policy` (the registry's
    /// default when `None`). Synchronous: the mesh calls it on a blocking thread.
    fn select(
        &self,
        task: &str,
        wanted: &ModelWanted,
        policy: Option<&str>,
    ) -> Result<Selection, NoModel>;

    /// Records `metrics` as performance of `model` version `version`, attributed to `source`.
    fn record_outcome(
        &self,
        model: &str,
        version: u32,
        metrics: &[(String, f64)],
        source: &str,
    ) -> Result<(), String>;
}

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

type CacheKey = (String, ModelWanted, Option<String>);
/// A selection (or why there is none) and when it was asked for.
type CacheEntry = (Instant, Result<Selection, NoModel>);

/// Recent selections, emptied by registry events.
pub struct SelectionCache {
    entries: Mutex<HashMap<CacheKey, CacheEntry>>,
    events: Mutex<broadcast::Receiver<Event>>,
}

impl SelectionCache {
    pub fn new(events: &EventBus) -> SelectionCache {
        SelectionCache {
            entries: Mutex::new(HashMap::new()),
            events: Mutex::new(events.subscribe()),
        }
    }

    /// Empties the cache when an event since the last call changed what a selection returns.
    /// Reading the receiver here (not in a task) makes the ordering strict: an alias move whose
    /// API answer the client has seen was published before its next request gets here.
    fn absorb_events(&self) {
        let Ok(mut receiver) = self.events.lock() else {
            return;
        };
        let mut stale = false;
        loop {
            match receiver.try_recv() {
                Ok(event) => {
                    stale |= matches!(
                        event.kind,
                        EventKind::ModelAliasMoved
                            | EventKind::ModelVersionCreated
                            | EventKind::ModelRegistered
                            | EventKind::RegistryRestored
                    );
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => stale = true,
                Err(_) => break,
            }
        }
        if stale && let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    fn get(&self, key: &CacheKey, now: Instant) -> Option<Result<Selection, NoModel>> {
        self.absorb_events();
        let entries = self.entries.lock().ok()?;
        let (at, selection) = entries.get(key)?;
        (now.saturating_duration_since(*at) < SELECTION_TTL).then(|| selection.clone())
    }

    fn put(&self, key: CacheKey, now: Instant, selection: Result<Selection, NoModel>) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_CACHED_SELECTIONS {
                entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < SELECTION_TTL);
                if entries.len() >= MAX_CACHED_SELECTIONS {
                    return;
                }
            }
            entries.insert(key, (now, selection));
        }
    }
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

    /// The model for the route (cached; see [`SELECTION_TTL`]).
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

/// Why an outcome was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    #[error("the x-evolve-outcome header is not text")]
    NotText,
    #[error("the outcome is longer than {MAX_OUTCOME_HEADER_BYTES} bytes")]
    TooLong,
    #[error("the outcome lists no metric")]
    Empty,
    #[error("the outcome lists more than {MAX_OUTCOME_METRICS} metrics")]
    TooMany,
    #[error("\"{0}\" is not metric=value")]
    NotPair(String),
    #[error(
        "metric name \"{0}\" must be 1-128 of A-Z a-z 0-9 . _ - : starting with a letter or digit"
    )]
    BadName(String),
    #[error("metric {0} is not a finite number")]
    NotFinite(String),
    #[error("metric {0} appears twice")]
    Duplicate(String),
    #[error("evolve_outcome must be an object of metric names to numbers")]
    NotObject,
}

fn check_metric(name: &str, value: f64, seen: &[(String, f64)]) -> Result<(), OutcomeError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if !valid {
        return Err(OutcomeError::BadName(name.chars().take(64).collect()));
    }
    if !value.is_finite() {
        return Err(OutcomeError::NotFinite(name.to_string()));
    }
    if seen.iter().any(|(n, _)| n == name) {
        return Err(OutcomeError::Duplicate(name.to_string()));
    }
    if seen.len() >= MAX_OUTCOME_METRICS {
        return Err(OutcomeError::TooMany);
    }
    Ok(())
}

/// Parses `mae=0.12; latency_ms=4.1` (`;`-separated; spaces around parts ignored).
pub fn parse_outcome_header(text: &str) -> Result<Vec<(String, f64)>, OutcomeError> {
    if text.len() > MAX_OUTCOME_HEADER_BYTES {
        return Err(OutcomeError::TooLong);
    }
    let mut metrics = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(OutcomeError::NotPair(part.chars().take(64).collect()));
        };
        let name = name.trim();
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| OutcomeError::NotFinite(name.chars().take(64).collect()))?;
        check_metric(name, value, &metrics)?;
        metrics.push((name.to_string(), value));
    }
    if metrics.is_empty() {
        return Err(OutcomeError::Empty);
    }
    Ok(metrics)
}

/// Parses `{"mae": 0.12, ...}`.
pub fn parse_outcome_json(value: &Value) -> Result<Vec<(String, f64)>, OutcomeError> {
    let Value::Object(object) = value else {
        return Err(OutcomeError::NotObject);
    };
    if object.len() > MAX_OUTCOME_METRICS {
        return Err(OutcomeError::TooMany);
    }
    let mut metrics = Vec::new();
    for (name, value) in object {
        let number = value
            .as_f64()
            .ok_or_else(|| OutcomeError::NotFinite(name.chars().take(64).collect()))?;
        check_metric(name, number, &metrics)?;
        metrics.push((name.clone(), number));
    }
    if metrics.is_empty() {
        return Err(OutcomeError::Empty);
    }
    Ok(metrics)
}

/// Whether `headers` say the body is JSON (`application/json`, `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// The `evolve_model` field's value.
pub fn model_field(selection: &Selection) -> Value {
    json!({
        "name": selection.name,
        "version": selection.version,
        "source": selection.source,
    })
}

/// `body` with `evolve_model` added at the top level when it is a JSON object; `None` when it
/// is not (the body is then sent as it came).
pub fn inject_model_field(body: &[u8], selection: &Selection) -> Option<Bytes> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    object.insert(FIELD_MODEL.to_string(), model_field(selection));
    serde_json::to_vec(&Value::Object(object))
        .ok()
        .map(Bytes::from)
}

/// Sets the model headers (request to the backend, or response to the client).
pub fn set_model_headers(headers: &mut HeaderMap, selection: &Selection) {
    if let Ok(value) = HeaderValue::from_str(&selection.name) {
        headers.insert(HEADER_MODEL, value);
    }
    headers.insert(HEADER_MODEL_VERSION, HeaderValue::from(selection.version));
    if let Ok(value) = HeaderValue::from_str(&selection.source) {
        headers.insert(HEADER_MODEL_SOURCE, value);
    }
}

/// Sets the headers of a route that fell back to no model.
pub fn set_fallback_headers(headers: &mut HeaderMap, reason: &'static str) {
    headers.insert(HEADER_MODEL_SOURCE, HeaderValue::from_static("none"));
    headers.insert(HEADER_MODEL_FALLBACK, HeaderValue::from_static(reason));
}

/// Whether a response body should be scanned for `evolve_outcome`: JSON, and not declared
/// larger than [`MAX_OUTCOME_SCAN_BYTES`].
pub fn should_scan(headers: &HeaderMap) -> bool {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    is_json(headers) && declared.is_none_or(|n| n <= MAX_OUTCOME_SCAN_BYTES as u64)
}

/// What a [`ScannedBody`] reports to when it ends.
pub struct ScanSink {
    pub routing: Arc<ModelRouting>,
    pub selection: Selection,
    pub route_source: String,
    pub backend: String,
}

/// A response body passed through frame by frame, with a copy kept (up to
/// [`MAX_OUTCOME_SCAN_BYTES`]) to read `evolve_outcome` from when it ends: the client gets
/// every byte as soon as it arrives, and a body over the cap is simply not scanned.
pub struct ScannedBody<B> {
    inner: B,
    copy: Option<BytesMut>,
    sink: Option<ScanSink>,
}

impl<B> ScannedBody<B> {
    pub fn new(inner: B, sink: ScanSink) -> ScannedBody<B> {
        ScannedBody {
            inner,
            copy: Some(BytesMut::new()),
            sink: Some(sink),
        }
    }

    fn finish(&mut self) {
        if let (Some(copy), Some(sink)) = (self.copy.take(), self.sink.take()) {
            sink.routing.record_from_json_body(
                &copy,
                &sink.selection,
                &sink.route_source,
                &sink.backend,
            );
        }
    }
}

impl<B> HttpBody for ScannedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let over = self
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() > MAX_OUTCOME_SCAN_BYTES);
                    if over {
                        self.copy = None;
                    } else if let Some(copy) = self.copy.as_mut() {
                        copy.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.copy = None,
            Poll::Pending => {}
        }
        // A server stops polling once the body says it ended (e.g. its content-length is
        // reached), so the end is taken from the last frame too, not only from `None`.
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn outcome_header_parses_pairs_and_refuses_what_is_malformed() {
        assert_eq!(
            parse_outcome_header("mae=0.12; latency_ms=4.1").expect("valid"),
            vec![("mae".to_string(), 0.12), ("latency_ms".to_string(), 4.1)]
        );
        assert_eq!(
            parse_outcome_header(" sharpe_ratio = -1e-3 ;").expect("valid"),
            vec![("sharpe_ratio".to_string(), -0.001)]
        );
        assert_eq!(parse_outcome_header(""), Err(OutcomeError::Empty));
        assert_eq!(
            parse_outcome_header("mae"),
            Err(OutcomeError::NotPair("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=NaN"),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=inf"),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=abc"),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("m ae=1"),
            Err(OutcomeError::BadName("m ae".into()))
        );
        assert_eq!(
            parse_outcome_header("_x=1"),
            Err(OutcomeError::BadName("_x".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=1;mae=2"),
            Err(OutcomeError::Duplicate("mae".into()))
        );
        let sixteen: Vec<String> = (0..16).map(|i| format!("m{i}=1")).collect();
        assert_eq!(
            parse_outcome_header(&sixteen.join(";"))
                .expect("valid")
                .len(),
            16
        );
        let seventeen: Vec<String> = (0..17).map(|i| format!("m{i}=1")).collect();
        assert_eq!(
            parse_outcome_header(&seventeen.join(";")),
            Err(OutcomeError::TooMany)
        );
        let long = format!("mae={}", "1".repeat(MAX_OUTCOME_HEADER_BYTES));
        assert_eq!(parse_outcome_header(&long), Err(OutcomeError::TooLong));
    }

    #[test]
    fn outcome_field_takes_an_object_of_finite_numbers() {
        assert_eq!(
            parse_outcome_json(&json!({"mae": 0.5, "hits": 3})).expect("valid"),
            vec![("hits".to_string(), 3.0), ("mae".to_string(), 0.5)]
        );
        assert_eq!(
            parse_outcome_json(&json!([1, 2])),
            Err(OutcomeError::NotObject)
        );
        assert_eq!(parse_outcome_json(&json!({})), Err(OutcomeError::Empty));
        assert_eq!(
            parse_outcome_json(&json!({"mae": "0.5"})),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("m{i}"), json!(1))).collect();
        assert_eq!(
            parse_outcome_json(&Value::Object(many)),
            Err(OutcomeError::TooMany)
        );
    }

    #[test]
    fn the_model_field_goes_into_json_objects_only() {
        let selection = Selection {
            name: "arima".into(),
            version: 3,
            source: "alias:champion".into(),
        };
        let out = inject_model_field(br#"{"horizon": 5}"#, &selection).expect("valid");
        let value: Value = serde_json::from_slice(&out).expect("valid");
        assert_eq!(value["horizon"], 5);
        assert_eq!(value[FIELD_MODEL]["name"], "arima");
        assert_eq!(value[FIELD_MODEL]["version"], 3);
        assert_eq!(value[FIELD_MODEL]["source"], "alias:champion");
        assert!(inject_model_field(b"[1,2]", &selection).is_none());
        assert!(inject_model_field(b"not json", &selection).is_none());
    }

    /// Answers `version` (changeable) and counts its calls; recorded outcomes go to a channel.
    struct FakeSelector {
        version: std::sync::atomic::AtomicU32,
        calls: AtomicU64,
        recorded: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<RoutedOutcome>>>,
    }

    impl ModelSelector for FakeSelector {
        fn select(
            &self,
            _task: &str,
            _wanted: &ModelWanted,
            _policy: Option<&str>,
        ) -> Result<Selection, NoModel> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Selection {
                name: "m".into(),
                version: self.version.load(Ordering::SeqCst),
                source: "best:default".into(),
            })
        }

        fn record_outcome(
            &self,
            model: &str,
            version: u32,
            metrics: &[(String, f64)],
            source: &str,
        ) -> Result<(), String> {
            if let Some(sender) = self.recorded.lock().expect("lock").as_ref() {
                let _ = sender.send(RoutedOutcome {
                    model: model.into(),
                    version,
                    metrics: metrics.to_vec(),
                    source: source.into(),
                });
            }
            Ok(())
        }
    }

    fn fake() -> (
        Arc<FakeSelector>,
        tokio::sync::mpsc::UnboundedReceiver<RoutedOutcome>,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let selector = Arc::new(FakeSelector {
            version: std::sync::atomic::AtomicU32::new(1),
            calls: AtomicU64::new(0),
            recorded: std::sync::Mutex::new(Some(sender)),
        });
        (selector, receiver)
    }

    #[tokio::test(start_paused = true)]
    async fn selections_are_cached_for_the_ttl_and_emptied_by_alias_moves() {
        let events = EventBus::new();
        let (selector, _recorded) = fake();
        let routing = ModelRouting::start(selector.clone(), &events, Arc::default());
        let select = || routing.select("forecast", &ModelWanted::Best, None);
        assert_eq!(select().await.expect("model").version, 1);
        selector.version.store(2, Ordering::SeqCst);
        // Within the TTL the cached answer stands, without asking again.
        assert_eq!(select().await.expect("model").version, 1);
        assert_eq!(selector.calls.load(Ordering::SeqCst), 1);
        // After the TTL it asks again.
        tokio::time::advance(SELECTION_TTL).await;
        assert_eq!(select().await.expect("model").version, 2);
        assert_eq!(selector.calls.load(Ordering::SeqCst), 2);
        // An alias move empties the cache at once; other events do not.
        selector.version.store(3, Ordering::SeqCst);
        events.publish(Event::new(EventKind::PluginLoaded, "p", Value::Null));
        assert_eq!(select().await.expect("model").version, 2);
        events.publish(Event::new(EventKind::ModelAliasMoved, "m", Value::Null));
        assert_eq!(select().await.expect("model").version, 3);
        assert_eq!(selector.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_streamed_json_body_reports_its_outcome_when_it_ends() {
        let events = EventBus::new();
        let (selector, mut recorded) = fake();
        let routing = Arc::new(ModelRouting::start(selector, &events, Arc::default()));
        let selection = Selection {
            name: "m".into(),
            version: 4,
            source: "best:default".into(),
        };
        let text = br#"{"forecast": [1, 2], "evolve_outcome": {"mae": 0.5}}"#;
        let body = http_body_util::Full::new(Bytes::from_static(text));
        let sink = ScanSink {
            routing: Arc::clone(&routing),
            selection,
            route_source: "route:forecast".into(),
            backend: "fc/a".into(),
        };
        let mut scanned = ScannedBody::new(body, sink);
        // Like a server: read frames until the body says it ended, never polling for `None`.
        let frame = http_body_util::BodyExt::frame(&mut scanned)
            .await
            .expect("a frame")
            .expect("data");
        assert_eq!(
            frame.data_ref().map(|d| &d[..]),
            Some(&text[..]),
            "unchanged"
        );
        assert!(scanned.is_end_stream());
        drop(scanned);
        let outcome = recorded.recv().await.expect("recorded");
        assert_eq!(
            outcome,
            RoutedOutcome {
                model: "m".into(),
                version: 4,
                metrics: vec![("mae".into(), 0.5)],
                source: "route:forecast".into(),
            }
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        assert!(is_json(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            CONTENT_LENGTH,
            HeaderValue::from(MAX_OUTCOME_SCAN_BYTES as u64 + 1),
        );
        assert!(!should_scan(&headers));
    }
}
