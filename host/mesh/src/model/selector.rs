//! The seam between the mesh and a model registry: what the mesh asks ([`ModelSelector`]) and
//! the answers it gets ([`Selection`], or [`NoModel`] saying why there is none).

use crate::config::ModelWanted;

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
