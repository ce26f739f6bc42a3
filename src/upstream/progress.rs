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
    /// A failed write is returned as it is, not held pending.
    pass_errors: bool,
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
            pass_errors,
        })
    }

    /// Resolves once writes have stayed blocked for `limit`: the watch of
    /// the task that does the writing. It registers no waker for the
    /// writes to block (that slot is the request's, [`Self::poll_blocked`]),
    /// so it must be polled after the I/O, in the same task — a `biased`
    /// select with the connection first — where it sees them block in the
    /// same pass; then its timer wakes it.
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

    fn note<T>(
        &self,
        polled: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => self.blocked(),
            Poll::Ready(Ok(v)) if moved(v) => self.moved(),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(_)) if self.pass_errors => self.failed.store(true, Ordering::Relaxed),
            Poll::Ready(Err(e)) => {
                // Kept pending: the reads (polled by the same connection
                // task) still deliver an answer already sent.
                tracing::debug!(error = %e, "upstream write failed; reading on");
                self.failed.store(true, Ordering::Relaxed);
                self.blocked();
                return Poll::Pending;
            }
        }
        polled
    }
}

/// A stream whose writes report to a [`WriteProgress`].
pub struct Tracked<T> {
    pub inner: T,
    pub progress: Arc<WriteProgress>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress.note(polled, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress.note(polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress.note(polled, |_| true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_until_bytes_move() {
        let p = WriteProgress::new();
        assert_eq!(p.blocked_for(), None);
        let _ = p.note::<usize>(Poll::Pending, |n| *n > 0);
        std::thread::sleep(Duration::from_millis(20));
        assert!(p
            .blocked_for()
            .is_some_and(|d| d >= Duration::from_millis(15)));
        // A second Pending keeps the first time.
        let first = p.blocked_for();
        let _ = p.note::<usize>(Poll::Pending, |n| *n > 0);
        assert!(p.blocked_for() >= first);
        let _ = p.note(Poll::Ready(Ok(0usize)), |n| *n > 0);
        assert!(p.blocked_for().is_some(), "nothing moved");
        let _ = p.note(Poll::Ready(Ok(5usize)), |n| *n > 0);
        assert_eq!(p.blocked_for(), None);
    }

    #[test]
    fn a_failed_write_stays_pending() {
        let p = WriteProgress::new();
        let broken = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(p
            .note::<usize>(Poll::Ready(Err(broken)), |n| *n > 0)
            .is_pending());
        assert!(p.failed());
        assert!(p.blocked_for().is_some(), "the send-idle deadline runs");
    }

    #[tokio::test]
    async fn a_clients_failed_write_is_returned_and_stalls_are_timed() {
        let p = WriteProgress::passing_errors();
        let broken = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(matches!(
            p.note::<usize>(Poll::Ready(Err(broken)), |n| *n > 0),
            Poll::Ready(Err(_))
        ));
        let _ = p.note::<usize>(Poll::Pending, |n| *n > 0);
        let started = Instant::now();
        p.stalled(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(40));
    }
}
