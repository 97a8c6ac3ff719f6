//! What a service is, as registered: [`ServiceSpec`] and its parts, the caps on what a
//! registration may contain, and [`ServiceSpec::validate`], whose errors name the field and the
//! fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Caps on what a registration may contain (an API body is outsider-controlled).
pub const MAX_SERVICES: usize = 1_024;
pub const MAX_INSTANCES: usize = 256;
pub const MAX_CAPABILITIES: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key or value, bytes.
pub const MAX_METADATA_LEN: usize = 1_024;
pub const MAX_NAME_LEN: usize = 63;
pub const MAX_ENDPOINT_LEN: usize = 2_048;
/// The WIT contract's weight range is 0 (drained) to 1000.
pub const MAX_WEIGHT: u32 = 1_000;
pub const DEFAULT_WEIGHT: u32 = 100;

/// A service as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name: lowercase letters, digits, `.`, `_`, `-`; at most 63 bytes.
    pub name: String,
    /// Free-form type, e.g. `model-server`.
    #[serde(default, rename = "type")]
    pub service_type: String,
    /// Capabilities offered, e.g. `forecast`; `POST /v1/route/{type}` routes by them.
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub instances: Vec<InstanceSpec>,
    /// Active health check; none means passive outlier detection only.
    #[serde(default)]
    pub health: Option<HealthCheckSpec>,
    /// Algorithm for `/v1/services/{name}/proxy`; default `[mesh] lb`.
    #[serde(default)]
    pub lb: Option<LbKind>,
    /// Overrides `[mesh.breaker] max_in_flight` for this service.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Overrides `[mesh.breaker] max_pending` for this service.
    #[serde(default)]
    pub max_pending: Option<u32>,
}

/// Wire protocol to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// A load-balancing algorithm, selectable per route and per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    /// Each candidate in turn; weights other than 0 are ignored.
    RoundRobin,
    /// Fewest requests in flight relative to weight.
    LeastLoaded,
    /// nginx's smooth weighted round-robin: exact shares, interleaved.
    Weighted,
    /// Power of two choices over peak-EWMA latency × in-flight, weighted sampling.
    #[default]
    P2cEwma,
}

impl LbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LbKind::RoundRobin => "round_robin",
            LbKind::LeastLoaded => "least_loaded",
            LbKind::Weighted => "weighted",
            LbKind::P2cEwma => "p2c_ewma",
        }
    }
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Unique within the service; default `host:port` of the endpoint.
    #[serde(default)]
    pub id: Option<String>,
    /// Base URL, `http://host:port[/prefix]`.
    pub endpoint: String,
    /// Relative share of traffic, 0 (drained) to 1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// Active health check of every instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// A loaded health-checker plugin, e.g. `http-health`.
    #[serde(default = "default_checker")]
    pub checker: String,
    /// Health route, passed to the checker as the `health_path` metadata; default `/health`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between checks of one instance, ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A check that takes longer fails, ms.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Intervals vary by ± this share so instances are not checked in lockstep, %.
    #[serde(default = "default_jitter_pct")]
    pub jitter_pct: u32,
    /// Consecutive passing checks that make an unhealthy instance healthy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failing checks that make a healthy instance unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_checker() -> String {
    "http-health".into()
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_interval_ms() -> u64 {
    10_000
}
fn default_check_timeout_ms() -> u64 {
    2_000
}
fn default_jitter_pct() -> u32 {
    10
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        HealthCheckSpec {
            checker: default_checker(),
            path: default_health_path(),
            interval_ms: default_interval_ms(),
            timeout_ms: default_check_timeout_ms(),
            jitter_pct: default_jitter_pct(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
        }
    }
}

