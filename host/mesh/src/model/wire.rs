//! What a model-aware request and response carry: the `x-evolve-model*` headers, the
//! `evolve_model` body field, and the names of the outcome header and field a backend answers
//! with.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::selector::Selection;

/// Name of the model sent to the backend and returned to the client.
pub const HEADER_MODEL: &str = "x-evolve-model";
/// Version number of that model.
pub const HEADER_MODEL_VERSION: &str = "x-evolve-model-version";
/// `alias:<alias>`, `best:<policy>`, or `none` when the route fell back.
pub const HEADER_MODEL_SOURCE: &str = "x-evolve-model-source";
/// Why a model-aware route sent no model (`no_registry`, `no_model`, `alias_not_set`, ...).
pub const HEADER_MODEL_FALLBACK: &str = "x-evolve-model-fallback";
/// Outcome metrics of a response: `mae=0.12; latency_ms=4.1`.
pub const HEADER_OUTCOME: &str = "x-evolve-outcome";
/// JSON field of the request body naming the model.
pub const FIELD_MODEL: &str = "evolve_model";
/// JSON field of a response body carrying outcome metrics.
pub const FIELD_OUTCOME: &str = "evolve_outcome";

/// Whether `headers` say the body is JSON (`application/json`, `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// The `evolve_model` field's value.
pub fn model_field(selection: &Selection) -> Value {
    json!({
        "name": selection.name,
        "version": selection.version,
        "source": selection.source,
    })
}

/// `body` with `evolve_model` added at the top level when it is a JSON object; `None` when it
/// is not (the body is then sent as it came).
pub fn inject_model_field(body: &[u8], selection: &Selection) -> Option<Bytes> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    object.insert(FIELD_MODEL.to_string(), model_field(selection));
    serde_json::to_vec(&Value::Object(object))
        .ok()
        .map(Bytes::from)
}

/// Sets the model headers (request to the backend, or response to the client).
pub fn set_model_headers(headers: &mut HeaderMap, selection: &Selection) {
    if let Ok(value) = HeaderValue::from_str(&selection.name) {
        headers.insert(HEADER_MODEL, value);
    }
    headers.insert(HEADER_MODEL_VERSION, HeaderValue::from(selection.version));
    if let Ok(value) = HeaderValue::from_str(&selection.source) {
        headers.insert(HEADER_MODEL_SOURCE, value);
    }
}

/// Sets the headers of a route that fell back to no model.
pub fn set_fallback_headers(headers: &mut HeaderMap, reason: &'static str) {
    headers.insert(HEADER_MODEL_SOURCE, HeaderValue::from_static("none"));
    headers.insert(HEADER_MODEL_FALLBACK, HeaderValue::from_static(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_field_goes_into_json_objects_only() {
        let selection = Selection {
            name: "arima".into(),
            version: 3,
            source: "alias:champion".into(),
        };
        let out = inject_model_field(br#"{"horizon": 5}"#, &selection).expect("valid");
        let value: Value = serde_json::from_slice(&out).expect("valid");
        assert_eq!(value["horizon"], 5);
        assert_eq!(value[FIELD_MODEL]["name"], "arima");
        assert_eq!(value[FIELD_MODEL]["version"], 3);
        assert_eq!(value[FIELD_MODEL]["source"], "alias:champion");
        assert!(inject_model_field(b"[1,2]", &selection).is_none());
        assert!(inject_model_field(b"not json", &selection).is_none());
    }
}
