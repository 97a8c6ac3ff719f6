//! Source → component, per language.
//!
//! | language | command | world |
//! |---|---|---|
//! | Rust | `cargo build --profile component --target wasm32-wasip2` (`--release` without `[profile.component]`) | the SDK's `export_*!` macro picks it |
//! | Python | `componentize-py -d WIT -w WORLD componentize -p DIR app` | `meta-agent` / `health-checker-http` |
//! | JavaScript | `componentize-js app.js -w WIT -n WORLD -d ...` | `meta-agent` / `health-checker-http` |

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::install::PluginManifest;
use crate::lang::{JS_ENTRY, Language};
use sha2::{Digest, Sha256};

use crate::tools::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, ToolError, Tools};
use crate::wit;

/// The Rust guest target; `cargo build` emits components for it directly.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The cargo profile for the component when a project defines it (the templates do): the size
/// settings live there, so the project's `[profile.release]` can match the host workspace's and
/// its `cargo test --release` reuses the host's compiled dependencies.
pub const COMPONENT_PROFILE: &str = "component";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{dir}: cannot tell the plugin's language: expected exactly one of Cargo.toml (Rust), app.py (Python), app.js (JavaScript)"
    )]
    UnknownLanguage { dir: PathBuf },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "the Rust target {WASM_TARGET} is not installed; install it with `rustup target add {WASM_TARGET}`"
    )]
    MissingRustTarget,
    #[error("`{command}` could not start: {source}; {hint}")]
    Start {
        command: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    CargoToml { path: PathBuf, message: String },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{manifest}: `wasm = \"{wasm}\"` was not produced by the build (looked for {looked})")]
    NoArtifact {
        manifest: PathBuf,
        wasm: String,
        looked: PathBuf,
    },
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub tools: Tools,
    /// Install a missing Python/JavaScript toolchain (the set-up path) instead of failing.
    pub install_tools: bool,
    /// Scratch dir for the WIT package and the Python/JavaScript components.
    pub work_dir: PathBuf,
    /// cargo's target dir for Rust plugins; `None` is the project's own `target/`.
    pub cargo_target_dir: Option<PathBuf>,
    /// The `cargo` to run.
    pub cargo: OsString,
}

/// Builds the plugin project in `dir` (whose manifest is `manifest`); the path of the built
/// component.
pub fn build_component(
    dir: &Path,
    manifest: &PluginManifest,
    options: &BuildOptions,
) -> Result<PathBuf, BuildError> {
    let lang = Language::detect(dir).ok_or_else(|| BuildError::UnknownLanguage {
        dir: dir.to_path_buf(),
    })?;
    match lang {
        Language::Rust => build_rust(dir, manifest, options),
        Language::Python | Language::JavaScript => build_dynamic(dir, manifest, lang, options),
    }
}

fn build_rust(
    dir: &Path,
    manifest: &PluginManifest,
    options: &BuildOptions,
) -> Result<PathBuf, BuildError> {
    ensure_rust_target()?;
    let profile = rust_profile(dir)?;
    let mut cmd = Command::new(&options.cargo);
    cmd.args(["build", "--profile", profile, "--target", WASM_TARGET])
        .current_dir(dir);
    let target_dir = match &options.cargo_target_dir {
        Some(target) => {
            cmd.arg("--target-dir").arg(target);
            target.clone()
        }
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_relative() { dir.join(t) } else { t })
            .unwrap_or_else(|| dir.join("target")),
    };
    run(&mut cmd, "install Rust with rustup (https://rustup.rs)")?;
    let built = target_dir
        .join(WASM_TARGET)
        .join(profile)
        .join(&manifest.wasm);
    if !built.is_file() {
        return Err(BuildError::NoArtifact {
            manifest: manifest.path.clone(),
            wasm: manifest.wasm.clone(),
            looked: built,
        });
    }
    Ok(built)
}

/// Fails with the install command when rustup knows the target is missing. Without rustup (a
/// distribution's Rust) cargo's own error has to do.
fn ensure_rust_target() -> Result<(), BuildError> {
    let Ok(output) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if !output.status.success() {
        return Ok(());
    }
    let installed = String::from_utf8_lossy(&output.stdout);
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        Ok(())
    } else {
        Err(BuildError::MissingRustTarget)
    }
}

