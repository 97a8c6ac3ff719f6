//! The catalog: what a service is (name, type, capabilities, instances, health check), how a
//! registration is validated, and the crash-safe file that keeps API registrations across
//! restarts.
//!
//! Services come from two places: `[[mesh.services]]` in the config file (read at start, owned
//! by the file, never written back) and the API / CLI (persisted to `catalog_file`). The file is
//! replaced atomically and fsynced before the API answers, so an acknowledged registration
//! survives `kill -9`.
//!
//! | module | holds |
//! |---|---|
//! | [`spec`] | the spec types ([`ServiceSpec`], [`InstanceSpec`], [`HealthCheckSpec`], [`Protocol`], [`LbKind`]), their caps and validation |
//! | [`store`] | the catalog file: [`CatalogStore`] and [`CatalogFileError`] |
//!
//! The spec types depend on no other mesh module: the config (which lists
//! `[[mesh.services]]`) and every running-state module build on them, never the reverse.

pub mod spec;
pub mod store;

pub use self::spec::{
    CheckedSpecError, DEFAULT_WEIGHT, HealthCheckSpec, InstanceSpec, LbKind, MAX_CAPABILITIES,
    MAX_ENDPOINT_LEN, MAX_INSTANCES, MAX_METADATA_ENTRIES, MAX_METADATA_LEN, MAX_NAME_LEN,
    MAX_SERVICES, MAX_WEIGHT, Protocol, ServiceSpec, SpecError, validate_endpoint, validate_name,
};
pub use self::store::{CATALOG_FILE_VERSION, CatalogFileError, CatalogStore};
