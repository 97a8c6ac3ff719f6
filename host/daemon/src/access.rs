//! Who may call the API for what: bearer tokens, their scopes, and the tokens file.
//!
//! - [`Scope`]: what a token may do. `read` sees state; `operate` also runs agents, reloads
//!   plugins, probes and checks services and sends traffic through the API's proxy and routes;
//!   `admin` also writes the registry (models, versions, aliases, performance, backups, restore,
//!   import), registers services and reads the audit log. Each scope includes the ones below it.
//! - [`TokenEntry`]: one `[[server.tokens]]` entry (or `[[tokens]]` of `server.tokens_file`).
//! - [`read_tokens_file`]: the tokens file, refused when its group or others may read it.
//!
//! The API's middleware (`api::guard`) matches a presented token against these and decides by
//! the endpoint's scope (`api::ENDPOINTS`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The name of the token read from `EVOLVE_AUTH_TOKEN` (scope `admin`).
pub const ENV_TOKEN_NAME: &str = "env";

/// Shortest token accepted: a bearer token is the only thing guarding the API, and a short
/// one is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Longest tokens file read: far above any real one (thousands of tokens), it only stops a
/// wrong path (a device, a log) from being read into memory.
const MAX_TOKENS_FILE_BYTES: u64 = 1 << 20;

/// What a token may do; each scope includes those below it (`admin` ⊇ `operate` ⊇ `read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read state: plugins, agents, services, models, events, metrics.
    Read,
    /// Also act: run agents, reload plugins, probe and check services, send traffic through
    /// the proxy and routes.
    Operate,
    /// Also change what the daemon holds: registry writes, restore, import, service
    /// registration, the audit log.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bearer token with its name and scopes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it: logs and the audit trail name the caller by it.
    pub name: String,
    /// The secret itself, at least [`MIN_TOKEN_CHARS`] characters.
    pub token: String,
    /// What it may do; the highest scope listed counts (each includes those below it).
    pub scopes: Vec<Scope>,
}

impl TokenEntry {
    /// The highest scope the token carries (`read` when the list is empty; validation refuses
    /// an empty list, so this is only a safe floor).
    pub fn scope(&self) -> Scope {
        self.scopes.iter().copied().max().unwrap_or(Scope::Read)
    }

    /// Whether the token allows what `needed` asks.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scope() >= needed
    }
}

/// Never prints the secret.
impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Checks every entry: a name of visible characters, unique names and tokens, a long enough
/// token, at least one scope. `key` names where the entry came from, for the error.
pub fn validate_tokens(tokens: &[TokenEntry], key: &str) -> Result<(), ConfigError> {
    let invalid = |index: usize, message: String| ConfigError::Invalid {
        key: format!("{key}[{index}]"),
        message,
    };
    for (index, entry) in tokens.iter().enumerate() {
        if entry.name.is_empty()
            || entry.name.len() > 64
            || !entry
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                index,
                format!(
                    "name \"{}\" must be 1-64 letters, digits, '-', '_' or '.' (it names the caller in logs and the audit log)",
                    entry.name.escape_debug()
                ),
            ));
        }
        if entry.token.chars().count() < MIN_TOKEN_CHARS {
            return Err(invalid(
                index,
                format!(
                    "token \"{}\": a token must be at least {MIN_TOKEN_CHARS} characters",
                    entry.name
                ),
            ));
        }
        if entry
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                index,
                format!(
                    "token \"{}\" holds whitespace or control characters, which an Authorization header cannot carry",
                    entry.name
                ),
            ));
        }
        if entry.scopes.is_empty() {
            return Err(invalid(
                index,
                format!(
                    "token \"{}\" has no scopes: list what it may do, e.g. scopes = [\"read\"] (or \"operate\", \"admin\")",
                    entry.name
                ),
            ));
        }
        if let Some(earlier) = tokens[..index].iter().find(|e| e.name == entry.name) {
            return Err(invalid(
                index,
                format!(
                    "a second token named \"{}\": each name must be unique so the audit log says who",
                    earlier.name
                ),
            ));
        }
        if let Some(earlier) = tokens[..index].iter().find(|e| e.token == entry.token) {
            return Err(invalid(
                index,
                format!(
                    "token \"{}\" has the same secret as \"{}\": one secret cannot name two callers",
                    entry.name, earlier.name
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// Reads `server.tokens_file`: TOML with `[[tokens]]` entries (name, token, scopes). Refused,
/// naming the file and the fix, when its group or others may read it (unix), when it is not a
/// regular file, or when it is larger than any real one.
pub fn read_tokens_file(path: &Path) -> Result<Vec<TokenEntry>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "server.tokens_file".into(),
        message: format!("{}: {message}", path.display()),
    };
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(invalid("is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "holds secrets but its mode is {mode:o}, so its group or others may read it: run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    if meta.len() > MAX_TOKENS_FILE_BYTES {
        return Err(invalid(format!(
            "is {} bytes, more than the {MAX_TOKENS_FILE_BYTES} a tokens file may have",
            meta.len()
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    Ok(file.tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(name: &str, token: &str, scopes: &[Scope]) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            token: token.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn each_scope_includes_those_below_it() {
        let admin = entry("a", "0123456789abcdef", &[Scope::Admin]);
        let operate = entry("o", "0123456789abcdeg", &[Scope::Read, Scope::Operate]);
        let read = entry("r", "0123456789abcdeh", &[Scope::Read]);
        assert!(admin.allows(Scope::Read) && admin.allows(Scope::Operate));
        assert!(operate.allows(Scope::Read) && operate.allows(Scope::Operate));
        assert!(!operate.allows(Scope::Admin));
        assert!(read.allows(Scope::Read) && !read.allows(Scope::Operate));
    }

    #[test]
    fn bad_entries_are_refused_naming_the_entry_and_the_fix() {
        let long = "0123456789abcdef";
        let cases = [
            (vec![entry("ci", "short", &[Scope::Read])], "at least 16"),
            (vec![entry("ci", long, &[])], "has no scopes"),
            (vec![entry("c i", long, &[Scope::Read])], "must be 1-64"),
            (
                vec![entry("ci", "0123456789 abcdef", &[Scope::Read])],
                "whitespace",
            ),
            (
                vec![
                    entry("ci", long, &[Scope::Read]),
                    entry("ci", "fedcba9876543210", &[Scope::Read]),
                ],
                "a second token named",
            ),
            (
                vec![
                    entry("ci", long, &[Scope::Read]),
                    entry("ops", long, &[Scope::Admin]),
                ],
                "same secret",
            ),
        ];
        for (tokens, expected) in cases {
            let err = validate_tokens(&tokens, "server.tokens").expect_err(expected);
            assert!(err.to_string().contains(expected), "{err}");
            assert!(err.to_string().contains("server.tokens["), "{err}");
        }
        validate_tokens(&[entry("ci", long, &[Scope::Operate])], "server.tokens").unwrap();
    }

    #[test]
    fn a_debug_print_never_shows_the_secret() {
        let printed = format!("{:?}", entry("ci", "0123456789abcdef", &[Scope::Read]));
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("evolve-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ci\"\ntoken = \"0123456789abcdef\"\nscopes = [\"read\"]\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_tokens_file(&path).expect_err("world-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tokens = read_tokens_file(&path).unwrap();
        assert_eq!(tokens[0].name, "ci");
        assert_eq!(tokens[0].scopes, vec![Scope::Read]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
