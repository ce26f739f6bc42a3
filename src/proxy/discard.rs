//! Refusals that reach the client.
//!
//! A refusal decided before the upload is forwarded (451, 400, 405, 413 by
//! `Content-Length`, 503) does not need the request body, but closing the
//! connection — or resetting the HTTP/2 stream — while the client is still
//! sending it loses the answer: over HTTP/1.1 the kernel answers unread
//! data with a reset, and HTTP/2 clients such as curl 7.88 drop a response
//! whose stream is reset before they finished sending. So, as nginx does,
//! the body is read and thrown away after the answer's head is out, within
//! `limits.discard_body_bytes` and `timeouts.discard_body`; past either
//! bound the connection (or stream) is closed as before.
//!
//! The discarding starts when hyper first polls the answer's body — its
//! head has been written then, so hyper sends no `100 Continue` for a body
//! it will not use — or, for an empty answer hyper never polls, when it
//! drops it, and runs in a task of its own, so the answer ends at
//! once and an HTTP/1.1 connection whose body was discarded completely stays
//! open for the next request. A body an upstream stopped reading is
//! discarded the same way ([`crate::upstream::body`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

pub use crate::upstream::body::{discard, Bounds, Held, Hold};

/// How much of an unread body is discarded: `limits.discard_body_bytes`
/// within `timeouts.discard_body`.
pub fn bounds(config: &crate::config::Config) -> Bounds {
    Bounds {
        bytes: config.limits.discard_body_bytes,
        time: config.timeouts.discard_body,
    }
}

/// A refusal's answer body; discards the request body it holds once polled.
pub struct RefusalBody {
    answer: Full<Bytes>,
    unread: Option<(Incoming, Bounds)>,
    /// Kept until the discarding ends (the connection counts it as work in
    /// flight, so the body's bytes are not taken for a next request head).
    held: Option<Held>,
}

impl RefusalBody {
    /// `unread`: the request body the refusal did not read, if any; while
    /// it is discarded, a guard from `hold` (the connection's) keeps its
    /// bytes this request's, not a next request head.
    pub fn new(
        answer: Full<Bytes>,
        unread: Option<Incoming>,
        bounds: Bounds,
        hold: Option<&Hold>,
    ) -> RefusalBody {
        let unread = unread
            .filter(|body| !body.is_end_stream())
            .map(|body| (body, bounds));
        let held = hold.filter(|_| unread.is_some()).map(|hold| (hold.0)());
        RefusalBody {
            answer,
            unread,
            held,
        }
    }

    /// The answer to a `HEAD` request: its head only (RFC 9110 §9.3.2: no
    /// content). hyper's HTTP/1 server leaves the content out itself; its
    /// HTTP/2 server sends whatever it is given. An unread request body is
    /// still discarded.
    pub fn without_content(mut self) -> RefusalBody {
        self.answer = Full::default();
        self
    }

    /// For an answer after which an HTTP/1.1 connection closes: nothing
    /// of the unread body is discarded here. The connection's staged
    /// close (`server::connection`) sends close_notify and FIN right after
    /// the answer, then drops what the client still sends undecrypted, for
    /// up to 2 s of silence or `timeouts.discard_body`; reading it here
    /// first would hold that FIN back for as long as a stalled client
    /// sends nothing (`timeouts.discard_body`), though the answer said
    /// `Connection: close` (RFC 9112 §9.6: the server then closes).
    pub fn closing(mut self) -> RefusalBody {
        self.unread = None;
        self.held = None;
        self
    }

    /// Discards the unread body in a task of its own, if not yet.
    fn start_discarding(&mut self) {
        if let Some((body, bounds)) = self.unread.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(discard(body, bounds, self.held.take())));
            }
        }
    }
}

impl Body for RefusalBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.start_discarding();
        Pin::new(&mut self.answer).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.answer.size_hint()
    }
}

impl Drop for RefusalBody {
    /// An answer hyper never polled (an empty one: it ends with its head)
    /// still has the body it did not read discarded, now that the answer
    /// has been sent.
    fn drop(&mut self) {
        self.start_discarding();
    }
}
