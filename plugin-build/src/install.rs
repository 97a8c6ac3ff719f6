//! Component + `plugin.toml` → an installable plugin dir: the component under the file name the
//! manifest gives, and the manifest with `sha256` pinned to exactly those bytes (so the daemon
//! refuses any other file under that name).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Preamble of a component binary: magic, then version 0x0d and layer 0x01 (a core module has
/// version 0x01 and layer 0x00).
pub const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Longest plugin name (the daemon's rule, docs/manifest.md).
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a WebAssembly component (header {header:02x?}); build Rust plugins with `--target wasm32-wasip2`"
    )]
    NotAComponent { path: PathBuf, header: Vec<u8> },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The keys of a `plugin.toml` the build needs, and the whole table to write back.
#[derive(Debug, Clone)]
pub struct PluginManifest {
    pub path: PathBuf,
    pub name: String,
    /// `meta-agent` or `health-checker`.
    pub kind: String,
    /// The component's file name.
    pub wasm: String,
    table: toml::Table,
}

impl PluginManifest {
    /// Reads and checks `path` (a `plugin.toml`).
    pub fn read(path: &Path) -> Result<PluginManifest, InstallError> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let table: toml::Table = text.parse().map_err(|err| InstallError::Manifest {
            path: path.to_path_buf(),
            message: format!("not valid TOML: {err}"),
        })?;
        let bad = |message: String| InstallError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let string_key = |key: &str| match table.get(key) {
            Some(toml::Value::String(value)) => Ok(value.clone()),
            Some(other) => Err(bad(format!(
                "`{key}` must be a string, found {}",
                other.type_str()
            ))),
            None => Err(bad(format!("missing `{key}`"))),
        };
        let name = string_key("name")?;
        // The name becomes a directory; hold it to the manifest's rule.
        if !((1..=MAX_NAME_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(bad(format!(
                "`name = \"{name}\"` must be 1-{MAX_NAME_LEN} characters of a-z, 0-9 and '-'"
            )));
        }
        let kind = string_key("kind")?;
        if kind != "meta-agent" && kind != "health-checker" {
            return Err(bad(format!(
                "`kind = \"{kind}\"` must be `meta-agent` or `health-checker`"
            )));
        }
        let wasm = string_key("wasm")?;
        // Installed flat next to the manifest, so only a plain file name works.
        if Path::new(&wasm).file_name() != Some(OsStr::new(&wasm)) || !wasm.ends_with(".wasm") {
            return Err(bad(format!(
                "`wasm = \"{wasm}\"` must be a plain file name ending in .wasm"
            )));
        }
        Ok(PluginManifest {
            path: path.to_path_buf(),
            name,
            kind,
            wasm,
            table,
        })
    }
}

/// What [`install`] wrote.
#[derive(Debug, Clone)]
pub struct Installed {
    pub dir: PathBuf,
    pub name: String,
    pub bytes: usize,
    pub sha256: String,
}

/// Writes `component` and the pinned manifest into `dest` (cleared first, so no file of an
/// earlier build lingers). The component is written before the manifest, so a daemon watching
/// `dest` never sees a manifest pinning bytes that are not there yet.
pub fn install(
    manifest: &PluginManifest,
    component: &Path,
    dest: &Path,
) -> Result<Installed, InstallError> {
    let bytes = std::fs::read(component).map_err(io_error(component))?;
    if !bytes.starts_with(&COMPONENT_HEADER) {
        return Err(InstallError::NotAComponent {
            path: component.to_path_buf(),
            header: bytes[..bytes.len().min(8)].to_vec(),
        });
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    let mut table = manifest.table.clone();
    table.insert("sha256".to_owned(), toml::Value::String(sha256.clone()));
    let text = toml::to_string(&table).map_err(|err| InstallError::Manifest {
        path: manifest.path.clone(),
        message: format!("cannot serialize: {err}"),
    })?;

    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io_error(dest))?;
    }
    std::fs::create_dir_all(dest).map_err(io_error(dest))?;
    let wasm_path = dest.join(&manifest.wasm);
    std::fs::write(&wasm_path, &bytes).map_err(io_error(&wasm_path))?;
    let manifest_path = dest.join("plugin.toml");
    std::fs::write(&manifest_path, text).map_err(io_error(&manifest_path))?;
    Ok(Installed {
        dir: dest.to_path_buf(),
        name: manifest.name.clone(),
        bytes: bytes.len(),
        sha256,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_sha256_and_refuses_core_modules() {
        let dir = tempfile::tempdir().unwrap();
        let manifest_path = dir.path().join("plugin.toml");
        std::fs::write(
            &manifest_path,
            "name = \"p\"\nversion = \"0.1.0\"\nkind = \"meta-agent\"\nwasm = \"p.wasm\"\n",
        )
        .unwrap();
        let manifest = PluginManifest::read(&manifest_path).unwrap();
        let component = dir.path().join("built.wasm");
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend_from_slice(b"rest");
        std::fs::write(&component, &bytes).unwrap();
        let dest = dir.path().join("out");
        let installed = install(&manifest, &component, &dest).unwrap();
        assert_eq!(installed.sha256, hex(&Sha256::digest(&bytes)));
        let written = std::fs::read_to_string(dest.join("plugin.toml")).unwrap();
        assert!(written.contains(&format!("sha256 = \"{}\"", installed.sha256)));
        assert_eq!(std::fs::read(dest.join("p.wasm")).unwrap(), bytes);

        std::fs::write(&component, b"\0asm\x01\0\0\0").unwrap();
        assert!(matches!(
            install(&manifest, &component, &dest),
            Err(InstallError::NotAComponent { .. })
        ));
    }

    #[test]
    fn refuses_bad_names_kinds_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.toml");
        for (text, needle) in [
            (
                "name = \"Bad\"\nkind = \"meta-agent\"\nwasm = \"p.wasm\"",
                "name",
            ),
            ("name = \"p\"\nkind = \"cron\"\nwasm = \"p.wasm\"", "kind"),
            (
                "name = \"p\"\nkind = \"meta-agent\"\nwasm = \"../p.wasm\"",
                "wasm",
            ),
            ("name = \"p\"\nkind = \"meta-agent\"", "missing `wasm`"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = PluginManifest::read(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
