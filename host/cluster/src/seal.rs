//! Who wrote a record or message: every node record and catalog update a node writes to Redis
//! is sealed with the cluster's shared key (HMAC-SHA256), and a node acts on another node's
//! output only once its seal opens.
//!
//! | item | concern |
//! |---|---|
//! | [`ClusterKey`] | the shared key (`cluster.key_file`), at least [`MIN_KEY_BYTES`] bytes |
//! | [`Sealer`] | seals and opens the signed envelope of [`crate::wire`] |
//! | [`Refusal`] | why a record or message was refused; [`Refusal::reason`] is what is counted |
//! | [`Sequences`] | per node, the highest sequence accepted: replays and reorderings are refused |
//! | [`fresh`] | a signed timestamp older than the TTL (plus clock skew) is a replay |
//!
//! What is signed is every field that decides what the message does: a domain string, the
//! channel prefix (so a message of one cluster does not act in another sharing the key), the wire
//! version, the kind (a record is no update), the node id, the node's sequence and the body.
//! Each variable field is length-prefixed, so no two field lists sign the same bytes.
//!
//! Sequences are per node and strictly increasing for as long as the node's clock does not go
//! back: a node numbers its messages `max(previous + 1, now in µs since the epoch)`, so a
//! restarted node continues above its previous run without storing anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::wire::{MAX_MESSAGE_BYTES, WIRE_VERSION, WireError};

type HmacSha256 = Hmac<Sha256>;

/// Shortest shared key: HMAC-SHA256's security is bounded by its 256-bit output, and a shorter
/// key makes guessing the key the cheaper attack.
pub const MIN_KEY_BYTES: usize = 32;
/// An HMAC-SHA256 tag.
pub const TAG_BYTES: usize = 32;
/// How far the nodes' clocks may disagree. A record or update signed longer ago than the TTL
/// plus this is refused as stale: a live node rewrites its record every heartbeat, so only a
/// replay is that old. NTP keeps real clocks within milliseconds; a minute is generous.
pub const MAX_CLOCK_SKEW_S: u64 = 60;
/// Most nodes whose last sequence is remembered. Only nodes whose seal opened are remembered
/// (so only key holders add entries); past the cap the least recently active is forgotten.
pub const MAX_TRACKED_NODES: usize = 4_096;

/// Separates these MACs from any other use of the same key.
const DOMAIN: &[u8] = b"evolve-cluster-seal";

/// The cluster's shared key; never printed.
#[derive(Clone)]
pub struct ClusterKey {
    mac: Arc<HmacSha256>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Why key material is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("holds {0} bytes of key material; at least {MIN_KEY_BYTES} are needed")]
    TooShort(usize),
}

impl ClusterKey {
    pub fn new(material: Vec<u8>) -> Result<ClusterKey, KeyError> {
        if material.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(material.len()));
        }
        // HMAC takes a key of any length; the only error is for fixed-length MACs.
        let mac = HmacSha256::new_from_slice(&material)
            .map_err(|_| KeyError::TooShort(material.len()))?;
        Ok(ClusterKey { mac: Arc::new(mac) })
    }
}

/// What a sealed envelope holds: a node record (the value of `<prefix>:node:<id>`) or a catalog
/// update (a message on `<prefix>:catalog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealKind {
    Record,
    Update,
}

impl SealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SealKind::Record => "record",
            SealKind::Update => "update",
        }
    }
}

/// The envelope as read: every field optional, so that a message of another form is told
/// apart (unsigned, another version) instead of failing as a whole.
#[derive(Deserialize)]
struct Envelope {
    v: u32,
    kind: Option<SealKind>,
    node: Option<String>,
    seq: Option<u64>,
    body: Option<String>,
    tag: Option<String>,
}

/// The envelope as written.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    kind: SealKind,
    node: &'a str,
    seq: u64,
    /// The record or update, as JSON text: what is signed is exactly these bytes.
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

/// An envelope whose seal opened: who wrote it, its sequence and its body (JSON, not yet
/// parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub node: String,
    pub seq: u64,
    pub body: String,
}

