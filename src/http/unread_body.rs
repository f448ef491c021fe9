//! What happens to a request body that its handler did not read to the end: a handler that
//! refuses an upload early (over the size limit, a bad token, a bad query) answers while the
//! client is still sending it.
//!
//! Closing a connection with unread data resets it, and a client still writing sees a broken
//! pipe instead of the answer; a client that pools connections sends its next request down the
//! closing socket and gets a reset (CI saw `IncompleteMessage` on the request after a 413). So
//! the rest of the body is read and dropped before the answer goes out, for at most [`LINGER`]
//! (nginx's lingering close), and the connection stays usable. A client that sent
//! `Expect: 100-continue` has sent nothing yet and is not asked to; it, and one still sending
//! after [`LINGER`], gets `Connection: close` (RFC 9112 §9.6) so it opens a fresh connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Frame, SizeHint};

/// How long the rest of a refused body is read and dropped before the refusal is sent.
pub const LINGER: Duration = Duration::from_secs(10);

pub(super) async fn finish_or_close(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let shared = Arc::new(Shared::default());
    let body = Body::new(Watched { inner: Some(body), shared: shared.clone() });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if shared.finished.load(Ordering::Acquire) {
        return response;
    }
    let left = shared.left.lock().ok().and_then(|mut left| left.take());
    let drained = match left {
        Some(left) if !expects_continue => tokio::time::timeout(LINGER, drain(left)).await.unwrap_or(false),
        // Dropped unread by a client waiting for `100 Continue`, or still held by the handler.
        _ => false,
    };
    if !drained {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end; false when it fails first (the client went away).
async fn drain(body: Body) -> bool {
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
}

#[derive(Default)]
struct Shared {
    /// The last frame has been read.
    finished: AtomicBool,
    /// The body, handed back when the handler drops it unfinished.
    left: Mutex<Option<Body>>,
}

/// The request body, noting when its last frame has been read, handed back when dropped before.
struct Watched {
    inner: Option<Body>,
    shared: Arc<Shared>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            this.shared.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.shared.finished.load(Ordering::Acquire) {
            return;
        }
        if let (Some(inner), Ok(mut left)) = (self.inner.take(), self.shared.left.lock()) {
            *left = Some(inner);
        }
    }
}
