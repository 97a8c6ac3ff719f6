//! Fan-out: one request sent in parallel to every healthy instance offering a route's
//! capability (or the best N), answered with one JSON envelope.
//!
//! Per request:
//! 1. the body is read into memory once (at most `[mesh] route_body_kb`, else 413) and each
//!    part gets a copy, with the same model headers/field when the route is model-aware;
//! 2. targets: the healthy instances ([`healthy_targets`]: no panic mode), all of them (at
//!    most [`MAX_FANOUT_PARTS`]) or the first `fanout_n` in the route balancer's order;
//! 3. each part is one attempt through [`proxy::forward`] pinned to its instance, so breakers,
//!    outlier detection, concurrency limits and metrics count it like any request; the part
//!    (response headers and body, at most [`MAX_PART_BODY_BYTES`]) must finish within the
//!    route's timeout, else it is marked timed out;
//! 4. parts are aggregated as they finish: `all` waits for every part, `first_success` answers
//!    with the first 2xx part, `quorum` answers as soon as `quorum` parts are 2xx (or as soon as
//!    that can no longer happen); parts still running then are cancelled and counted;
//! 5. outcome metrics of each part (header or `evolve_outcome`) are recorded like a single
//!    request's (so only on a route with `record_outcomes = true`, from local services).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::{Aggregate, Fanout, MAX_FANOUT_PARTS, RouteConfig};
use super::lb::Balancer;
use super::model::{self, Selection};
use super::proxy::{self, Plan};
use super::service::{ServiceState, balancer_order, healthy_targets};
use super::{Mesh, MeshError, RouteModel};

/// Most bytes of one part's response body kept in the envelope; a larger body marks the part
/// failed (the envelope must stay a bounded answer).
pub const MAX_PART_BODY_BYTES: usize = 1024 * 1024;

/// What one fan-out sends.
pub(super) struct FanoutRequest {
    pub request_type: String,
    pub route: RouteConfig,
    pub services: Vec<Arc<ServiceState>>,
    pub balancer: Arc<Balancer>,
    pub path_and_query: String,
    pub method: Option<Method>,
    pub timeout: Duration,
    pub strip_authorization: bool,
    pub model: RouteModel,
}

/// One part of the envelope.
#[derive(Debug, Clone)]
struct Part {
    service: String,
    instance: String,
    status: Option<u16>,
    latency_ms: f64,
    body: Value,
    error: Option<String>,
}

impl Part {
    fn succeeded(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    fn result(&self) -> &'static str {
        match (self.status, &self.error) {
            (Some(_), None) if self.succeeded() => "ok",
            (Some(_), None) => "error_status",
            (None, Some(error)) if error.starts_with("timed out") => "timeout",
            _ => "failed",
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "service": self.service,
            "instance": self.instance,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "body": self.body,
            "error": self.error,
        })
    }
}

/// Sends `request` per `plan` to every target; see the module docs for the steps.
pub(super) async fn fan_out(
    mesh: &Mesh,
    plan: FanoutRequest,
    request: Request<Body>,
) -> Result<Response<Body>, MeshError> {
    let config = mesh.config();
    // Step 1.
    let (parts, body) = request.into_parts();
    let cap = config.route_body_kb.saturating_mul(1024) as usize;
    let body = http_body_util::Limited::new(body, cap)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                MeshError::BodyTooLarge {
                    limit_kb: config.route_body_kb,
                }
            } else {
                MeshError::BadRequest(format!("reading the request body failed: {error}"))
            }
        })?
        .to_bytes();
    let mut headers = parts.headers;
    let body = match &plan.model {
        RouteModel::Selected(selection) => {
            model::set_model_headers(&mut headers, selection);
            match model::is_json(&headers)
                .then(|| model::inject_model_field(&body, selection))
                .flatten()
            {
                Some(with_model) => with_model,
                None => body,
            }
        }
        _ => body,
    };
    // The body is whole now: it goes with its length, never chunked.
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let method = plan.method.clone().unwrap_or(parts.method);

    // Step 2.
    let (targets, why) = healthy_targets(&plan.services, config);
    let targets = match plan.route.fanout {
        Fanout::BestN => {
            let n = plan.route.fanout_n.unwrap_or(1) as usize;
            balancer_order(targets, &plan.balancer, n)
        }
        _ => targets
            .into_iter()
            .take(MAX_FANOUT_PARTS as usize)
            .collect(),
    };
    if targets.is_empty() {
        return Err(MeshError::Unavailable {
            target: plan
                .services
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            detail: why,
        });
    }

    // Step 3.
    let started = Instant::now();
    let deadline = started + plan.timeout;
    let selection = match &plan.model {
        RouteModel::Selected(selection) => Some(selection.clone()),
        _ => None,
    };
    let route_source = format!("route:{}", plan.request_type);
    let mut running = JoinSet::new();
    let total = targets.len();
    for (index, target) in targets.into_iter().enumerate() {
        let exclude: Vec<u64> = target
            .service
            .instances
            .iter()
            .filter(|i| i.uid != target.instance.uid)
            .map(|i| i.uid)
            .collect();
        let send = SendPart {
            mesh: mesh.clone(),
            service: Arc::clone(&target.service),
            service_name: target.service.name().to_string(),
            instance_id: target.instance.id.clone(),
            exclude,
            balancer: Arc::clone(&plan.balancer),
            method: method.clone(),
            path_and_query: plan.path_and_query.clone(),
            headers: headers.clone(),
            body: body.clone(),
            timeout: plan.timeout,
            deadline,
            strip_authorization: plan.strip_authorization,
            // A part whose outcome is not believed records none (see `records_outcomes`).
            selection: selection
                .clone()
                .filter(|_| model::records_outcomes(&plan.route, &target.service)),
            route_source: route_source.clone(),
        };
        running.spawn(async move { (index, send.run().await) });
    }

    // Step 4.
    let aggregate = plan.route.aggregate.unwrap_or_default();
    let quorum = plan.route.quorum.unwrap_or(1) as usize;
    let mut done: Vec<(usize, Part)> = Vec::with_capacity(total);
    let mut successes = 0usize;
    while let Some(joined) = running.join_next().await {
        let Ok((index, part)) = joined else {
            continue;
        };
        mesh.route_stats()
            .count_part(&plan.request_type, part.result());
        if part.succeeded() {
            successes += 1;
        }
        done.push((index, part));
        let finished = done.len();
        match aggregate {
            Aggregate::FirstSuccess if successes == 1 => break,
            Aggregate::Quorum if successes >= quorum => break,
            Aggregate::Quorum if successes + (total - finished) < quorum => break,
            _ => {}
        }
    }
    let cancelled = total - done.len();
    // Parts still running are cancelled here (their connections close; breakers see nothing).
    running.abort_all();
    done.sort_by_key(|(index, _)| *index);

    let (status, shown): (StatusCode, Vec<Part>) = match aggregate {
        // The loop stopped at the first success, so `done` holds exactly one.
        Aggregate::FirstSuccess => match done.iter().find(|(_, p)| p.succeeded()) {
            Some((_, part)) => (StatusCode::OK, vec![part.clone()]),
            None => (
                StatusCode::BAD_GATEWAY,
                done.into_iter().map(|(_, p)| p).collect(),
            ),
        },
        Aggregate::Quorum => (
            if successes >= quorum {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            },
            done.into_iter().map(|(_, p)| p).collect(),
        ),
        Aggregate::All => {
            let answered = done.iter().any(|(_, p)| p.status.is_some());
            (
                if answered {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_GATEWAY
                },
                done.into_iter().map(|(_, p)| p).collect(),
            )
        }
    };
    let partial = shown
        .iter()
        .any(|p| p.status.is_none() || p.error.is_some());
    let envelope = json!({
        "request_type": plan.request_type,
        "aggregate": aggregate.as_str(),
        "partial": partial,
        "targets": total,
        "cancelled": cancelled,
        "successes": successes,
        "parts": shown.iter().map(Part::to_json).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&envelope).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out.insert(super::HEADER_FANOUT_PARTS, HeaderValue::from(total));
    match &plan.model {
        RouteModel::Selected(selection) => model::set_model_headers(out, selection),
        RouteModel::Fallback(reason) => model::set_fallback_headers(out, reason),
        RouteModel::Off => {}
    }
    // Step 5 ran in each part.
    Ok(response)
}

