//! `GET /v1/events`: the internal bus's recent events as one JSON answer, or with
//! `?follow=true` a stream that never ends on its own: the recent events, then each new one as it
//! is published, one JSON object per line (`application/x-ndjson`), what `evolve events tail`
//! prints. `?kind=` keeps one kind. The stream ends when the client goes or the daemon stops.
//! At most [`MAX_FOLLOWERS`] follow at once (the route is open to anonymous readers on a
//! loopback listen); one more is refused with `503 too_many_followers`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit, broadcast, mpsc, watch};

use super::{ApiError, ApiState};
use evolve_core::events::Event;

/// Lines queued for one slow follower before its forwarder waits (then the bus's own buffer
/// fills, and the follower is told how many events it missed).
const FOLLOW_QUEUE: usize = 64;

/// Followers at once. Each holds a connection, a task, a bus receiver and up to
/// [`FOLLOW_QUEUE`] lines for as long as it likes; `evolve events tail` and a few dashboards
/// need a handful, and this many keeps what anonymous readers can pin small.
pub const MAX_FOLLOWERS: usize = 64;

/// Permits for followers, one daemon per process. A permit lives as long as its forwarder,
/// which ends when the client goes or the daemon stops.
static FOLLOWERS: Semaphore = Semaphore::const_new(MAX_FOLLOWERS);

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
    let Ok(permit) = FOLLOWERS.try_acquire() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_followers",
            format!(
                "{MAX_FOLLOWERS} clients already follow the events; retry once one has gone, or read GET /v1/events without follow"
            ),
        )
        .with("max_followers", MAX_FOLLOWERS)
        .into_response();
    };
    let (recent, receiver) = state.events.follow();
    let (lines, queue) = mpsc::channel(FOLLOW_QUEUE);
    tokio::spawn(forward(
        recent,
        receiver,
        query.kind,
        state.stop.clone(),
        lines,
        permit,
    ));
    let mut response = Response::new(Body::new(LineStream { queue }));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Replays `recent`, then forwards the bus until the follower goes (`lines` closed) or the
/// daemon stops; the follower's permit is released when it returns.
async fn forward(
    recent: Vec<Event>,
    mut bus: broadcast::Receiver<Event>,
    kind: Option<String>,
    stop: Option<watch::Receiver<bool>>,
    lines: mpsc::Sender<Bytes>,
    _permit: SemaphorePermit<'static>,
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
