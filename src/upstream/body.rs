//! The request body as it travels upstream.
//!
//! The client's body waits in a shared [`BodySlot`] until an upstream
//! connection first asks for data. If that connection fails before asking,
//! the slot was never touched: provably no byte reached that upstream, and
//! the same body can go to another permitted upstream.
//!
//! A request with an `Idempotency-Key` whose body fits the replay limit is
//! read whole first ([`BodySlot::buffer_for_replay`], at most 64 KiB by
//! default) and each attempt sends a copy ([`ForwardBody::replay`]); that is
//! the only buffering. Everything else streams frame by frame
//! ([`ForwardBody::stream`]), with the body limit, an idle deadline between
//! frames, a minimum average rate past the first idle deadline
//! (`limits.min_request_body_rate`) and byte counting enforced while
//! reading; a body ends only where
//! the client ended it (an HTTP/2 stream reset part-way is a failure, never
//! an end: [`BodySlot::ended_cleanly`]). Either kind signals when
//! it has been sent completely; the upstream-response deadline starts then.
//!
//! What an upstream leaves unread — it answered early and closed, or the
//! connection failed — and a body no upstream asked for is read and thrown
//! away within [`Bounds`] (`limits.discard_body_bytes`,
//! `timeouts.discard_body`), so that the answer the client gets is not lost
//! to a reset (see `proxy::discard`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ring::digest;
use tokio::sync::Notify;

use super::progress::Watch;
use crate::client_limit::Counted;
use tokio::time::{Instant, Sleep};

/// Why the body stopped streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit")]
    TooLarge,
    #[error("client sent no body data within the idle deadline")]
    IdleTimeout,
    #[error("client sent its body slower than limits.min_request_body_rate")]
    TooSlow,
    #[error("client body stream failed")]
    Client,
    #[error("request body was already consumed by another attempt")]
    Gone,
    /// The data centre answered 2xx early, then the body stopped moving
    /// for `request_body_idle` and the client was told it failed: what is
    /// left is not delivered, so the data centre sees its request fail.
    #[error("the request was answered as failed while its body was still being forwarded")]
    Withdrawn,
    /// The body's framing broke part-way (HTTP/1.1 chunked: an invalid
    /// chunk size, chunk line or extension, or trailer section): hyper
    /// reads no further.
    #[error("the client's body framing is invalid")]
    Malformed,
}

impl BodyError {
    /// The client may still be sending when the body failed for this (too
    /// large, too slow): the rest is discarded within bounds rather than
    /// dropped, so that the refusal is not lost to a reset. A client that
    /// stalled or failed is not waited for.
    fn still_sending(self) -> bool {
        matches!(
            self,
            BodyError::TooLarge | BodyError::TooSlow | BodyError::Withdrawn
        )
    }

    /// What a failed read of the client's body means: hyper reports a
    /// framing it cannot read as invalid input or data (its chunked
    /// decoder), anything else is the client breaking off (an early end,
    /// a reset connection or stream, a TLS error: rustls's come as
    /// invalid data too, carrying a `rustls::Error`).
    fn of_client(e: &hyper::Error) -> BodyError {
        let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
        let Some(io) = io else {
            return BodyError::Client;
        };
        let tls = io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>());
        match io.kind() {
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData if !tls => {
                BodyError::Malformed
            }
            _ => BodyError::Client,
        }
    }

    fn code(self) -> u8 {
        match self {
            BodyError::TooLarge => 1,
            BodyError::IdleTimeout => 2,
            BodyError::Client => 3,
            BodyError::Gone => 4,
            BodyError::TooSlow => 5,
            BodyError::Withdrawn => 6,
            BodyError::Malformed => 7,
        }
    }

    fn from_code(code: u8) -> Option<BodyError> {
        match code {
            1 => Some(BodyError::TooLarge),
            2 => Some(BodyError::IdleTimeout),
            3 => Some(BodyError::Client),
            4 => Some(BodyError::Gone),
            5 => Some(BodyError::TooSlow),
            6 => Some(BodyError::Withdrawn),
            7 => Some(BodyError::Malformed),
            _ => None,
        }
    }
}

/// How much of a request body nobody will use is read and discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub bytes: u64,
    pub time: Duration,
}

/// What keeps a client's connection counted as busy while it lives (an
/// `Activity` guard of `server::connection`): a request body still read
/// or discarded after the request's answer went out is still that
/// request's, not a next request's head.
pub type Held = Box<dyn Send + Sync>;

/// Makes a [`Held`] for a request's connection (`proxy::Conn::hold`).
#[derive(Clone)]
pub struct Hold(pub Arc<dyn Fn() -> Held + Send + Sync>);

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Reads `body` to its end and drops the data, for at most `bounds`;
/// `held` is kept until then.
pub async fn discard(mut body: Incoming, bounds: Bounds, held: Option<Held>) {
    let _held = held;
    let mut left = bounds.bytes;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n > left {
                tracing::debug!("unused request body is over limits.discard_body_bytes");
                return;
            }
            left -= n;
        }
    };
    if tokio::time::timeout(bounds.time, read_all).await.is_err() {
        tracing::debug!("unused request body still arriving after timeouts.discard_body");
    }
}

