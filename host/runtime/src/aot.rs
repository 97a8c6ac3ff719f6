//! Ahead-of-time compilation cache: compiled components keyed by the wasm's sha256 and the
//! engine's compatibility hash, so a second start (or a reload of unchanged bytes) compiles
//! nothing and loads the artifact instead (well under a millisecond against ~30 ms to seconds for
//! a compile).
//!
//! Trust: artifacts are native code, run as the daemon. Three controls keep a planted or altered
//! artifact from ever running:
//!
//! - the cache directory is created `0700`, and one that another user can write (group or other
//!   write bits, or another owner) is refused at start;
//! - every artifact carries an HMAC-SHA256 tag under a per-install key (the key file, 32 random
//!   bytes, created `0600` and refused when its group or others may read it), computed over the
//!   entry's name (wasm sha256 and engine key: an artifact cannot be moved under another
//!   plugin's name) and the artifact;
//! - a load reads the file into memory, verifies the tag over those bytes, and deserializes the
//!   very bytes it verified, so nothing can change between the check and the use. An artifact
//!   with a missing or wrong tag is never deserialized: it is counted (`rejected`), logged, and
//!   recompiled over.
//!
//! Entries are written to a temporary file and renamed into place, so a crash never leaves a torn
//! artifact under a final name.
//!
//! File layout: [`MAGIC`] (8 bytes), the tag (32 bytes), the artifact as
//! `Engine::precompile_component` returned it.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of an artifact file of this format; anything else is not one of ours.
const MAGIC: &[u8; 8] = b"EVAOT\x01\0\0";
/// HMAC-SHA256 tag length.
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + TAG_LEN;
/// Length of the install key: the HMAC-SHA256 output size, the key length RFC 2104 recommends.
pub const KEY_LEN: usize = 32;
/// Largest artifact file read. A component is at most 256 MiB (the loader's limit) and its
/// native code a few times that at worst; a larger file is not one this cache wrote, and reading
/// it whole would cost that much memory.
const MAX_ARTIFACT_BYTES: u64 = 2 << 30;

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
    /// Cached artifacts refused because their tag was missing or wrong (then recompiled).
    pub rejected: u64,
}

/// A load could not compile.
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

/// The cache cannot be opened safely; the runtime does not start.
#[derive(Debug, thiserror::Error)]
pub enum AotSetupError {
    #[error("AOT cache dir {dir}: {source}; check runtime.cache_dir")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "AOT cache dir {dir} holds native code the daemon runs, but {reason}; fix it or point runtime.cache_dir at a directory only the daemon's user can write"
    )]
    InsecureDir { dir: PathBuf, reason: String },
    #[error("AOT key file {file}: {reason} (runtime.aot_key_file)")]
    Key { file: PathBuf, reason: String },
}

#[derive(Debug)]
pub struct AotCache {
    dir: PathBuf,
    engine_key: String,
    /// Keyed once; cloned per tag.
    mac: Hmac<Sha256>,
    hits: AtomicU64,
    misses: AtomicU64,
    compile_ms: AtomicU64,
    rejected: AtomicU64,
}

impl AotCache {
    /// Opens (creating `0700`) the cache at `dir` with the install key at `key_file` (created
    /// if missing). Refuses a directory another user can write and a key others can read.
    pub fn new(dir: PathBuf, key_file: &Path, engine: &Engine) -> Result<AotCache, AotSetupError> {
        create_private_dir(&dir).map_err(|source| AotSetupError::Io {
            dir: dir.clone(),
            source,
        })?;
        check_private_dir(&dir)?;
        let key = load_or_create_key(key_file)?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|e| AotSetupError::Key {
            file: key_file.to_path_buf(),
            reason: e.to_string(),
        })?;
        remove_stale_temp_files(&dir);
        // Deterministic (fixed-key SipHash) so the key is stable across restarts of one build.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(AotCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            mac,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            compile_ms: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
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
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    fn entry_name(&self, sha256: &str) -> String {
        format!("{sha256}-{}.cwasm", self.engine_key)
    }

    /// The tag of `artifact` stored under `name`.
    fn tag(&self, name: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(b"evolve aot artifact v1\n");
        mac.update(name.as_bytes());
        mac.update(b"\n");
        mac.update(artifact);
        mac
    }

