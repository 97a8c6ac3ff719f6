//! What the daemons write to Redis and to each other: key and channel names, and the versioned
//! JSON of events, catalog updates and node records. Everything read back is a peer's output,
//! so it is size-capped and parsed without panicking, and acted on only once its seal opens
//! ([`crate::seal`]).
//!
//! | key / channel | holds |
//! |---|---|
//! | `<prefix>:node:<id>` | the node's sealed [`NodeRecord`], expiring `heartbeat_ttl_s` after its last heartbeat |
//! | `<prefix>:services:<id>` | hash: service name → spec JSON, the node's registrations (same expiry); trusted only where the spec matches the digest its sealed record lists |
//! | `<prefix>:catalog` | channel of sealed [`CatalogUpdate`]s (incremental; pub/sub is at-most-once) |
//! | `<prefix>:events:<kind>` | channel of [`EventEnvelope`]s, one per event kind (read by `evolve events tail`, never acted on by a node) |
//!
//! A sealed envelope is `{"v": 2, "kind": "record"|"update", "node", "seq", "body", "tag"}`:
//! `body` is the record or update as JSON text and `tag` the HMAC-SHA256 over all the other
//! fields (hex). Version 1 had no envelope and no signature.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use evolve_core::events::Event;
use evolve_mesh::ServiceSpec;

/// Schema version of the sealed envelope; readers refuse other versions.
pub const WIRE_VERSION: u32 = 2;
/// Largest catalog update or node record read from a peer (one spec of 256 instances with full
/// metadata fits well under this, and so does a record listing 1024 services).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// `SCAN MATCH` pattern of every node record.
    pub fn node_pattern(&self) -> String {
        format!("{}:node:*", self.prefix)
    }

    /// The node id of a key from [`Keys::node_pattern`].
    pub fn node_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(":node:")
    }

    pub fn services(&self, node: &str) -> String {
        format!("{}:services:{node}", self.prefix)
    }

    pub fn catalog_channel(&self) -> String {
        format!("{}:catalog", self.prefix)
    }

    pub fn events_channel(&self, kind: &str) -> String {
        format!("{}:events:{kind}", self.prefix)
    }

    /// `PSUBSCRIBE` pattern of every event channel.
    pub fn events_pattern(&self) -> String {
        format!("{}:events:*", self.prefix)
    }
}

/// An event of one node's bus, as published.
#[derive(Debug, Clone, Serialize)]
pub struct EventEnvelope<'e> {
    /// The node whose bus published it.
    pub node: &'e str,
    /// Per-node sequence number: a gap tells a subscriber it missed events.
    pub seq: u64,
    /// The event's own fields (`v`, `kind`, `at`, `subject`, `data`).
    #[serde(flatten)]
    pub event: &'e Event,
}

/// An incremental change of one node's registrations (the body of a sealed update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogUpdate {
    pub node: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub op: CatalogOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatalogOp {
    /// A service registered or replaced on `node`.
    Upsert { spec: Box<ServiceSpec> },
    /// A service removed from `node`.
    Remove { service: String },
    /// `node` (re)wrote all its registrations: read its record and hash.
    Announce,
    /// `node` is shutting down: its registrations are gone.
    Leave,
}

/// A node's heartbeat (the body of a sealed record): who it is, what it registered, what it
/// sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node: String,
    /// Its API address.
    pub api: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Services it registered.
    pub services: usize,
    /// Each registration in its services hash: name → [`spec_digest`]. The hash is not signed
    /// itself; an entry counts only when it matches this list.
    #[serde(default)]
    pub specs: BTreeMap<String, String>,
    /// Health of every instance it checks, as it sees it: service → instance → state.
    #[serde(default)]
    pub health: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why a peer's message was skipped.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte cap")]
    TooLarge(usize),
    #[error("not valid JSON of this form: {0}")]
    Malformed(String),
    #[error("schema version {0} is not {WIRE_VERSION}, the one this daemon reads")]
    Version(u32),
}

/// The body of an opened update.
pub fn parse_update(body: &str) -> Result<CatalogUpdate, WireError> {
    parse(body.as_bytes())
}

/// The body of an opened record.
pub fn parse_record(body: &str) -> Result<NodeRecord, WireError> {
    parse(body.as_bytes())
}

/// A spec from a node's services hash (validated later, by the mesh).
pub fn parse_spec(bytes: &[u8]) -> Result<ServiceSpec, WireError> {
    parse(bytes)
}

/// The spec's JSON as this daemon writes it. Every field of a spec serialises one way (strings,
/// integers, ordered maps), so a spec parsed from a peer's hash serialises back to the bytes its
/// node digested.
pub fn spec_json(spec: &ServiceSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

/// SHA-256 (hex) of [`spec_json`]: what a node record lists per registration.
pub fn spec_digest(spec: &ServiceSpec) -> String {
    crate::seal::digest(spec_json(spec).as_bytes())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use evolve_core::events::EventKind;

    #[test]
    fn updates_round_trip_and_bad_input_is_refused_not_panicked_on() {
        let update = CatalogUpdate {
            node: "a:1".into(),
            at: Utc::now(),
            op: CatalogOp::Remove {
                service: "fc".into(),
            },
        };
        let json = serde_json::to_string(&update).expect("serialises");
        assert_eq!(parse_update(&json), Ok(update));
        assert!(matches!(
            parse_update("{\"node\":\"a\""),
            Err(WireError::Malformed(_))
        ));
        let huge = " ".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(matches!(parse_update(&huge), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn a_spec_read_back_digests_to_what_its_node_listed() {
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "fc",
            "instances": [{"endpoint": "http://127.0.0.1:1", "metadata": {"b": "2", "a": "1"}}],
            "health": {"path": "/h"},
        }))
        .expect("spec");
        let written = spec_json(&spec);
        let read = parse_spec(written.as_bytes()).expect("parses");
        assert_eq!(spec_digest(&read), spec_digest(&spec));
        let mut other = read.clone();
        other.instances[0].endpoint = "http://127.0.0.1:2".into();
        assert_ne!(spec_digest(&other), spec_digest(&spec));
    }

    #[test]
    fn envelopes_carry_the_origin_node_and_the_event_fields() {
        let event = Event::new(EventKind::PluginLoaded, "p", serde_json::json!({"g": 1}));
        let json = serde_json::to_value(EventEnvelope {
            node: "n1",
            seq: 7,
            event: &event,
        })
        .expect("serialises");
        assert_eq!(json["node"], "n1");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["kind"], "plugin.loaded");
        assert_eq!(json["v"], evolve_core::events::EVENT_SCHEMA_VERSION);
        let keys = Keys::new("evolve");
        assert_eq!(
            keys.events_channel("plugin.loaded"),
            "evolve:events:plugin.loaded"
        );
        assert_eq!(keys.node_of("evolve:node:h:1"), Some("h:1"));
        assert_eq!(keys.node_of("other:node:h:1"), None);
    }
}
