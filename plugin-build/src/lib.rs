//! Builds Evolve plugins into installable plugin dirs. One piece of code for `cargo xtask
//! build-plugins` (the bundled plugins) and `evolve plugin build` (an author's project).
//!
//! | module | what |
//! |---|---|
//! | [`lang`] | which language a plugin project is written in, from its files |
//! | [`tools`] | the pinned guest toolchains (componentize-py, componentize-js): find or install |
//! | [`wit`] | the `evolve:plugin` WIT package (and the WASI deps it needs), embedded in the binary |
//! | [`compile`] | source → component, per language |
//! | [`install`] | component + `plugin.toml` → plugin dir, the manifest pinned to the sha256 |

pub mod compile;
pub mod install;
pub mod lang;
pub mod tools;
pub mod wit;

pub use compile::{BuildError, BuildOptions, build_component};
pub use install::{InstallError, Installed, PluginManifest, install};
pub use lang::Language;
pub use tools::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, ToolError, Tools};

use std::path::{Path, PathBuf};

/// Where `evolve plugin build` puts a project's plugin dir: `<project>/target/plugin/<name>/`.
pub fn default_out_dir(project: &Path, name: &str) -> PathBuf {
    project.join("target").join("plugin").join(name)
}

/// cargo's target dir for a Rust project's component: `$CARGO_TARGET_DIR/evolve-wasm` (so
/// projects sharing a target dir share compiled dependencies), else
/// `<project>/target/evolve-wasm`. A subdirectory of its own, so a build started from the
/// project's own `cargo test` does not wait on the lock of the dir that `cargo test` holds.
pub fn wasm_target_dir(project: &Path) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                project.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| project.join("target"));
    base.join("evolve-wasm")
}

/// Why a project could not be built into a plugin dir.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Manifest(#[from] InstallError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Builds the project in `project` (any language) and installs it as a plugin dir into `out`
/// (default [`default_out_dir`]): what `evolve plugin build` and the test kit's `build_plugin`
/// do.
pub fn build_project(
    project: &Path,
    out: Option<&Path>,
    tools: Tools,
    install_tools: bool,
) -> Result<Installed, ProjectError> {
    let manifest = PluginManifest::read(&project.join("plugin.toml"))?;
    let options = BuildOptions {
        tools,
        install_tools,
        work_dir: project.join("target").join("plugin-work"),
        cargo_target_dir: Some(wasm_target_dir(project)),
        cargo: std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
    };
    let component = build_component(project, &manifest, &options)?;
    let dest = out.map_or_else(
        || default_out_dir(project, &manifest.name),
        Path::to_path_buf,
    );
    Ok(install(&manifest, &component, &dest)?)
}
