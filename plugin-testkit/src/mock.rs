//! The scripted parts of the host: the system a plugin sees through `inventory`, the answers of
//! `probes`, and fake HTTP hosts for checkers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evolve_runtime::bindings::inventory::{
    AgentSummary, ApiEndpoint, HostSummary, ModelChoice, ModelSummary, ServiceStatus,
};
use evolve_runtime::bindings::probes::ProbeResult;
use evolve_runtime::bindings::types::{HealthReport, HealthStatus, Service};
use evolve_runtime::sandbox::{HttpTransport, uri_host_port};
use evolve_runtime::{SystemInventory, SystemProbes};

/// A service instance for `check` or the inventory: `name` at `endpoint`, weight 100, no
/// capabilities or metadata (set the public fields for more).
pub fn service(name: &str, endpoint: &str) -> Service {
    Service {
        name: name.to_owned(),
        service_type: "service".to_owned(),
        endpoint: endpoint.to_owned(),
        capabilities: Vec::new(),
        weight: 100,
        metadata: Vec::new(),
    }
}

/// The system the plugin sees through the `inventory` import. Its own entry in `plugins()` comes
/// from the runtime, as in the daemon.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub host: HostSummary,
    pub services: Vec<ServiceStatus>,
    pub models: Vec<ModelSummary>,
    pub best_models: Vec<ModelChoice>,
    pub agents: Vec<AgentSummary>,
    pub api_endpoints: Vec<ApiEndpoint>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            host: HostSummary {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                api_listen: "127.0.0.1:7070".to_owned(),
                api_auth: false,
                uptime_s: 0,
            },
            services: Vec::new(),
            models: Vec::new(),
            best_models: Vec::new(),
            agents: Vec::new(),
            api_endpoints: Vec::new(),
        }
    }
}

impl Inventory {
    pub fn new() -> Inventory {
        Inventory::default()
    }

    /// Adds a service whose last check said `health` (`None`: never checked), circuit closed.
    pub fn service(mut self, service: Service, health: Option<HealthStatus>) -> Inventory {
        self.services.push(ServiceStatus {
            service,
            health: health.map(|status| HealthReport {
                status,
                latency_us: 1_000,
                detail: format!("scripted {}", status.as_str()),
                checked_at_ms: 0,
            }),
            circuit: "closed".to_owned(),
        });
        self
    }

    /// Adds a model with `latest_version` and no aliases or tags.
    pub fn model(mut self, name: &str, task_type: &str, latest_version: u32) -> Inventory {
        self.models.push(ModelSummary {
            name: name.to_owned(),
            task_type: task_type.to_owned(),
            latest_version,
            aliases: Vec::new(),
            tags: Vec::new(),
        });
        self
    }

    /// Adds an agent with no runs yet.
    pub fn agent(mut self, name: &str) -> Inventory {
        self.agents.push(AgentSummary {
            name: name.to_owned(),
            version: "0.1.0".to_owned(),
            schedule: None,
            health: None,
            runs: 0,
            successes: 0,
            last_run_ms: None,
        });
        self
    }
}

impl SystemInventory for Inventory {
    fn host(&self) -> HostSummary {
        self.host.clone()
    }
    fn services(&self) -> Vec<ServiceStatus> {
        self.services.clone()
    }
    fn models(&self) -> Vec<ModelSummary> {
        self.models.clone()
    }
    fn best_models(&self) -> Vec<ModelChoice> {
        self.best_models.clone()
    }
    fn agents(&self) -> Vec<AgentSummary> {
        self.agents.clone()
    }
    fn api_endpoints(&self) -> Vec<ApiEndpoint> {
        self.api_endpoints.clone()
    }
}

/// Scripted answers of the `probes` import, by what is probed; anything unscripted fails with
/// `ok: false` and says it was not scripted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probes {
    pub(crate) answers: HashMap<(ProbeKind, String), (bool, String)>,
}

/// Which `probes` function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Service,
    Checker,
    BestModel,
    Agent,
}

