//! The service mesh: a catalog of services, capability routing, a proxy with load balancing,
//! active and passive health, circuit breaking and retries.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the `[mesh]` section (routes, breaker, outlier, retry) |
//! | [`catalog`] | service specs and their validation ([`catalog::spec`]), the crash-safe catalog file ([`catalog::store`]) |
//! | [`service`] | a running service: choosing an instance, recording outcomes |
//! | [`instance`] | a running instance: weight, in-flight, peak EWMA, counters, slow start |
//! | [`lb`] | load-balancing algorithms, one file each |
//! | `route` | `POST /v1/route/{type}`: capability routes, their model, fan-out hand-off ([`Mesh::route`]) |
//! | [`listener`] | the optional data-plane socket that forwards every path to one service, with its HTTP/1.1 fast path |
//! | [`h1`] | the fast path's HTTP/1.1 codec |
//! | [`pool`] | per-instance keep-alive connections (HTTP/1.1 senders, one shared h2c connection) |
//! | [`proxy`] | the data path: pooled HTTP/1.1 and h2c, streaming, deadlines, retries |
//! | [`model`] | model-aware routes: the [`ModelSelector`] seam, selection cache, outcomes, body scan |
//! | [`fanout`] | one request to many instances, aggregated into one envelope |
//! | [`health`] | active checks by health-checker plugins: the hysteresis ([`health::state`], a leaf) and the check loop ([`health::check`]) |
//! | [`outlier`] | passive outlier detection and ejection |
//! | [`breaker`] | concurrency caps per service, failure accrual per instance |
//! | [`retry`] | idempotency, retry budget, backoff |
//! | [`view`] | what the API, inventory and probes read |
//! | [`remote`] | other daemons' services merged into the catalog (the cluster's seam) |
//! | [`error`] | [`MeshError`], and how each maps to an HTTP answer |
//!
//! The spec types ([`catalog::spec`]) and the state machines ([`health::state`], [`outlier`],
//! [`breaker`]) import no running-state module; [`instance`] builds on them, [`service`] on
//! [`instance`], and [`Mesh`] on all.
//!
//! Data flows API/CLI → [`Mesh`] → proxy → instances, and [`Mesh`] → runtime → checker plugin
//! for active health.

pub mod breaker;
pub mod catalog;
pub mod config;
pub mod error;
pub mod fanout;
pub mod h1;
pub mod health;
pub mod instance;
pub mod lb;
pub mod listener;
pub mod model;
pub mod outlier;
pub mod pool;
pub mod proxy;
pub mod remote;
pub mod retry;
mod route;
pub mod service;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response};
use serde_json::json;

pub use self::catalog::{CatalogFileError, CheckedSpecError, LbKind, ServiceSpec, SpecError};
pub use self::config::MeshConfig;
pub use self::error::MeshError;
pub use self::health::{CheckOutcome, CheckReport, CheckRunner, CheckVerdict, InstanceRecord};
pub use self::model::{ModelSelector, NoModel, RouteStats, Selection};
pub use self::remote::{MergeReport, RemoteEntry};
pub use self::route::RouteModel;
pub use self::service::{Source, Unavailable};
pub use self::view::{InventoryEntry, ProbeReport, ServiceView};

use self::catalog::CatalogStore;
use self::health::CheckContext;
use self::lb::Balancer;
use self::model::ModelRouting;
use self::proxy::{DataPath, Plan};
use self::service::ServiceState;
use evolve_core::events::{Event, EventBus, EventKind};

/// Parts a fan-out sent (on its envelope response).
pub const HEADER_FANOUT_PARTS: &str = "x-evolve-fanout-parts";

