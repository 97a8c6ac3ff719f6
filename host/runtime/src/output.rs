//! The one reader of a task's JSON output. The call path [`check`]s it before the answer leaves
//! the runtime, and the daemon's history and API [`parse`] it back into the document they serve;
//! both walk it with the same rules, so output a call accepted is always served as the document
//! the plugin returned, never demoted to a string because a second parser disagreed.
//!
//! The rules are serde_json's (UTF-8, RFC 8259, a lone surrogate escape such as `"\ud800"` is
//! invalid because it names no character) plus a nesting limit, [`MAX_OUTPUT_DEPTH`].

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// What each string field and each list entry of an answer costs against `max_output_kb`
/// besides its text: about what the host keeps per element once the answer is lifted out of
/// the guest (a `String` is 24 bytes before its text), so a million empty strings cost what
/// they make the host hold instead of nothing.
pub const ELEMENT_COST_BYTES: u64 = 24;

/// Capabilities one `describe()` may claim: a real plugin names a handful; the description is
/// kept for the generation's life and shown in every `GET /v1/plugins`.
pub const MAX_CAPABILITIES: usize = 64;

/// Artifacts (paths of files a run wrote) one task outcome may list; each is recorded in the
/// run history.
pub const MAX_ARTIFACTS: usize = 1_024;

/// Fields one `logging.log` record may carry; the rest are dropped and the record says how
/// many were.
pub const MAX_LOG_FIELDS: usize = 32;

/// What a `describe()` answer may weigh (counted as [`ELEMENT_COST_BYTES`] describes), whatever
/// `max_output_kb` allows: it is kept for the generation's life, not for one call.
pub const MAX_DESCRIBE_BYTES: u64 = 64 * 1024;

/// Arrays and objects nested deeper than this are refused. Real reports nest a few levels; the
/// bound keeps every reader of the document (this walk, the API's serialiser, clients) far from
/// stack exhaustion, and sits below serde_json's own recursion guard (128 levels) so the
/// refusal is always this limit, named as such, and never that guard's generic message.
pub const MAX_OUTPUT_DEPTH: usize = 64;

/// Why a task's output is not a JSON document the host serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputJsonError {
    #[error(
        "arrays and objects nest deeper than {limit} levels (at line {line} column {column}); return a flatter document"
    )]
    TooDeep {
        limit: usize,
        line: usize,
        column: usize,
    },
    /// serde_json's message, with its line and column.
    #[error("{message}")]
    Invalid { message: String },
}

/// Checks that `text` is one JSON document within [`MAX_OUTPUT_DEPTH`], without building it.
pub fn check(text: &str) -> Result<(), OutputJsonError> {
    walk(text, false).map(drop)
}

/// Parses `text` into the document, under the rules [`check`] applies.
pub fn parse(text: &str) -> Result<Value, OutputJsonError> {
    walk(text, true)
}

fn walk(text: &str, build: bool) -> Result<Value, OutputJsonError> {
    let too_deep = Cell::new(false);
    let mut reader = serde_json::Deserializer::from_str(text);
    let node = Node {
        depth: 0,
        build,
        too_deep: &too_deep,
    };
    node.deserialize(&mut reader)
        .and_then(|value| reader.end().map(|()| value))
        .map_err(|error| {
            if too_deep.get() {
                OutputJsonError::TooDeep {
                    limit: MAX_OUTPUT_DEPTH,
                    line: error.line(),
                    column: error.column(),
                }
            } else {
                OutputJsonError::Invalid {
                    message: error.to_string(),
                }
            }
        })
}

/// One value at `depth` (the number of arrays and objects around it). Builds the [`Value`] when
/// `build`, else answers `Null` for everything: [`check`] allocates only object keys.
#[derive(Clone, Copy)]
struct Node<'a> {
    depth: usize,
    build: bool,
    /// Set when the walk stops at the depth limit, so the error can say so.
    too_deep: &'a Cell<bool>,
}

