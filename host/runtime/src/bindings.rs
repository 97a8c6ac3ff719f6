//! Host-side bindings generated from `wit/` — one module per world, sharing the interfaces both
//! import so the host implements `logging`, `config` and `inventory` once.
//!
//! Imports are synchronous (they answer from memory); exports are async so a call can yield at
//! epoch ticks and be bounded by a wall-clock deadline without blocking a runtime thread.

/// Version of the `evolve:plugin` package this host serves.
pub const WIT_VERSION: &str = "0.1.0";

/// WIT package name without version.
pub const WIT_PACKAGE: &str = "evolve:plugin";

pub mod meta_agent {
    wasmtime::component::bindgen!({
        world: "meta-agent",
        path: "../../wit",
        // `probes` does I/O (mesh requests, calls into other plugins); the other imports answer
        // from memory.
        imports: { "evolve:plugin/probes": async },
        exports: { default: async },
        additional_derives: [serde::Serialize],
    });
}

pub mod health_checker {
    wasmtime::component::bindgen!({
        world: "health-checker",
        path: "../../wit",
        exports: { default: async },
        with: {
            "evolve:plugin/types": super::meta_agent::evolve::plugin::types,
            "evolve:plugin/logging": super::meta_agent::evolve::plugin::logging,
            "evolve:plugin/config": super::meta_agent::evolve::plugin::config,
            "evolve:plugin/inventory": super::meta_agent::evolve::plugin::inventory,
        },
        additional_derives: [serde::Serialize],
    });
}

pub use meta_agent::evolve::plugin::{config, inventory, logging, probes, types};

impl types::HealthStatus {
    /// The WIT name (`healthy`, `degraded`, `unhealthy`), as the API and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            types::HealthStatus::Healthy => "healthy",
            types::HealthStatus::Degraded => "degraded",
            types::HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

impl types::ErrorCode {
    /// The WIT name, e.g. `invalid-input`.
    pub fn as_str(self) -> &'static str {
        match self {
            types::ErrorCode::InvalidInput => "invalid-input",
            types::ErrorCode::NotFound => "not-found",
            types::ErrorCode::Unavailable => "unavailable",
            types::ErrorCode::Denied => "denied",
            types::ErrorCode::Timeout => "timeout",
            types::ErrorCode::Internal => "internal",
        }
    }
}

impl types::HealthReport {
    /// JSON with WIT spellings for the status.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status.as_str(),
            "latency_us": self.latency_us,
            "detail": self.detail,
            "checked_at_ms": self.checked_at_ms,
        })
    }
}

impl types::PluginError {
    /// JSON with WIT spellings for the code.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
            "retryable": self.retryable,
        })
    }
}
