//! The world check: whether the file is a component, which `evolve:plugin` interfaces and
//! versions it exports and imports against its declared kind, and what a link error means for
//! the plugin's author.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::bindings::{WIT_PACKAGE, WIT_VERSION};
use crate::error::LoadError;
use crate::manifest::PluginKind;

/// `Some(what it is)` when `bytes` is not a component.
pub(super) fn not_a_component(bytes: &[u8]) -> Option<&'static str> {
    const MAGIC: &[u8] = b"\0asm";
    // Version + layer fields of the preamble: 0x0d 0x00 (component-model version), 0x01 0x00
    // (component layer); a core module has version 1, layer 0.
    const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Some("not WebAssembly (no \\0asm header)");
    }
    match &bytes[4..8] {
        v if v == COMPONENT => None,
        v if v == CORE_MODULE => Some("a core WebAssembly module"),
        _ => Some("WebAssembly of an unknown version or layer"),
    }
}

/// A world or version problem found by inspecting the component's type.
#[derive(Debug)]
pub(super) enum WorldProblem {
    Version(String),
    Mismatch(&'static str, String),
}

impl WorldProblem {
    pub(super) fn into_load_error(self, plugin: &str, file: &Path) -> LoadError {
        match self {
            WorldProblem::Version(plugin_version) => LoadError::VersionMismatch {
                plugin: plugin.to_string(),
                file: file.to_path_buf(),
                plugin_version,
                host_version: WIT_VERSION,
            },
            WorldProblem::Mismatch(world, detail) => LoadError::WorldMismatch {
                plugin: plugin.to_string(),
                file: file.to_path_buf(),
                world,
                detail,
            },
        }
    }
}

/// Splits `evolve:plugin/agent@0.1.0` into `("agent", "0.1.0")`.
fn evolve_interface(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').unwrap_or((rest, "")))
}

/// Whether a component built against `version` links with this host: same major, and for 0.x the
/// same minor (semver's rule for pre-1.0 packages, which wasmtime's linker also applies).
fn compatible(version: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(version), parse(WIT_VERSION)) {
        (Some((maj, min)), Some((host_maj, host_min))) => {
            maj == host_maj && (maj != 0 || min == host_min)
        }
        _ => false,
    }
}

/// Checks the component's exports against `kind`'s world and every `evolve:plugin` version it
/// names; returns the version it was built against.
pub(super) fn check_world(
    engine: &Engine,
    component: &Component,
    kind: PluginKind,
) -> Result<String, WorldProblem> {
    let ty = component.component_type();
    let expected = kind.export_interface();
    let mut found_version = None;
    let mut other_world = None;
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_string());
        let Some((iface, version)) = evolve_interface(name) else {
            continue;
        };
        if !compatible(version) {
            return Err(WorldProblem::Version(version.to_string()));
        }
        if iface == expected && matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            found_version = Some(version.to_string());
        } else if iface == PluginKind::MetaAgent.export_interface()
            || iface == PluginKind::HealthChecker.export_interface()
        {
            other_world = Some(name.to_string());
        }
    }
    let version = match (found_version, other_world) {
        (Some(version), _) => version,
        (None, Some(other)) => {
            return Err(WorldProblem::Mismatch(
                kind.world(),
                format!(
                    "plugin.toml says kind = \"{kind}\" but the component exports {other}; fix `kind` or rebuild against the {kind} world"
                ),
            ));
        }
        (None, None) => {
            return Err(WorldProblem::Mismatch(
                kind.world(),
                format!(
                    "missing export {WIT_PACKAGE}/{expected}@{WIT_VERSION} (it exports: {}); implement the {kind} world with evolve-plugin-sdk",
                    if exports.is_empty() {
                        "nothing".to_string()
                    } else {
                        exports.join(", ")
                    }
                ),
            ));
        }
    };
    for (name, _) in ty.imports(engine) {
        if let Some((_, version)) = evolve_interface(name)
            && !compatible(version)
        {
            return Err(WorldProblem::Version(version.to_string()));
        }
        if kind == PluginKind::MetaAgent && name.starts_with("wasi:http/") {
            return Err(WorldProblem::Mismatch(
                kind.world(),
                format!(
                    "it imports {name}, but only health checkers may make outbound HTTP; use a health-checker, or get data through the inventory import"
                ),
            ));
        }
    }
    Ok(version)
}

/// Rewrites wasmtime's "import not found in linker" into what it means for a plugin author.
pub(super) fn explain_link_error(kind: PluginKind, message: &str) -> String {
    if message.contains("matching implementation was not found in the linker") {
        format!(
            "{message}; the {kind} world provides evolve:plugin/{{logging,config,inventory}} and WASI 0.2 CLI interfaces{}",
            if kind == PluginKind::HealthChecker {
                " plus wasi:http/outgoing-handler"
            } else {
                ""
            }
        )
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_component_from_core_module_and_junk() {
        let component = b"\0asm\x0d\x00\x01\x00rest";
        let core = b"\0asm\x01\x00\x00\x00rest";
        assert_eq!(not_a_component(component), None);
        assert_eq!(not_a_component(core), Some("a core WebAssembly module"));
        assert!(not_a_component(b"PK\x03\x04zip").is_some());
        assert!(not_a_component(b"").is_some());
    }

    #[test]
    fn pre_1_0_versions_need_the_same_minor() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.1.0"));
        assert!(!compatible("garbage"));
    }

    #[test]
    fn interface_names_split_into_name_and_version() {
        assert_eq!(
            evolve_interface("evolve:plugin/agent@0.1.0"),
            Some(("agent", "0.1.0"))
        );
        assert_eq!(evolve_interface("wasi:cli/run@0.2.0"), None);
    }
}
