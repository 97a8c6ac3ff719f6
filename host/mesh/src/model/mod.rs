//! Model-aware routing: which model a route's request carries, and what the backend reported
//! about it.
//!
//! The mesh does not know the registry: it asks a [`ModelSelector`] (the daemon implements it
//! over the registry in `system.rs`). Per model-aware request:
//! 1. the selection comes from a [`SelectionCache`] (at most [`SELECTION_TTL`] old; emptied at
//!    once when a `model.*` event says an alias moved or a version appeared, so an alias move
//!    reaches the very next request) or, on a miss, from the selector on a blocking thread;
//! 2. the request gets the `x-evolve-model*` headers and, for a JSON object body of known
//!    length under the cap, the `evolve_model` field ([`inject_model_field`]);
//! 3. the response gets the same headers; an outcome in `x-evolve-outcome` or, for a JSON
//!    response, in its `evolve_outcome` field ([`parse_outcome_header`], [`parse_outcome_json`])
//!    goes to [`ModelRouting`]'s bounded queue, which a worker drains into the selector
//!    without ever holding up a response; but only on a route with `record_outcomes = true`
//!    and from this daemon's own services ([`records_outcomes`]): the others' word is ignored.
//!
//! | module | holds |
//! |---|---|
//! | [`selector`] | the seam to the registry: [`ModelSelector`], [`Selection`], [`NoModel`] |
//! | [`cache`] | step 1: recent selections, emptied by registry events |
//! | [`wire`] | steps 2 and 3: the header and field names, and setting them on a request or response |
//! | [`outcome`] | step 3: parsing the metrics a backend reported |
//! | [`scan`] | step 3 for JSON bodies: the body wrapper that reads `evolve_outcome` as it streams |
//! | [`routing`] | the glue: [`ModelRouting`] (selector, cache, outcome queue), [`RouteStats`], [`records_outcomes`] |
//!
//! Every item is re-exported here, so callers name `model::X` whatever file `X` lives in.

pub mod cache;
pub mod outcome;
pub mod routing;
pub mod scan;
pub mod selector;
pub mod wire;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use self::cache::{SELECTION_TTL, SelectionCache};
pub use self::outcome::{
    MAX_OUTCOME_HEADER_BYTES, MAX_OUTCOME_METRICS, OutcomeError, parse_outcome_header,
    parse_outcome_json,
};
pub use self::routing::{ModelRouting, RouteStats, RoutedOutcome, records_outcomes};
pub use self::scan::{MAX_OUTCOME_SCAN_BYTES, ScanSink, ScannedBody, should_scan};
pub use self::selector::{ModelSelector, NoModel, Selection};
pub use self::wire::{
    FIELD_MODEL, FIELD_OUTCOME, HEADER_MODEL, HEADER_MODEL_FALLBACK, HEADER_MODEL_SOURCE,
    HEADER_MODEL_VERSION, HEADER_OUTCOME, inject_model_field, is_json, model_field,
    set_fallback_headers, set_model_headers,
};