/// Why a peer's record or message was not acted on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Not of a form this daemon reads (counted as rejected, like any malformed input).
    #[error(transparent)]
    Malformed(#[from] WireError),
    #[error("unsigned: this cluster has a key (cluster.key_file) and every node must sign with it")]
    Unsigned,
    #[error(
        "the signature does not verify: written without this cluster's key (cluster.key_file differs, or it is forged)"
    )]
    BadTag,
    #[error("signed by node \"{signed}\" but found as node \"{found}\"'s")]
    NodeMismatch { signed: String, found: String },
    #[error("sequence {seq} is not above {last}, the last accepted from this node: a replay")]
    Replayed { seq: u64, last: u64 },
    #[error(
        "sequence {seq} is older than the node's record already applied ({record}): superseded"
    )]
    Superseded { seq: u64, record: u64 },
    #[error(
        "signed {age_s} s ago, longer than the TTL plus {MAX_CLOCK_SKEW_S} s of clock skew: a replay, or this node's clock is far off"
    )]
    Stale { age_s: i64 },
    /// A signed `Upsert`/`Remove` that the node's own current record contradicts: a node writes
    /// its record before it announces a change, so only a forger holding the key (or a Redis
    /// writer that rewrote the record) can produce one.
    #[error(
        "a signed {op} of service \"{service}\" that the node's own record does not confirm ({why})"
    )]
    Unconfirmed {
        op: &'static str,
        service: String,
        why: &'static str,
    },
}

/// The counted reasons of [`Refusal`] (a stable name each, for status and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    Unsigned,
    BadTag,
    NodeMismatch,
    Replayed,
    Superseded,
    Stale,
    Unconfirmed,
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Malformed(_) => Reason::Malformed,
            Refusal::Unsigned => Reason::Unsigned,
            Refusal::BadTag => Reason::BadTag,
            Refusal::NodeMismatch { .. } => Reason::NodeMismatch,
            Refusal::Replayed { .. } => Reason::Replayed,
            Refusal::Superseded { .. } => Reason::Superseded,
            Refusal::Stale { .. } => Reason::Stale,
            Refusal::Unconfirmed { .. } => Reason::Unconfirmed,
        }
    }
}

/// Seals this node's output and opens the peers'. Without a key (an unauthenticated cluster,
/// `cluster.allow_unauthenticated`) envelopes carry no tag and any tag is accepted unchecked;
/// node ids and sequences are still checked.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: Option<ClusterKey>,
    prefix: String,
}

impl Sealer {
    pub fn new(key: Option<ClusterKey>, prefix: &str) -> Sealer {
        Sealer {
            key,
            prefix: prefix.to_string(),
        }
    }

    pub fn authenticated(&self) -> bool {
        self.key.is_some()
    }

    /// The envelope of `body`, signed when there is a key.
    pub fn seal(&self, kind: SealKind, node: &str, seq: u64, body: &str) -> String {
        let tag = self
            .key
            .as_ref()
            .map(|key| hex(&self.mac(key, kind, node, seq, body.as_bytes())));
        serde_json::to_string(&EnvelopeOut {
            v: WIRE_VERSION,
            kind,
            node,
            seq,
            body,
            tag,
        })
        .unwrap_or_default()
    }

