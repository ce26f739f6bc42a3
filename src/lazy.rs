//! Futures that are polled far more often than they can make progress:
//! deadlines and signals raced against the work they bound.
//!
//! The request path races long deadlines (`upstream_response`, a
//! connection's `keepalive_idle`) against the work they bound, in
//! `select!`s that poll every branch whenever the task wakes — several times
//! per request. Polling a Tokio [`Sleep`](tokio::time::Sleep) each time costs
//! a budget check and a waker registration (about 200 instructions), though
//! the registration from the first poll still stands. [`sleep`] polls the
//! timer only when that registration may be stale (first poll, the task's
//! waker changed: e.g. a request future moved to a task of its own, or the
//! last poll found the task's budget spent and registered nothing) or the
//! timer has fired; otherwise it answers `Pending` at once. The timer still
//! wakes the task when it fires, so nothing is missed. [`Gated`] does the
//! same for any future: it is polled only after something it waits on woke
//! it.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Sleep;

/// `tokio::time::sleep(duration)`, re-polled only when it may have to be.
pub async fn sleep(duration: Duration) {
    let sleep = pin!(tokio::time::sleep(duration));
    Lazy { sleep, waker: None }.await;
}

struct Lazy<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// The waker the timer was last registered with.
    waker: Option<Waker>,
}

impl Future for Lazy<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(waker) = &this.waker {
            if waker.will_wake(cx.waker()) && !this.sleep.is_elapsed() {
                return Poll::Pending;
            }
        }
        // With the task's budget spent, `Sleep` answers `Pending` (and
        // wakes the task) before it registers its timer: not a registration
        // to rely on, so it is polled again next time.
        let registers = tokio::task::coop::has_budget_remaining();
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                if registers {
                    this.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// A future that is polled only when it may make progress: on its first
/// poll, and after one of the wakers it handed out (its own, which passes
/// the wake-up on to the task) has been woken. Other polls — the task woke
/// for another branch of a `select!` — answer `Pending` at once. For
/// branches that wait long and are cheap to be late by nothing: the inner
/// future is polled exactly when a plain poll could have found it ready.
pub struct Gated<F> {
    inner: F,
    flag: Arc<Flag>,
    /// The flag's waker, handed to `inner`.
    waker: Waker,
    /// The task waker the flag passes wake-ups on to, while it holds one
    /// (a wake-up takes it); `None` before the first poll.
    task: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Gated<F> {
    pub fn new(inner: F) -> Gated<F> {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Gated {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if same_task && !this.flag.woken.load(Ordering::Acquire) {
            // Not woken since the last poll, and the registration stands.
            return Poll::Pending;
        }
        // First poll, another task, or woken (which took the registration):
        // register, then poll. A wake-up after the flag is cleared polls
        // once more, at worst for nothing.
        this.flag.woken.store(false, Ordering::Release);
        this.flag.task.register(cx.waker());
        if !same_task {
            this.task = Some(cx.waker().clone());
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

/// One timer for deadlines that begin far more often than they pass (a
/// connection's phases, its requests' response deadlines): the waiter
/// ([`Alarm::wait`]) sets it for the earliest deadline it finds and looks
/// again when it fires; a deadline that begins before that time wakes it
/// early ([`Alarm::due`]), any later one costs nothing. Times are
/// milliseconds on the caller's clock.
#[derive(Debug)]
pub struct Alarm {
    /// When the timer fires next; 0 while the waiter looks at its
    /// deadlines (one beginning then wakes it again), `u64::MAX` while it
    /// waits for one.
    armed: AtomicU64,
    rearm: tokio::sync::Notify,
}

impl Default for Alarm {
    fn default() -> Alarm {
        Alarm {
            armed: AtomicU64::new(u64::MAX),
            rearm: tokio::sync::Notify::new(),
        }
    }
}

impl Alarm {
    /// A deadline `at` began: the waiter is woken if its timer is set for
    /// later (or it is looking). Callable from any task.
    pub fn due(&self, at: u64) {
        let armed = self.armed.load(Ordering::SeqCst);
        if armed == 0 || at < armed {
            self.rearm.notify_one();
        }
    }

    /// Calls `look` until it gives a value: `Err((now, at))` sets the timer
    /// for `at` (`u64::MAX`: none, wait for [`Alarm::due`]) and calls it
    /// again when the timer fires or a deadline begins before it.
    pub async fn wait<T>(&self, mut look: impl FnMut() -> Result<T, (u64, u64)>) -> T {
        loop {
            let rearm = self.rearm.notified();
            tokio::pin!(rearm);
            rearm.as_mut().enable();
            self.armed.store(0, Ordering::SeqCst);
            let (now, at) = match look() {
                Ok(value) => return value,
                Err(next) => next,
            };
            self.armed.store(at, Ordering::SeqCst);
            if at == u64::MAX {
                rearm.await;
                continue;
            }
            tokio::select! {
                biased;
                () = sleep(Duration::from_millis(at.saturating_sub(now))) => {}
                () = rearm => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_once_due_even_when_polled_in_between() {
        let started = tokio::time::Instant::now();
        let mut s = pin!(sleep(Duration::from_secs(5)));
        // Polled repeatedly before it is due: pending each time.
        for _ in 0..3 {
            assert!(futures_poll(s.as_mut()).is_pending());
        }
        s.await;
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    /// Polled first when the task's budget is spent (Tokio's `Sleep` then
    /// answers `Pending` before it registers its timer), it still fires.
    /// It used to keep answering `Pending` without a timer, for ever.
    #[tokio::test(start_paused = true)]
    async fn fires_when_first_polled_with_the_budget_spent() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..1000 {
            tx.send(()).unwrap();
        }
        let mut s = pin!(sleep(Duration::from_millis(50)));
        std::future::poll_fn(|cx| {
            let mut received = 0;
            while let Poll::Ready(Some(())) = rx.poll_recv(cx) {
                received += 1;
            }
            assert!(received < 1000, "the budget ran out");
            assert!(s.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let fired = tokio::time::timeout(Duration::from_secs(10), s).await;
        assert!(fired.is_ok(), "the timer fired");
    }

    #[tokio::test(start_paused = true)]
    async fn loses_no_wake_up_in_a_select() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(());
            }
        });
        let mut timer = pin!(sleep(Duration::from_secs(2)));
        let mut messages = 0;
        loop {
            tokio::select! {
                biased;
                Some(()) = rx.recv() => messages += 1,
                () = timer.as_mut() => break,
            }
        }
        assert_eq!(messages, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn gated_polls_only_when_woken() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let counted = {
            let polls = polls.clone();
            let mut rx = rx;
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                Pin::new(&mut rx).poll(cx)
            })
        };
        let mut gated = pin!(Gated::new(Box::pin(counted)));
        let (other_tx, mut other_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = other_tx.send(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(7);
        });
        let mut others = 0;
        let got = loop {
            tokio::select! {
                biased;
                Some(()) = other_rx.recv() => others += 1,
                v = gated.as_mut() => break v,
            }
        };
        assert_eq!(got, Ok(7));
        assert_eq!(others, 3);
        // The first poll and the one after the value arrived; not the
        // three wake-ups for the other branch.
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    fn futures_poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        f.poll(&mut cx)
    }
}