/// One part's request, owned so it runs as its own task.
struct SendPart {
    mesh: Mesh,
    service: Arc<ServiceState>,
    service_name: String,
    instance_id: String,
    exclude: Vec<u64>,
    balancer: Arc<Balancer>,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    deadline: Instant,
    strip_authorization: bool,
    /// The model to record this part's outcome against; `None` when the route is not
    /// model-aware or this part's outcome is not believed.
    selection: Option<Selection>,
    route_source: String,
}

impl SendPart {
    async fn run(self) -> Part {
        let sent = Instant::now();
        let mut part = Part {
            service: self.service_name.clone(),
            instance: self.instance_id.clone(),
            status: None,
            latency_ms: 0.0,
            body: Value::Null,
            error: None,
        };
        let timed_out = format!("timed out after {} ms", self.timeout.as_millis());
        let mut request = Request::new(Body::from(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.headers_mut() = self.headers.clone();
        let plan = Plan {
            services: std::slice::from_ref(&self.service),
            balancer: &self.balancer,
            path_and_query: match proxy::path_and_query(self.path_and_query.clone()) {
                Ok(path) => path,
                Err(error) => {
                    part.error = Some(error.to_string());
                    return part;
                }
            },
            method: None,
            timeout: self.timeout,
            retries: 0,
            retry_non_idempotent: false,
            exclude: self.exclude.clone(),
            strip_authorization: self.strip_authorization,
        };
        let forwarded = proxy::forward(&self.mesh.data_path(), plan, request).await;
        let response = match forwarded {
            Ok(response) => response,
            Err(MeshError::Timeout { .. }) => {
                part.latency_ms = millis(sent.elapsed());
                part.error = Some(timed_out);
                return part;
            }
            Err(error) => {
                part.latency_ms = millis(sent.elapsed());
                part.error = Some(error.to_string());
                return part;
            }
        };
        let (head, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_PART_BODY_BYTES);
        let read = tokio::time::timeout_at(self.deadline, limited.collect()).await;
        part.latency_ms = millis(sent.elapsed());
        let bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) => {
                part.error = Some(if error.is::<http_body_util::LengthLimitError>() {
                    format!(
                        "HTTP {}: the body is larger than {MAX_PART_BODY_BYTES} bytes",
                        head.status.as_u16()
                    )
                } else {
                    format!("HTTP {}: reading the body failed: {error}", head.status)
                });
                return part;
            }
            Err(_) => {
                part.error = Some(format!("{timed_out} (reading the body)"));
                return part;
            }
        };
        part.status = Some(head.status.as_u16());
        let json = model::is_json(&head.headers);
        part.body = if json {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        // Step 5.
        if let (Some(selection), Some(routing)) = (&self.selection, self.mesh.model_routing()) {
            let backend = format!("{}/{}", self.service_name, self.instance_id);
            let in_header =
                routing.record_from_headers(&head.headers, selection, &self.route_source, &backend);
            if !in_header && json && bytes.len() <= model::MAX_OUTCOME_SCAN_BYTES {
                routing.record_from_json_body(&bytes, selection, &self.route_source, &backend);
            }
        }
        part
    }
}

fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}
