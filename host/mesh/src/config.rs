//! The `[mesh]` section: what the operator configures. These structs only describe; the state
//! that runs (instances, breakers, budgets) is built from them in the other modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::catalog::ServiceSpec;

/// Lives with the service spec that names it; re-exported because `[mesh] lb` and routes choose
/// one too, and callers know it as `config::LbKind`.
pub use super::catalog::LbKind;

/// `[mesh]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Catalog of services registered through the API; default `<data_dir>/mesh/catalog.json`.
    pub catalog_file: Option<PathBuf>,
    /// A data-plane socket forwarding every request to `listen_service` (none by default).
    pub listen: Option<SocketAddr>,
    /// The service the `listen` socket forwards to.
    pub listen_service: Option<String>,
    /// Algorithm for services and routes that do not choose one.
    pub lb: LbKind,
    /// Time a proxied request may take to its response headers unless its route says
    /// otherwise, ms.
    pub timeout_ms: u64,
    /// Time to establish a connection to an instance, ms.
    pub connect_timeout_ms: u64,
    /// Idle keep-alive connections kept per instance.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept, s.
    pub pool_idle_timeout_s: u64,
    /// An instance that comes back (health, ejection, breaker) ramps its weight from 10 % to
    /// 100 % over this window, ms (0 = at once).
    pub slow_start_ms: u64,
    /// Request bodies up to this size are buffered so the request can be retried; larger ones
    /// stream and are never retried, KiB.
    pub retry_buffer_kb: u64,
    /// Request bodies a route reads into memory: a fan-out body (sent to every part; larger ones
    /// are refused with 413) and a JSON body that gets `evolve_model` (larger ones stream
    /// unchanged, with the model in the headers only), KiB.
    pub route_body_kb: u64,
    /// Request type → capability (and per-route settings) for `POST /v1/route/{type}`.
    pub routes: BTreeMap<String, RouteEntry>,
    pub breaker: BreakerConfig,
    pub outlier: OutlierConfig,
    pub retry: RetryConfig,
    /// Services defined in the config file (`[[mesh.services]]`); they cannot be removed
    /// through the API.
    pub services: Vec<ServiceSpec>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            catalog_file: None,
            listen: None,
            listen_service: None,
            lb: LbKind::P2cEwma,
            timeout_ms: 15_000,
            connect_timeout_ms: 1_000,
            pool_max_idle_per_host: 256,
            pool_idle_timeout_s: 90,
            slow_start_ms: 30_000,
            retry_buffer_kb: 64,
            route_body_kb: 1_024,
            routes: BTreeMap::new(),
            breaker: BreakerConfig::default(),
            outlier: OutlierConfig::default(),
            retry: RetryConfig::default(),
            services: Vec::new(),
        }
    }
}

/// A route: either a bare capability name (`forecast = "forecast"`) or a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteEntry {
    Capability(String),
    Full(RouteConfig),
}

impl RouteEntry {
    /// The route as a table, with `request_type` filling the unset path.
    pub fn resolve(&self, request_type: &str) -> RouteConfig {
        match self {
            RouteEntry::Capability(capability) => RouteConfig {
                capability: capability.clone(),
                ..RouteConfig::for_type(request_type)
            },
            RouteEntry::Full(config) => config.clone(),
        }
    }
}

