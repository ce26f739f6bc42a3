//! Whether an upstream connection is still taking the bytes written to it.
//!
//! A data centre that reads a request's head and then stops reading (its
//! TCP window shut) stalls the upload silently: hyper stops polling the body
//! while its write buffer is full, so no body deadline runs, and the
//! response deadline starts only once the body is sent. [`Tracked`] wraps a
//! connection's stream and notes in its [`WriteProgress`] when a write first
//! found the socket full, clearing it when bytes move again; the delivery
//! attempt then gives up after `timeouts.upstream_send_idle` of no progress.
//! The admin and log listeners watch their clients' connections the same
//! way ([`WriteProgress::passing_errors`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When the connection's writes last started to block, if they are blocked.
#[derive(Debug)]
pub struct WriteProgress {
    epoch: Instant,
    /// Milliseconds since `epoch`, plus one; 0: not blocked.
    blocked_at: AtomicU64,
    /// Woken when writes start to block (so the request sending on the
    /// connection needs no timer until then: [`Self::poll_blocked`]).
    blocking: AtomicWaker,
    /// A write failed: the connection must not carry another request.
    failed: AtomicBool,
    /// No one waits for the connection's answer any more: its response
    /// was dropped before its end, or its request gave up on it. A failed
    /// write then has no answer to be held for.
    unwanted: AtomicBool,
    /// A failed write is returned as it is, not held pending.
    pass_errors: bool,
    /// When ([`order`]) bytes were last read from the connection: its
    /// answer's head came in that read or before.
    last_read: AtomicU64,
    /// The response deadline of the request waiting on the connection.
    due: Due,
}

/// A request's response deadline, timed by its upstream connection's task
/// ([`WriteProgress::watch_due`]) instead of by a timer of the request's
/// own: one timer per connection, re-armed only when a deadline falls
/// before it (a Tokio timer per request, created and removed, cost about
/// 1,000 instructions, issue 23). The connection carries one request at a
/// time (HTTP/1).
#[derive(Debug)]
struct Due {
    /// For [`WriteProgress::due_in`]'s deadlines (Tokio's clock: paused in
    /// tests, as the timers that fire them).
    epoch: tokio::time::Instant,
    /// The waiting request's deadline: a sequence number (its top 24 bits)
    /// and milliseconds since `epoch`; [`NO_DUE`] when none waits.
    at: AtomicU64,
    /// The last `at` that passed: the request whose deadline it is takes it.
    passed: AtomicU64,
    seq: AtomicU64,
    /// Woken when a deadline passes.
    waiting: AtomicWaker,
    /// The connection task's timer (ms since `epoch`).
    alarm: crate::lazy::Alarm,
}

const NO_DUE: u64 = u64::MAX;
const DUE_MS_BITS: u32 = 40;
const DUE_MS_MASK: u64 = (1 << DUE_MS_BITS) - 1;

/// A deadline set by [`WriteProgress::due_in`]: waits for it to pass, and
/// withdraws it when dropped first.
pub struct DueIn<'a> {
    progress: &'a WriteProgress,
    at: u64,
}