fn digest_bytes(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What is left of the client's body: chunks already read, then the stream.
struct Source {
    prefix: VecDeque<Bytes>,
    /// The last chunk of an HTTP/2 body of declared length, held until
    /// its `END_STREAM` (see [`ForwardBody`]'s `poll_frame`).
    last: Option<Bytes>,
    rest: Incoming,
    /// SHA-256 of everything read from the client so far, when wanted.
    digest: Option<Box<digest::Context>>,
}

impl Source {
    /// Discards what is left of the client's body in a task of its own,
    /// which keeps `held` until it is done.
    fn abandon(self, bounds: Bounds, held: Option<Held>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(discard(self.rest, bounds, held)));
        }
    }

    /// Every chunk read from the client passes here exactly once.
    fn hash(&mut self, data: &[u8]) {
        if let Some(d) = &mut self.digest {
            d.update(data);
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("prefix", &self.prefix.len())
            .field("hashing", &self.digest.is_some())
            .finish()
    }
}

/// Whether the client's body is still being read, and what is held
/// meanwhile ([`BodySlot::hold_while_reading`]).
#[derive(Default)]
struct Reading {
    done: bool,
    held: Option<Held>,
    /// The request's count against its client
    /// (`limits.max_requests_per_client`), given back when the body is
    /// done and its answer has been taken from the data centre's
    /// connection ([`BodySlot::count_until_done`]); not handed to a
    /// discarding.
    counted: Option<Counted>,
    /// The answer still holds the data centre's connection: the count
    /// waits for [`BodySlot::answer_taken`].
    answer_pending: bool,
    /// Counts the bytes read after the answer began, when the body is done
    /// ([`BodySlot::bytes_counting_rest`]): those counted already.
    rest: Option<(prometheus::IntCounter, u64)>,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("done", &self.done)
            .field("held", &self.held.is_some())
            .field("counted", &self.counted.is_some())
            .field("answer_pending", &self.answer_pending)
            .field("rest", &self.rest.as_ref().map(|(_, n)| n))
            .finish()
    }
}

/// The client's body, shared between delivery attempts.
#[derive(Debug)]
pub struct BodySlot {
    /// Boxed, so that a body holding it ([`ForwardBody`]) is small: the
    /// request carrying that body is moved whole through each level of
    /// the forwarding and hyper's client (issue 23).
    source: Mutex<Option<Box<Source>>>,
    taken: AtomicBool,
    hint: SizeHint,
    limit: u64,
    idle: Duration,
    /// Bytes per second the body must average once `idle` has passed
    /// since `started` (0: none).
    min_rate: u64,
    started: Instant,
    /// How much of a body left unsent is read and discarded.
    discard: Bounds,
    bytes: AtomicU64,
    failure: AtomicU8,
    /// The body's SHA-256 once the client's body has been read to its end.
    sha256: Mutex<Option<[u8; 32]>>,
    /// Woken when the body ends, fails or is abandoned.
    ended: Notify,
    /// An upstream left the rest of the body unread (it is discarded): it
    /// will not be read to its end.
    abandoned: AtomicBool,
    reading: Mutex<Reading>,
    /// `reading.done`, read without the lock (set under it).
    read: AtomicBool,
    /// Makes the guard that keeps the client's connection busy while the
    /// body is read or discarded after the answer.
    hold: Option<Hold>,
    /// The body arrives on an HTTP/2 stream (see [`BodySlot::ended_cleanly`]).
    h2: bool,
}