fn build_dynamic(
    dir: &Path,
    manifest: &PluginManifest,
    lang: Language,
    options: &BuildOptions,
) -> Result<PathBuf, BuildError> {
    let work = &options.work_dir;
    let wit_dir = work.join("wit");
    wit::write_to(&wit_dir).map_err(|source| BuildError::Io {
        path: wit_dir.clone(),
        source,
    })?;
    let out = work.join(&manifest.wasm);
    let world = if manifest.kind == "health-checker" {
        wit::HEALTH_CHECKER_WORLD
    } else {
        wit::META_AGENT_WORLD
    };
    // Componentizing takes 10-20 s; skip it when nothing that goes into it changed.
    let fingerprint = inputs_fingerprint(dir, lang, world).map_err(|source| BuildError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let stamp = work.join(format!("{}.inputs", manifest.wasm));
    if out.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&fingerprint) {
        return Ok(out);
    }
    let _ = std::fs::remove_file(&stamp);
    let mut cmd;
    if lang == Language::Python {
        cmd = Command::new(options.tools.python(options.install_tools)?);
        cmd.arg("-d")
            .arg(&wit_dir)
            .args(["-w", world, "componentize", "-p"])
            .arg(dir)
            .args(["app", "-o"])
            .arg(&out);
        run(&mut cmd, "reinstall the tools dir")?;
    } else {
        cmd = Command::new(options.tools.js(options.install_tools)?);
        cmd.arg(dir.join(JS_ENTRY))
            .arg("-w")
            .arg(&wit_dir)
            .args(["-n", world, "-d"])
            // The engine's own `fetch` would import `wasi:http/types` on its own terms (and
            // a meta agent gets no HTTP at all); checkers use the world's outgoing-handler.
            .args(["http", "fetch-event", "-o"])
            .arg(&out);
        run(&mut cmd, "reinstall the tools dir")?;
    }
    if !out.is_file() {
        return Err(BuildError::NoArtifact {
            manifest: manifest.path.clone(),
            wasm: manifest.wasm.clone(),
            looked: out,
        });
    }
    std::fs::write(&stamp, fingerprint).map_err(|source| BuildError::Io {
        path: stamp.clone(),
        source,
    })?;
    Ok(out)
}

/// sha256 over everything that goes into a Python/JavaScript component: the project's source
/// files (top level, by name and content), the WIT, the world and the pinned tool version.
fn inputs_fingerprint(dir: &Path, lang: Language, world: &str) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let tool = match lang {
        Language::Python => COMPONENTIZE_PY_VERSION,
        _ => COMPONENTIZE_JS_VERSION,
    };
    for part in [lang.as_str(), world, tool] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    wit::hash_into(&mut hasher);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| {
        f.is_file()
            && f.extension()
                .is_some_and(|ext| ext == "py" || ext == "js" || ext == "mjs")
    });
    files.sort();
    for file in files {
        hasher.update(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hasher.update([0]);
        hasher.update(std::fs::read(&file)?);
        hasher.update([0]);
    }
    Ok(crate::install::hex(&hasher.finalize()))
}

/// The cargo profile a Rust plugin is built with: [`COMPONENT_PROFILE`] when the project's
/// Cargo.toml defines it, else `release`.
pub fn rust_profile(dir: &Path) -> Result<&'static str, BuildError> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| BuildError::Io {
        path: path.clone(),
        source,
    })?;
    let cargo: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| BuildError::CargoToml {
            path,
            message: e.to_string().trim_end().to_owned(),
        })?;
    let defined = cargo
        .get("profile")
        .and_then(toml::Value::as_table)
        .is_some_and(|profiles| profiles.contains_key(COMPONENT_PROFILE));
    Ok(if defined {
        COMPONENT_PROFILE
    } else {
        "release"
    })
}

/// Runs `cmd` with inherited output.
fn run(cmd: &mut Command, hint: &'static str) -> Result<(), BuildError> {
    let command = command_line(cmd);
    let status = cmd.status().map_err(|source| BuildError::Start {
        command: command.clone(),
        hint,
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed {
            command,
            status: status.to_string(),
        })
    }
}

/// `cmd` as a shell-like line, for error messages.
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(line, " (in {})", dir.display());
    }
    line
}

/// The last 2 KiB of a command's stderr, for an error message.
pub fn tail(stderr: &[u8]) -> String {
    const TAIL: usize = 2048;
    let text = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(TAIL)..]);
    text.trim().to_owned()
}