    /// The component for `wasm` (whose hex sha256 is `sha256`), from the cache or compiled.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<(Component, CacheOutcome), AotError> {
        let name = self.entry_name(sha256);
        let path = self.dir.join(&name);
        match self.read_verified(&path, &name) {
            Cached::Verified(artifact) => match deserialize_verified(engine, &artifact) {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(artifact = %path.display(), "aot cache hit");
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(e) => {
                    // Ours, but wasmtime refuses it (another wasmtime build): recompile over it.
                    tracing::warn!(artifact = %path.display(), error = %e, "discarding unusable aot artifact");
                    let _ = std::fs::remove_file(&path);
                }
            },
            Cached::Rejected(reason) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(artifact = %path.display(), reason, "refusing an unauthenticated aot artifact: it is not mapped, the component is recompiled over it");
                let _ = std::fs::remove_file(&path);
            }
            Cached::Absent => {}
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
        if let Err(source) = self.store(&path, &name, &artifact) {
            tracing::warn!(dir = %self.dir.display(), error = %source, "aot cache not writable; serving from memory");
        }
        deserialize_fresh(engine, &artifact)
            .map(|c| (c, CacheOutcome::Compiled))
            .map_err(|e| AotError::Compile(format!("{e:#}")))
    }

    /// The artifact at `path`, read whole and authenticated. Only the returned bytes are used
    /// afterwards: whatever happens to the file after this read, what runs is what was verified.
    fn read_verified(&self, path: &Path, name: &str) -> Cached {
        let size = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Cached::Absent,
            Err(e) => return Cached::Rejected(format!("cannot read it: {e}")),
        };
        if size > MAX_ARTIFACT_BYTES {
            return Cached::Rejected(format!(
                "{size} bytes, over the {MAX_ARTIFACT_BYTES}-byte limit"
            ));
        }
        let mut file = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Cached::Absent,
            Err(e) => return Cached::Rejected(format!("cannot read it: {e}")),
        };
        if file.len() < HEADER_LEN || &file[..MAGIC.len()] != MAGIC {
            return Cached::Rejected("it has no authentication tag".into());
        }
        let (tag, artifact) = file[MAGIC.len()..].split_at(TAG_LEN);
        if self.tag(name, artifact).verify_slice(tag).is_err() {
            return Cached::Rejected(
                "its tag does not match (altered, planted, or written under another install key)"
                    .into(),
            );
        }
        file.drain(..HEADER_LEN);
        Cached::Verified(file)
    }

    fn store(&self, path: &Path, name: &str, artifact: &[u8]) -> std::io::Result<()> {
        let tag = self.tag(name, artifact).finalize().into_bytes();
        let mut file = Vec::with_capacity(HEADER_LEN + artifact.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&tag);
        file.extend_from_slice(artifact);
        // Unique temporary names: two loads of the same bytes (a watcher reload and an API
        // reload) must not truncate a file the other has already renamed and read.
        evolve_core::fsutil::write_atomic(path, &file, TEMP_PREFIX)
    }
}

/// What the cache holds under one name.
enum Cached {
    Absent,
    /// The artifact bytes, tag verified.
    Verified(Vec<u8>),
    /// A file that is not a verifiable artifact of this install (why).
    Rejected(String),
}

