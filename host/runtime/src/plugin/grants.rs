//! Grants resolution: a manifest's permissions turned into what a call's sandbox is built from
//! (WASI directories, environment variables, the outbound-HTTP allow-list), under the operator's
//! [`GrantPolicy`].
//!
//! A directory grant is checked twice against the policy: on the path it would resolve to before
//! anything is created (so a refused `write = true` grant creates nothing), and on the real,
//! canonical path once it exists (so a symlink cannot lead out of a root or into the daemon's own
//! files). Both checks compare canonical paths; `..` through directories that do not exist yet
//! cannot be resolved and is refused.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::LoadError;
use crate::manifest::{DirGrant, HostPattern, Manifest};
use crate::sandbox::{Grants, ResolvedDir};

/// The config key naming the directories grants may lie in.
pub const ALLOWED_DIR_ROOTS_KEY: &str = "runtime.allowed_dir_roots";
/// The config key naming the environment variables plugins may be granted.
pub const ALLOWED_ENV_KEY: &str = "runtime.allowed_env";

/// What plugins may be granted: the operator's allow-lists (deny by default: empty lists grant
/// nothing) and the daemon's own paths, which no grant may expose even inside an allowed root.
#[derive(Debug, Clone, Default)]
pub struct GrantPolicy {
    /// `runtime.allowed_dir_roots`: a directory grant must resolve (canonically) inside one.
    pub allowed_dir_roots: Vec<PathBuf>,
    /// `runtime.allowed_env`: the environment variables a manifest may name.
    pub allowed_env: Vec<String>,
    /// The daemon's files and directories, each with how far it is kept from grants.
    pub daemon_paths: Vec<DaemonPath>,
}

/// One of the daemon's own paths.
#[derive(Debug, Clone)]
pub struct DaemonPath {
    pub path: PathBuf,
    /// What it is, for the refusal message ("the plugins dir").
    pub what: String,
    pub guard: Guard,
}

/// How a [`DaemonPath`] is kept from grants. A grant that contains the path is always refused;
/// the guard says what is allowed at it and inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Nothing inside either (the plugins dir, the AOT cache, the stores, the key and token files).
    Whole,
    /// Grants inside it are allowed (the data dir and the config file's directory: they hold the
    /// daemon's files beside directories the operator chose to share; those files are guarded
    /// one by one).
    Enclosing,
    /// Read-only grants of it or inside it are allowed, writable ones are not (the logs dir: the
    /// log-analyzer reads it; a writable grant could forge the log and the audit trail).
    ReadOnly,
}

impl GrantPolicy {
    /// Adds a daemon path.
    pub fn protect(&mut self, path: impl Into<PathBuf>, what: impl Into<String>, guard: Guard) {
        self.daemon_paths.push(DaemonPath {
            path: path.into(),
            what: what.into(),
            guard,
        });
    }
}

/// Resolves directory grants against the data dir (creating writable ones) under `policy`,
/// reads granted environment variables, and parses the HTTP allow-list.
pub(super) fn resolve_grants(
    manifest: &Manifest,
    data_dir: &Path,
    policy: &GrantPolicy,
) -> Result<(Grants, Arc<[HostPattern]>), LoadError> {
    let perms = &manifest.permissions;
    let denied = |what: String, reason: String| LoadError::Permission {
        plugin: manifest.name.clone(),
        what,
        reason,
    };
    for name in &perms.env {
        if !policy.allowed_env.contains(name) {
            return Err(LoadError::EnvGrantRefused {
                plugin: manifest.name.clone(),
                name: name.clone(),
                allowed: list(policy.allowed_env.iter()),
            });
        }
    }
    let mut dirs = Vec::new();
    if !perms.dirs.is_empty() {
        let checker = Checker::new(manifest, policy);
        for grant in &perms.dirs {
            dirs.push(resolve_dir(&checker, grant, data_dir, &denied)?);
        }
    }
    let env = perms
        .env
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
        .collect();
    // Patterns were validated with the manifest; a failure here cannot happen, so skip rather
    // than fail on it.
    let http_hosts: Arc<[HostPattern]> = perms
        .http_hosts
        .iter()
        .filter_map(|h| HostPattern::parse(h).ok())
        .collect::<Vec<_>>()
        .into();
    Ok((
        Grants {
            env,
            env_names: perms.env.clone(),
            dirs,
            http_host_patterns: perms.http_hosts.clone(),
        },
        http_hosts,
    ))
}

