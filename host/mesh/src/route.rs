//! `POST /v1/route/{type}`: the route's capability picks the services, its settings the path,
//! method, timeout and balancer; a model-aware route adds the model its registry selects (or
//! takes its fallback) and, when the route says `record_outcomes = true` and the answering
//! service is this daemon's own, reads back the outcome the backend reports; a fan-out route
//! goes to [`crate::fanout`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response};

use super::catalog::LbKind;
use super::config::{Fanout, ModelFallback, RouteConfig};
use super::lb::Balancer;
use super::model::{self, NoModel, Selection};
use super::proxy::{self, Plan};
use super::service::ServiceState;
use super::{Mesh, MeshError, fanout};

/// Route balancers cached per request type; beyond this, routes get a fresh balancer per
/// request (still correct for p2c and least-loaded; round-robin state is then per request).
const MAX_CACHED_ROUTES: usize = 4_096;

/// What a route's request carries of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteModel {
    /// The route is not model-aware.
    Off,
    Selected(Selection),
    /// Model-aware, but there is no model: sent without one, for this reason.
    Fallback(&'static str),
}

impl Mesh {
    /// `POST /v1/route/{type}`: forwards to a service offering the route's capability (to
    /// every healthy one for a fan-out route), with the route's model when it is model-aware.
    pub async fn route(
        &self,
        request_type: &str,
        request: Request<Body>,
        strip_authorization: bool,
    ) -> Result<Response<Body>, MeshError> {
        let route = self.inner.config.route(request_type);
        let pool: Vec<Arc<ServiceState>> = self
            .services()
            .values()
            .filter(|s| s.spec.capabilities.contains(&route.capability))
            .cloned()
            .collect();
        if pool.is_empty() {
            return Err(MeshError::NoRoute {
                request_type: request_type.to_string(),
                capability: route.capability,
            });
        }
        let kind = route.lb.unwrap_or(self.inner.config.lb);
        let balancer = self.route_balancer(request_type, kind);
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let path = route
            .path
            .clone()
            .unwrap_or_else(|| format!("/{request_type}"));
        let method = match &route.method {
            Some(m) => Some(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| MeshError::BadRequest(format!("route method {m} is invalid")))?,
            ),
            None => None,
        };
        let timeout =
            Duration::from_millis(route.timeout_ms.unwrap_or(self.inner.config.timeout_ms));
        let model = self.route_model(request_type, &route).await?;
        if route.fanout != Fanout::None {
            let plan = fanout::FanoutRequest {
                request_type: request_type.to_string(),
                services: pool,
                balancer,
                path_and_query: format!("{path}{query}"),
                method,
                timeout,
                strip_authorization,
                model,
                route,
            };
            return fanout::fan_out(self, plan, request).await;
        }
        let request = match &model {
            RouteModel::Selected(selection) => self.with_model(request, selection).await?,
            _ => request,
        };
        let plan = Plan {
            services: &pool,
            balancer: &balancer,
            path_and_query: proxy::path_and_query(format!("{path}{query}"))?,
            method,
            timeout,
            retries: route.retries.unwrap_or(self.inner.config.retry.max_retries),
            retry_non_idempotent: route.retry_non_idempotent,
            exclude: Vec::new(),
            strip_authorization,
        };
        let response = proxy::forward(&self.data_path(), plan, request).await?;
        Ok(self.model_response(request_type, &route, &pool, response, &model))
    }

    /// The model a route's request carries: none for a plain route, the registry's selection,
    /// or the route's fallback when there is none (`Err(NoModel)` for `reject`).
    async fn route_model(
        &self,
        request_type: &str,
        route: &RouteConfig,
    ) -> Result<RouteModel, MeshError> {
        let (Some(task), Some(wanted)) = (&route.task, route.model_wanted()) else {
            return Ok(RouteModel::Off);
        };
        let stats = &self.inner.route_stats;
        let selected = match self.model_routing() {
            Some(routing) => routing.select(task, &wanted, route.policy.as_deref()).await,
            None => Err(NoModel {
                reason: "no_registry",
                detail: "this daemon has no model registry".into(),
            }),
        };
        match selected {
            Ok(selection) => {
                let kind = if selection.source.starts_with("alias:") {
                    "alias"
                } else {
                    "best"
                };
                stats.count_selection(request_type, kind);
                Ok(RouteModel::Selected(selection))
            }
            Err(none) => match route.model_fallback.unwrap_or_default() {
                ModelFallback::Forward => {
                    stats.count_selection(request_type, "none");
                    tracing::debug!(route = request_type, task, reason = none.reason, detail = %none.detail, "no model for the route; forwarding without one");
                    Ok(RouteModel::Fallback(none.reason))
                }
                ModelFallback::Reject => {
                    stats.count_selection(request_type, "rejected");
                    Err(MeshError::NoModel {
                        request_type: request_type.to_string(),
                        task: task.clone(),
                        detail: none.detail,
                    })
                }
            },
        }
    }

    /// `request` with the model headers and, for a JSON object body of known length within
    /// `route_body_kb`, the `evolve_model` field. Other bodies stream as they came.
    async fn with_model(
        &self,
        request: Request<Body>,
        selection: &Selection,
    ) -> Result<Request<Body>, MeshError> {
        use http_body_util::BodyExt;
        use hyper::body::Body as _;
        let (mut parts, body) = request.into_parts();
        model::set_model_headers(&mut parts.headers, selection);
        let cap = self.inner.config.route_body_kb.saturating_mul(1024);
        let fits = body.size_hint().exact().is_some_and(|n| n > 0 && n <= cap);
        if !(fits && model::is_json(&parts.headers)) {
            return Ok(Request::from_parts(parts, body));
        }
        let bytes = http_body_util::Limited::new(body, cap as usize)
            .collect()
            .await
            .map_err(|e| MeshError::BadRequest(format!("reading the request body failed: {e}")))?
            .to_bytes();
        let bytes = model::inject_model_field(&bytes, selection).unwrap_or(bytes);
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(bytes.len()),
        );
        Ok(Request::from_parts(parts, Body::from(bytes)))
    }

    /// Names the model in the response and, when [`model::records_outcomes`] allows it for
    /// the service that answered, takes the outcome the backend reported: from the header at
    /// once, or from a JSON body's field as it streams past (never buffered here).
    fn model_response(
        &self,
        request_type: &str,
        route: &RouteConfig,
        pool: &[Arc<ServiceState>],
        mut response: Response<Body>,
        model: &RouteModel,
    ) -> Response<Body> {
        let selection = match model {
            RouteModel::Off => return response,
            RouteModel::Fallback(reason) => {
                model::set_fallback_headers(response.headers_mut(), reason);
                return response;
            }
            RouteModel::Selected(selection) => selection,
        };
        model::set_model_headers(response.headers_mut(), selection);
        let Some(routing) = self.model_routing() else {
            return response;
        };
        let headers = response.headers();
        // The proxy wrote `x-evolve-service` over whatever the backend sent (a validated service
        // name is always a valid header value), so it names the service that answered.
        let service = headers
            .get(proxy::HEADER_SERVICE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let believed = pool
            .iter()
            .find(|s| s.name() == service)
            .is_some_and(|s| model::records_outcomes(route, s));
        if !believed {
            return response;
        }
        let backend = format!(
            "{service}/{}",
            headers
                .get(proxy::HEADER_INSTANCE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        );
        let route_source = format!("route:{request_type}");
        if routing.record_from_headers(headers, selection, &route_source, &backend) {
            return response;
        }
        if !model::should_scan(headers) {
            return response;
        }
        let (parts, body) = response.into_parts();
        let sink = model::ScanSink {
            routing: Arc::clone(routing),
            selection: selection.clone(),
            route_source,
            backend,
        };
        Response::from_parts(parts, Body::new(model::ScannedBody::new(body, sink)))
    }

    fn route_balancer(&self, request_type: &str, kind: LbKind) -> Arc<Balancer> {
        let Ok(mut routes) = self.inner.routes.lock() else {
            return Arc::new(Balancer::new(kind));
        };
        if let Some(balancer) = routes.get(request_type)
            && balancer.kind() == kind
        {
            return Arc::clone(balancer);
        }
        let balancer = Arc::new(Balancer::new(kind));
        if routes.len() < MAX_CACHED_ROUTES {
            routes.insert(request_type.to_string(), Arc::clone(&balancer));
        }
        balancer
    }
}
