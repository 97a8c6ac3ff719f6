//! Ahead-of-time compilation cache: compiled components keyed by the wasm's sha256 and the
//! engine's compatibility hash, so a second start (or a reload of unchanged bytes) compiles
//! nothing and maps the artifact instead (~0.1 ms against ~30 ms to seconds for a compile).
//!
//! Trust: artifacts are native code. The cache directory must be writable only by the daemon's
//! user; entries are written to a temporary file and renamed into place, so a crash never leaves
//! a torn artifact under a final name.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Whether a load compiled or mapped a cached artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub compile_ms_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error("{0}")]
    Compile(String),
    #[error("cache dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct AotCache {
    dir: PathBuf,
    engine_key: String,
    hits: AtomicU64,
    misses: AtomicU64,
    compile_ms: AtomicU64,
}

impl AotCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<AotCache, AotError> {
        std::fs::create_dir_all(&dir).map_err(|source| AotError::Io {
            dir: dir.clone(),
            source,
        })?;
        remove_stale_temp_files(&dir);
        // Deterministic (fixed-key SipHash) so the key is stable across restarts of one build.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(AotCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            compile_ms: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            compile_ms_total: self.compile_ms.load(Ordering::Relaxed),
        }
    }

    fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component for `wasm` (whose hex sha256 is `sha256`), from the cache or compiled.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<(Component, CacheOutcome), AotError> {
        let path = self.entry_path(sha256);
        if path.exists() {
            match deserialize(engine, &path) {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(artifact = %path.display(), "aot cache hit");
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(e) => {
                    // Stale (other wasmtime build) or damaged: recompile over it.
                    tracing::warn!(artifact = %path.display(), error = %e, "discarding unusable aot artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let started = Instant::now();
        let artifact = engine
            .precompile_component(wasm)
            .map_err(|e| AotError::Compile(format!("{e:#}")))?;
        let elapsed = started.elapsed();
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.compile_ms
            .fetch_add(elapsed.as_millis() as u64, Ordering::Relaxed);
        tracing::info!(sha256 = %&sha256[..12.min(sha256.len())], ms = elapsed.as_millis() as u64, "compiled component (aot cache miss)");
        match self.store(&path, &artifact) {
            Ok(()) => deserialize(engine, &path)
                .map(|c| (c, CacheOutcome::Compiled))
                .map_err(|e| AotError::Compile(format!("{e:#}"))),
            Err(source) => {
                tracing::warn!(dir = %self.dir.display(), error = %source, "aot cache not writable; serving from memory");
                deserialize_bytes(engine, &artifact)
                    .map(|c| (c, CacheOutcome::Compiled))
                    .map_err(|e| AotError::Compile(format!("{e:#}")))
            }
        }
    }

    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        // Unique temporary names: two loads of the same bytes (a watcher reload and an API
        // reload) must not truncate a file the other has already renamed and mapped.
        evolve_core::fsutil::write_atomic(path, artifact, TEMP_PREFIX)
    }
}

/// Prefix of in-progress artifact files.
const TEMP_PREFIX: &str = ".evolve-aot-";

/// Removes temporary files a crash left behind (a completed write is renamed away from them).
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Maps an artifact this cache wrote.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was produced by `Engine::precompile_component` of this process or an
    // earlier run of the same build (the name carries the engine's compatibility hash, and
    // wasmtime re-checks version and settings), written under a temporary name and renamed, in a
    // directory only the daemon writes (see module docs).
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was just returned by `precompile_component` on this same engine.
    unsafe { Component::deserialize(engine, artifact) }
}