/// One directory grant: checked where it would land, created if writable, checked again where it
/// really is.
fn resolve_dir(
    checker: &Checker<'_>,
    grant: &DirGrant,
    data_dir: &Path,
    denied: &impl Fn(String, String) -> LoadError,
) -> Result<ResolvedDir, LoadError> {
    let joined = if grant.host.is_absolute() {
        grant.host.clone()
    } else {
        data_dir.join(&grant.host)
    };
    let planned =
        canonical_planned(&joined).map_err(|reason| checker.refuse(grant, &joined, reason))?;
    checker.check(grant, &planned)?;
    if grant.write {
        std::fs::create_dir_all(&joined).map_err(|e| {
            denied(
                format!("dir {} (write)", joined.display()),
                format!("cannot create it: {e}"),
            )
        })?;
    }
    let host = joined.canonicalize().map_err(|e| {
        denied(
            format!("dir {}", joined.display()),
            format!("{e}; create it or grant `write = true` so the host creates it"),
        )
    })?;
    // Opened once, and checked where the opened directory really is: a link that appeared
    // where the planned path had a plain directory, or between the check and the open, is
    // caught here; after this, calls reach only this handle.
    let (handle, host) = crate::sandbox::open_grant_dir(&host).map_err(|e| {
        denied(
            format!("dir {}", host.display()),
            format!("cannot open it as a directory: {e}"),
        )
    })?;
    checker.check(grant, &host)?;
    Ok(ResolvedDir {
        host,
        guest: grant.guest.clone(),
        write: grant.write,
        handle: Arc::new(handle),
    })
}

/// The policy with its paths canonicalised for one load (paths created since the last load,
/// such as a store written later, are found where they really are).
struct Checker<'a> {
    plugin: &'a str,
    roots: Vec<PathBuf>,
    roots_text: String,
    daemon_paths: Vec<(PathBuf, &'a DaemonPath)>,
}

impl<'a> Checker<'a> {
    fn new(manifest: &'a Manifest, policy: &'a GrantPolicy) -> Checker<'a> {
        let canonical =
            |path: &Path| canonical_planned(path).unwrap_or_else(|_| path.to_path_buf());
        let roots: Vec<PathBuf> = policy
            .allowed_dir_roots
            .iter()
            .map(|r| canonical(r))
            .collect();
        Checker {
            plugin: &manifest.name,
            roots_text: list(roots.iter().map(|r| r.display())),
            roots,
            daemon_paths: policy
                .daemon_paths
                .iter()
                .map(|p| (canonical(&p.path), p))
                .collect(),
        }
    }

    /// Whether `host` (canonical) may be granted as `grant` asks.
    fn check(&self, grant: &DirGrant, host: &Path) -> Result<(), LoadError> {
        for (path, owned) in &self.daemon_paths {
            // `inside` includes the path itself.
            let inside = host.starts_with(path);
            let around = path.starts_with(host) && path.as_path() != host;
            let refused = match owned.guard {
                Guard::Whole => inside || around,
                Guard::Enclosing => around || path.as_path() == host,
                Guard::ReadOnly => around,
            };
            if refused {
                return Err(self.refuse(
                    grant,
                    host,
                    format!(
                        "it overlaps {} ({}), which the daemon owns; grant a directory of its own",
                        path.display(),
                        owned.what
                    ),
                ));
            }
            if inside && owned.guard == Guard::ReadOnly && grant.write {
                return Err(self.refuse(
                    grant,
                    host,
                    format!(
                        "it lies in {} ({}), which plugins may read but never write; drop `write = true`",
                        path.display(),
                        owned.what
                    ),
                ));
            }
        }
        if !self.roots.iter().any(|root| host.starts_with(root)) {
            let reason = if self.roots.is_empty() {
                format!(
                    "no directory may be granted while {ALLOWED_DIR_ROOTS_KEY} is empty (the default); add a directory that holds it there"
                )
            } else {
                format!(
                    "it is outside every allowed root; grant a directory inside one, or add one that holds it to {ALLOWED_DIR_ROOTS_KEY}"
                )
            };
            return Err(self.refuse(grant, host, reason));
        }
        Ok(())
    }

    fn refuse(&self, grant: &DirGrant, resolved: &Path, reason: String) -> LoadError {
        LoadError::DirGrantRefused {
            plugin: self.plugin.to_string(),
            grant: grant.host.clone(),
            resolved: resolved.to_path_buf(),
            reason,
            roots: self.roots_text.clone(),
        }
    }
}