impl BodySlot {
    /// `limit`: the body-size limit; `idle`: the longest gap between
    /// frames; `min_rate`: the bytes per second it must average once `idle`
    /// has passed (0: none); `discard`: how much of a body left unsent is
    /// read and thrown away; `hash`: compute the body's SHA-256 while it
    /// streams; `h2`: the request came over HTTP/2; `hold`: see
    /// [`BodySlot::hold_while_reading`]; `started`: when the request's
    /// handling began, which `min_rate` averages from (the caller's clock
    /// read, not one more).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        body: Incoming,
        limit: u64,
        idle: Duration,
        min_rate: u64,
        discard: Bounds,
        hash: bool,
        h2: bool,
        hold: Option<Hold>,
        started: Instant,
    ) -> Arc<BodySlot> {
        Arc::new(BodySlot {
            hint: body.size_hint(),
            source: Mutex::new(Some(Box::new(Source {
                prefix: VecDeque::new(),
                last: None,
                rest: body,
                digest: hash.then(|| Box::new(digest::Context::new(&digest::SHA256))),
            }))),
            taken: AtomicBool::new(false),
            limit,
            idle,
            min_rate,
            started,
            discard,
            bytes: AtomicU64::new(0),
            failure: AtomicU8::new(0),
            sha256: Mutex::new(None),
            ended: Notify::new(),
            abandoned: AtomicBool::new(false),
            reading: Mutex::new(Reading::default()),
            read: AtomicBool::new(false),
            hold,
            h2,
        })
    }

    /// Whether a body whose stream just ended really came to its end.
    /// hyper ends an HTTP/2 body at a `RST_STREAM(NO_ERROR)` as at
    /// `END_STREAM` (RFC 9113 §8.1 lets a *server* stop a request body that
    /// way after a complete response); from a client it means the upload
    /// stopped part-way, and passing it on as complete would store a
    /// truncated upload. h2's `is_end_stream` is true only once
    /// `END_STREAM` was received. (An HTTP/1.1 body that stops short of its
    /// length or last chunk is an error in hyper already.)
    fn ended_cleanly(&self, rest: &Incoming) -> bool {
        !self.h2 || rest.is_end_stream()
    }

    /// The SHA-256 of the whole body, once it has been read completely
    /// (hashing must have been asked for).
    pub fn sha256(&self) -> Option<[u8; 32]> {
        let done = self.sha256.lock().ok().and_then(|d| *d);
        // A body known to be empty may never be polled at all.
        done.or_else(|| {
            (self.hint.exact() == Some(0) && self.bytes() == 0 && self.failure().is_none())
                .then(|| digest_bytes(digest::digest(&digest::SHA256, b"")))
        })
    }

    /// The request was answered as failed while its body was still being
    /// forwarded (a 2xx that came early, whose body then stopped): the
    /// forwarding fails at its next step, so the data centre's request is
    /// cut off mid-body rather than completed behind the client's back.
    pub fn withdraw(&self) {
        self.fail(BodyError::Withdrawn);
    }

    /// Waits for the body to be read to its end (an upstream may answer
    /// before it has consumed the whole body) and returns its SHA-256;
    /// `None` if it failed, was abandoned, or made no progress for `idle`
    /// (the body's own deadlines bound the rest).
    pub async fn wait_sha256(&self, idle: Duration) -> Option<[u8; 32]> {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            // A failure first: a body that failed has no digest to name.
            if self.failure().is_some() || self.abandoned.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(d) = self.sha256() {
                return Some(d);
            }
            let before = self.bytes();
            if tokio::time::timeout(idle, ended).await.is_err() && self.bytes() == before {
                return self.sha256();
            }
        }
    }

    /// Takes a guard from the slot's [`Hold`] until the client's body has
    /// been read to its end (or given up, its rest discarded), if it has
    /// not been yet: an upstream that answered early may still be reading
    /// it, and the client's connection must not take those bytes for a next
    /// request's head, nor close as idle. (A body abandoned before this is
    /// called takes its own guard into the discarding: [`Self::abandon`].)
    ///
    /// `counted`, the request's count against its client, is kept while
    /// the data centre's connection is the request's: until the body is
    /// done and, if `answer_pending`, its answer has been taken from the
    /// connection ([`Self::answer_taken`], told by the answer's
    /// `pool::Body`). One count, wherever the request is held last.
    pub fn count_until_done(&self, counted: Option<Counted>, answer_pending: bool) {
        let Ok(mut reading) = self.reading.lock() else {
            return;
        };
        if !reading.done {
            if let Some(hold) = &self.hold {
                if reading.held.is_none() {
                    reading.held = Some((hold.0)());
                }
            }
        }
        if !reading.done || answer_pending {
            reading.counted = counted;
            reading.answer_pending = answer_pending;
        }
    }

    /// The request is answered: an empty body no attempt took (hyper's
    /// client never asks for a body of length 0) is complete now, as when
    /// the slot is dropped, so that it holds nothing (the client
    /// connection's guard, the count) while the answer streams. (A body
    /// with data is left for the attempt that may still ask for it: a data
    /// centre may answer before it reads.)
    pub fn finish_if_empty(&self) {
        if self.read_to_end() {
            return;
        }
        let Ok(mut slot) = self.source.lock() else {
            return;
        };
        if !slot
            .as_ref()
            .is_some_and(|s| s.prefix.is_empty() && s.rest.is_end_stream())
        {
            return;
        }
        let source = slot.take();
        drop(slot);
        if let Some(mut source) = source {
            self.complete(&mut source);
        }
    }

    /// The client's body has been read to its end, or given up.
    fn read_to_end(&self) -> bool {
        self.read.load(Ordering::Acquire)
    }

    /// The answer has been taken from the data centre's connection (or
    /// dropped): the request's count goes if the body is done too.
    pub fn answer_taken(&self) {
        let Ok(mut reading) = self.reading.lock() else {
            return;
        };
        reading.answer_pending = false;
        let counted = if reading.done {
            reading.counted.take()
        } else {
            None
        };
        drop(reading);
        drop(counted);
    }

    /// The body is read no more: what was held is given back (or handed
    /// to the task that discards the rest), and the bytes read since the
    /// answer began are counted.
    fn done_reading(&self) -> Option<Held> {
        let mut reading = self.reading.lock().ok()?;
        reading.done = true;
        self.read.store(true, Ordering::Release);
        let counted = if reading.answer_pending {
            None
        } else {
            reading.counted.take()
        };
        let held = reading.held.take();
        let rest = reading.rest.take();
        drop(reading);
        drop(counted);
        if let Some((counter, counted)) = rest {
            counter.inc_by(self.bytes().saturating_sub(counted));
        }
        held
    }

    /// The body bytes read from the client so far, to be counted now in
    /// `residency_request_body_bytes_total`; if the body is still being
    /// read (an upstream answered before its end, and reads on), what is
    /// read after is added to `counter()` when it is done. (Bytes left
    /// unread and discarded are not forwarded, and not counted.)
    pub fn bytes_counting_rest(&self, counter: impl FnOnce() -> prometheus::IntCounter) -> u64 {
        // The usual case (the body was read before the answer), unlocked.
        if self.read.load(Ordering::Acquire) {
            return self.bytes();
        }
        let Ok(mut reading) = self.reading.lock() else {
            return self.bytes();
        };
        let bytes = self.bytes();
        if !reading.done {
            reading.rest = Some((counter(), bytes));
        }
        bytes
    }

    /// The client's body was read to its end.
    fn complete(&self, source: &mut Source) {
        if let Some(d) = source.digest.take() {
            if let Ok(mut slot) = self.sha256.lock() {
                *slot = Some(digest_bytes(d.finish()));
            }
        }
        drop(self.done_reading());
        self.ended.notify_waiters();
    }

    /// An upstream left the rest of the body unread: it is discarded, the
    /// connection kept busy until that ends (with the guard taken by
    /// [`Self::hold_while_reading`], or a new one: an upstream that answers
    /// and closes may drop the body before the request's task has seen the
    /// answer).
    ///
    /// `shared`, the slot itself when an attempt's body was dropped: the
    /// rest may hold nothing but the end (see [`Self::end_or_discard`]).
    fn abandon(&self, mut source: Source, shared: Option<&Arc<BodySlot>>) {
        // Nothing left to discard. (h2's `is_end_stream` means `END_STREAM`
        // came: the end was clean, see `ended_cleanly`.)
        if source.rest.is_end_stream() {
            if source.last.is_some() {
                // Its last chunk was held for the end and never sent: not
                // complete, nothing left to discard.
                self.abandoned.store(true, Ordering::Relaxed);
                drop(self.done_reading());
                self.ended.notify_waiters();
            } else if self.failure().is_none() {
                // Read to its end already (hyper took the last frame and
                // was dropped before it asked for the end): the body is
                // complete, and a 2xx answer's receipt waits for its
                // digest. Not when its last frame failed it (too large,
                // too slow).
                self.complete(&mut source);
            } else {
                drop(self.done_reading());
            }
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        let ending = match (shared, runtime) {
            // With a length, the end came with the last byte (`complete`):
            // data is left.
            (Some(slot), Ok(runtime))
                if self.failure().is_none() && self.hint.exact().is_none() =>
            {
                Some((slot, runtime))
            }
            // Marked before the reading ends: whoever sees it done sees
            // it given up too (`rest_over_discard`).
            _ => {
                self.abandoned.store(true, Ordering::Relaxed);
                None
            }
        };
        let held = self.done_reading();
        let held = held.or_else(|| self.hold.as_ref().map(|hold| (hold.0)()));
        match ending {
            Some((slot, runtime)) => {
                drop(runtime.spawn(slot.clone().end_or_discard(source, held)));
            }
            None => {
                source.abandon(self.discard, held);
                self.ended.notify_waiters();
            }
        }
    }

    /// The rest of a body of unknown length an attempt dropped before its
    /// end: complete if nothing but its end is left (waited for up to
    /// `request_body_idle`), else discarded within bounds (`held` kept
    /// until then). The end of an HTTP/1 chunked body
    /// shows only in a read (hyper's `Incoming::is_end_stream` is never
    /// true for it), so a body whose data an upstream connection took all
    /// of, and dropped before it read the end (the data centre answered
    /// early and closed), cannot tell it is complete until then; a 2xx
    /// answered early waits for its digest meanwhile (`wait_sha256`).
    /// Empty frames, and trailers (which are not forwarded), are not data.
    async fn end_or_discard(self: Arc<Self>, mut source: Source, held: Option<Held>) {
        // Waited for as when forwarded: the client may pause before its
        // last chunk for up to `request_body_idle` (a 2xx answered early
        // waits as long).
        let data = loop {
            match tokio::time::timeout(self.idle, source.rest.frame()).await {
                Ok(None) if self.ended_cleanly(&source.rest) && self.failure().is_none() => {
                    self.complete(&mut source);
                    return;
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => break Some(data.len() as u64),
                    _ => continue,
                },
                _ => break None,
            }
        };
        self.abandoned.store(true, Ordering::Relaxed);
        self.ended.notify_waiters();
        // More data came: the rest is read and thrown away, within the
        // bounds (that first data counted).
        if let Some(bytes) = data.and_then(|n| self.discard.bytes.checked_sub(n)) {
            let time = self.discard.time;
            discard(source.rest, Bounds { bytes, time }, held).await;
        }
    }

    /// The client's body as it came, when nothing of it has been read (no
    /// attempt reached an upstream): for a refusal to discard once its
    /// head is out, so that hyper sends no `100 Continue` for it first.
    pub fn take_untouched(&self) -> Option<Incoming> {
        let mut slot = self.source.lock().ok()?;
        if !slot.as_ref().is_some_and(|s| s.prefix.is_empty()) || self.bytes() > 0 {
            return None;
        }
        let source = slot.take()?;
        drop(slot);
        drop(self.done_reading());
        Some(source.rest)
    }

    /// Whether the body is still arriving with more of it declared
    /// (`Content-Length`) than the proxy discards once nobody reads it: an
    /// HTTP/1.1 connection answered now may not stay open (RFC 9112 §9.6:
    /// the answer then says `close`).
    pub fn rest_over_discard(&self) -> bool {
        // Still read, or left unread (and being discarded) by an upstream.
        let unfinished =
            !self.read.load(Ordering::Acquire) || self.abandoned.load(Ordering::Relaxed);
        unfinished && self.hint.lower().saturating_sub(self.bytes()) > self.discard.bytes
    }

    /// True while no upstream connection has asked for the body.
    pub fn untouched(&self) -> bool {
        !self.taken.load(Ordering::Acquire)
    }

    /// Body bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The reason the body stopped early, if it did.
    pub fn failure(&self) -> Option<BodyError> {
        BodyError::from_code(self.failure.load(Ordering::Relaxed))
    }

    fn fail(&self, e: BodyError) -> BodyError {
        let _ = self
            .failure
            .compare_exchange(0, e.code(), Ordering::Relaxed, Ordering::Relaxed);
        self.ended.notify_waiters();
        e
    }

    /// Counts `len` bytes read from the client against the limit; returns
    /// the total so far.
    fn count(&self, len: usize) -> Result<u64, BodyError> {
        let len = len as u64;
        let total = self.bytes.fetch_add(len, Ordering::Relaxed) + len;
        if total > self.limit {
            return Err(self.fail(BodyError::TooLarge));
        }
        // A body whose last byte is here holds nothing any more: it is not
        // refused for its rate (nor is the clock read for it, issue 23).
        if self.min_rate > 0 && self.hint.exact() != Some(total) {
            // Past the grace of one idle deadline, the average since the
            // start: a client trickling a byte per gap would otherwise hold
            // its data centre's connection for as long as it liked.
            let elapsed = self.started.elapsed();
            if elapsed > self.idle && (total as f64) < self.min_rate as f64 * elapsed.as_secs_f64()
            {
                return Err(self.fail(BodyError::TooSlow));
            }
        }
        Ok(total)
    }

    /// Reads the body while it fits in `replay_limit` bytes. Returns the
    /// whole body when it does (every attempt can then send a copy); `None`
    /// when it is larger, in which case what was read stays in front of the
    /// rest and the body streams as usual.
    pub async fn buffer_for_replay(&self, replay_limit: usize) -> Result<Option<Bytes>, BodyError> {
        let Some(mut source) = self.source.lock().ok().and_then(|mut s| s.take()) else {
            return Err(BodyError::Gone);
        };
        let mut read = 0usize;
        // Copied into one buffer as it comes: kept frame by frame, a body
        // of one-byte HTTP/2 DATA frames held a `Bytes` (and its share of a
        // read buffer) per byte, many times what the budget charges.
        let mut gathered = BytesMut::new();
        let result = loop {
            let frame = match tokio::time::timeout(self.idle, source.rest.frame()).await {
                Err(_) => break Err(self.fail(BodyError::IdleTimeout)),
                Ok(None) if !self.ended_cleanly(&source.rest) => {
                    break Err(self.fail(BodyError::Client))
                }
                Ok(None) => break Ok(true),
                Ok(Some(Err(e))) => break Err(self.fail(BodyError::of_client(&e))),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            }; // trailers are not forwarded (README), here as when streaming
            if let Err(e) = self.count(data.len()) {
                break Err(e);
            }
            source.hash(&data);
            read += data.len();
            gathered.extend_from_slice(&data);
            if read > replay_limit {
                break Ok(false);
            }
        };
        match result {
            Ok(true) => {
                self.complete(&mut source);
                if source.prefix.is_empty() {
                    return Ok(Some(gathered.freeze()));
                }
                let mut all = BytesMut::with_capacity(read);
                for chunk in &source.prefix {
                    all.extend_from_slice(chunk);
                }
                all.extend_from_slice(&gathered);
                Ok(Some(all.freeze()))
            }
            Ok(false) => {
                // At most `replay_limit` and one frame, in front of the
                // rest, as one chunk.
                source.prefix.push_back(gathered.freeze());
                if let Ok(mut slot) = self.source.lock() {
                    *slot = Some(source);
                }
                Ok(None)
            }
            Err(e) if e.still_sending() => {
                self.abandon(*source, None);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn take(&self) -> Option<Box<Source>> {
        self.taken.store(true, Ordering::Release);
        self.source.lock().ok().and_then(|mut s| s.take())
    }
}

impl Drop for BodySlot {
    /// A body no upstream took is discarded, not reset.
    fn drop(&mut self) {
        if let Some(source) = self.source.get_mut().ok().and_then(Option::take) {
            self.abandon(*source, None);
        }
    }
}

enum Kind {
    Stream {
        slot: Arc<BodySlot>,
        source: Option<Box<Source>>,
        timer: Option<Pin<Box<Sleep>>>,
    },
    /// The copy left to send (empty once sent). Boxed, as the source is.
    Replay(Box<Bytes>),
}

/// One delivery attempt's body. Kept to 32 bytes, which keeps the request
/// carrying it within 256: glibc's `memcpy` copies up to 256 bytes without
/// a loop, about a third of the instructions of a copy of the 360 bytes
/// it had, and the request is moved a dozen times on its way to the data
/// centre's connection (issue 23).
pub struct ForwardBody {
    kind: Kind,
    /// Told when the body has been sent completely, or is dropped; `None`
    /// once it has ended.
    done: Option<Arc<Watch>>,
}

impl ForwardBody {
    /// Streams the client's body from `slot`. The watch is told when the
    /// body has been sent completely (or the body is dropped).
    pub fn stream(slot: Arc<BodySlot>) -> (ForwardBody, Arc<Watch>) {
        Self::new(Kind::Stream {
            slot,
            source: None,
            timer: None,
        })
    }

    /// No body at all (health probes).
    pub fn empty() -> ForwardBody {
        ForwardBody {
            kind: Kind::Replay(Box::default()),
            done: None,
        }
    }

    /// Sends a copy of a body read whole for replay.
    pub fn replay(body: Bytes) -> (ForwardBody, Arc<Watch>) {
        Self::new(Kind::Replay(Box::new(body)))
    }

    fn new(kind: Kind) -> (ForwardBody, Arc<Watch>) {
        let watch = Arc::new(Watch::default());
        let body = ForwardBody {
            kind,
            done: Some(watch.clone()),
        };
        (body, watch)
    }

    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(done) = self.done.take() {
            done.body_complete();
            done.body_sent();
        }
        Poll::Ready(None)
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
        if this.done.is_none() {
            return Poll::Ready(None);
        }
        let (slot, source, timer) = match &mut this.kind {
            Kind::Replay(body) => {
                return match std::mem::take(&mut **body) {
                    b if b.is_empty() => this.finish(),
                    b => {
                        handed_all(&this.done);
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                };
            }
            Kind::Stream {
                slot,
                source,
                timer,
            } => (slot, source, timer),
        };
        if source.is_none() {
            *source = slot.take();
        }
        let Some(src) = source.as_mut() else {
            return Poll::Ready(Some(Err(BodyError::Gone)));
        };
        // A body failed elsewhere (withdrawn after its answer) is not
        // forwarded further.
        if let Some(e) = slot.failure() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(chunk) = src.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if src.last.is_some() {
            return held_end(slot, src, timer, cx, &this.done);
        }
        let mut polled = Pin::new(&mut src.rest).poll_frame(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_trailers()) {
            // Trailer fields are not forwarded (README): the body goes on
            // to its end without them. Passed on, they ended hyper's
            // request without its asking for the end, so the body was
            // never complete: a 2xx got no digest and became a 502.
            polled = Pin::new(&mut src.rest).poll_frame(cx);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = match slot.count(data.len()) {
                        Ok(total) => total,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    src.hash(data);
                    // With a known length, hyper stops polling once it has
                    // sent that much: the end is now, not at `None`. Over
                    // HTTP/2 the end is `END_STREAM`, and more DATA may
                    // still come before it, which makes the request
                    // malformed (RFC 9113 §8.1.1: not to be forwarded):
                    // the last chunk waits for it.
                    if slot.hint.exact() == Some(total) {
                        if slot.h2 && !src.rest.is_end_stream() {
                            src.last = frame.into_data().ok();
                            if let Some(timer) = timer.as_mut() {
                                timer.as_mut().reset(Instant::now() + slot.idle);
                            }
                            return held_end(slot, src, timer, cx, &this.done);
                        }
                        slot.complete(src);
                        handed_all(&this.done);
                    }
                }
                if let Some(timer) = timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + slot.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(slot.fail(BodyError::of_client(&e)))))
            }
            Poll::Ready(None) if !slot.ended_cleanly(&src.rest) => {
                Poll::Ready(Some(Err(slot.fail(BodyError::Client))))
            }
            Poll::Ready(None) => {
                slot.complete(src);
                this.finish()
            }
            Poll::Pending => {
                let idle = slot.idle;
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(slot.fail(BodyError::IdleTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream { slot, .. } => slot.hint,
            Kind::Replay(body) => SizeHint::with_exact(body.len() as u64),
        }
    }
}

impl Drop for ForwardBody {
    /// Dropped before its end (the upstream answered early, or its
    /// connection failed): the rest of the client's body is discarded.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            // A body known to be empty is never asked for: hyper drops it
            // as it writes the head.
            let empty = match &self.kind {
                Kind::Stream { slot, .. } => slot.hint.exact() == Some(0),
                Kind::Replay(body) => body.is_empty(),
            };
            if empty {
                done.body_complete();
            }
            done.body_sent();
        }
        if let Kind::Stream { slot, source, .. } = &mut self.kind {
            let client_stopped = slot.failure().is_some_and(|e| !e.still_sending());
            // Without the source, this attempt never took the body: it is
            // still in the slot, for another attempt. A body read to its
            // end was done with already (`complete`).
            match source.take() {
                Some(_) if slot.read.load(Ordering::Acquire) => {}
                Some(_) if client_stopped => drop(slot.done_reading()),
                Some(source) => slot.abandon(*source, Some(slot)),
                None => {}
            }
        }
    }
}

/// The frame being returned is the body's last data: all of the body is
/// handed to the connection (hyper writes it before it can read an answer
/// to it).
fn handed_all(done: &Option<Arc<Watch>>) {
    if let Some(done) = done {
        done.body_complete();
    }
}

/// The held last chunk of an HTTP/2 body of declared length, passed on
/// once its stream ends cleanly (the body complete); anything else — more
/// DATA, a reset, an end without `END_STREAM` — fails it (nothing more of
/// it is forwarded: the upload is not passed on as complete), and silence
/// past `request_body_idle` times it out.
fn held_end(
    slot: &BodySlot,
    src: &mut Source,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
    done: &Option<Arc<Watch>>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        match Pin::new(&mut src.rest).poll_frame(cx) {
            Poll::Ready(None) if slot.ended_cleanly(&src.rest) => {
                let last = src.last.take().unwrap_or_default();
                slot.complete(src);
                handed_all(done);
                return Poll::Ready(Some(Ok(Frame::data(last))));
            }
            // Trailers, or an empty DATA frame (an `END_STREAM` sent on
            // its own): not data.
            Poll::Ready(Some(Ok(frame)))
                if frame.is_trailers() || frame.data_ref().is_some_and(Bytes::is_empty) => {}
            Poll::Ready(Some(Ok(_)) | None) => {
                return Poll::Ready(Some(Err(slot.fail(BodyError::Client))))
            }
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(slot.fail(BodyError::of_client(&e)))))
            }
            Poll::Pending => {
                let idle = slot.idle;
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                return Poll::Ready(Some(Err(slot.fail(BodyError::IdleTimeout))));
            }
        }
    }
}