impl std::future::Future for DueIn<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let due = &self.progress.due;
        if due.passed.load(Ordering::Acquire) == self.at {
            return Poll::Ready(());
        }
        due.waiting.register(cx.waker());
        if due.passed.load(Ordering::Acquire) == self.at {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for DueIn<'_> {
    fn drop(&mut self) {
        // Withdrawn unless a later deadline replaced it already.
        let _ = self.progress.due.at.compare_exchange(
            self.at,
            NO_DUE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// A process-wide order of the events [`Watch::came_before_its_body`]
/// compares (a body handed whole, bytes read from its connection): 1, 2, …
fn order() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl WriteProgress {
    /// For an upstream connection: a failed write is held pending, see
    /// [`WriteProgress::note`].
    pub fn new() -> Arc<WriteProgress> {
        Self::with(false)
    }

    /// For a client's connection, whose failed writes end it at once.
    pub fn passing_errors() -> Arc<WriteProgress> {
        Self::with(true)
    }

    fn with(pass_errors: bool) -> Arc<WriteProgress> {
        Arc::new(WriteProgress {
            epoch: Instant::now(),
            blocked_at: AtomicU64::new(0),
            blocking: AtomicWaker::new(),
            failed: AtomicBool::new(false),
            unwanted: AtomicBool::new(false),
            pass_errors,
            last_read: AtomicU64::new(0),
            due: Due {
                epoch: tokio::time::Instant::now(),
                at: AtomicU64::new(NO_DUE),
                passed: AtomicU64::new(NO_DUE),
                seq: AtomicU64::new(0),
                waiting: AtomicWaker::new(),
                alarm: crate::lazy::Alarm::default(),
            },
        })
    }

    /// Sets the deadline of the request waiting on this connection to
    /// `after` from now; the returned future resolves once it passes (the
    /// connection's task, [`Self::watch_due`], wakes it), and withdraws it
    /// when dropped before. One request at a time: a later call replaces
    /// the deadline.
    pub fn due_in(&self, after: Duration) -> DueIn<'_> {
        let due = &self.due;
        // Rounded up: it passes once the clock's whole milliseconds reach
        // it, never before `after`.
        let at = due.epoch.elapsed() + after;
        let ms = at.as_millis() + u128::from(!at.subsec_nanos().is_multiple_of(1_000_000));
        let ms = u64::try_from(ms)
            .unwrap_or(DUE_MS_MASK)
            .min(DUE_MS_MASK - 1);
        let seq = due.seq.fetch_add(1, Ordering::Relaxed) & ((1 << (64 - DUE_MS_BITS)) - 1);
        let at = (seq << DUE_MS_BITS) | ms;
        // (Never NO_DUE: the milliseconds are below the mask.)
        due.at.store(at, Ordering::SeqCst);
        due.alarm.due(ms);
        DueIn { progress: self, at }
    }

    /// The connection's side of [`Self::due_in`]: one timer, set for the
    /// waiting request's deadline when that is earlier than the timer, and
    /// looked at again when it fires (then set for the deadline waiting
    /// now, if any). Never resolves; polled by the connection's task.
    pub async fn watch_due(&self) {
        let due = &self.due;
        let never = due
            .alarm
            .wait(|| -> Result<std::convert::Infallible, (u64, u64)> {
                let now = u64::try_from(due.epoch.elapsed().as_millis()).unwrap_or(DUE_MS_MASK);
                let at = due.at.load(Ordering::SeqCst);
                if at == NO_DUE {
                    return Err((now, u64::MAX));
                }
                let ms = at & DUE_MS_MASK;
                if now < ms {
                    return Err((now, ms));
                }
                // Passed. (A deadline set meanwhile fails the exchange and,
                // set while this looks, wakes it again.)
                if due
                    .at
                    .compare_exchange(at, NO_DUE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    due.passed.store(at, Ordering::Release);
                    due.waiting.wake();
                }
                Err((now, u64::MAX))
            })
            .await;
        match never {}
    }

    /// Resolves once writes have stayed blocked for `limit`: the watch of
    /// the task that does the writing. It registers no waker for the
    /// writes to block (that slot is the request's, [`Self::poll_blocked`]),
    /// so it must be polled after the I/O, in the same task (the
    /// connection's task polls it right after the connection), where it
    /// sees them block in the same pass; then its timer wakes it.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let blocked = std::future::poll_fn(|_| match self.blocked_for() {
                Some(b) => Poll::Ready(b),
                None => Poll::Pending,
            })
            .await;
            if blocked >= limit {
                return;
            }
            tokio::time::sleep(limit - blocked).await;
        }
    }

    /// Ready with how long writes have been blocked, once they are (the
    /// watch of the request sending on the connection).
    pub fn poll_blocked(&self, cx: &mut Context<'_>) -> Poll<Duration> {
        if let Some(b) = self.blocked_for() {
            return Poll::Ready(b);
        }
        self.blocking.register(cx.waker());
        match self.blocked_for() {
            Some(b) => Poll::Ready(b),
            None => Poll::Pending,
        }
    }

    /// How long writes have been blocked; `None` while they are not.
    pub fn blocked_for(&self) -> Option<Duration> {
        let at = self.blocked_at.load(Ordering::Relaxed);
        (at != 0).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(at - 1))
        })
    }

    /// A write to the connection failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// No one waits for the connection's answer any more (see
    /// [`Self::note`]); it is not reused after this.
    pub fn unwanted(&self) {
        self.unwanted.store(true, Ordering::Relaxed);
    }

    fn blocked(&self) {
        if self.blocked_at.load(Ordering::Relaxed) == 0 {
            let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.blocked_at.store(ms + 1, Ordering::Relaxed);
            self.blocking.wake();
        }
    }

    fn moved(&self) {
        self.blocked_at.store(0, Ordering::Relaxed);
    }

    /// `read_ended`: the connection's reads met their end (EOF or an
    /// error), so no answer can come any more.
    fn note<T>(
        &self,
        polled: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
        read_ended: bool,
    ) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => self.blocked(),
            Poll::Ready(Ok(v)) if moved(v) => self.moved(),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(_))
                if self.pass_errors || read_ended || self.unwanted.load(Ordering::Relaxed) =>
            {
                self.failed.store(true, Ordering::Relaxed)
            }
            Poll::Ready(Err(e)) => {
                // Kept pending: the reads (polled by the same connection
                // task) still deliver an answer already sent. Only until
                // they end, or no one wants the answer: hyper then flushes
                // what it still holds before it shuts the connection, and
                // an error held pending there (it registers no waker) kept
                // the connection, its permit and the client's body until
                // the stall watch closed it.
                tracing::debug!(error = %e, "upstream write failed; reading on");
                self.failed.store(true, Ordering::Relaxed);
                self.blocked();
                return Poll::Pending;
            }
        }
        polled
    }
}