    /// Opens an envelope of `kind` read from a peer. Nothing but the envelope's outer JSON is
    /// parsed before the tag verifies.
    pub fn open(&self, kind: SealKind, bytes: &[u8]) -> Result<Opened, Refusal> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge(bytes.len()).into());
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if envelope.v < WIRE_VERSION {
            // Version 1 had no signature; a node of that version cannot join a keyed cluster.
            return Err(if self.authenticated() {
                Refusal::Unsigned
            } else {
                WireError::Version(envelope.v).into()
            });
        }
        if envelope.v != WIRE_VERSION {
            return Err(WireError::Version(envelope.v).into());
        }
        let (Some(found_kind), Some(node), Some(seq), Some(body)) =
            (envelope.kind, envelope.node, envelope.seq, envelope.body)
        else {
            return Err(
                WireError::Malformed("an envelope needs kind, node, seq and body".into()).into(),
            );
        };
        if let Some(key) = &self.key {
            let Some(tag) = envelope.tag else {
                return Err(Refusal::Unsigned);
            };
            let Some(tag) = unhex(&tag).filter(|t| t.len() == TAG_BYTES) else {
                return Err(Refusal::BadTag);
            };
            let mac = self.mac_state(key, found_kind, &node, seq, body.as_bytes());
            if mac.verify_slice(&tag).is_err() {
                return Err(Refusal::BadTag);
            }
        }
        if found_kind != kind {
            return Err(WireError::Malformed(format!(
                "a {} where a {} belongs",
                found_kind.as_str(),
                kind.as_str()
            ))
            .into());
        }
        crate::config::validate_node_id(&node).map_err(WireError::Malformed)?;
        Ok(Opened { node, seq, body })
    }

    fn mac(&self, key: &ClusterKey, kind: SealKind, node: &str, seq: u64, body: &[u8]) -> Vec<u8> {
        self.mac_state(key, kind, node, seq, body)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    fn mac_state(
        &self,
        key: &ClusterKey,
        kind: SealKind,
        node: &str,
        seq: u64,
        body: &[u8],
    ) -> HmacSha256 {
        let mut mac = (*key.mac).clone();
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(DOMAIN);
        field(self.prefix.as_bytes());
        field(&WIRE_VERSION.to_be_bytes());
        field(kind.as_str().as_bytes());
        field(node.as_bytes());
        field(&seq.to_be_bytes());
        field(body);
        mac
    }
}

/// The next sequence of this node: above `previous`, and at least the current time in µs since
/// the epoch, so a restarted node goes on above its last run.
pub fn next_seq(previous: u64) -> u64 {
    let now = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
    previous.saturating_add(1).max(now)
}

/// Refuses a timestamp signed longer ago than `ttl_s` plus [`MAX_CLOCK_SKEW_S`].
pub fn fresh(signed_at: DateTime<Utc>, ttl_s: u64, now: DateTime<Utc>) -> Result<(), Refusal> {
    let age_s = (now - signed_at).num_seconds();
    let limit = i64::try_from(ttl_s.saturating_add(MAX_CLOCK_SKEW_S)).unwrap_or(i64::MAX);
    if age_s > limit {
        Err(Refusal::Stale { age_s })
    } else {
        Ok(())
    }
}

/// Per node, the sequence of the last record and the last update accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Accepted {
    record: u64,
    update: u64,
}

/// The highest sequences accepted per node. A record is read again at every sync, so the same
/// record (equal sequence) is accepted again; an update is acted on once.
#[derive(Debug, Default)]
pub struct Sequences {
    nodes: BTreeMap<String, Accepted>,
}