/// `[mesh.routes.<type>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Capability a service must offer to serve this request type.
    pub capability: String,
    /// Path on the instance; default `/<type>`.
    #[serde(default)]
    pub path: Option<String>,
    /// Method sent to the instance; default the request's own.
    #[serde(default)]
    pub method: Option<String>,
    /// Algorithm; default `[mesh] lb`.
    #[serde(default)]
    pub lb: Option<LbKind>,
    /// Time to response headers, ms; default `[mesh] timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Retries after the first attempt; default `[mesh.retry] max_retries`.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Retry non-idempotent methods (POST, PATCH) too: say so only when the backend
    /// deduplicates.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Registry task type; setting it turns on model-aware routing.
    #[serde(default)]
    pub task: Option<String>,
    /// An alias name, or `best` (default when `task` is set).
    #[serde(default)]
    pub model: Option<String>,
    /// Scoring policy for `model = "best"` and for choosing among several models that carry the
    /// alias; default `[registry] default_policy`.
    #[serde(default)]
    pub policy: Option<String>,
    /// What happens when there is no registry or no model for the task; default `forward`.
    #[serde(default)]
    pub model_fallback: Option<ModelFallback>,
    /// Record the outcome metrics backends report (`x-evolve-outcome`, `evolve_outcome`) as
    /// model performance; off by default, since a backend's word moves the registry's best
    /// model. Only this daemon's own services are believed, never a cluster peer's.
    #[serde(default)]
    pub record_outcomes: bool,
    /// Send the request to one instance (`none`, default), every healthy one, or the best N.
    #[serde(default)]
    pub fanout: Fanout,
    /// Instances for `fanout = "best_n"`, in the route balancer's order.
    #[serde(default)]
    pub fanout_n: Option<u32>,
    /// How the parts of a fan-out become one answer; default `all`.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
    /// 2xx parts `aggregate = "quorum"` needs.
    #[serde(default)]
    pub quorum: Option<u32>,
}

/// `model = "best"`: the registry's best-model answer.
pub const MODEL_BEST: &str = "best";

/// `model_fallback`: no registry, or no model for the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFallback {
    /// Send the request without a model; the response says why.
    #[default]
    Forward,
    /// Answer 503 `no_model`.
    Reject,
}

/// `fanout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fanout {
    #[default]
    None,
    All,
    BestN,
}

/// `aggregate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    #[default]
    All,
    FirstSuccess,
    Quorum,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::All => "all",
            Aggregate::FirstSuccess => "first_success",
            Aggregate::Quorum => "quorum",
        }
    }
}

/// What a model-aware route asks the registry for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelWanted {
    /// The best model of the task under the policy.
    Best,
    /// The target of this alias (the best of the models of the task that carry it).
    Alias(String),
}

impl RouteConfig {
    /// The model this route asks for, when it is model-aware.
    pub fn model_wanted(&self) -> Option<ModelWanted> {
        self.task.as_ref()?;
        Some(match self.model.as_deref() {
            None | Some(MODEL_BEST) => ModelWanted::Best,
            Some(alias) => ModelWanted::Alias(alias.to_string()),
        })
    }

    /// Checks the model-aware and fan-out keys; `Err(message)`.
    fn validate_model_and_fanout(&self) -> Result<(), String> {
        let name_ok = |text: &str| {
            !text.is_empty()
                && text.len() <= 128
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        };
        match &self.task {
            Some(task) if !name_ok(task) => {
                return Err(format!(
                    "task \"{task}\" must be 1-128 of A-Z a-z 0-9 . _ - :"
                ));
            }
            Some(_) => {}
            None => {
                for (key, set) in [
                    ("model", self.model.is_some()),
                    ("policy", self.policy.is_some()),
                    ("model_fallback", self.model_fallback.is_some()),
                    ("record_outcomes", self.record_outcomes),
                ] {
                    if set {
                        return Err(format!(
                            "{key} needs task: set task = \"<registry task type>\" to make the route model-aware"
                        ));
                    }
                }
            }
        }
        if let Some(model) = &self.model
            && !name_ok(model)
        {
            return Err(format!(
                "model \"{model}\" must be \"best\" or an alias name (1-128 of A-Z a-z 0-9 . _ - :)"
            ));
        }
        if let Some(policy) = &self.policy
            && !name_ok(policy)
        {
            return Err(format!("policy \"{policy}\" is not a policy name"));
        }
        match (self.fanout, self.fanout_n) {
            (Fanout::BestN, None) => {
                return Err("fanout = \"best_n\" needs fanout_n (instances, at least 1)".into());
            }
            (Fanout::BestN, Some(0)) => return Err("fanout_n must be at least 1".into()),
            (Fanout::BestN, Some(n)) if n > MAX_FANOUT_PARTS => {
                return Err(format!("fanout_n must be at most {MAX_FANOUT_PARTS}"));
            }
            (Fanout::None | Fanout::All, Some(_)) => {
                return Err("fanout_n goes with fanout = \"best_n\"".into());
            }
            _ => {}
        }
        if self.fanout == Fanout::None && (self.aggregate.is_some() || self.quorum.is_some()) {
            return Err(
                "aggregate and quorum need fanout = \"all\" or \"best_n\" (one instance has nothing to aggregate)"
                    .into(),
            );
        }
        match (self.aggregate.unwrap_or_default(), self.quorum) {
            (Aggregate::Quorum, None) => {
                Err("aggregate = \"quorum\" needs quorum (2xx parts, at least 1)".into())
            }
            (Aggregate::Quorum, Some(0)) => Err("quorum must be at least 1".into()),
            (Aggregate::Quorum, Some(q)) => match self.fanout_n {
                Some(n) if q > n => Err(format!(
                    "quorum ({q}) is more than fanout_n ({n}): the route could never succeed"
                )),
                _ => Ok(()),
            },
            (_, Some(_)) => Err("quorum goes with aggregate = \"quorum\"".into()),
            _ => Ok(()),
        }
    }
}

