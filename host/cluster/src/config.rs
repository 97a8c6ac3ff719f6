//! The `[cluster]` section: whether and how this daemon joins other daemons over Redis.
//!
//! Without `redis_url` the daemon is the embedded default: one node, the in-process event bus,
//! no Redis. Every key, default and unit is in the README's config table.
//!
//! The secrets a cluster needs are files, kept out of the config so it can be shared:
//! [`ClusterConfig::secrets`] reads the shared key (`key_file`), the Redis password
//! (`redis_password_file`) and a private CA (`redis_ca_file`), each refused with the key to fix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seal::ClusterKey;

/// Longest node id: it is part of Redis keys and metric labels.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest channel / key prefix.
pub const MAX_PREFIX_LEN: usize = 64;
/// Largest key or password file: a key needs 32 bytes; anything past a few KiB is the wrong file.
pub const MAX_SECRET_FILE_BYTES: u64 = 4 * 1024;
/// Largest CA file: a bundle of a few hundred certificates fits.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS); unset = no cluster
    /// (embedded default).
    pub redis_url: Option<String>,
    /// The Redis ACL user (instead of `user@` in the URL).
    pub redis_username: Option<String>,
    /// A file holding the Redis password (instead of `:password@` in the URL); refused when its
    /// group or others may read it.
    pub redis_password_file: Option<PathBuf>,
    /// PEM certificates trusted for a `rediss://` server (a private CA) instead of the system's.
    pub redis_ca_file: Option<PathBuf>,
    /// The cluster's shared key: a file of at least 32 bytes, the same on every node, refused
    /// when its group or others may read it. Every record and message is signed with it
    /// (HMAC-SHA256) and anything unsigned or signed otherwise is refused.
    pub key_file: Option<PathBuf>,
    /// Runs a cluster without `key_file`: any Redis writer can then act as any node. Logged as
    /// a warning.
    pub allow_unauthenticated: bool,
    /// This daemon's name in the cluster; default `<hostname>:<API port>`.
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel (`<prefix>:events:<kind>`, `<prefix>:catalog`, ...).
    pub channel_prefix: String,
    /// A node's registrations expire this long after its last heartbeat, s.
    pub heartbeat_ttl_s: u64,
    /// Time between heartbeats, s; at most half the TTL so one lost heartbeat does not expire.
    pub heartbeat_interval_s: u64,
    /// Time between full syncs of the other nodes' registrations, s (± `sync_jitter_pct`).
    pub sync_interval_s: u64,
    /// Share by which each sync interval varies, so nodes do not sync in lockstep, %.
    pub sync_jitter_pct: u32,
    /// Events kept while Redis is unreachable; older ones are then dropped (and counted).
    pub event_buffer: usize,
    /// Whether the host's events are published to Redis.
    pub publish_events: bool,
    /// Timeout to connect to Redis, ms.
    pub connect_timeout_ms: u64,
    /// Timeout of one Redis command, ms; a command that takes longer counts as a lost connection.
    pub command_timeout_ms: u64,
    /// First wait before reconnecting, ms; doubles per failure (upper half jittered).
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnection attempts, ms.
    pub reconnect_max_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            redis_username: None,
            redis_password_file: None,
            redis_ca_file: None,
            key_file: None,
            allow_unauthenticated: false,
            node_id: None,
            channel_prefix: "evolve".into(),
            heartbeat_ttl_s: 15,
            heartbeat_interval_s: 5,
            sync_interval_s: 10,
            sync_jitter_pct: 20,
            event_buffer: 10_000,
            publish_events: true,
            connect_timeout_ms: 2_000,
            command_timeout_ms: 2_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
        }
    }
}

/// What [`ClusterConfig::secrets`] read: the shared key (none in an unauthenticated cluster)
/// and how to reach Redis.
#[derive(Debug, Clone, Default)]
pub struct ClusterSecrets {
    pub key: Option<ClusterKey>,
    pub redis: RedisAccess,
}

