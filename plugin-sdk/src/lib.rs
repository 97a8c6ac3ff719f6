//! The guest side of Evolve: write meta agents and health checkers in plain Rust.
//!
//! An Evolve plugin is a WebAssembly component built for `wasm32-wasip2` that exports one of
//! the two worlds of the WIT package `evolve:plugin@0.1.0`:
//!
//! - a **meta agent** (world `meta-agent`) runs system jobs: documentation, audits, log
//!   analysis. Implement [`MetaAgent`] and invoke [`export_meta_agent!`].
//! - a **health checker** (world `health-checker`) checks one service instance at a time.
//!   Implement [`HealthChecker`] and invoke [`export_health_checker!`]. Checkers may make
//!   outbound HTTP requests with [`http`].
//!
//! Both get [logging](crate::log) macros ([`info!`] and friends), typed [`config`] from the
//! `[config]` table of their `plugin.toml`, and a read-only [`inventory`] of the running system.
//! No `wit-bindgen` code is needed in the plugin crate.
//!
//! # Example
//!
//! A complete meta agent. Its crate is a `cdylib` built with
//! `cargo build --release --target wasm32-wasip2`; the output is the component.
//!
//! ```rust,standalone_crate
//! use evolve_plugin_sdk::{
//!     export_meta_agent, info, inventory, AgentInfo, MetaAgent, PluginError, Task, TaskOutcome,
//! };
//! use serde::Deserialize;
//!
//! /// Settings from the `[config]` table of `plugin.toml`.
//! #[derive(Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config {
//!     greeting: String,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Config { greeting: "hello".to_owned() }
//!     }
//! }
//!
//! /// Input of the `greet` task, e.g. `{"name": "ops"}`.
//! #[derive(Deserialize)]
//! struct GreetInput {
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl MetaAgent for Greeter {
//!     fn describe() -> AgentInfo {
//!         AgentInfo::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), "Greets people")
//!             .with_capabilities(["greeting"])
//!             .with_schedule("every 1h")
//!     }
//!
//!     fn run(task: Task) -> Result<TaskOutcome, PluginError> {
//!         match task.name.as_str() {
//!             "greet" => {
//!                 let config: Config = evolve_plugin_sdk::config::get()?;
//!                 let input: GreetInput = task.input()?;
//!                 let plugins = inventory::plugins().len();
//!                 info!("greeting {} ({plugins} plugins loaded)", input.name);
//!                 TaskOutcome::new(format!("{}, {}", config.greeting, input.name))
//!                     .with_output(&serde_json::json!({ "plugins": plugins }))
//!             }
//!             other => Err(PluginError::invalid_input(format!("unknown task `{other}`"))),
//!         }
//!     }
//!
//!     // `health` defaults to "healthy"; override it when the agent depends on something.
//! }
//!
//! export_meta_agent!(Greeter);
//! # fn main() {}
//! ```
//!
//! A health checker has the same shape:
//!
//! ```rust,standalone_crate
//! use std::time::Duration;
//! use evolve_plugin_sdk::{
//!     export_health_checker, http, CheckerInfo, HealthChecker, HealthReport, PluginError, Service,
//! };
//!
//! struct Ping;
//!
//! impl HealthChecker for Ping {
//!     fn describe() -> CheckerInfo {
//!         CheckerInfo::new("ping", "0.1.0", "GETs the endpoint").with_capabilities(["http"])
//!     }
//!
//!     fn check(target: Service) -> Result<HealthReport, PluginError> {
//!         match http::get(&target.endpoint, Duration::from_secs(1)) {
//!             Ok(r) if r.is_success() => Ok(HealthReport::healthy(format!("HTTP {}", r.status))
//!                 .with_latency(r.elapsed)),
//!             Ok(r) => Ok(HealthReport::degraded(format!("HTTP {}", r.status))),
//!             // A refused destination is a configuration error, not a health fact.
//!             Err(e @ http::HttpError::Denied { .. }) => Err(e.into()),
//!             Err(e) => Ok(HealthReport::unhealthy(e.to_string())),
//!         }
//!     }
//! }
//!
//! export_health_checker!(Ping);
//! # fn main() {}
//! ```
//!
//! # Failure model
//!
//! Return `Err(PluginError)` for a call that could not do its job: [`PluginError`] has a
//! constructor per WIT error code. A panic aborts the component instance (a trap); the host
//! reports it as a failed call and starts the next call on a fresh instance, so state in
//! statics does not survive a panic.

pub mod bindings;
pub mod config;
pub mod http;
pub mod inventory;
pub mod log;
pub mod probes;
mod types;

pub use bindings::meta_agent::evolve::plugin::types::{
    AgentInfo, CheckerInfo, ErrorCode, HealthReport, HealthStatus, Json, PluginError, Service,
    Task, TaskOutcome,
};
pub use types::now_ms;

/// A meta agent: a system job the host runs on a schedule or on request.
///
/// Export an implementation with [`export_meta_agent!`].
pub trait MetaAgent {
    /// Static description; the host calls it at load and after each reload.
    fn describe() -> AgentInfo;

    /// Runs one task. `task.name` selects what to do; [`Task::input`] decodes its JSON input.
    fn run(task: Task) -> Result<TaskOutcome, PluginError>;

    /// The agent's own view of whether it can work, e.g. whether its inputs are reachable.
    ///
    /// Defaults to healthy.
    fn health() -> HealthReport {
        HealthReport::healthy("ok")
    }
}

/// A health checker for service instances of the host's mesh.
///
/// Export an implementation with [`export_health_checker!`].
pub trait HealthChecker {
    /// Static description; the host calls it at load and after each reload.
    fn describe() -> CheckerInfo;

    /// Checks one service instance.
    ///
    /// An unreachable or failing target is an `Ok` report with status `unhealthy`; `Err` means
    /// the check itself could not be made (bad configuration, denied host).
    fn check(target: Service) -> Result<HealthReport, PluginError>;
}

/// Glue between the SDK traits and the generated `Guest` traits; used by the export macros.
#[doc(hidden)]
pub mod __private {
    use core::marker::PhantomData;

    use crate::bindings::health_checker::exports::evolve::plugin::checker;
    use crate::bindings::meta_agent::exports::evolve::plugin::agent;
    use crate::{
        AgentInfo, CheckerInfo, HealthChecker, HealthReport, MetaAgent, PluginError, Service, Task,
        TaskOutcome,
    };

    /// Implements the generated `agent::Guest` for any [`MetaAgent`].
    ///
    /// The generated export macro names the implementing type with an identifier, so the
    /// export macros alias this to a local name first.
    pub struct MetaAgentExport<T>(PhantomData<T>);

    impl<T: MetaAgent> agent::Guest for MetaAgentExport<T> {
        fn describe() -> AgentInfo {
            T::describe()
        }

        fn run(task: Task) -> Result<TaskOutcome, PluginError> {
            T::run(task)
        }

        fn health() -> HealthReport {
            T::health()
        }
    }

    /// Implements the generated `checker::Guest` for any [`HealthChecker`].
    pub struct HealthCheckerExport<T>(PhantomData<T>);

    impl<T: HealthChecker> checker::Guest for HealthCheckerExport<T> {
        fn describe() -> CheckerInfo {
            T::describe()
        }

        fn check(target: Service) -> Result<HealthReport, PluginError> {
            T::check(target)
        }
    }
}

/// Exports a [`MetaAgent`] implementation as the component's `evolve:plugin/agent` interface.
///
/// Invoke it once, at the top level of the plugin crate (a `cdylib`).
#[macro_export]
macro_rules! export_meta_agent {
    ($agent:ty) => {
        const _: () = {
            type __EvolveMetaAgentExport = $crate::__private::MetaAgentExport<$agent>;
            $crate::bindings::meta_agent::export!(
                __EvolveMetaAgentExport with_types_in $crate::bindings::meta_agent
            );
        };
    };
}

/// Exports a [`HealthChecker`] implementation as the component's `evolve:plugin/checker`
/// interface.
///
/// Invoke it once, at the top level of the plugin crate (a `cdylib`).
#[macro_export]
macro_rules! export_health_checker {
    ($checker:ty) => {
        const _: () = {
            type __EvolveHealthCheckerExport = $crate::__private::HealthCheckerExport<$checker>;
            $crate::bindings::health_checker::export!(
                __EvolveHealthCheckerExport with_types_in $crate::bindings::health_checker
            );
        };
    };
}