/// `path` made absolute and canonical as far as it exists, with the rest appended: where it
/// would be once created. A `..` in the part that does not exist cannot be resolved (it would
/// climb from a directory that is not there yet) and is an error.
fn canonical_planned(path: &Path) -> Result<PathBuf, String> {
    let absolute =
        std::path::absolute(path).map_err(|e| format!("its path cannot be made absolute: {e}"))?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut planned = canonical;
            for part in missing.iter().rev() {
                planned.push(part);
            }
            return Ok(planned);
        }
        match (existing.components().next_back(), existing.parent()) {
            (Some(Component::Normal(name)), Some(parent)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            (Some(Component::ParentDir), _) => {
                return Err(
                    "its path climbs with `..` out of directories that do not exist".to_string(),
                );
            }
            _ => return Err("no part of its path exists".to_string()),
        }
    }
}

/// `[a, b]`, or `[]` for none.
fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "runtime.allowed_dir_roots";

    struct Setup {
        _temp: tempfile::TempDir,
        data: PathBuf,
        root: PathBuf,
        policy: GrantPolicy,
    }

    /// A data dir holding a shared root (`data/shared`) and the daemon's own `data/mesh` and
    /// `data/logs`; the policy allows the shared root only.
    fn setup() -> Setup {
        let temp = tempfile::tempdir().expect("tempdir");
        let base = temp.path().canonicalize().expect("canonical temp");
        let data = base.join("data");
        let root = data.join("shared");
        for dir in [&root, &data.join("mesh"), &data.join("logs")] {
            std::fs::create_dir_all(dir).expect("dirs");
        }
        let mut policy = GrantPolicy {
            allowed_dir_roots: vec![root.clone(), data.join("logs")],
            allowed_env: vec!["TZ".into()],
            daemon_paths: Vec::new(),
        };
        policy.protect(&data, "the data dir", Guard::Enclosing);
        policy.protect(data.join("mesh"), "the mesh catalog", Guard::Whole);
        policy.protect(data.join("logs"), "the logs dir", Guard::ReadOnly);
        Setup {
            _temp: temp,
            data,
            root,
            policy,
        }
    }

    fn manifest(permissions: &str) -> Manifest {
        let text = format!(
            "name = \"p\"\nversion = \"0.1.0\"\nkind = \"meta-agent\"\nwasm = \"p.wasm\"\n{permissions}"
        );
        Manifest::parse(&text, Path::new("plugin.toml")).expect("manifest")
    }

    fn dir_grant(host: &Path, write: bool) -> Manifest {
        manifest(&format!(
            "[[permissions.dirs]]\nhost = {:?}\nguest = \"/g\"\nwrite = {write}\n",
            host.display().to_string()
        ))
    }

    fn refused(setup: &Setup, manifest: &Manifest) -> String {
        let err = resolve_grants(manifest, &setup.data, &setup.policy)
            .expect_err("the grant must be refused");
        assert_eq!(err.code(), "dir_grant_refused", "{err}");
        err.to_string()
    }

    /// The message names the grant as written, the allowed roots and the key to change.
    fn assert_names_grant_roots_and_key(text: &str, grant: &str, setup: &Setup) {
        assert!(text.contains(&format!("\"{grant}\"")), "{text}");
        assert!(text.contains(&setup.root.display().to_string()), "{text}");
        assert!(text.contains(KEY), "{text}");
    }

    #[test]
    fn a_grant_swapped_for_a_link_after_load_still_reaches_the_checked_directory() {
        let setup = setup();
        let granted = setup.root.join("in");
        std::fs::create_dir_all(&granted).expect("granted dir");
        std::fs::write(granted.join("note"), "granted").expect("note");
        let (grants, _) = resolve_grants(
            &dir_grant(Path::new("shared/in"), false),
            &setup.data,
            &setup.policy,
        )
        .expect("inside the root");
        // Whoever can write data/shared swaps the granted path for a link to the mesh catalog.
        let moved = setup.root.join("in.moved");
        std::fs::rename(&granted, &moved).expect("move away");
        std::os::unix::fs::symlink(setup.data.join("mesh"), &granted).expect("link");
        let reached = grants.dirs[0]
            .preopen_path()
            .canonicalize()
            .expect("the preopened path resolves");
        assert_eq!(
            reached, moved,
            "a call must reach the directory checked at load"
        );
        assert_eq!(
            std::fs::read_to_string(grants.dirs[0].preopen_path().join("note")).expect("note"),
            "granted"
        );
    }

    #[test]
    fn a_grant_whose_last_component_is_a_link_is_checked_where_it_leads() {
        let setup = setup();
        std::os::unix::fs::symlink(setup.data.join("mesh"), setup.root.join("door")).expect("link");
        let text = refused(&setup, &dir_grant(Path::new("shared/door"), false));
        assert!(text.contains("the mesh catalog"), "{text}");
    }

    #[test]
    fn a_grant_inside_a_root_is_accepted_and_created_when_writable() {
        let setup = setup();
        let (grants, _) = resolve_grants(
            &dir_grant(Path::new("shared/out"), true),
            &setup.data,
            &setup.policy,
        )
        .expect("inside the root");
        assert_eq!(grants.dirs[0].host, setup.root.join("out"));
        assert!(setup.root.join("out").is_dir());
        // The logs dir may be read.
        resolve_grants(
            &dir_grant(Path::new("logs"), false),
            &setup.data,
            &setup.policy,
        )
        .expect("read-only logs");
    }

    #[test]
    fn climbing_out_with_dot_dot_is_refused_and_creates_nothing() {
        let setup = setup();
        let text = refused(&setup, &dir_grant(Path::new("../.."), false));
        assert_names_grant_roots_and_key(&text, "../..", &setup);
        // Into a directory that does not exist, then up and out.
        let text = refused(&setup, &dir_grant(Path::new("shared/new/../../../x"), true));
        assert!(text.contains("`..`"), "{text}");
        assert!(
            !setup.root.join("new").exists(),
            "a refused grant created a directory"
        );
    }

    #[test]
    fn a_host_directory_outside_the_roots_is_refused() {
        let setup = setup();
        let text = refused(&setup, &dir_grant(Path::new("/etc"), false));
        assert_names_grant_roots_and_key(&text, "/etc", &setup);
        assert!(text.contains("outside every allowed root"), "{text}");
        let mut empty = setup.policy.clone();
        empty.allowed_dir_roots.clear();
        let err = resolve_grants(&dir_grant(Path::new("shared"), false), &setup.data, &empty)
            .expect_err("deny by default");
        assert!(err.to_string().contains("is empty (the default)"), "{err}");
    }

    #[test]
    fn the_data_dir_and_the_daemons_files_are_refused_even_inside_a_root() {
        let mut setup = setup();
        setup.policy.allowed_dir_roots.push(setup.data.clone());
        let data = setup.data.clone();
        let text = refused(&setup, &dir_grant(&data, false));
        assert_names_grant_roots_and_key(&text, &data.display().to_string(), &setup);
        assert!(text.contains("the data dir"), "{text}");
        let text = refused(&setup, &dir_grant(Path::new("mesh"), true));
        assert!(
            text.contains("the mesh catalog") && text.contains("overlaps"),
            "{text}"
        );
        let text = refused(&setup, &dir_grant(Path::new("logs"), true));
        assert!(text.contains("drop `write = true`"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_a_root_is_refused() {
        let setup = setup();
        let outside = tempfile::tempdir().expect("outside");
        std::os::unix::fs::symlink(outside.path(), setup.root.join("link")).expect("symlink");
        let text = refused(&setup, &dir_grant(Path::new("shared/link"), false));
        assert_names_grant_roots_and_key(&text, "shared/link", &setup);
        // A link inside the root to the daemon's own files is refused too.
        std::os::unix::fs::symlink(setup.data.join("mesh"), setup.root.join("mesh"))
            .expect("symlink");
        let text = refused(&setup, &dir_grant(Path::new("shared/mesh"), true));
        assert!(text.contains("the mesh catalog"), "{text}");
    }

    #[test]
    fn an_environment_variable_outside_the_allow_list_is_refused() {
        let setup = setup();
        let err = resolve_grants(
            &manifest("[permissions]\nenv = [\"HOME\"]\n"),
            &setup.data,
            &setup.policy,
        )
        .expect_err("HOME is not allowed");
        assert_eq!(err.code(), "env_grant_refused");
        let text = err.to_string();
        assert!(
            text.contains("\"HOME\"")
                && text.contains("[TZ]")
                && text.contains("runtime.allowed_env"),
            "{text}"
        );
        let (grants, _) = resolve_grants(
            &manifest("[permissions]\nenv = [\"TZ\"]\n"),
            &setup.data,
            &setup.policy,
        )
        .expect("TZ is allowed");
        assert_eq!(grants.env_names, ["TZ"]);
    }
}
