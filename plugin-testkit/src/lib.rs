//! `evolve-plugin-testkit`: run a **built** plugin (a dir with `plugin.toml` and its component,
//! as `evolve plugin build` or `cargo xtask build-plugins` writes it) in-process against a
//! mocked host, from ordinary `cargo test` tests. The plugin goes through the daemon's own
//! runtime (the `evolve-runtime` crate): the same loader checks, sandbox, HTTP allow-list and
//! limits as in production; only the rest of the system is scripted.
//!
//! | you script | with |
//! |---|---|
//! | the `[config]` table | [`KitBuilder::config`] (over the manifest's own) |
//! | limits | [`KitBuilder::limit`] (over the manifest's `[limits]`; host defaults and ceilings apply) |
//! | the `inventory` import | [`KitBuilder::inventory`] with an [`Inventory`] |
//! | the `probes` import | [`KitBuilder::probe`] |
//! | outbound HTTP of a checker | [`KitBuilder::http`] with a [`FakeHttp`]: responses per `host:port` |
//!
//! and you read back what the plugin logged ([`Kit::logs`]) and which requests it made
//! ([`Kit::http_requests`]).
//!
//! ```no_run
//! use evolve_plugin_testkit::{Kit, FakeHttp, FakeResponse, service};
//! use evolve_plugin_testkit::types::HealthStatus;
//!
//! let kit = Kit::builder("target/plugins/bundled/http-health")
//!     .config("degraded_ms", 60_000)
//!     .http(FakeHttp::new().route("svc.test:80", FakeResponse::status(503)))
//!     .load()
//!     .unwrap();
//! let report = kit.check(service("svc", "http://svc.test")).unwrap().unwrap();
//! assert_eq!(report.status, HealthStatus::Unhealthy);
//! assert_eq!(kit.http_requests(), ["GET http://svc.test/health"]);
//! ```
//!
//! In a plugin project (what `evolve plugin new` writes), `build_plugin(env!("CARGO_MANIFEST_DIR"))`
//! builds the component first, so `cargo test --release` is the whole loop (release: a debug
//! wasmtime compiles components ~30x slower).
//!
//! Compiled components are cached (by sha256) in `$EVOLVE_TESTKIT_CACHE`, else
//! `<temp dir>/evolve-testkit-aot`, so only the first test of a run pays for compiling a
//! Python or JavaScript component (seconds).
//!
//! | module | what |
//! |---|---|
//! | [`build`] | [`build_plugin`]: build the project under test, as `evolve plugin build` does |
//! | [`kit`] | [`Kit`], [`KitBuilder`]: load and call |
//! | [`mock`] | [`Inventory`], [`FakeHttp`], scripted probes |
//! | [`logs`] | capturing what the plugin logs |
//! | [`scenario`] | scenario files (`tests/*.toml`), as `evolve plugin test` runs them |

pub mod build;
pub mod kit;
pub mod logs;
pub mod mock;
pub mod scenario;

pub use build::build_plugin;
pub use evolve_runtime::CallError;
pub use evolve_runtime::bindings::inventory as inventory_types;
pub use evolve_runtime::bindings::types;
pub use kit::{Kit, KitBuilder, KitError};
pub use logs::LogRecord;
pub use mock::{FakeHttp, FakeResponse, Inventory, ProbeKind, service};
