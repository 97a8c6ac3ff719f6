//! Cells of the model tables that plain [`text_at`](crate::cli::render::text_at) does not
//! cover: rounded numbers, alias maps, string lists.

use serde_json::Value;

/// The number at `pointer` rounded to `decimals`, or `-`.
pub(super) fn number(value: &Value, pointer: &str, decimals: usize) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .map_or("-".into(), |n| format!("{n:.decimals$}"))
}

/// A model's aliases as `alias→vN …`, or `-` when it has none.
pub(super) fn aliases_text(model: &Value) -> String {
    model["aliases"]
        .as_object()
        .map(|aliases| {
            aliases
                .iter()
                .map(|(k, v)| format!("{k}→v{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// The strings of an array joined by `separator` (`-` when `value` is no array).
pub(super) fn joined(value: &Value, separator: &str) -> String {
    value.as_array().map_or("-".into(), |items| {
        items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(separator)
    })
}

/// The array under `key`, empty when the answer has none.
pub(super) fn list_of(value: &Value, key: &str) -> Vec<Value> {
    value[key].as_array().cloned().unwrap_or_default()
}
