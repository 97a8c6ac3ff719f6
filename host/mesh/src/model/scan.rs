//! Reading `evolve_outcome` from a JSON response body as it streams to the client: the body is
//! never held back, only copied up to a cap.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::routing::ModelRouting;
use super::selector::Selection;
use super::wire::is_json;

/// JSON response bodies up to this size are scanned for `evolve_outcome` as they stream by;
/// larger (or non-JSON) bodies pass untouched, bytes.
pub const MAX_OUTCOME_SCAN_BYTES: usize = 256 * 1024;

/// Whether a response body should be scanned for `evolve_outcome`: JSON, and not declared
/// larger than [`MAX_OUTCOME_SCAN_BYTES`].
pub fn should_scan(headers: &HeaderMap) -> bool {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    is_json(headers) && declared.is_none_or(|n| n <= MAX_OUTCOME_SCAN_BYTES as u64)
}

/// What a [`ScannedBody`] reports to when it ends.
pub struct ScanSink {
    pub routing: Arc<ModelRouting>,
    pub selection: Selection,
    pub route_source: String,
    pub backend: String,
}

/// A response body passed through frame by frame, with a copy kept (up to
/// [`MAX_OUTCOME_SCAN_BYTES`]) to read `evolve_outcome` from when it ends: the client gets
/// every byte as soon as it arrives, and a body over the cap is simply not scanned.
pub struct ScannedBody<B> {
    inner: B,
    copy: Option<BytesMut>,
    sink: Option<ScanSink>,
}

impl<B> ScannedBody<B> {
    pub fn new(inner: B, sink: ScanSink) -> ScannedBody<B> {
        ScannedBody {
            inner,
            copy: Some(BytesMut::new()),
            sink: Some(sink),
        }
    }

    fn finish(&mut self) {
        if let (Some(copy), Some(sink)) = (self.copy.take(), self.sink.take()) {
            sink.routing.record_from_json_body(
                &copy,
                &sink.selection,
                &sink.route_source,
                &sink.backend,
            );
        }
    }
}

impl<B> HttpBody for ScannedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let over = self
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() > MAX_OUTCOME_SCAN_BYTES);
                    if over {
                        self.copy = None;
                    } else if let Some(copy) = self.copy.as_mut() {
                        copy.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.copy = None,
            Poll::Pending => {}
        }
        // A server stops polling once the body says it ended (e.g. its content-length is
        // reached), so the end is taken from the last frame too, not only from `None`.
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http::header::{CONTENT_TYPE, HeaderValue};

    use super::*;
    use crate::model::fake::fake;
    use crate::model::routing::RoutedOutcome;
    use evolve_core::events::EventBus;

    #[tokio::test]
    async fn a_streamed_json_body_reports_its_outcome_when_it_ends() {
        let events = EventBus::new();
        let (selector, mut recorded) = fake();
        let routing = Arc::new(ModelRouting::start(selector, &events, Arc::default()));
        let selection = Selection {
            name: "m".into(),
            version: 4,
            source: "best:default".into(),
        };
        let text = br#"{"forecast": [1, 2], "evolve_outcome": {"mae": 0.5}}"#;
        let body = http_body_util::Full::new(Bytes::from_static(text));
        let sink = ScanSink {
            routing: Arc::clone(&routing),
            selection,
            route_source: "route:forecast".into(),
            backend: "fc/a".into(),
        };
        let mut scanned = ScannedBody::new(body, sink);
        // Like a server: read frames until the body says it ended, never polling for `None`.
        let frame = http_body_util::BodyExt::frame(&mut scanned)
            .await
            .expect("a frame")
            .expect("data");
        assert_eq!(
            frame.data_ref().map(|d| &d[..]),
            Some(&text[..]),
            "unchanged"
        );
        assert!(scanned.is_end_stream());
        drop(scanned);
        let outcome = recorded.recv().await.expect("recorded");
        assert_eq!(
            outcome,
            RoutedOutcome {
                model: "m".into(),
                version: 4,
                metrics: vec![("mae".into(), 0.5)],
                source: "route:forecast".into(),
            }
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        assert!(is_json(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            CONTENT_LENGTH,
            HeaderValue::from(MAX_OUTCOME_SCAN_BYTES as u64 + 1),
        );
        assert!(!should_scan(&headers));
    }
}