/// The mesh; cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("services", &self.services().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: MeshConfig,
    /// Copy-on-write: the data path clones the `Arc` and never waits for a registration.
    services: RwLock<Arc<BTreeMap<String, Arc<ServiceState>>>>,
    /// Serialises registrations and removals with their catalog-file write.
    writer: tokio::sync::Mutex<()>,
    store: CatalogStore,
    events: EventBus,
    runner: Arc<dyn CheckRunner>,
    routes: Mutex<HashMap<String, Arc<Balancer>>>,
    checks_started: AtomicBool,
    /// Model-aware routing, when the mesh was built with a selector
    /// ([`Mesh::with_model_selector`]); without one model-aware routes take their fallback.
    models: Option<Arc<ModelRouting>>,
    route_stats: Arc<RouteStats>,
    /// Other daemons' announced services (see [`remote`]).
    remote: Mutex<remote::RemoteTable>,
}

impl Mesh {
    /// Builds the mesh from `config` and the catalog file at `catalog_path`. Services of the
    /// config file come first; a stored service with the same name is refused with an error
    /// naming both, since the operator must decide which one is meant.
    pub fn new(
        config: MeshConfig,
        catalog_path: PathBuf,
        runner: Arc<dyn CheckRunner>,
        events: EventBus,
    ) -> Result<Mesh, MeshError> {
        Mesh::with_model_selector(config, catalog_path, runner, None, events)
    }

    /// [`Mesh::new`], with `selector` (the model registry) answering model-aware routes. With a
    /// selector this must run inside a tokio runtime: it starts the writer that records the
    /// outcomes backends report.
    pub fn with_model_selector(
        config: MeshConfig,
        catalog_path: PathBuf,
        runner: Arc<dyn CheckRunner>,
        selector: Option<Arc<dyn ModelSelector>>,
        events: EventBus,
    ) -> Result<Mesh, MeshError> {
        let store = CatalogStore::new(catalog_path);
        let stored = store.load()?;
        let mut services = BTreeMap::new();
        for spec in &config.services {
            let mut spec = spec.clone();
            spec.validate(None).map_err(|e| {
                MeshError::BadRequest(format!("[[mesh.services]] \"{}\": {e}", spec.name))
            })?;
            if services.contains_key(&spec.name) {
                return Err(MeshError::BadRequest(format!(
                    "[[mesh.services]] defines \"{}\" twice",
                    spec.name
                )));
            }
            let state = ServiceState::new(spec.clone(), Source::Config, &config, None);
            services.insert(spec.name, Arc::new(state));
        }
        for spec in stored {
            if services.contains_key(&spec.name) {
                return Err(MeshError::BadRequest(format!(
                    "service \"{}\" is both in [[mesh.services]] and in the catalog {} (registered through the API); remove it from one of them",
                    spec.name,
                    store.path().display()
                )));
            }
            let state = ServiceState::new(spec.clone(), Source::Api, &config, None);
            services.insert(spec.name, Arc::new(state));
        }
        let route_stats: Arc<RouteStats> = Arc::default();
        let models = selector.map(|selector| {
            Arc::new(ModelRouting::start(
                selector,
                &events,
                Arc::clone(&route_stats),
            ))
        });
        Ok(Mesh {
            inner: Arc::new(Inner {
                config,
                services: RwLock::new(Arc::new(services)),
                writer: tokio::sync::Mutex::new(()),
                store,
                events,
                runner,
                routes: Mutex::new(HashMap::new()),
                checks_started: AtomicBool::new(false),
                models,
                route_stats,
                remote: Mutex::new(remote::RemoteTable::new()),
            }),
        })
    }

    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    pub(crate) fn model_routing(&self) -> Option<&Arc<ModelRouting>> {
        self.inner.models.as_ref()
    }

    /// Counters of model selections, outcomes and fan-out parts.
    pub fn route_stats(&self) -> &Arc<RouteStats> {
        &self.inner.route_stats
    }

    /// Starts active health checks of every service (call once the checker plugins are loaded);
    /// services registered later start theirs at registration.
    pub fn start_health_checks(&self) {
        if self.inner.checks_started.swap(true, Ordering::SeqCst) {
            return;
        }
        for service in self.services().values() {
            self.spawn_checks(service);
        }
    }

