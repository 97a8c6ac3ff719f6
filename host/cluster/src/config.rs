//! The `[cluster]` section: whether and how this daemon joins other daemons over Redis.
//!
//! Without `redis_url` the daemon is the embedded default: one node, the in-process event bus,
//! no Redis. Every key, default and unit is in the README's config table.

use serde::{Deserialize, Serialize};

/// Longest node id: it is part of Redis keys and metric labels.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest channel / key prefix.
pub const MAX_PREFIX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`; unset = no cluster (embedded default).
    pub redis_url: Option<String>,
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

impl ClusterConfig {
    /// Checks every key; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| Err((format!("cluster.{key}"), message));
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return invalid(
                    "redis_url",
                    "must be a redis:// URL, e.g. redis://127.0.0.1:6379/ (or leave it unset for a single daemon)".into(),
                );
            }
            if let Err(error) = redis::Client::open(url.as_str()) {
                return invalid("redis_url", format!("is not a valid Redis URL: {error}"));
            }
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

/// The URL with any password replaced, for logs and `/v1/cluster`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
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
    fn passwords_are_redacted_and_node_ids_default_to_host_and_port() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
        let id = default_node_id(7070);
        assert!(id.ends_with(":7070"), "{id}");
        assert_eq!(validate_node_id(&id), Ok(()));
    }
}
