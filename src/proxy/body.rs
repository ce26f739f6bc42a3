//! The request body as it streams upstream.
//!
//! [`ForwardBody`] passes the client's frames through one at a time (nothing
//! is buffered whole) while enforcing the body limit and an idle deadline
//! between frames, counting bytes and signalling the end of the body, after
//! which the upstream-response deadline starts.
//!
//! The client's body sits in a shared [`BodySlot`] until the upstream
//! connection first asks for data. If the connection fails before that, the
//! slot is still full: provably no byte reached that upstream, and the same
//! body can be offered to another permitted upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// Why the body stopped streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit")]
    TooLarge,
    #[error("client sent no body data within the idle deadline")]
    IdleTimeout,
    #[error("client body stream failed")]
    Client,
    #[error("request body was already consumed by another attempt")]
    Gone,
}

impl BodyError {
    fn code(self) -> u8 {
        match self {
            BodyError::TooLarge => 1,
            BodyError::IdleTimeout => 2,
            BodyError::Client => 3,
            BodyError::Gone => 4,
        }
    }

    fn from_code(code: u8) -> Option<BodyError> {
        match code {
            1 => Some(BodyError::TooLarge),
            2 => Some(BodyError::IdleTimeout),
            3 => Some(BodyError::Client),
            4 => Some(BodyError::Gone),
            _ => None,
        }
    }
}

/// The client's body, shared between delivery attempts.
#[derive(Debug)]
pub struct BodySlot {
    body: Mutex<Option<Incoming>>,
    hint: SizeHint,
    bytes: AtomicU64,
    failure: AtomicU8,
}

impl BodySlot {
    pub fn new(body: Incoming) -> Arc<BodySlot> {
        Arc::new(BodySlot {
            hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            bytes: AtomicU64::new(0),
            failure: AtomicU8::new(0),
        })
    }

    /// True while no attempt has started reading the body.
    pub fn untouched(&self) -> bool {
        self.body.lock().map(|b| b.is_some()).unwrap_or(false)
    }

    /// Body bytes passed upstream so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The reason the body stopped early, if it did.
    pub fn failure(&self) -> Option<BodyError> {
        BodyError::from_code(self.failure.load(Ordering::Relaxed))
    }

    fn take(&self) -> Option<Incoming> {
        self.body.lock().ok().and_then(|mut b| b.take())
    }

    fn fail(&self, e: BodyError) -> BodyError {
        let _ = self
            .failure
            .compare_exchange(0, e.code(), Ordering::Relaxed, Ordering::Relaxed);
        e
    }
}

/// One delivery attempt's view of the body.
pub struct ForwardBody {
    slot: Arc<BodySlot>,
    inner: Option<Incoming>,
    limit: u64,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    done: Option<oneshot::Sender<()>>,
    ended: bool,
}

impl ForwardBody {
    /// Returns the body and a receiver that resolves when it has been sent
    /// completely (or dropped).
    pub fn new(
        slot: Arc<BodySlot>,
        limit: u64,
        idle: Duration,
    ) -> (ForwardBody, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let body = ForwardBody {
            slot,
            inner: None,
            limit,
            idle,
            timer: None,
            done: Some(tx),
            ended: false,
        };
        (body, rx)
    }

    fn finish(&mut self) {
        self.ended = true;
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.inner.is_none() {
            match this.slot.take() {
                Some(body) => this.inner = Some(body),
                None => return Poll::Ready(Some(Err(BodyError::Gone))),
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(BodyError::Gone)));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    let total = this.slot.bytes.fetch_add(len, Ordering::Relaxed) + len;
                    if total > this.limit {
                        return Poll::Ready(Some(Err(this.slot.fail(BodyError::TooLarge))));
                    }
                }
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(this.slot.fail(BodyError::Client)))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(this.slot.fail(BodyError::IdleTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => self.slot.hint,
        }
    }
}

impl std::fmt::Debug for ForwardBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardBody")
            .field("ended", &self.ended)
            .finish()
    }
}