impl Node<'_> {
    /// A container at this node: its children are one level deeper.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_OUTPUT_DEPTH {
            self.too_deep.set(true);
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_OUTPUT_DEPTH} levels"
            )));
        }
        Ok(Node {
            depth: self.depth + 1,
            ..self
        })
    }

    fn keep(self, value: impl FnOnce() -> Value) -> Value {
        if self.build { value() } else { Value::Null }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        // `deserialize_any` parses every string (and so validates its escapes), where
        // `deserialize_ignored_any` would skip strings and nesting unchecked.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(self.keep(|| Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(self.keep(|| Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(self.keep(|| Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite float (it refuses `1e999`), so this is never Null
        // for a number that parsed.
        Ok(self.keep(|| Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(self.keep(|| Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(self.keep(|| Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            if self.build {
                items.push(item);
            }
        }
        Ok(self.keep(|| Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(child)?;
            if self.build {
                // A repeated key keeps its last value, as `serde_json::Value` does.
                object.insert(key, value);
            }
        }
        Ok(self.keep(|| Value::Object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted_and_one_more_level_is_refused_naming_it() {
        assert_eq!(check(&nested(MAX_OUTPUT_DEPTH)), Ok(()));
        assert!(parse(&nested(MAX_OUTPUT_DEPTH)).is_ok());
        for text in [
            nested(MAX_OUTPUT_DEPTH + 1),
            nested(10_000),
            format!("{}{}", r#"{"a":"#.repeat(MAX_OUTPUT_DEPTH + 1), "null"),
        ] {
            for result in [check(&text).map(|()| Value::Null), parse(&text)] {
                match result {
                    Err(
                        error @ OutputJsonError::TooDeep {
                            limit,
                            line,
                            column,
                        },
                    ) => {
                        assert_eq!(limit, MAX_OUTPUT_DEPTH);
                        assert_eq!(line, 1);
                        assert!(column > MAX_OUTPUT_DEPTH, "{column}");
                        assert!(error.to_string().contains("64 levels"), "{error}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_lone_surrogate_escape_is_invalid_with_its_position_and_a_pair_is_fine() {
        for text in [r#"{"s":"\ud800"}"#, r#"["\udc00x"]"#, r#"{"\ud800":1}"#] {
            for result in [check(text).map(|()| Value::Null), parse(text)] {
                match result {
                    Err(OutputJsonError::Invalid { message }) => {
                        // serde_json names the escape it could not decode into a character.
                        assert!(message.contains("escape"), "{message}");
                        assert!(message.contains("line 1 column"), "{message}");
                    }
                    other => panic!("{text}: {other:?}"),
                }
            }
        }
        assert_eq!(check(r#"["\ud83e\udd80"]"#), Ok(()));
        assert_eq!(
            parse(r#""\ud83e\udd80""#),
            Ok(Value::String("🦀".to_owned()))
        );
    }

    #[test]
    fn parse_builds_what_serde_json_builds_and_check_agrees() {
        for text in [
            r#"{"a":[1,-2,3.5,1e300,true,null,"x"],"b":{"c":{}},"a2":[]}"#,
            r#"{"k":1,"k":2}"#,
            "  [ ]  ",
            "18446744073709551615",
            r#""plain""#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap_or_default();
            assert_eq!(parse(text), Ok(expected), "{text}");
            assert_eq!(check(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn non_documents_are_refused_by_both_with_serdes_message() {
        for text in ["", "{", "[1,]", "{} {}", "1e999", "nul", r#"{"a" 1}"#] {
            let checked = check(text);
            let parsed = parse(text).map(drop);
            assert_eq!(checked, parsed, "{text:?}");
            assert!(
                matches!(&checked, Err(OutputJsonError::Invalid { message }) if message.contains("line 1")),
                "{text:?}: {checked:?}"
            );
        }
    }
}