/// Prefix of in-progress artifact files.
const TEMP_PREFIX: &str = ".evolve-aot-";
/// Prefix of an in-progress key file (not [`TEMP_PREFIX`]: a starting daemon removes those,
/// and must not remove a key another one is creating).
const KEY_TEMP_PREFIX: &str = ".evolve-key-";

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

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// The daemon's effective uid.
#[cfg(unix)]
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Refuses a cache dir that anyone but the daemon's user can write: they could plant native
/// code (the tag stops it from running, but the directory is still theirs to fill or empty).
#[cfg(unix)]
fn check_private_dir(dir: &Path) -> Result<(), AotSetupError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|source| AotSetupError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    let insecure = |reason: String| AotSetupError::InsecureDir {
        dir: dir.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(insecure("it is not a directory".into()));
    }
    let uid = effective_uid();
    if meta.uid() != uid {
        return Err(insecure(format!(
            "it is owned by uid {}, not the daemon's uid {uid} (`chown` it)",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(insecure(format!(
            "its mode is {mode:o}, so its group or others may write it (`chmod 700 {}`)",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_dir(_dir: &Path) -> Result<(), AotSetupError> {
    Ok(())
}

/// Reads the install key at `file`, creating it (32 random bytes, `0600`) if missing. Several
/// daemons sharing a cache may start at once: the key is written under a temporary name and
/// linked into place only if no key exists yet, so every one of them ends up with the same key.
fn load_or_create_key(file: &Path) -> Result<[u8; KEY_LEN], AotSetupError> {
    let failed = |reason: String| AotSetupError::Key {
        file: file.to_path_buf(),
        reason,
    };
    match read_key(file) {
        Err(KeyRead::Missing) => {}
        Err(KeyRead::Refused(reason)) => return Err(failed(reason)),
        Ok(key) => return Ok(key),
    }
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_private_dir(parent).map_err(|e| failed(format!("cannot create its directory: {e}")))?;
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| failed(format!("no random bytes from the OS: {e}")))?;
    // tempfile creates the file 0600.
    let mut temp = tempfile::Builder::new()
        .prefix(KEY_TEMP_PREFIX)
        .tempfile_in(parent)
        .map_err(|e| failed(format!("cannot create it: {e}")))?;
    temp.write_all(&key)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| failed(format!("cannot write it: {e}")))?;
    match temp.persist_noclobber(file) {
        Ok(_) => {
            let _ = evolve_core::fsutil::sync_dir(parent);
            tracing::info!(file = %file.display(), "created the AOT cache key");
            Ok(key)
        }
        // Another daemon created it first: use theirs.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key(file).map_err(|e| match e {
                KeyRead::Missing => failed("it vanished while being created".into()),
                KeyRead::Refused(reason) => failed(reason),
            })
        }
        Err(e) => Err(failed(format!("cannot create it: {}", e.error))),
    }
}

enum KeyRead {
    Missing,
    Refused(String),
}

fn read_key(file: &Path) -> Result<[u8; KEY_LEN], KeyRead> {
    let meta = match std::fs::metadata(file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyRead::Missing),
        Err(e) => return Err(KeyRead::Refused(format!("cannot read it: {e}"))),
    };
    if !meta.is_file() {
        return Err(KeyRead::Refused("it is not a file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyRead::Refused(format!(
                "it authenticates the native code the daemon runs, but its mode is {mode:o}, so its group or others may read it: run `chmod 600 {}`",
                file.display()
            )));
        }
        let uid = effective_uid();
        if meta.uid() != uid {
            return Err(KeyRead::Refused(format!(
                "it is owned by uid {}, not the daemon's uid {uid}",
                meta.uid()
            )));
        }
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(KeyRead::Refused(format!(
            "it is {} bytes, not {KEY_LEN}: delete it and the daemon creates a new one (cached artifacts are then recompiled once)",
            meta.len()
        )));
    }
    let bytes =
        std::fs::read(file).map_err(|e| KeyRead::Refused(format!("cannot read it: {e}")))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        KeyRead::Refused(format!(
            "it changed while being read; it must be {KEY_LEN} bytes"
        ))
    })
}

