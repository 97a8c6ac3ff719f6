//! The plugin test kit's core: a **built** plugin loaded in-process through this crate's own
//! runtime (same loader checks, sandbox, HTTP allow-list and limits as the daemon) against a
//! mocked host. Two front ends use it: the `evolve-plugin-testkit` crate (Rust `cargo test`
//! tests, which re-exports [`kit`], [`mock`] and [`logs`]) and `evolve plugin test`
//! (language-agnostic scenario files, [`scenario`]).
//!
//! | module | what |
//! |---|---|
//! | [`kit`] | [`Kit`], [`KitBuilder`]: load a plugin dir with scripted config and limits, call it |
//! | [`mock`] | the scripted host: [`Inventory`], probes, [`FakeHttp`] hosts for checkers |
//! | [`logs`] | capturing what the plugin logs |
//! | [`scenario`] | scenario files (`tests/*.toml`): parse, validate, run each case, compare |

pub mod kit;
pub mod logs;
pub mod mock;
pub mod scenario;

pub use kit::{Kit, KitBuilder, KitError};
pub use logs::LogRecord;
pub use mock::{FakeHttp, FakeResponse, Inventory, ProbeKind, service};