/// An attempt waiting for its answer. Dropped before [`Wanted::answered`]
/// (its deadline fired, or its future was dropped), it tells the
/// connection no one wants the answer ([`WriteProgress::unwanted`]), so
/// that failed writes are not held pending for it. It must be dropped
/// before the attempt's exchange: hyper's last flush follows from that.
pub struct Wanted<'a>(Option<&'a Watch>);

impl<'a> Wanted<'a> {
    pub fn new(watch: &'a Watch) -> Wanted<'a> {
        Wanted(Some(watch))
    }

    /// The answer came (or the exchange failed by itself): the response's
    /// body tells the connection when it is dropped before its end.
    pub fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Wanted<'_> {
    fn drop(&mut self) {
        if let Some(progress) = self.0.and_then(Watch::progress) {
            progress.unwanted();
        }
    }
}

/// Where [`Pool::send_or_return`](super::pool::Pool::send_or_return) tells
/// which connection's write progress its request depends on (set again if
/// the request moves to another one), and where the request's body
/// ([`ForwardBody`](super::body::ForwardBody)) tells that it has been sent
/// completely (or was dropped): the response deadline starts then.
#[derive(Default)]
pub struct Watch {
    /// A plain lock: it is set once or twice per request and read by the
    /// same task (an `ArcSwapOption` cost ~800 instructions per request).
    progress: std::sync::Mutex<Option<Arc<WriteProgress>>>,
    /// The body has been sent (a flag here instead of a oneshot channel:
    /// ~250 instructions fewer per request, issue 23).
    sent: AtomicBool,
    /// When ([`order`]) all of the body was handed to the connection (not
    /// merely dropped); 0: not yet. A 2xx read before this was given for
    /// an upload the data centre did not have.
    complete: AtomicU64,
    /// Woken when `progress` is set and when the body has been sent.
    woken: AtomicWaker,
}

impl Watch {
    /// The connection's progress, if the pool has chosen one.
    pub fn progress(&self) -> Option<Arc<WriteProgress>> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connection's progress, once the pool has chosen one; until then
    /// `cx` is woken when it does.
    pub fn poll_progress(&self, cx: &mut Context<'_>) -> Poll<Arc<WriteProgress>> {
        self.woken.register(cx.waker());
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match &*progress {
            Some(p) => Poll::Ready(p.clone()),
            None => Poll::Pending,
        }
    }

    /// The request goes out on the connection of `progress`.
    pub fn set(&self, progress: &Arc<WriteProgress>) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
        self.woken.wake();
    }