    fn spawn_checks(&self, service: &ServiceState) {
        let Some(spec) = &service.spec.health else {
            return;
        };
        if service.source == Source::Remote && !self.inner.runner.has_checker(&spec.checker) {
            tracing::warn!(service = %service.spec.name, checker = %spec.checker, origin = ?service.origin, "remote service names a health checker not loaded here: no active checks on this node (passive outlier detection only)");
            return;
        }
        let context = CheckContext {
            runner: Arc::clone(&self.inner.runner),
            events: self.inner.events.clone(),
            service_type: service.spec.service_type.clone(),
            capabilities: service.spec.capabilities.clone(),
        };
        let handles = health::spawn_checks(&service.instances, spec, &context);
        if let Ok(mut checks) = service.checks.lock() {
            checks.extend(handles);
        }
    }

    fn stop_checks(service: &ServiceState) {
        if let Ok(mut checks) = service.checks.lock() {
            for check in checks.drain(..) {
                check.abort();
            }
        }
    }

    /// A snapshot of the catalog.
    pub fn services(&self) -> Arc<BTreeMap<String, Arc<ServiceState>>> {
        let guard = self
            .inner
            .services
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard)
    }

    pub fn service(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.services().get(name).cloned()
    }

    fn publish_catalog(&self, services: BTreeMap<String, Arc<ServiceState>>) {
        let mut guard = self
            .inner
            .services
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(services);
    }

    /// Writes the API-registered services to the catalog file, off the async workers (the write
    /// fsyncs).
    async fn persist(
        &self,
        services: &BTreeMap<String, Arc<ServiceState>>,
    ) -> Result<(), MeshError> {
        let specs: Vec<ServiceSpec> = services
            .values()
            .filter(|s| s.source == Source::Api)
            .map(|s| s.spec.clone())
            .collect();
        let store = self.inner.store.clone();
        let path = store.path().to_path_buf();
        tokio::task::spawn_blocking(move || store.save(&specs))
            .await
            .map_err(|e| CatalogFileError::Write {
                path,
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(())
    }

    /// Registers `spec` (validated here); with `replace`, an API-registered service of the same
    /// name is replaced, keeping the state of unchanged instances. The catalog file is durable
    /// before this returns.
    pub async fn register(
        &self,
        mut spec: ServiceSpec,
        replace: bool,
    ) -> Result<ServiceView, MeshError> {
        let runner = Arc::clone(&self.inner.runner);
        let known = move |name: &str| runner.has_checker(name);
        spec.validate(Some(&known))?;
        let _writer = self.inner.writer.lock().await;
        let current = self.services();
        let previous = current.get(&spec.name).cloned();
        match &previous {
            Some(existing) if existing.source == Source::Config => {
                return Err(MeshError::ConfigOwned(spec.name));
            }
            // A local registration shadows another node's service of that name.
            Some(existing) if existing.source == Source::Remote => {}
            Some(_) if !replace => return Err(MeshError::Duplicate(spec.name)),
            None if current.values().filter(|s| s.source.is_local()).count()
                >= catalog::MAX_SERVICES =>
            {
                return Err(MeshError::TooManyServices(current.len()));
            }
            _ => {}
        }
        let previous = previous.filter(|p| p.source.is_local());
        let state = Arc::new(ServiceState::new(
            spec.clone(),
            Source::Api,
            &self.inner.config,
            previous.as_deref(),
        ));
        let mut next = (*current).clone();
        next.insert(spec.name.clone(), Arc::clone(&state));
        self.persist(&next).await?;
        if let Some(previous) = &previous {
            Self::stop_checks(previous);
        }
        self.publish_catalog(next);
        if self.inner.checks_started.load(Ordering::SeqCst) {
            self.spawn_checks(&state);
        }
        self.inner.events.publish(Event::new(
            EventKind::ServiceRegistered,
            spec.name.clone(),
            json!({
                "replaced": previous.is_some(),
                "instances": spec.instances.len(),
                "capabilities": spec.capabilities,
            }),
        ));
        Ok(ServiceView::of(&state, self.slow_start()))
    }

    /// Removes an API-registered service; durable before this returns.
    pub async fn remove(&self, name: &str) -> Result<(), MeshError> {
        let _writer = self.inner.writer.lock().await;
        let current = self.services();
        let Some(existing) = current.get(name).cloned() else {
            return Err(MeshError::UnknownService(name.to_string()));
        };
        if existing.source == Source::Config {
            return Err(MeshError::ConfigOwned(name.to_string()));
        }
        if let Some(error) = Self::remote_owned(&existing) {
            return Err(error);
        }
        let mut next = (*current).clone();
        next.remove(name);
        self.persist(&next).await?;
        Self::stop_checks(&existing);
        // Another node's service of the same name, shadowed until now, becomes routable.
        self.overlay_remote(&mut next);
        self.publish_catalog(next);
        self.inner.events.publish(Event::new(
            EventKind::ServiceDeregistered,
            name.to_string(),
            json!({ "instances": existing.instances.len() }),
        ));
        Ok(())
    }

    pub(crate) fn data_path(&self) -> DataPath<'_> {
        DataPath {
            config: &self.inner.config,
            events: &self.inner.events,
        }
    }

    /// `/v1/services/{name}/proxy/{path}`: forwards to the named service; `path_and_query`
    /// starts with `/`.
    pub async fn proxy(
        &self,
        name: &str,
        path_and_query: String,
        request: Request<Body>,
        strip_authorization: bool,
    ) -> Result<Response<Body>, MeshError> {
        let path_and_query = proxy::path_and_query(path_and_query)?;
        self.proxy_to(name, path_and_query, request, strip_authorization)
            .await
    }

    /// [`Mesh::proxy`] with the path already parsed (the data-plane listener reuses the
    /// request's).
    pub async fn proxy_to(
        &self,
        name: &str,
        path_and_query: http::uri::PathAndQuery,
        request: Request<Body>,
        strip_authorization: bool,
    ) -> Result<Response<Body>, MeshError> {
        let service = self
            .service(name)
            .ok_or_else(|| MeshError::UnknownService(name.to_string()))?;
        let plan = Plan {
            balancer: &service.balancer,
            services: std::slice::from_ref(&service),
            path_and_query,
            method: None,
            timeout: Duration::from_millis(self.inner.config.timeout_ms),
            retries: self.inner.config.retry.max_retries,
            retry_non_idempotent: false,
            exclude: Vec::new(),
            strip_authorization,
        };
        proxy::forward(&self.data_path(), plan, request).await
    }

    /// Sends one `GET` of the service's health path (its health spec's, else `/health`)
    /// through the mesh — balancer, breakers and all — and reports what came back. For other
    /// subsystems (e.g. a meta agent's probe import).
    pub async fn probe_service(&self, name: &str) -> Result<ProbeReport, MeshError> {
        let service = self
            .service(name)
            .ok_or_else(|| MeshError::UnknownService(name.to_string()))?;
        let path = service
            .spec
            .health
            .as_ref()
            .map_or_else(|| "/health".to_string(), |h| h.path.clone());
        let request = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .body(Body::empty())
            .map_err(|e| MeshError::BadRequest(e.to_string()))?;
        let started = tokio::time::Instant::now();
        let response = self.proxy(name, path.clone(), request, false).await?;
        let latency_us = started.elapsed().as_micros() as u64;
        let header = |h: &str| {
            response
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Ok(ProbeReport {
            service: name.to_string(),
            instance: header(proxy::HEADER_INSTANCE),
            path,
            status: response.status().as_u16(),
            healthy: response.status().is_success(),
            latency_us,
        })
    }

    /// Every service with its instances' health, breaker state and latency.
    pub fn views(&self) -> Vec<ServiceView> {
        let slow_start = self.slow_start();
        self.services()
            .values()
            .map(|s| ServiceView::of(s, slow_start))
            .collect()
    }

    fn slow_start(&self) -> Duration {
        Duration::from_millis(self.inner.config.slow_start_ms)
    }

    /// One inventory entry per instance, for the plugins' `inventory.services()`.
    pub fn inventory(&self) -> Vec<view::InventoryEntry> {
        let services: Vec<Arc<ServiceState>> = self.services().values().cloned().collect();
        view::inventory(&services)
    }
}
