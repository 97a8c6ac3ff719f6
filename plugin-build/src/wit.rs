//! The `evolve:plugin` WIT package, embedded, so `evolve plugin build` works outside the
//! repository. Python and JavaScript guests bind their imports from it.
//!
//! Besides the package itself (`wit/` at the repository root) this carries
//! `health-checker-http`, the checker world with `wasi:http/outgoing-handler` spelled out (guest
//! toolchains bind only what a world names), and the WASI 0.2.12 packages that import needs,
//! vendored from wasmtime-wasi-http 48.0.8 (the host's version) under `plugin-build/wit/deps/`.

use std::io;
use std::path::Path;

/// `(relative path, text)` of every WIT file.
const FILES: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../wit/types.wit")),
    ("host.wit", include_str!("../../wit/host.wit")),
    ("worlds.wit", include_str!("../../wit/worlds.wit")),
    ("http-checker.wit", include_str!("../wit/http-checker.wit")),
    ("deps/cli.wit", include_str!("../wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("../wit/deps/clocks.wit")),
    (
        "deps/filesystem.wit",
        include_str!("../wit/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../wit/deps/io.wit")),
    ("deps/random.wit", include_str!("../wit/deps/random.wit")),
    ("deps/sockets.wit", include_str!("../wit/deps/sockets.wit")),
];

/// World a meta agent is built against.
pub const META_AGENT_WORLD: &str = "meta-agent";
/// World a health checker is built against by the Python and JavaScript toolchains.
pub const HEALTH_CHECKER_WORLD: &str = "health-checker-http";

/// Writes the WIT package into `dir` (created; existing files overwritten).
pub fn write_to(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("deps"))?;
    for (path, text) in FILES {
        std::fs::write(dir.join(path), text)?;
    }
    Ok(())
}

/// Feeds every WIT file into `hasher` (for build fingerprints).
pub fn hash_into(hasher: &mut impl sha2::Digest) {
    for (path, text) in FILES {
        hasher.update(path.as_bytes());
        hasher.update(text.as_bytes());
    }
}