/// Credentials and trust for the Redis connection, beyond the URL.
#[derive(Clone, Default)]
pub struct RedisAccess {
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM certificates to trust for `rediss://`; none = the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccess")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl ClusterConfig {
    /// Checks every key; the error names the key and the fix. With `redis_url` set this reads
    /// the secret files too (see [`ClusterConfig::secrets`]), so a bad one stops the start.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| Err((format!("cluster.{key}"), message));
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return invalid(
                    "redis_url",
                    "must be a redis:// URL (rediss:// for TLS), e.g. redis://127.0.0.1:6379/ (or leave it unset for a single daemon)".into(),
                );
            }
            if let Err(error) = redis::Client::open(url.as_str()) {
                return invalid("redis_url", format!("is not a valid Redis URL: {error}"));
            }
            if self.key_file.is_none() && !self.allow_unauthenticated {
                return invalid(
                    "key_file",
                    "is required in cluster mode: without a shared key any Redis writer can act as any node (inject endpoints, deregister nodes). Create one with `head -c 32 /dev/urandom > cluster.key && chmod 600 cluster.key`, copy it to every node and set cluster.key_file (or, knowingly, cluster.allow_unauthenticated = true)".into(),
                );
            }
            let secrets = self.secrets()?;
            crate::client(url, &secrets.redis).map_err(|e| match e {
                crate::ClusterError::Config { key, message } => (key, message),
                other => ("cluster.redis_url".to_string(), other.to_string()),
            })?;
        }
        if let Some(node) = &self.node_id {
            validate_node_id(node).map_err(|m| ("cluster.node_id".to_string(), m))?;
        }
        let prefix = &self.channel_prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX_LEN
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return invalid(
                "channel_prefix",
                format!("must be 1-{MAX_PREFIX_LEN} of letters, digits, '.', '_', '-', ':'"),
            );
        }
        if !(2..=86_400).contains(&self.heartbeat_ttl_s) {
            return invalid("heartbeat_ttl_s", "must be between 2 and 86400".into());
        }
        if self.heartbeat_interval_s == 0 || self.heartbeat_interval_s * 2 > self.heartbeat_ttl_s {
            return invalid(
                "heartbeat_interval_s",
                format!(
                    "must be at least 1 and at most half of heartbeat_ttl_s ({}), so one late heartbeat does not expire the node",
                    self.heartbeat_ttl_s
                ),
            );
        }
        if !(1..=86_400).contains(&self.sync_interval_s) {
            return invalid("sync_interval_s", "must be between 1 and 86400".into());
        }
        if self.sync_jitter_pct > 50 {
            return invalid("sync_jitter_pct", "must be at most 50 (%)".into());
        }
        if !(1..=1_000_000).contains(&self.event_buffer) {
            return invalid("event_buffer", "must be between 1 and 1000000".into());
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("command_timeout_ms", self.command_timeout_ms),
        ] {
            if !(10..=600_000).contains(&value) {
                return invalid(key, "must be between 10 and 600000".into());
            }
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return invalid(
                "reconnect_min_ms",
                "must be at least 1 and at most reconnect_max_ms".into(),
            );
        }
        if self.reconnect_max_ms >= self.heartbeat_ttl_s * 1_000 {
            return invalid(
                "reconnect_max_ms",
                format!(
                    "must be below heartbeat_ttl_s ({} s) so a live node is back in Redis before its peers expire it after a Redis restart",
                    self.heartbeat_ttl_s
                ),
            );
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    /// Whether peers must sign with the shared key (a validated config with a `key_file`).
    pub fn authenticated(&self) -> bool {
        self.enabled() && self.key_file.is_some()
    }

    /// Reads the secret files: the shared key, the Redis password, the CA. Each error names the
    /// key, the file and the fix.
    pub fn secrets(&self) -> Result<ClusterSecrets, (String, String)> {
        let key = match &self.key_file {
            Some(path) => Some(read_key_file(path)?),
            None => None,
        };
        let url = self.redis_url.as_deref().unwrap_or_default();
        let (url_user, url_password) = url_userinfo(url);
        if self.redis_username.is_some() && url_user {
            return Err((
                "cluster.redis_username".into(),
                "the user is also in cluster.redis_url: name it in one place".into(),
            ));
        }
        if let Some(user) = &self.redis_username
            && (user.is_empty() || user.len() > 256 || user.chars().any(char::is_control))
        {
            return Err((
                "cluster.redis_username".into(),
                "must be 1-256 characters without control characters".into(),
            ));
        }
        let password = match &self.redis_password_file {
            Some(_) if url_password => {
                return Err((
                    "cluster.redis_password_file".into(),
                    "the password is also in cluster.redis_url: keep it in one place (the file keeps it out of the config)".into(),
                ));
            }
            Some(path) => {
                let bytes =
                    read_secret_file("cluster.redis_password_file", path, MAX_SECRET_FILE_BYTES)?;
                let text = String::from_utf8(trim_line_end(bytes)).map_err(|_| {
                    (
                        "cluster.redis_password_file".to_string(),
                        format!("{}: is not UTF-8 text", path.display()),
                    )
                })?;
                if text.is_empty() {
                    return Err((
                        "cluster.redis_password_file".into(),
                        format!("{}: is empty", path.display()),
                    ));
                }
                Some(text)
            }
            None => None,
        };
        if self.redis_username.is_some() && password.is_none() && !url_password {
            return Err((
                "cluster.redis_username".into(),
                "needs a password: set cluster.redis_password_file".into(),
            ));
        }
        let ca_pem = match &self.redis_ca_file {
            Some(_) if !url.starts_with("rediss://") => {
                return Err((
                    "cluster.redis_ca_file".into(),
                    "only applies to TLS: make cluster.redis_url a rediss:// URL, or remove cluster.redis_ca_file".into(),
                ));
            }
            Some(path) => Some(read_ca_file(path)?),
            None => None,
        };
        Ok(ClusterSecrets {
            key,
            redis: RedisAccess {
                username: self.redis_username.clone(),
                password,
                ca_pem,
            },
        })
    }
}

