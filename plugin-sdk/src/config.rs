//! Typed access to the plugin's own `[config]` table from its `plugin.toml`.
//!
//! Declare the settings as a struct with serde defaults and read it once per call:
//!
//! ```no_run
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config {
//!     path: String,
//!     timeout_ms: u64,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Config { path: "/health".into(), timeout_ms: 2000 }
//!     }
//! }
//!
//! # fn main() -> Result<(), evolve_plugin_sdk::PluginError> {
//! let config: Config = evolve_plugin_sdk::config::get()?;
//! # Ok(()) }
//! ```
//!
//! A value of the wrong type (or, with `deny_unknown_fields`, a misspelt key) is an
//! `invalid-input` error naming the key, e.g.
//! ``invalid plugin config: `timeout_ms`: invalid type: string "fast", expected u64``.

use serde::de::DeserializeOwned;

use crate::bindings::meta_agent::evolve::plugin::config as imports;
use crate::types::parse_json;
use crate::{Json, PluginError};

/// The whole `[config]` table as a JSON object (`{}` when the manifest has none).
pub fn raw() -> Json {
    imports::get_all()
}

/// Deserializes the whole `[config]` table into `T`.
pub fn get<T: DeserializeOwned>() -> Result<T, PluginError> {
    parse(&raw())
}

/// Deserializes one top-level key of the `[config]` table, or `None` if it is absent.
pub fn value<T: DeserializeOwned>(key: &str) -> Result<Option<T>, PluginError> {
    imports::get(key)
        .map(|json| {
            parse_json(&format!("invalid plugin config: `{key}`"), &json)
                .map_err(PluginError::invalid_input)
        })
        .transpose()
}

/// Deserializes a config document; split out so it can be tested without a host.
pub(crate) fn parse<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    parse_json("invalid plugin config", json).map_err(PluginError::invalid_input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        path: String,
        timeout_ms: u64,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                path: "/health".into(),
                timeout_ms: 2000,
            }
        }
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let config: Config = parse(r#"{"timeout_ms": 10}"#).expect("valid config");
        assert_eq!(config.path, "/health");
        assert_eq!(config.timeout_ms, 10);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = parse::<Config>(r#"{"timeout_ms": "fast"}"#).expect_err("wrong type");
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("`timeout_ms`"), "{}", err.message);

        let err = parse::<Config>(r#"{"timeout": 5}"#).expect_err("unknown key");
        assert!(err.message.contains("`timeout`"), "{}", err.message);
    }
}
