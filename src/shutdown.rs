//! The shutdown flag every long-running task selects on: a `watch` channel
//! set once by `server::Bound::run` (its sender dropping counts as set), and
//! the accept step every listener shares.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The next connection on `listener`, or `None` once the flag is set. A
/// failed accept (EMFILE and friends) backs off 50 ms instead of spinning,
/// counted (`residency_accept_errors_total`) and said at most once a
/// minute: out of file descriptors it failed 20 times a second per
/// listener, each a warning (exhaustion audit, stop 65).
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    static SAID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    crate::metrics::accept_errors().inc();
                    if crate::throttle::minute_passed(&SAID) {
                        tracing::warn!(error = %e, "accept failed: new connections wait in the kernel's queue (out of file descriptors? see the open-files limit logged at start); said at most once a minute, counted in residency_accept_errors_total");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(stop) => return None,
        }
    }
}

/// Runs `fut` until it ends, or until `cut` is set (the end of
/// `shutdown_grace`: [`crate::state::Instance::cut`]), when it is dropped.
/// The cut is looked at only when it changes (`Gated`), not at each of the
/// task's wake-ups.
pub async fn until_cut<F: Future<Output = ()>>(fut: F, cut: watch::Receiver<bool>) {
    // Pinned in place, not boxed: one allocation less per HTTP/2 stream.
    let waiting = std::pin::pin!(async move {
        let mut cut = cut;
        let _ = cut.wait_for(|c| *c).await;
    });
    let cut = crate::lazy::Gated::new(waiting);
    tokio::select! {
        biased;
        () = fut => {}
        () = cut => {}
    }
}

/// hyper's executor for an HTTP/2 connection's streams: each runs as a
/// task of its own, [`until_cut`].
#[derive(Clone)]
pub struct CutExecutor(pub watch::Receiver<bool>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for CutExecutor {
    fn execute(&self, fut: F) {
        tokio::spawn(until_cut(fut, self.0.clone()));
    }
}