/// Whether the URL carries a user and a password (`scheme://user:password@host`).
fn url_userinfo(url: &str) -> (bool, bool) {
    let Some((_, rest)) = url.split_once("://") else {
        return (false, false);
    };
    match rest.rsplit_once('@') {
        Some((userinfo, _)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (!user.is_empty(), !password.is_empty())
        }
        None => (false, false),
    }
}

/// A file's bytes without one trailing line break (`echo` and editors add one).
fn trim_line_end(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

/// The shared key: at least [`crate::seal::MIN_KEY_BYTES`] bytes (a final line break is not part of it).
pub fn read_key_file(path: &Path) -> Result<ClusterKey, (String, String)> {
    let bytes = trim_line_end(read_secret_file(
        "cluster.key_file",
        path,
        MAX_SECRET_FILE_BYTES,
    )?);
    ClusterKey::new(bytes).map_err(|error| {
        (
            "cluster.key_file".to_string(),
            format!(
                "{}: {error}: create it with `head -c 32 /dev/urandom > {0} && chmod 600 {0}` and copy the same file to every node",
                path.display()
            ),
        )
    })
}

/// A regular file of secrets, which only its owner may read.
fn read_secret_file(key: &str, path: &Path, max: u64) -> Result<Vec<u8>, (String, String)> {
    let invalid = |message: String| (key.to_string(), format!("{}: {message}", path.display()));
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
                "holds a secret but its mode is {mode:o}, so its group or others may read it: run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    if meta.len() > max {
        return Err(invalid(format!(
            "is {} bytes, more than the {max} this file may have",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))
}

/// PEM certificates (public: any mode).
fn read_ca_file(path: &Path) -> Result<Vec<u8>, (String, String)> {
    let invalid = |message: String| {
        (
            "cluster.redis_ca_file".to_string(),
            format!("{}: {message}", path.display()),
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_CA_FILE_BYTES {
        return Err(invalid(format!(
            "must be a regular file of at most {MAX_CA_FILE_BYTES} bytes of PEM certificates"
        )));
    }
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(invalid(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem)
}

/// A node id: 1-128 letters, digits, `.`, `_`, `-`, `:`.
pub fn validate_node_id(node: &str) -> Result<(), String> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_ID_LEN
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" must be 1-{MAX_NODE_ID_LEN} of letters, digits, '.', '_', '-', ':'",
            node.chars().take(80).collect::<String>()
        ))
    }
}

/// The default node id: `<hostname>:<port>` (the hostname reduced to the allowed characters).
pub fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_NODE_ID_LEN - 6)
        .collect();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("{host}:{port}")
}