/// Why a registration was refused. Each names the field and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "name: \"{0}\" must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("{field}: \"{endpoint}\" {reason}")]
    BadUrl {
        field: String,
        endpoint: String,
        reason: String,
    },
    #[error("{field}: weight {weight} is out of range 0-{MAX_WEIGHT}")]
    WeightOutOfRange { field: String, weight: u32 },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ServiceSpec {
    /// Checks the spec and fills defaults (instance ids). `checker_known` answers whether a
    /// health-checker plugin of that name is loaded; `None` skips that check (specs read back
    /// from the catalog file at start, before a checker may have loaded).
    pub fn validate(
        &mut self,
        checker_known: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<(), CheckedSpecError> {
        validate_name(&self.name).map_err(CheckedSpecError::Spec)?;
        let invalid = |field: &str, message: String| {
            CheckedSpecError::Spec(SpecError::Invalid {
                field: field.into(),
                message,
            })
        };
        if self.service_type.len() > MAX_METADATA_LEN {
            return Err(invalid(
                "type",
                format!("longer than {MAX_METADATA_LEN} bytes"),
            ));
        }
        if self.capabilities.len() > MAX_CAPABILITIES {
            return Err(invalid(
                "capabilities",
                format!("at most {MAX_CAPABILITIES} are allowed"),
            ));
        }
        for (i, capability) in self.capabilities.iter().enumerate() {
            if capability.trim().is_empty() || capability.len() > MAX_NAME_LEN {
                return Err(invalid(
                    &format!("capabilities[{i}]"),
                    format!("must be 1-{MAX_NAME_LEN} bytes"),
                ));
            }
        }
        if self.instances.is_empty() {
            return Err(invalid(
                "instances",
                "a service needs at least one instance, e.g. {\"endpoint\": \"http://127.0.0.1:9000\"}".into(),
            ));
        }
        if self.instances.len() > MAX_INSTANCES {
            return Err(invalid(
                "instances",
                format!("at most {MAX_INSTANCES} are allowed"),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, instance) in self.instances.iter_mut().enumerate() {
            let field = format!("instances[{i}]");
            let authority = validate_endpoint(&instance.endpoint, &format!("{field}.endpoint"))
                .map_err(CheckedSpecError::Spec)?;
            if instance.weight > MAX_WEIGHT {
                return Err(CheckedSpecError::Spec(SpecError::WeightOutOfRange {
                    field: format!("{field}.weight"),
                    weight: instance.weight,
                }));
            }
            let id = instance.id.get_or_insert(authority);
            if id.is_empty() || id.len() > MAX_METADATA_LEN || id.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("{field}.id"),
                    format!("must be 1-{MAX_METADATA_LEN} printable bytes"),
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(invalid(
                    &format!("{field}.id"),
                    format!(
                        "\"{id}\" is used by another instance of this service; give each instance a distinct id or endpoint"
                    ),
                ));
            }
            if instance.metadata.len() > MAX_METADATA_ENTRIES {
                return Err(invalid(
                    &format!("{field}.metadata"),
                    format!("at most {MAX_METADATA_ENTRIES} entries are allowed"),
                ));
            }
            if instance
                .metadata
                .iter()
                .any(|(k, v)| k.len() > MAX_METADATA_LEN || v.len() > MAX_METADATA_LEN)
            {
                return Err(invalid(
                    &format!("{field}.metadata"),
                    format!("keys and values are at most {MAX_METADATA_LEN} bytes"),
                ));
            }
        }
        if let Some(health) = &self.health {
            if !health.path.starts_with('/') || health.path.len() > MAX_ENDPOINT_LEN {
                return Err(invalid(
                    "health.path",
                    "must start with / (e.g. /health)".into(),
                ));
            }
            if health.interval_ms < 100 || health.interval_ms > 3_600_000 {
                return Err(invalid(
                    "health.interval_ms",
                    "must be between 100 and 3600000".into(),
                ));
            }
            if health.timeout_ms == 0 || health.timeout_ms > 600_000 {
                return Err(invalid(
                    "health.timeout_ms",
                    "must be between 1 and 600000".into(),
                ));
            }
            if health.jitter_pct > 100 {
                return Err(invalid(
                    "health.jitter_pct",
                    "is a percentage (0-100)".into(),
                ));
            }
            if health.healthy_threshold == 0
                || health.unhealthy_threshold == 0
                || health.healthy_threshold > 100
                || health.unhealthy_threshold > 100
            {
                return Err(invalid(
                    "health",
                    "healthy_threshold and unhealthy_threshold must be between 1 and 100".into(),
                ));
            }
            if let Some(known) = checker_known
                && !known(&health.checker)
            {
                return Err(CheckedSpecError::UnknownChecker(health.checker.clone()));
            }
        }
        if self.max_in_flight == Some(0) {
            return Err(invalid("max_in_flight", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// A refused registration: a malformed spec, or a checker that is not loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckedSpecError {
    #[error(transparent)]
    Spec(SpecError),
    #[error(
        "health.checker: no health-checker plugin named \"{0}\" is loaded; GET /v1/plugins lists them"
    )]
    UnknownChecker(String),
}

/// Service and capability names: what can appear in a URL path segment and a metric label.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName(name.chars().take(80).collect()))
    }
}

/// An endpoint is `http://host:port[/prefix]` without query or fragment. Returns `host:port`.
pub fn validate_endpoint(endpoint: &str, field: &str) -> Result<String, SpecError> {
    let bad = |reason: &str| SpecError::BadUrl {
        field: field.into(),
        endpoint: endpoint.chars().take(200).collect(),
        reason: reason.into(),
    };
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(bad("is longer than 2048 bytes"));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| bad("is not a URL; use http://host:port, e.g. http://127.0.0.1:9000"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "uses https, which the mesh does not speak to instances (HTTP/1.1 and h2c in cleartext); use http://",
            ));
        }
        _ => {
            return Err(bad(
                "must be an absolute http:// URL with a host, e.g. http://127.0.0.1:9000",
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("has no host"));
    };
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    if uri.query().is_some() || endpoint.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let port = authority.port_u16().unwrap_or(80);
    Ok(format!("{}:{port}", authority.host()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A spec of `name` offering `forecast`, one instance per endpoint; not yet validated.
    pub(in crate::catalog) fn spec(name: &str, endpoints: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            service_type: "model-server".into(),
            capabilities: vec!["forecast".into()],
            instances: endpoints
                .iter()
                .map(|e| InstanceSpec {
                    id: None,
                    endpoint: (*e).into(),
                    weight: DEFAULT_WEIGHT,
                    protocol: Protocol::Http1,
                    metadata: BTreeMap::new(),
                })
                .collect(),
            health: None,
            lb: None,
            max_in_flight: None,
            max_pending: None,
        }
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        let mut bad_url = spec("fc", &["ftp://x"]);
        let err = bad_url.validate(None).expect_err("ftp");
        assert!(
            matches!(&err, CheckedSpecError::Spec(SpecError::BadUrl { field, .. }) if field == "instances[0].endpoint"),
            "{err}"
        );
        let mut https = spec("fc", &["https://x:1"]);
        assert!(
            https
                .validate(None)
                .expect_err("https")
                .to_string()
                .contains("use http://")
        );
        let mut heavy = spec("fc", &["http://a:1"]);
        heavy.instances[0].weight = 1_001;
        assert!(matches!(
            heavy.validate(None),
            Err(CheckedSpecError::Spec(SpecError::WeightOutOfRange {
                weight: 1_001,
                ..
            }))
        ));
        let mut name = spec("Bad Name", &["http://a:1"]);
        assert!(matches!(
            name.validate(None),
            Err(CheckedSpecError::Spec(SpecError::BadName(_)))
        ));
        let mut twice = spec("fc", &["http://a:1", "http://a:1/"]);
        assert!(
            twice
                .validate(None)
                .expect_err("dup")
                .to_string()
                .contains("distinct id")
        );
        let mut checked = spec("fc", &["http://a:1"]);
        checked.health = Some(HealthCheckSpec::default());
        let known = |name: &str| name == "other";
        assert_eq!(
            checked.validate(Some(&known)),
            Err(CheckedSpecError::UnknownChecker("http-health".into()))
        );
    }

    #[test]
    fn ids_default_to_host_and_port() {
        let mut s = spec("fc", &["http://127.0.0.1:9000/v1", "http://example.test"]);
        s.validate(None).expect("valid");
        assert_eq!(s.instances[0].id.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(s.instances[1].id.as_deref(), Some("example.test:80"));
    }
}
