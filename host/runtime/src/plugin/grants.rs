//! Grants resolution: a manifest's permissions turned into what a call's sandbox is built from
//! (WASI directories, environment variables, the outbound-HTTP allow-list).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::LoadError;
use crate::manifest::{HostPattern, Manifest};
use crate::sandbox::{Grants, ResolvedDir};

/// Resolves directory grants against the data dir (creating writable ones), reads granted
/// environment variables, and parses the HTTP allow-list.
pub(super) fn resolve_grants(
    manifest: &Manifest,
    data_dir: &Path,
    protected_dirs: &[PathBuf],
) -> Result<(Grants, Arc<[HostPattern]>), LoadError> {
    let perms = &manifest.permissions;
    let denied = |what: String, reason: String| LoadError::Permission {
        plugin: manifest.name.clone(),
        what,
        reason,
    };
    let mut dirs = Vec::new();
    for grant in &perms.dirs {
        let host = if grant.host.is_absolute() {
            grant.host.clone()
        } else {
            data_dir.join(&grant.host)
        };
        if grant.write {
            std::fs::create_dir_all(&host).map_err(|e| {
                denied(
                    format!("dir {} (write)", host.display()),
                    format!("cannot create it: {e}"),
                )
            })?;
        }
        let host = host.canonicalize().map_err(|e| {
            denied(
                format!("dir {}", host.display()),
                format!("{e}; create it or grant `write = true` so the host creates it"),
            )
        })?;
        if let Some(protected) = protected_dirs
            .iter()
            .find(|p| host.starts_with(p) || p.starts_with(&host))
        {
            return Err(denied(
                format!("dir {}", host.display()),
                format!(
                    "it overlaps {}, which holds the daemon's plugins or compiled code; grant a directory of its own",
                    protected.display()
                ),
            ));
        }
        dirs.push(ResolvedDir {
            host,
            guest: grant.guest.clone(),
            write: grant.write,
        });
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