/// Most parts one fan-out sends (`fanout_n`, and the instances `fanout = "all"` reaches).
pub const MAX_FANOUT_PARTS: u32 = 64;

impl RouteConfig {
    /// The route a request type gets when `[mesh.routes]` does not name it: the capability of
    /// the same name, defaults for the rest.
    pub fn for_type(request_type: &str) -> RouteConfig {
        RouteConfig {
            capability: request_type.to_string(),
            path: None,
            method: None,
            lb: None,
            timeout_ms: None,
            retries: None,
            retry_non_idempotent: false,
            task: None,
            model: None,
            policy: None,
            model_fallback: None,
            record_outcomes: false,
            fanout: Fanout::None,
            fanout_n: None,
            aggregate: None,
            quorum: None,
        }
    }
}

/// `[mesh.breaker]`: concurrency caps per service and failure accrual per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Requests in flight per service before new ones wait.
    pub max_in_flight: u32,
    /// Requests waiting for an in-flight slot per service before new ones are shed with 503.
    pub max_pending: u32,
    /// Consecutive failures that open an instance's circuit (0 = off).
    pub consecutive_failures: u32,
    /// Failure rate over the window that opens the circuit, % (0 = off).
    pub failure_rate_pct: u32,
    /// Window of the failure rate, s.
    pub window_s: u32,
    /// Requests in the window before the rate counts.
    pub min_volume: u32,
    /// First open period, ms; doubles with each consecutive opening.
    pub open_base_ms: u64,
    /// Longest open period, ms.
    pub open_max_ms: u64,
    /// Open periods vary by ± this share so instances do not probe in lockstep, %.
    pub jitter_pct: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            max_in_flight: 1_024,
            max_pending: 1_024,
            consecutive_failures: 5,
            failure_rate_pct: 50,
            window_s: 10,
            min_volume: 20,
            open_base_ms: 5_000,
            open_max_ms: 60_000,
            jitter_pct: 20,
        }
    }
}

/// `[mesh.outlier]`: passive outlier detection from live traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive 5xx or connect errors that eject an instance (0 = off).
    pub consecutive_errors: u32,
    /// Ejection time, ms, multiplied by the number of times the instance was ejected.
    pub base_ejection_ms: u64,
    /// Longest ejection, ms.
    pub max_ejection_ms: u64,
    /// At most this share of a service's instances is ejected at once, %.
    pub max_ejected_pct: u32,
    /// When fewer than this share of instances is healthy, route to all of them, %.
    pub panic_threshold_pct: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_errors: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejected_pct: 50,
            panic_threshold_pct: 50,
        }
    }
}

/// `[mesh.retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt, for routes that do not say.
    pub max_retries: u32,
    /// First backoff, ms; doubles per retry, jittered (full jitter).
    pub backoff_base_ms: u64,
    /// Longest backoff, ms.
    pub backoff_max_ms: u64,
    /// Retries allowed as a share of live requests over the budget window, %.
    pub budget_pct: u32,
    /// Retries allowed per second regardless of traffic (so a quiet service can still retry).
    pub budget_min_per_s: u32,
    /// Window the budget counts over, s.
    pub budget_window_s: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            budget_pct: 20,
            budget_min_per_s: 10,
            budget_window_s: 10,
        }
    }
}

