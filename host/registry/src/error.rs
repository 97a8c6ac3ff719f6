//! The registry's errors: one small enum per layer, so callers can match on what went wrong.
//!
//! [`DatabaseError`] is about the database file (open, corrupt, foreign, I/O); [`RegistryError`]
//! is about a request (unknown model, bad value, nothing to roll back) and wraps a store error.

use std::path::PathBuf;

/// The database file could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("{path} is not an Evolve model registry ({detail}); {hint}")]
    Foreign {
        path: PathBuf,
        detail: String,
        hint: String,
    },
    #[error("{path} is damaged ({detail}); {hint}")]
    Corrupt {
        path: PathBuf,
        detail: String,
        hint: String,
    },
    #[error(
        "{path} has schema version {found}, newer than this evolve understands ({supported}); run a newer evolve or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "{path}: the file system refused WAL mode (journal_mode stayed {mode}); put the registry on a local disk"
    )]
    NoWal { path: PathBuf, mode: String },
    // Not a `#[from]`/source: the message already carries SQLite's text once.
    #[error("registry store: {0}")]
    Sqlite(rusqlite::Error),
    // The OS error is part of the message (API answers show only the message), so it is not
    // also a `source` that `{:#}` would print twice.
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<rusqlite::Error> for DatabaseError {
    fn from(error: rusqlite::Error) -> DatabaseError {
        DatabaseError::Sqlite(error)
    }
}

/// A registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{what} is {value}; metric values must be finite numbers")]
    NonFinite { what: String, value: f64 },
    #[error("no model named '{0}'")]
    ModelNotFound(String),
    #[error("model '{model}' has no version {version}")]
    VersionNotFound { model: String, version: u32 },
    #[error("model '{model}' has no alias '{alias}'")]
    AliasNotFound { model: String, alias: String },
    #[error("a model named '{0}' already exists")]
    ModelExists(String),
    #[error("alias '{alias}' of model '{model}' has no earlier target to roll back to")]
    NothingToRollBack { model: String, alias: String },
    #[error("no scoring policy named '{name}'; known: {known}")]
    PolicyNotFound { name: String, known: String },
    #[error("no model of task type '{task}' is eligible under policy '{policy}': {reasons}")]
    NoEligibleModel {
        task: String,
        policy: String,
        reasons: String,
    },
    #[error("the registry is not empty ({models} models); import only into an empty registry")]
    NotEmpty { models: u64 },
    #[error("{0}")]
    BackupNotFound(String),
    #[error(transparent)]
    Store(#[from] DatabaseError),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(error: rusqlite::Error) -> RegistryError {
        RegistryError::Store(DatabaseError::Sqlite(error))
    }
}

impl RegistryError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> RegistryError {
        RegistryError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A stable machine-readable code for the API's JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Invalid { .. } => "invalid_request",
            RegistryError::NonFinite { .. } => "non_finite_value",
            RegistryError::ModelNotFound(_) => "model_not_found",
            RegistryError::VersionNotFound { .. } => "version_not_found",
            RegistryError::AliasNotFound { .. } => "alias_not_found",
            RegistryError::ModelExists(_) => "model_exists",
            RegistryError::NothingToRollBack { .. } => "nothing_to_roll_back",
            RegistryError::PolicyNotFound { .. } => "policy_not_found",
            RegistryError::NoEligibleModel { .. } => "no_eligible_model",
            RegistryError::NotEmpty { .. } => "registry_not_empty",
            RegistryError::BackupNotFound(_) => "backup_not_found",
            RegistryError::Store(DatabaseError::Foreign { .. }) => "foreign_file",
            RegistryError::Store(DatabaseError::Corrupt { .. }) => "corrupt_file",
            RegistryError::Store(DatabaseError::TooNew { .. }) => "schema_too_new",
            RegistryError::Store(_) => "store_error",
        }
    }
}
