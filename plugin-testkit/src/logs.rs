//! What a plugin logs, captured. The runtime emits a plugin's `logging` import calls and its
//! stdout/stderr lines as `tracing` events with target `evolve::plugin`; the kit runs every call
//! on its own thread under a subscriber that keeps those events.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// The tracing target of plugin log events.
const PLUGIN_TARGET: &str = "evolve::plugin";

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// `TRACE` … `ERROR`.
    pub level: String,
    pub message: String,
    /// `key=value` pairs the plugin passed, space-separated.
    pub fields: String,
    /// `stdout` / `stderr` for a line the guest printed; `None` for the `logging` import.
    pub stream: Option<String>,
}

pub(crate) type Sink = Arc<Mutex<Vec<LogRecord>>>;

pub(crate) struct Capture {
    pub(crate) sink: Sink,
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != PLUGIN_TARGET {
            return;
        }
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let record = LogRecord {
            level: event.metadata().level().to_string(),
            message: visitor.message,
            fields: if visitor.fields.is_empty() {
                visitor.other.trim_end().to_owned()
            } else {
                visitor.fields
            },
            stream: visitor.stream,
        };
        evolve_core::sync::lock(&self.sink).push(record);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: String,
    stream: Option<String>,
    other: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "fields" => self.fields = value.to_owned(),
            "stream" => self.stream = Some(value.to_owned()),
            "plugin" => {}
            name => {
                let _ = write!(self.other, "{name}={value} ");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "plugin" => {}
            name => {
                let _ = write!(self.other, "{name}={value:?} ");
            }
        }
    }
}