impl std::fmt::Debug for ForwardBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardBody")
            .field("ended", &self.done.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{BodySlot, Bounds, ForwardBody};
    use std::time::Duration;

    /// The request carrying a `ForwardBody` is moved whole about a dozen
    /// times on its way to the data centre's connection; at 256 bytes or
    /// less glibc's `memcpy` copies it without its loop (issue 23,
    /// `benches/compare/README.md`, "A request of 256 bytes").
    #[test]
    fn a_request_carrying_a_forward_body_fits_a_short_copy() {
        assert!(std::mem::size_of::<ForwardBody>() <= 32);
        assert!(std::mem::size_of::<http::Request<ForwardBody>>() <= 256);
    }

    /// Serves `io` with hyper (HTTP/2 if `h2`), handing each request's
    /// body to the test through what it returns; the answers wait.
    fn serve<I>(io: I, h2: bool) -> tokio::sync::mpsc::UnboundedReceiver<hyper::body::Incoming>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use hyper::body::Incoming;
        let (bodies, incoming) = tokio::sync::mpsc::unbounded_channel::<Incoming>();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let bodies = bodies.clone();
                async move {
                    let _ = bodies.send(req.into_body());
                    std::future::pending::<()>().await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                }
            });
            let io = hyper_util::rt::TokioIo::new(io);
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        });
        incoming
    }

    /// A slot for `rest` under `limit`, 30 s idle, discarding up to 1 MiB
    /// for 1 s; `hash`: its SHA-256 wanted; `h2`: it came over HTTP/2.
    fn test_slot(
        rest: hyper::body::Incoming,
        limit: u64,
        hash: bool,
        h2: bool,
    ) -> std::sync::Arc<BodySlot> {
        let discard = Bounds {
            bytes: 1 << 20,
            time: Duration::from_secs(1),
        };
        let idle = Duration::from_secs(30);
        BodySlot::new(
            rest,
            limit,
            idle,
            0,
            discard,
            hash,
            h2,
            None,
            tokio::time::Instant::now(),
        )
    }

    /// An HTTP/2 body of unknown length in one frame (with `END_STREAM`),
    /// under a `limit`: its slot, and the frame `ForwardBody` made of it,
    /// taken and then dropped before the end was asked for (the upstream
    /// connection's buffer full, the data centre answering early).
    async fn one_frame_taken_then_dropped(
        data: &'static [u8],
        limit: u64,
    ) -> (
        std::sync::Arc<BodySlot>,
        Option<Result<http_body::Frame<bytes::Bytes>, super::BodyError>>,
    ) {
        use http_body::Body as _;

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut incoming = serve(server_io, true);
        let (mut send, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("https://localhost/v1/telemetry")
            .body(())
            .unwrap();
        let (_response, mut stream) = send.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(data), true)
            .unwrap();

        let rest = incoming.recv().await.unwrap();
        assert_eq!(rest.size_hint().exact(), None, "no length declared");
        let slot = test_slot(rest, limit, true, true);
        let (mut body, _watch) = ForwardBody::stream(slot.clone());
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        // Its stream ended with that frame (END_STREAM came with it); the
        // body is dropped before it is asked for more.
        drop(body);
        (slot, frame)
    }

    /// Read to its end, the body is complete: its digest is known (a 2xx
    /// answer's receipt waits for it). It used to be left unset, and the
    /// receipt waited `request_body_idle` for nothing.
    #[tokio::test]
    async fn a_body_read_to_its_end_and_dropped_before_its_end_was_asked_for_is_complete() {
        let data = b"cpu=0.93\n";
        let (slot, frame) = one_frame_taken_then_dropped(data, 1 << 20).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), &data[..]);
        let want: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .try_into()
            .unwrap();
        assert_eq!(slot.sha256(), Some(want), "the body's digest is known");
        assert_eq!(slot.wait_sha256(Duration::from_secs(1)).await, Some(want));
        assert_eq!(slot.bytes(), data.len() as u64);
    }

    /// The slot of an HTTP/1.1 chunked body; `raw` is the whole body as the
    /// client sends it, chunk framing and all. (The client's connection
    /// stays open for 5 s while the test looks.)
    async fn chunked_slot(raw: &'static [u8]) -> std::sync::Arc<BodySlot> {
        use tokio::io::AsyncWriteExt as _;

        let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut incoming = serve(server_io, false);
        let head =
            b"POST /v1/telemetry HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n";
        client_io.write_all(head).await.unwrap();
        client_io.write_all(raw).await.unwrap();
        let rest = incoming.recv().await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(client_io);
        });
        test_slot(rest, 1 << 20, true, false)
    }

    /// A chunked body whose first chunk `ForwardBody` passed on before it
    /// was dropped (the upstream connection took it, the data centre
    /// answered early and closed).
    async fn first_chunk_taken_then_dropped(
        raw: &'static [u8],
    ) -> (
        std::sync::Arc<BodySlot>,
        Option<Result<http_body::Frame<bytes::Bytes>, super::BodyError>>,
    ) {
        use http_body::Body as _;
        let slot = chunked_slot(raw).await;
        let (mut body, _watch) = ForwardBody::stream(slot.clone());
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        drop(body);
        (slot, frame)
    }

    /// A connection that reads `script`, in order, then nothing more.
    struct Scripted(std::collections::VecDeque<std::io::Result<Vec<u8>>>);

    impl tokio::io::AsyncRead for Scripted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            match self.0.pop_front() {
                Some(Ok(bytes)) => {
                    buf.put_slice(&bytes);
                    std::task::Poll::Ready(Ok(()))
                }
                Some(Err(e)) => std::task::Poll::Ready(Err(e)),
                None => std::task::Poll::Pending,
            }
        }
    }

    impl tokio::io::AsyncWrite for Scripted {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A chunked upload whose connection reads `then` after its first
    /// chunk: how its body failed.
    async fn chunked_body_failing_with(then: std::io::Result<Vec<u8>>) -> Option<super::BodyError> {
        use http_body_util::BodyExt as _;

        let head = b"POST /v1/telemetry HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n";
        let io = Scripted([Ok(head.to_vec()), then].into_iter().collect());
        let mut incoming = serve(io, false);
        let rest = incoming.recv().await.unwrap();
        let slot = test_slot(rest, 1 << 20, false, false);
        let (mut body, _watch) = ForwardBody::stream(slot.clone());
        while let Some(Ok(_)) = body.frame().await {}
        slot.failure()
    }

    /// A chunk line hyper cannot read is the client's malformed request
    /// (400 `bad_request`); the connection failing under it — an early end,
    /// a reset, a TLS record rustls refuses (an error of kind invalid data
    /// too) — is the client breaking off (`client_aborted`).
    #[tokio::test]
    async fn a_broken_chunk_is_malformed_and_a_failed_connection_is_the_client_leaving() {
        use super::BodyError;
        use std::io::{Error, ErrorKind};
        let malformed = chunked_body_failing_with(Ok(b"zz\r\nllo\r\n".to_vec())).await;
        assert_eq!(malformed, Some(BodyError::Malformed));
        let ended = chunked_body_failing_with(Ok(Vec::new())).await;
        assert_eq!(ended, Some(BodyError::Client));
        let reset = chunked_body_failing_with(Err(ErrorKind::ConnectionReset.into())).await;
        assert_eq!(reset, Some(BodyError::Client));
        let tls = Error::new(ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(
            chunked_body_failing_with(Err(tls)).await,
            Some(BodyError::Client)
        );
    }

    /// Trailer fields are not forwarded: the body ends after its data,
    /// complete, as if it had none. (Passed on, they ended hyper's request
    /// without its asking for the end.)
    #[tokio::test]
    async fn a_chunked_body_s_trailers_are_not_passed_on_and_it_ends_complete() {
        use http_body_util::BodyExt as _;
        let slot = chunked_slot(b"5\r\nhello\r\n0\r\nx-checksum: 5d41\r\n\r\n").await;
        let (mut body, _watch) = ForwardBody::stream(slot.clone());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), &b"hello"[..]);
        assert!(body.frame().await.is_none(), "the body ends: no trailers");
        let want: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, b"hello")
            .as_ref()
            .try_into()
            .unwrap();
        assert_eq!(
            slot.sha256(),
            Some(want),
            "complete, with its body still held"
        );
    }

    /// Its data all taken, a chunked body is complete once its last chunk
    /// is read: that shows only in a read of the body, which the
    /// discarding makes. Its digest used to be left unset and the body
    /// counted as abandoned, so a 2xx answered early was withdrawn.
    #[tokio::test]
    async fn a_chunked_body_whose_data_was_all_taken_is_complete_at_its_last_chunk() {
        let data = b"cpu=0.93\n";
        let (slot, frame) = first_chunk_taken_then_dropped(b"9\r\ncpu=0.93\n\r\n0\r\n\r\n").await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), &data[..]);
        let want: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .try_into()
            .unwrap();
        assert_eq!(slot.wait_sha256(Duration::from_secs(1)).await, Some(want));
        assert_eq!(slot.sha256(), Some(want));
        assert_eq!(slot.bytes(), data.len() as u64);
    }

    /// More data after what was taken: the body was not sent whole, so it
    /// has no digest, and the rest is discarded.
    #[tokio::test]
    async fn a_chunked_body_with_data_left_after_the_drop_has_no_digest() {
        let (slot, frame) =
            first_chunk_taken_then_dropped(b"9\r\ncpu=0.93\n\r\n9\r\ncpu=0.94\n\r\n0\r\n\r\n")
                .await;
        assert!(frame.unwrap().is_ok());
        assert_eq!(slot.wait_sha256(Duration::from_secs(1)).await, None);
        assert_eq!(slot.sha256(), None);
        assert_eq!(slot.bytes(), 9, "what was discarded is not counted");
    }

    /// Its last frame over the limit, the body failed: no digest, though
    /// its stream ended (a review caught the first version naming the body
    /// without that frame).
    #[tokio::test]
    async fn a_body_whose_last_frame_failed_it_has_no_digest() {
        let (slot, frame) = one_frame_taken_then_dropped(b"cpu=0.93\n", 4).await;
        assert!(
            matches!(frame, Some(Err(super::BodyError::TooLarge))),
            "{frame:?}"
        );
        assert_eq!(slot.failure(), Some(super::BodyError::TooLarge));
        assert_eq!(slot.sha256(), None);
        assert_eq!(slot.wait_sha256(Duration::from_secs(1)).await, None);
    }
}
