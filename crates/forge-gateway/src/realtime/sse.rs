//! The body of `GET /_api/events`: a session's outbox written as Server-Sent Events.
//!
//! The stream writes whatever the outbox holds as one chunk (so a burst costs one write, not
//! one per event), a `: ping` comment after `keep_alive` of silence, and ends when its token
//! expires (an anonymous stream: when its lifetime is over). When the client is gone, a write
//! fails, hyper drops the body, and dropping it ends the session: a dead peer is cleaned up by
//! the next keep-alive at the latest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use tokio::time::Instant;

use super::hub::Hub;
use super::session::Session;

/// Most bytes written in one chunk.
const MAX_CHUNK: usize = 64 * 1024;

/// Ends the session when the stream is dropped, however that happens.
struct SessionGuard {
    hub: Arc<Hub>,
    session: Arc<Session>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.hub.close_session(self.session.id);
    }
}

struct StreamState {
    guard: SessionGuard,
    keep_alive: Duration,
    expires_at: Instant,
}

/// The response that streams `session` until the client leaves or `expires_at` passes.
pub(crate) fn response(
    hub: Arc<Hub>,
    session: Arc<Session>,
    keep_alive: Duration,
    expires_at: Instant,
) -> Response {
    let state = StreamState {
        guard: SessionGuard { hub, session },
        keep_alive,
        expires_at,
    };
    let stream = futures::stream::unfold(state, |st| async move {
        let chunk = next_chunk(&st).await?;
        Some((Ok::<Bytes, Infallible>(chunk), st))
    });
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// The next chunk to write, or `None` to end the stream.
async fn next_chunk(st: &StreamState) -> Option<Bytes> {
    let outbox = &st.guard.session.outbox;
    tokio::select! {
        biased;
        () = tokio::time::sleep_until(st.expires_at) => None,
        open = outbox.ready() => if open { outbox.take(MAX_CHUNK) } else { None },
        () = tokio::time::sleep(st.keep_alive) => Some(Bytes::from_static(b": ping\n\n")),
    }
}