/// The URL with any password replaced, for logs and `/v1/cluster`. The userinfo ends at the
/// last `@`: a password may hold `@` (or `/`) unencoded, and whatever follows the first one
/// would otherwise be shown. An `@` later in the URL only hides more than it must.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        assert_eq!(ClusterConfig::default().validate(), Ok(()));
        let bad = |edit: fn(&mut ClusterConfig)| {
            let mut c = ClusterConfig::default();
            edit(&mut c);
            c.validate().expect_err("invalid").0
        };
        assert_eq!(
            bad(|c| c.redis_url = Some("http://x".into())),
            "cluster.redis_url"
        );
        assert_eq!(bad(|c| c.node_id = Some("a b".into())), "cluster.node_id");
        assert_eq!(
            bad(|c| c.heartbeat_interval_s = 10),
            "cluster.heartbeat_interval_s"
        );
        assert_eq!(bad(|c| c.event_buffer = 0), "cluster.event_buffer");
        assert_eq!(
            bad(|c| c.channel_prefix = "a*".into()),
            "cluster.channel_prefix"
        );
        assert_eq!(bad(|c| c.sync_jitter_pct = 90), "cluster.sync_jitter_pct");
    }

    #[test]
    fn a_password_holding_at_signs_is_redacted_whole() {
        assert_eq!(
            redact_url("redis://u:p@ss@w0rd@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(redact_url("rediss://:a/b@c@h:1"), "rediss://:***@h:1");
    }

    #[test]
    fn passwords_are_redacted_and_node_ids_default_to_host_and_port() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
        let id = default_node_id(7070);
        assert!(id.ends_with(":7070"), "{id}");
        assert_eq!(validate_node_id(&id), Ok(()));
    }

    /// A file with `bytes`, mode `mode`, in `dir`.
    fn secret(dir: &tempfile::TempDir, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn cluster(dir: &tempfile::TempDir) -> ClusterConfig {
        ClusterConfig {
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            key_file: Some(secret(dir, "cluster.key", &[7; 32], 0o600)),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn cluster_mode_without_a_key_refuses_to_start_unless_unauthenticated_is_allowed() {
        let mut config = ClusterConfig {
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            ..ClusterConfig::default()
        };
        let (key, message) = config.validate().expect_err("no key");
        assert_eq!(key, "cluster.key_file");
        assert!(message.contains("allow_unauthenticated"), "{message}");
        config.allow_unauthenticated = true;
        assert_eq!(config.validate(), Ok(()));
        assert!(config.secrets().expect("secrets").key.is_none());
    }

    #[test]
    fn key_files_others_may_read_or_shorter_than_32_bytes_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = cluster(&dir);
        assert_eq!(config.validate(), Ok(()));
        assert!(config.secrets().expect("secrets").key.is_some());

        config.key_file = Some(secret(&dir, "open.key", &[7; 32], 0o640));
        let (key, message) = config.validate().expect_err("group-readable");
        assert_eq!(key, "cluster.key_file");
        assert!(message.contains("chmod 600"), "{message}");

        // 31 bytes plus the line break an editor adds are 31 bytes of key.
        let mut short = vec![b'k'; 31];
        short.push(b'\n');
        config.key_file = Some(secret(&dir, "short.key", &short, 0o600));
        let (key, message) = config.validate().expect_err("short");
        assert_eq!(key, "cluster.key_file");
        assert!(message.contains("31 bytes"), "{message}");
        assert!(message.contains("at least 32"), "{message}");

        config.key_file = Some(dir.path().join("missing.key"));
        assert_eq!(
            config.validate().expect_err("missing").0,
            "cluster.key_file"
        );
    }

    #[test]
    fn redis_credentials_come_from_one_place_and_the_ca_only_with_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = secret(&dir, "redis.pass", b"s3cret\n", 0o600);
        let mut config = cluster(&dir);
        config.redis_username = Some("evolve".into());
        config.redis_password_file = Some(password.clone());
        assert_eq!(config.validate(), Ok(()));
        let access = config.secrets().expect("secrets").redis;
        assert_eq!(access.password.as_deref(), Some("s3cret"));
        assert!(!format!("{access:?}").contains("s3cret"), "{access:?}");

        config.redis_url = Some("redis://evolve:pw@127.0.0.1:6379/".into());
        assert_eq!(
            config.validate().expect_err("user twice").0,
            "cluster.redis_username"
        );
        config.redis_username = None;
        assert_eq!(
            config.validate().expect_err("password twice").0,
            "cluster.redis_password_file"
        );
        config.redis_password_file = None;
        assert_eq!(config.validate(), Ok(()), "the URL alone is fine");

        config.redis_url = Some("redis://127.0.0.1:6379/".into());
        config.redis_username = Some("evolve".into());
        assert_eq!(
            config.validate().expect_err("no password").0,
            "cluster.redis_username"
        );
        config.redis_username = None;

        config.redis_password_file = Some(secret(&dir, "open.pass", b"pw", 0o644));
        assert_eq!(
            config.validate().expect_err("world-readable").0,
            "cluster.redis_password_file"
        );
        config.redis_password_file = None;

        let ca = secret(
            &dir,
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            0o644,
        );
        config.redis_ca_file = Some(ca);
        let (key, message) = config.validate().expect_err("CA without TLS");
        assert_eq!(key, "cluster.redis_ca_file");
        assert!(message.contains("rediss://"), "{message}");
        config.redis_url = Some("rediss://127.0.0.1:6379/".into());
        // Not a certificate inside: refused when the client is built.
        assert_eq!(
            config.validate().expect_err("bad PEM").0,
            "cluster.redis_ca_file"
        );
        config.redis_ca_file = Some(secret(&dir, "none.pem", b"hello", 0o644));
        let (key, message) = config.validate().expect_err("no PEM");
        assert_eq!(key, "cluster.redis_ca_file");
        assert!(message.contains("no PEM certificate"), "{message}");
    }
}
