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