impl Sequences {
    /// Whether a record of `node` was accepted (its messages can be checked against it).
    pub fn knows(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|a| a.record > 0)
    }

    pub fn check_record(&self, node: &str, seq: u64) -> Result<(), Refusal> {
        match self.nodes.get(node) {
            Some(a) if seq < a.record => Err(Refusal::Replayed {
                seq,
                last: a.record,
            }),
            _ => Ok(()),
        }
    }

    /// An update must be newer than every update accepted (pub/sub never delivers one twice)
    /// and than the record applied (whose state already includes it).
    pub fn check_update(&self, node: &str, seq: u64) -> Result<(), Refusal> {
        match self.nodes.get(node) {
            Some(a) if seq <= a.update => Err(Refusal::Replayed {
                seq,
                last: a.update,
            }),
            Some(a) if seq < a.record => Err(Refusal::Superseded {
                seq,
                record: a.record,
            }),
            _ => Ok(()),
        }
    }

    pub fn accept_record(&mut self, node: &str, seq: u64) {
        let entry = self.entry(node);
        entry.record = entry.record.max(seq);
    }

    pub fn accept_update(&mut self, node: &str, seq: u64) {
        let entry = self.entry(node);
        entry.update = entry.update.max(seq);
    }

    fn entry(&mut self, node: &str) -> &mut Accepted {
        if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_TRACKED_NODES {
            // Sequences are times: the smallest is the least recently active node.
            let oldest = self
                .nodes
                .iter()
                .min_by_key(|(_, a)| a.record.max(a.update))
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.nodes.remove(&oldest);
            }
        }
        self.nodes.entry(node.to_string()).or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// SHA-256 of `bytes`, hex.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ClusterKey {
        ClusterKey::new(vec![byte; MIN_KEY_BYTES]).expect("key")
    }

    fn sealer() -> Sealer {
        Sealer::new(Some(key(7)), "evolve")
    }

    /// The envelope as JSON, edited, as bytes again.
    fn edit(sealed: &str, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_str(sealed).expect("json");
        f(&mut value);
        serde_json::to_vec(&value).expect("json")
    }

    #[test]
    fn a_sealed_record_opens_with_the_same_key_and_carries_node_seq_and_body() {
        let sealed = sealer().seal(SealKind::Record, "node-a", 42, r#"{"x":1}"#);
        let opened = sealer()
            .open(SealKind::Record, sealed.as_bytes())
            .expect("opens");
        assert_eq!(
            opened,
            Opened {
                node: "node-a".into(),
                seq: 42,
                body: r#"{"x":1}"#.into()
            }
        );
    }

    #[test]
    fn tampering_with_any_signed_field_breaks_the_tag() {
        let sealed = sealer().seal(SealKind::Update, "node-a", 42, r#"{"op":"leave"}"#);
        let tampered: [(&str, serde_json::Value); 4] = [
            ("node", "node-b".into()),
            ("seq", 43.into()),
            ("body", r#"{"op":"announce"}"#.into()),
            ("kind", "record".into()),
        ];
        for (field, value) in tampered {
            let bytes = edit(&sealed, |v| v[field] = value);
            let kind = if field == "kind" {
                SealKind::Record
            } else {
                SealKind::Update
            };
            assert_eq!(
                sealer().open(kind, &bytes),
                Err(Refusal::BadTag),
                "tampered {field}"
            );
        }
        let flipped = edit(&sealed, |v| {
            let tag = v["tag"].as_str().expect("tag").to_string();
            let last = if tag.ends_with('0') { "1" } else { "0" };
            v["tag"] = format!("{}{last}", &tag[..tag.len() - 1]).into();
        });
        assert_eq!(
            sealer().open(SealKind::Update, &flipped),
            Err(Refusal::BadTag)
        );
        let short = edit(&sealed, |v| v["tag"] = "abcd".into());
        assert_eq!(
            sealer().open(SealKind::Update, &short),
            Err(Refusal::BadTag)
        );
    }

    #[test]
    fn another_key_or_another_prefix_does_not_open_it() {
        let sealed = sealer().seal(SealKind::Record, "node-a", 1, "{}");
        let other_key = Sealer::new(Some(key(8)), "evolve");
        assert_eq!(
            other_key.open(SealKind::Record, sealed.as_bytes()),
            Err(Refusal::BadTag)
        );
        let other_cluster = Sealer::new(Some(key(7)), "staging");
        assert_eq!(
            other_cluster.open(SealKind::Record, sealed.as_bytes()),
            Err(Refusal::BadTag)
        );
    }

    #[test]
    fn unsigned_and_version_one_messages_are_refused_as_unsigned() {
        let unsigned = Sealer::new(None, "evolve").seal(SealKind::Update, "node-a", 1, "{}");
        assert_eq!(
            sealer().open(SealKind::Update, unsigned.as_bytes()),
            Err(Refusal::Unsigned)
        );
        let v1 = br#"{"v":1,"node":"node-a","at":"2026-01-01T00:00:00Z","op":"leave"}"#;
        assert_eq!(sealer().open(SealKind::Update, v1), Err(Refusal::Unsigned));
        // Without a key (an unauthenticated cluster) the same unsigned envelope opens.
        assert!(
            Sealer::new(None, "evolve")
                .open(SealKind::Update, unsigned.as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn bad_input_is_refused_as_malformed_never_panicked_on() {
        let s = sealer();
        for bytes in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"v":2}"#,
            br#"{"v":3,"kind":"update","node":"a","seq":1,"body":"{}","tag":"00"}"#,
            br#"{"v":2,"kind":"what","node":"a","seq":1,"body":"{}"}"#,
            br#"{"v":2,"kind":"update","node":"a","seq":-1,"body":"{}"}"#,
        ] {
            assert!(
                matches!(s.open(SealKind::Update, bytes), Err(Refusal::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            s.open(SealKind::Update, &huge),
            Err(Refusal::Malformed(WireError::TooLarge(_)))
        ));
        // A validly signed message with a node id that could not name a key is refused too.
        let bad_id = s.seal(SealKind::Update, "a b*", 1, "{}");
        assert!(matches!(
            s.open(SealKind::Update, bad_id.as_bytes()),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn a_record_is_no_update() {
        let record = sealer().seal(SealKind::Record, "node-a", 1, "{}");
        assert!(matches!(
            sealer().open(SealKind::Update, record.as_bytes()),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn replayed_and_older_sequences_are_refused() {
        let mut seqs = Sequences::default();
        assert!(!seqs.knows("a"));
        seqs.check_record("a", 10).expect("first record");
        seqs.accept_record("a", 10);
        assert!(seqs.knows("a"));
        // The same record read again at the next sync is fine; an older one is a replay.
        assert_eq!(seqs.check_record("a", 10), Ok(()));
        assert_eq!(
            seqs.check_record("a", 9),
            Err(Refusal::Replayed { seq: 9, last: 10 })
        );
        seqs.check_update("a", 11).expect("newer update");
        seqs.accept_update("a", 11);
        assert_eq!(
            seqs.check_update("a", 11),
            Err(Refusal::Replayed { seq: 11, last: 11 })
        );
        assert_eq!(
            seqs.check_update("a", 5),
            Err(Refusal::Replayed { seq: 5, last: 11 })
        );
        // An update older than a record already applied is superseded by it.
        seqs.accept_record("a", 20);
        assert_eq!(
            seqs.check_update("a", 15),
            Err(Refusal::Superseded {
                seq: 15,
                record: 20
            })
        );
        assert_eq!(seqs.check_update("b", 1), Ok(()), "nodes are separate");
    }

    #[test]
    fn the_tracked_nodes_are_capped_forgetting_the_least_recently_active() {
        let mut seqs = Sequences::default();
        for i in 0..MAX_TRACKED_NODES as u64 {
            seqs.accept_record(&format!("n{i}"), 1_000 + i);
        }
        seqs.accept_record("new", 1_000_000);
        assert_eq!(seqs.nodes.len(), MAX_TRACKED_NODES);
        assert!(!seqs.knows("n0"), "the oldest is forgotten");
        assert!(seqs.knows("n1") && seqs.knows("new"));
    }

    #[test]
    fn sequences_increase_and_restart_above_a_previous_run() {
        let first = next_seq(0);
        assert!(first > 1_000_000_000_000_000, "µs since the epoch: {first}");
        assert!(next_seq(first) > first);
        let far = u64::MAX - 1;
        assert_eq!(next_seq(far), u64::MAX);
        assert_eq!(next_seq(u64::MAX), u64::MAX, "saturates, never wraps");
    }

    #[test]
    fn timestamps_older_than_ttl_plus_skew_are_stale() {
        let now = Utc::now();
        assert_eq!(fresh(now, 15, now), Ok(()));
        assert_eq!(fresh(now - chrono::Duration::seconds(75), 15, now), Ok(()));
        assert_eq!(
            fresh(now - chrono::Duration::seconds(76), 15, now),
            Err(Refusal::Stale { age_s: 76 })
        );
    }

    #[test]
    fn keys_shorter_than_32_bytes_are_refused_and_never_printed() {
        assert_eq!(
            ClusterKey::new(vec![1; 31]).map(|_| ()),
            Err(KeyError::TooShort(31))
        );
        let key = ClusterKey::new(b"a-secret-of-at-least-thirty-two-bytes".to_vec()).expect("key");
        assert_eq!(format!("{key:?}"), "ClusterKey(<redacted>)");
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