/// Deserializes artifact bytes whose tag this cache verified.
#[allow(unsafe_code)]
fn deserialize_verified(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` carries a valid HMAC under this install's key (readable only by the
    // daemon's user), so it is bytes `Engine::precompile_component` returned to a daemon of this
    // install under this very entry name; and they are the bytes just verified, in memory, not a
    // file that could change after the check. wasmtime re-checks version and settings.
    unsafe { Component::deserialize(engine, artifact) }
}

#[allow(unsafe_code)]
fn deserialize_fresh(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was just returned by `precompile_component` on this same engine.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineSettings, build_engine};

    /// The smallest component: the header alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
    const SHA: &str = "00ff";

    fn engine() -> Engine {
        build_engine(EngineSettings {
            pool_instances: 1,
            max_memory_bytes: 1 << 20,
        })
        .expect("engine")
    }

    struct Setup {
        temp: tempfile::TempDir,
        engine: Engine,
    }

    impl Setup {
        fn new() -> Setup {
            Setup {
                temp: tempfile::tempdir().expect("tempdir"),
                engine: engine(),
            }
        }

        fn dir(&self) -> PathBuf {
            self.temp.path().join("cache")
        }

        fn cache_with_key(&self, key: &str) -> AotCache {
            AotCache::new(self.dir(), &self.temp.path().join(key), &self.engine).expect("cache")
        }

        fn cache(&self) -> AotCache {
            self.cache_with_key("aot.key")
        }

        fn load(&self, cache: &AotCache) -> CacheOutcome {
            cache
                .load(&self.engine, EMPTY_COMPONENT, SHA)
                .expect("load")
                .1
        }

        fn artifact_path(&self, cache: &AotCache) -> PathBuf {
            self.dir().join(cache.entry_name(SHA))
        }
    }

    #[test]
    fn a_tagged_artifact_is_a_hit_on_the_next_start() {
        let setup = Setup::new();
        assert_eq!(setup.load(&setup.cache()), CacheOutcome::Compiled);
        let again = setup.cache();
        assert_eq!(setup.load(&again), CacheOutcome::Hit);
        assert_eq!(again.stats().rejected, 0);
    }

    #[test]
    fn a_tampered_artifact_is_recompiled_never_mapped_and_counted() {
        let setup = Setup::new();
        let first = setup.cache();
        setup.load(&first);
        let path = setup.artifact_path(&first);

        // A flipped byte in the native code.
        let mut bytes = std::fs::read(&path).expect("artifact");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).expect("tamper");
        let cache = setup.cache();
        assert_eq!(setup.load(&cache), CacheOutcome::Compiled);
        assert_eq!(cache.stats().rejected, 1);
        assert_eq!(cache.stats().hits, 0);

        // A valid artifact as wasmtime writes it (what someone able to write the cache could
        // plant), but without this install's tag.
        let planted = setup
            .engine
            .precompile_component(EMPTY_COMPONENT)
            .expect("precompile");
        std::fs::write(&path, &planted).expect("plant");
        let cache = setup.cache();
        assert_eq!(setup.load(&cache), CacheOutcome::Compiled);
        assert_eq!(cache.stats().rejected, 1);

        // What was recompiled over it is tagged again: the next start hits.
        assert_eq!(setup.load(&setup.cache()), CacheOutcome::Hit);
    }

    #[test]
    fn an_artifact_tagged_under_another_key_or_name_is_refused() {
        let setup = Setup::new();
        let first = setup.cache();
        setup.load(&first);
        let other_key = setup.cache_with_key("other.key");
        assert_eq!(setup.load(&other_key), CacheOutcome::Compiled);
        assert_eq!(other_key.stats().rejected, 1);

        // A genuine artifact moved under another component's name.
        let cache = setup.cache();
        std::fs::copy(
            setup.artifact_path(&cache),
            setup.dir().join(cache.entry_name("abcd")),
        )
        .expect("copy");
        cache
            .load(&setup.engine, EMPTY_COMPONENT, "abcd")
            .expect("load");
        assert_eq!(cache.stats().rejected, 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_cache_dir_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let setup = Setup::new();
        let cache = setup.cache();
        drop(cache);
        let metadata = std::fs::metadata(setup.dir()).expect("created");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o700, "created 0700");
        for mode in [0o770, 0o707, 0o777] {
            std::fs::set_permissions(setup.dir(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let err = AotCache::new(
                setup.dir(),
                &setup.temp.path().join("aot.key"),
                &setup.engine,
            )
            .expect_err("a writable cache dir");
            let text = err.to_string();
            assert!(matches!(err, AotSetupError::InsecureDir { .. }), "{text}");
            assert!(
                text.contains(&format!("{mode:o}")) && text.contains("runtime.cache_dir"),
                "{text}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_key_is_created_private_and_refused_once_others_can_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let setup = Setup::new();
        let key_file = setup.temp.path().join("data").join("aot.key");
        let first = load_or_create_key(&key_file).expect("created");
        let meta = std::fs::metadata(&key_file).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(load_or_create_key(&key_file).expect("read back"), first);

        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = AotCache::new(setup.dir(), &key_file, &setup.engine).expect_err("readable key");
        let text = err.to_string();
        assert!(matches!(err, AotSetupError::Key { .. }), "{text}");
        assert!(
            text.contains("chmod 600") && text.contains("runtime.aot_key_file"),
            "{text}"
        );
    }
}