impl Probes {
    fn answer(&self, kind: ProbeKind, name: &str) -> ProbeResult {
        let (ok, detail) = self
            .answers
            .get(&(kind, name.to_owned()))
            .cloned()
            .unwrap_or_else(|| (false, format!("probe of `{name}` was not scripted")));
        ProbeResult {
            ok,
            detail,
            latency_us: 0,
        }
    }
}

#[async_trait::async_trait]
impl SystemProbes for Probes {
    async fn service(&self, name: &str) -> ProbeResult {
        self.answer(ProbeKind::Service, name)
    }
    async fn checker(&self, name: &str) -> ProbeResult {
        self.answer(ProbeKind::Checker, name)
    }
    async fn best_model(&self, task_type: &str) -> ProbeResult {
        self.answer(ProbeKind::BestModel, task_type)
    }
    async fn agent(&self, _caller: &str, name: &str) -> ProbeResult {
        self.answer(ProbeKind::Agent, name)
    }
}

/// One fake answer.
#[derive(Debug, Clone)]
pub enum FakeResponse {
    /// An HTTP response, after `delay` (the plugin's clock sees it).
    Answer {
        status: u16,
        body: Vec<u8>,
        delay: Duration,
    },
    /// The connection is refused.
    Refused,
    /// No answer in time (`connection-timeout`).
    Timeout,
}

impl FakeResponse {
    /// `status` with an empty body, at once.
    pub fn status(status: u16) -> FakeResponse {
        FakeResponse::Answer {
            status,
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// `status` with `body`.
    pub fn body(status: u16, body: impl Into<Vec<u8>>) -> FakeResponse {
        FakeResponse::Answer {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// The same answer, `delay` later.
    pub fn delayed(self, delay: Duration) -> FakeResponse {
        match self {
            FakeResponse::Answer { status, body, .. } => FakeResponse::Answer {
                status,
                body,
                delay,
            },
            other => other,
        }
    }
}

/// Fake hosts for a checker's outbound HTTP, by `host:port` (port 80 / 443 by scheme when the
/// URL has none). A host without a route refuses the connection. The host's allow-list still
/// applies first: a request to a host the plugin may not reach is denied and never gets here.
#[derive(Debug, Clone, Default)]
pub struct FakeHttp {
    routes: HashMap<String, FakeResponse>,
    pub(crate) seen: Arc<Mutex<Vec<String>>>,
}

impl FakeHttp {
    pub fn new() -> FakeHttp {
        FakeHttp::default()
    }

    /// Answers every request to `authority` (`host:port`) with `response`.
    pub fn route(mut self, authority: &str, response: FakeResponse) -> FakeHttp {
        self.routes.insert(authority.to_ascii_lowercase(), response);
        self
    }
}

impl HttpTransport for FakeHttp {
    fn respond(
        &self,
        method: &http::Method,
        uri: &http::Uri,
    ) -> Result<http::Response<bytes::Bytes>, wasmtime_wasi_http::Error> {
        evolve_core::sync::lock(&self.seen).push(format!("{method} {uri}"));
        let route =
            uri_host_port(uri).and_then(|(host, port)| self.routes.get(&format!("{host}:{port}")));
        match route {
            Some(FakeResponse::Answer {
                status,
                body,
                delay,
            }) => {
                // The transport answers synchronously on the call's thread, so the guest's
                // clock moves by the delay exactly as if the network had taken it.
                if !delay.is_zero() {
                    std::thread::sleep(*delay);
                }
                http::Response::builder()
                    .status(*status)
                    .body(bytes::Bytes::from(body.clone()))
                    .map_err(|_| wasmtime_wasi_http::Error::HttpProtocolError)
            }
            Some(FakeResponse::Timeout) => Err(wasmtime_wasi_http::Error::ConnectionTimeout),
            Some(FakeResponse::Refused) | None => Err(wasmtime_wasi_http::Error::ConnectionRefused),
        }
    }
}
