//! The catalog file behind API registrations: read once at start, replaced durably (temp file,
//! fsync, rename, fsync of the directory) on every change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::ServiceSpec;

/// Version of the catalog file's JSON form.
pub const CATALOG_FILE_VERSION: u32 = 1;
/// Largest catalog file read at start; far above 1024 services of 256 instances.
const MAX_CATALOG_BYTES: u64 = 256 << 20;

/// The catalog file: the services registered through the API.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    version: u32,
    services: Vec<ServiceSpec>,
}

/// Why the catalog file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogFileError {
    #[error("cannot read the mesh catalog {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the mesh catalog {path} is not valid: {message}; fix or move the file (it holds services registered through the API)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write the mesh catalog {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file behind API registrations.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    path: PathBuf,
}

impl CatalogStore {
    pub fn new(path: PathBuf) -> CatalogStore {
        CatalogStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored services; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<ServiceSpec>, CatalogFileError> {
        let read_error = |source| CatalogFileError::Read {
            path: self.path.clone(),
            source,
        };
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_error(e)),
        };
        let len = file.metadata().map_err(read_error)?.len();
        let corrupt = |message: String| CatalogFileError::Corrupt {
            path: self.path.clone(),
            message,
        };
        if len > MAX_CATALOG_BYTES {
            return Err(corrupt(format!(
                "it is {len} bytes, more than the {MAX_CATALOG_BYTES} a catalog can hold"
            )));
        }
        let bytes = std::fs::read(&self.path).map_err(read_error)?;
        let file: CatalogFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != CATALOG_FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not {CATALOG_FILE_VERSION}, the one this daemon reads",
                file.version
            )));
        }
        let mut services = file.services;
        for spec in &mut services {
            spec.validate(None)
                .map_err(|e| corrupt(format!("service \"{}\": {e}", spec.name)))?;
        }
        Ok(services)
    }

    /// Replaces the file with `services`, durably (temp file, fsync, rename, fsync of the dir).
    pub fn save(&self, services: &[ServiceSpec]) -> Result<(), CatalogFileError> {
        let write_error = |source| CatalogFileError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_error)?;
        let file = CatalogFile {
            version: CATALOG_FILE_VERSION,
            services: services.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
        evolve_core::fsutil::write_atomic(&self.path, &bytes, ".catalog-").map_err(write_error)?;
        // The rename is durable only once the directory entry is on disk.
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::spec::tests::spec;

    #[test]
    fn store_round_trips_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CatalogStore::new(dir.path().join("mesh/catalog.json"));
        assert!(store.load().expect("absent is empty").is_empty());
        let mut s = spec("fc", &["http://127.0.0.1:9000"]);
        s.validate(None).expect("valid");
        store.save(std::slice::from_ref(&s)).expect("save");
        assert_eq!(store.load().expect("load"), vec![s]);
        std::fs::write(store.path(), b"{\"version\":1,\"services\":[{").expect("write");
        let err = store.load().expect_err("half-written");
        assert!(matches!(err, CatalogFileError::Corrupt { .. }), "{err}");
    }
}