impl MeshConfig {
    /// Checks ranges; `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((format!("mesh.{key}"), message.to_string()));
        if self.listen.is_some() != self.listen_service.is_some() {
            return bad(
                "listen",
                "listen and listen_service go together: the socket forwards to that service",
            );
        }
        if self.timeout_ms == 0 || self.timeout_ms > 3_600_000 {
            return bad("timeout_ms", "must be between 1 and 3600000");
        }
        if self.connect_timeout_ms == 0 || self.connect_timeout_ms > 60_000 {
            return bad("connect_timeout_ms", "must be between 1 and 60000");
        }
        if self.retry_buffer_kb > 65_536 {
            return bad("retry_buffer_kb", "must be at most 65536");
        }
        if self.route_body_kb == 0 || self.route_body_kb > 65_536 {
            return bad("route_body_kb", "must be between 1 and 65536");
        }
        if self.slow_start_ms > 3_600_000 {
            return bad("slow_start_ms", "must be at most 3600000");
        }
        let b = &self.breaker;
        if b.max_in_flight == 0 {
            return bad("breaker.max_in_flight", "must be at least 1");
        }
        if b.failure_rate_pct > 100 || b.jitter_pct > 100 {
            return bad(
                "breaker",
                "failure_rate_pct and jitter_pct are percentages (0-100)",
            );
        }
        if b.window_s == 0 || b.window_s > 3_600 {
            return bad("breaker.window_s", "must be between 1 and 3600");
        }
        if b.open_base_ms == 0 || b.open_base_ms > b.open_max_ms {
            return bad(
                "breaker.open_base_ms",
                "must be at least 1 and at most breaker.open_max_ms",
            );
        }
        let o = &self.outlier;
        if o.max_ejected_pct > 100 || o.panic_threshold_pct > 100 {
            return bad(
                "outlier",
                "max_ejected_pct and panic_threshold_pct are percentages (0-100)",
            );
        }
        if o.base_ejection_ms == 0 || o.base_ejection_ms > o.max_ejection_ms {
            return bad(
                "outlier.base_ejection_ms",
                "must be at least 1 and at most outlier.max_ejection_ms",
            );
        }
        let r = &self.retry;
        if r.max_retries > 10 {
            return bad("retry.max_retries", "must be at most 10");
        }
        if r.budget_window_s == 0 || r.budget_window_s > 3_600 {
            return bad("retry.budget_window_s", "must be between 1 and 3600");
        }
        if r.backoff_base_ms > r.backoff_max_ms {
            return bad(
                "retry.backoff_base_ms",
                "must be at most retry.backoff_max_ms",
            );
        }
        for (request_type, entry) in &self.routes {
            let route = entry.resolve(request_type);
            let key = format!("routes.{request_type}");
            if route.capability.trim().is_empty() {
                return bad(&key, "capability must not be empty");
            }
            if let Some(path) = &route.path
                && !path.starts_with('/')
            {
                return bad(&key, "path must start with /");
            }
            if let Some(method) = &route.method
                && http::Method::from_bytes(method.as_bytes()).is_err()
            {
                return bad(&key, "method is not an HTTP method");
            }
            if route.timeout_ms == Some(0) {
                return bad(&key, "timeout_ms must be at least 1");
            }
            if route.retries.is_some_and(|n| n > 10) {
                return bad(&key, "retries must be at most 10");
            }
            if let Err(message) = route.validate_model_and_fanout() {
                return bad(&key, &message);
            }
        }
        Ok(())
    }

    /// The route for `request_type`: configured, or the capability of the same name.
    pub fn route(&self, request_type: &str) -> RouteConfig {
        self.routes.get(request_type).map_or_else(
            || RouteConfig::for_type(request_type),
            |e| e.resolve(request_type),
        )
    }
}
