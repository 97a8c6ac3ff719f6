//! `GET /v1/events`: the internal bus's recent events as one JSON answer, or with
//! `?follow=true` a stream that never ends on its own: the recent events, then each new one as it
//! is published, one JSON object per line (`application/x-ndjson`), what `evolve events tail`
//! prints. `?kind=` keeps one kind. The stream ends when the client goes or the daemon stops.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};

use super::ApiState;
use evolve_core::events::Event;

/// Lines queued for one slow follower before its forwarder waits (then the bus's own buffer
/// fills, and the follower is told how many events it missed).
const FOLLOW_QUEUE: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    #[serde(default)]
    follow: bool,
    kind: Option<String>,
}

pub(super) async fn events(
    State(state): State<ApiState>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let wanted = |event: &Event| {
        query
            .kind
            .as_deref()
            .is_none_or(|kind| event.kind.as_str() == kind)
    };
    if !query.follow {
        let events: Vec<Event> = state.events.recent().into_iter().filter(wanted).collect();
        return Json(json!({ "events": events })).into_response();
    }
    let (recent, receiver) = state.events.follow();
    let (lines, queue) = mpsc::channel(FOLLOW_QUEUE);
    tokio::spawn(forward(
        recent,
        receiver,
        query.kind,
        state.stop.clone(),
        lines,
    ));
    let mut response = Response::new(Body::new(LineStream { queue }));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Replays `recent`, then forwards the bus until the follower goes (`lines` closed) or the
/// daemon stops.
async fn forward(
    recent: Vec<Event>,
    mut bus: broadcast::Receiver<Event>,
    kind: Option<String>,
    stop: Option<watch::Receiver<bool>>,
    lines: mpsc::Sender<Bytes>,
) {
    let wanted = |event: &Event| kind.as_deref().is_none_or(|k| event.kind.as_str() == k);
    for event in recent.iter().filter(|e| wanted(e)) {
        if lines.send(json_line(event)).await.is_err() {
            return;
        }
    }
    let stopped = async move {
        match stop {
            Some(mut stop) => {
                let _ = stop.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            () = &mut stopped => return,
            () = lines.closed() => return,
            next = bus.recv() => next,
        };
        let text = match next {
            Ok(event) if wanted(&event) => json_line(&event),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                json_line(&json!({ "kind": "events.missed", "missed": missed }))
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if lines.send(text).await.is_err() {
            return;
        }
    }
}

/// One line of the follow stream.
fn json_line(value: &impl serde::Serialize) -> Bytes {
    // Events and the `events.missed` notice are plain data: serialising them cannot fail.
    let mut text = serde_json::to_vec(value).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// The response body of a follow: the forwarder's lines, ending when it stops.
struct LineStream {
    queue: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for LineStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.queue
            .poll_recv(cx)
            .map(|line| line.map(|line| Ok(Frame::data(line))))
    }
}