    /// All of the body has been handed to the connection: set before its
    /// last bytes are written, so before any answer to them can be read.
    pub fn body_complete(&self) {
        let _ = self
            .complete
            .compare_exchange(0, order(), Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Whether the answer just taken from the connection came before all
    /// of the body was handed to it: not handed whole yet, or handed whole
    /// only after the connection's last read, which brought the answer's
    /// head (the connection's task goes on handing the body while the
    /// request's task is woken for the answer: judged by the flag alone, a
    /// fast client's body was often whole by then; verification, stop 65).
    pub fn came_before_its_body(&self) -> bool {
        let complete = self.complete.load(Ordering::Acquire);
        complete == 0
            || self
                .progress()
                .is_some_and(|p| p.last_read.load(Ordering::Acquire) < complete)
    }

    /// The body has been sent completely, or dropped.
    pub fn body_sent(&self) {
        self.sent.store(true, Ordering::Release);
        self.woken.wake();
    }

    /// Ready once [`Self::body_sent`]; until then `cx` is woken when it is.
    pub fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.sent.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.woken.register(cx.waker());
        if self.sent.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// A stream whose writes report to a [`WriteProgress`].
pub struct Tracked<T> {
    inner: T,
    progress: Arc<WriteProgress>,
    /// A read met the stream's end or an error.
    read_ended: bool,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, progress: Arc<WriteProgress>) -> Tracked<T> {
        Tracked {
            inner,
            progress,
            read_ended: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            if buf.filled().len() > before {
                self.progress.last_read.store(order(), Ordering::Release);
            }
        }
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.read_ended = true;
            }
            Poll::Ready(Err(_)) => self.read_ended = true,
            _ => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress.note(polled, |n| *n > 0, self.read_ended)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress.note(polled, |n| *n > 0, self.read_ended)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress.note(polled, |_| true, self.read_ended)
    }

    /// Watched as the writes are (a TLS stream's close_notify is a write
    /// too, and a peer that stopped reading blocks it), but an error
    /// passes: there is nothing left to read an answer for.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        match &polled {
            Poll::Pending => self.progress.blocked(),
            Poll::Ready(Ok(())) => self.progress.moved(),
            Poll::Ready(Err(_)) => self.progress.failed.store(true, Ordering::Relaxed),
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_until_bytes_move() {
        let p = WriteProgress::new();
        assert_eq!(p.blocked_for(), None);
        let _ = p.note::<usize>(Poll::Pending, |n| *n > 0, false);
        std::thread::sleep(Duration::from_millis(20));
        assert!(p
            .blocked_for()
            .is_some_and(|d| d >= Duration::from_millis(15)));
        // A second Pending keeps the first time.
        let first = p.blocked_for();
        let _ = p.note::<usize>(Poll::Pending, |n| *n > 0, false);
        assert!(p.blocked_for() >= first);
        let _ = p.note(Poll::Ready(Ok(0usize)), |n| *n > 0, false);
        assert!(p.blocked_for().is_some(), "nothing moved");
        let _ = p.note(Poll::Ready(Ok(5usize)), |n| *n > 0, false);
        assert_eq!(p.blocked_for(), None);
    }

    #[test]
    fn a_failed_write_stays_pending_until_the_reads_end() {
        let p = WriteProgress::new();
        let broken = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(p
            .note::<usize>(Poll::Ready(Err(broken())), |n| *n > 0, false)
            .is_pending());
        assert!(p.failed());
        assert!(p.blocked_for().is_some(), "the send-idle deadline runs");
        assert!(matches!(
            p.note::<usize>(Poll::Ready(Err(broken())), |n| *n > 0, true),
            Poll::Ready(Err(_))
        ));
    }

    /// A shutdown that cannot write (a TLS stream's close_notify to a peer
    /// that stopped reading) counts as blocked, so the stall watch closes
    /// the connection; it used to pass unwatched, and nothing did.
    #[tokio::test]
    async fn a_blocked_shutdown_is_watched() {
        struct Stuck;
        impl AsyncWrite for Stuck {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Pending
            }
        }
        let p = WriteProgress::new();
        let mut stream = Tracked::new(Stuck, p.clone());
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(AsyncWrite::poll_shutdown(Pin::new(&mut stream), cx))
        })
        .await;
        assert!(polled.is_pending());
        assert!(p.blocked_for().is_some(), "the stall watch runs");
    }

    #[tokio::test]
    async fn a_clients_failed_write_is_returned_and_stalls_are_timed() {
        let p = WriteProgress::passing_errors();
        let broken = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(matches!(
            p.note::<usize>(Poll::Ready(Err(broken)), |n| *n > 0, false),
            Poll::Ready(Err(_))
        ));
        let _ = p.note::<usize>(Poll::Pending, |n| *n > 0, false);
        let started = Instant::now();
        p.stalled(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    /// The connection's task times each waiting request's deadline: it
    /// passes on time, a withdrawn one never passes, and a deadline that
    /// passed is not taken by the next request.
    #[tokio::test(start_paused = true)]
    async fn response_deadlines_are_timed_by_the_connection() {
        let p = WriteProgress::new();
        let watcher = {
            let p = p.clone();
            tokio::spawn(async move { p.watch_due().await })
        };
        let started = tokio::time::Instant::now();
        p.due_in(Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(6),
            "{took:?}"
        );

        // Withdrawn (the answer came first): the next one, set for later
        // than the timer (armed for the first), still passes on time.
        let first = p.due_in(Duration::from_secs(1));
        drop(first);
        let started = tokio::time::Instant::now();
        let second = p.due_in(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(20)).await;
        second.await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(30) && took < Duration::from_secs(31),
            "{took:?}"
        );

        // An earlier deadline than the timer's wakes it to re-arm.
        let long = p.due_in(Duration::from_secs(60));
        drop(long);
        let started = tokio::time::Instant::now();
        p.due_in(Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(1));

        // Never early: a deadline between whole milliseconds is rounded up.
        let started = tokio::time::Instant::now();
        p.due_in(Duration::from_micros(1500)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_micros(1500), "{took:?}");

        // A deadline that passed while nobody waited is not the next one's.
        let lapsed = p.due_in(Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(lapsed);
        let next = p.due_in(Duration::from_secs(10));
        let polled = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(
            polled.is_err(),
            "a lapsed deadline resolved the next request's"
        );
        watcher.abort();
    }
}
