//! Building the plugin under test from its project, so `cargo test` in a plugin project needs no
//! separate build step: the same build as `evolve plugin build`, once per test process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use evolve_plugin_build::{ProjectError, Tools, build_project};

/// Projects built by this process: tests run in parallel, and a second build of the same
/// project would rewrite the plugin dir under a test that is loading it.
static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();

/// Builds the plugin project in `project` (Rust, Python or JavaScript) into its plugin dir
/// (`<project>/target/plugin/<name>/`, as `evolve plugin build` does) and returns that dir, for
/// [`Kit::builder`](crate::Kit::builder). Python and JavaScript need their toolchain installed
/// (`evolve plugin setup`); the error says so.
pub fn build_plugin(project: impl AsRef<Path>) -> Result<PathBuf, ProjectError> {
    let project = project.as_ref().to_path_buf();
    let built = BUILT.get_or_init(Mutex::default);
    // Held for the build, so concurrent tests wait for the one build instead of racing it.
    let mut built = evolve_core::sync::lock(built);
    if let Some(dir) = built.get(&project) {
        return Ok(dir.clone());
    }
    let installed = build_project(&project, None, Tools::from_env(), false)?;
    built.insert(project, installed.dir.clone());
    Ok(installed.dir)
}
