//! The pinned guest toolchains, kept in one tools dir (no global state): componentize-py in a
//! venv at `<dir>/py`, componentize-js in an npm prefix at `<dir>/js`. The set-up path (`cargo
//! xtask`, `evolve plugin setup`) installs them there, and skips that when the pinned version is
//! already present; `evolve plugin build` only looks, and says how to install what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// componentize-py (PyPI) version every Python plugin is built with. Pinned: the component it
/// emits embeds its CPython build, so a change is a change to every Python plugin.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// `@bytecodealliance/componentize-js` (npm) version every JavaScript plugin is built with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The npm package, called directly (not through jco's CLI, whose `componentize` wrapper adds
/// nothing we need).
pub const COMPONENTIZE_JS_PACKAGE: &str = "@bytecodealliance/componentize-js";

/// Why a toolchain is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "{tool} {version} is not installed in {dir} (found: {found}); install it with `{install}`"
    )]
    Missing {
        tool: &'static str,
        version: &'static str,
        dir: PathBuf,
        found: String,
        install: String,
    },
    #[error("installing {tool} needs `{program}`, which is not on PATH: {hint}")]
    Prerequisite {
        tool: &'static str,
        program: &'static str,
        hint: &'static str,
    },
    #[error("installing {tool}: `{command}` failed: {detail}")]
    Install {
        tool: &'static str,
        command: String,
        detail: String,
    },
}

/// The tools dir.
#[derive(Debug, Clone)]
pub struct Tools {
    dir: PathBuf,
}

impl Tools {
    pub fn new(dir: impl Into<PathBuf>) -> Tools {
        Tools { dir: dir.into() }
    }

    /// The tools dir users get: `$EVOLVE_PLUGIN_TOOLS`, else `$XDG_CACHE_HOME/evolve/plugin-tools`,
    /// else `$HOME/.cache/evolve/plugin-tools`, else `.evolve-plugin-tools` in the current dir.
    pub fn from_env() -> Tools {
        let dir = std::env::var_os("EVOLVE_PLUGIN_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .map(|cache| cache.join("evolve").join("plugin-tools"))
            })
            .unwrap_or_else(|| PathBuf::from(".evolve-plugin-tools"));
        Tools::new(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn python_venv(&self) -> PathBuf {
        self.dir.join("py")
    }

    fn js_prefix(&self) -> PathBuf {
        self.dir.join("js")
    }

    /// The `componentize-py` executable (whether or not it exists).
    pub fn componentize_py(&self) -> PathBuf {
        self.python_venv().join("bin").join("componentize-py")
    }

    /// The `componentize-js` executable (whether or not it exists).
    pub fn componentize_js(&self) -> PathBuf {
        self.js_prefix()
            .join("node_modules")
            .join(".bin")
            .join("componentize-js")
    }

    /// componentize-py at the pinned version, installed first when `install` and missing.
    pub fn python(&self, install: bool) -> Result<PathBuf, ToolError> {
        let exe = self.componentize_py();
        let found = version_of(&exe);
        if found.as_deref() == Some(COMPONENTIZE_PY_VERSION) {
            return Ok(exe);
        }
        if !install {
            return Err(ToolError::Missing {
                tool: "componentize-py",
                version: COMPONENTIZE_PY_VERSION,
                dir: self.python_venv(),
                found: found.unwrap_or_else(|| "nothing".to_owned()),
                install: format!("evolve plugin setup --tools {}", self.dir.display()),
            });
        }
        const TOOL: &str = "componentize-py";
        if !self.python_venv().join("bin").join("pip").is_file() {
            run_install(
                TOOL,
                Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(self.python_venv()),
                "python3",
                "install Python 3.10 or newer with its venv module (e.g. `apt-get install python3-venv`)",
            )?;
        }
        run_install(
            TOOL,
            Command::new(self.python_venv().join("bin").join("pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("componentize-py=={COMPONENTIZE_PY_VERSION}"),
            ]),
            "pip",
            "the venv has no pip; delete the tools dir and retry",
        )?;
        check_installed(TOOL, &exe, COMPONENTIZE_PY_VERSION)
    }

    /// componentize-js at the pinned version, installed first when `install` and missing.
    pub fn js(&self, install: bool) -> Result<PathBuf, ToolError> {
        let exe = self.componentize_js();
        let found = version_of(&exe);
        if found.as_deref() == Some(COMPONENTIZE_JS_VERSION) {
            return Ok(exe);
        }
        if !install {
            return Err(ToolError::Missing {
                tool: "componentize-js",
                version: COMPONENTIZE_JS_VERSION,
                dir: self.js_prefix(),
                found: found.unwrap_or_else(|| "nothing".to_owned()),
                install: format!("evolve plugin setup --tools {}", self.dir.display()),
            });
        }
        const TOOL: &str = "componentize-js";
        let prefix = self.js_prefix();
        std::fs::create_dir_all(&prefix).map_err(|err| ToolError::Install {
            tool: TOOL,
            command: format!("mkdir {}", prefix.display()),
            detail: err.to_string(),
        })?;
        run_install(
            TOOL,
            Command::new("npm")
                .args([
                    "install",
                    "--no-save",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                ])
                .arg(&prefix)
                .arg(format!(
                    "{COMPONENTIZE_JS_PACKAGE}@{COMPONENTIZE_JS_VERSION}"
                ))
                .current_dir(&prefix),
            "npm",
            "install Node.js 18 or newer with npm",
        )?;
        check_installed(TOOL, &exe, COMPONENTIZE_JS_VERSION)
    }
}

/// The version a tool reports with `--version` (last word of its first line).
fn version_of(exe: &Path) -> Option<String> {
    let output = Command::new(exe).arg("--version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .next()?
        .split_whitespace()
        .last()
        .map(str::to_owned)
}

fn check_installed(tool: &'static str, exe: &Path, version: &str) -> Result<PathBuf, ToolError> {
    match version_of(exe) {
        Some(found) if found == version => Ok(exe.to_path_buf()),
        found => Err(ToolError::Install {
            tool,
            command: format!("{} --version", exe.display()),
            detail: format!(
                "expected {version} after installing, found {}",
                found.as_deref().unwrap_or("nothing")
            ),
        }),
    }
}

fn run_install(
    tool: &'static str,
    cmd: &mut Command,
    program: &'static str,
    hint: &'static str,
) -> Result<(), ToolError> {
    let line = crate::compile::command_line(cmd);
    let output = cmd.output().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            ToolError::Prerequisite {
                tool,
                program,
                hint,
            }
        } else {
            ToolError::Install {
                tool,
                command: line.clone(),
                detail: err.to_string(),
            }
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ToolError::Install {
        tool,
        command: line,
        detail: format!(
            "{}: {}",
            output.status,
            crate::compile::tail(&output.stderr)
        ),
    })
}
