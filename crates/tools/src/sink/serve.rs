//! The accept loop of one data centre's port and the task serving each
//! connection as the data centre's mode says.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::datacenter::{hang, Datacenter};
use super::model::{Counters, Mode};
use super::{stopped, upload, Shared};

/// How long open connections may finish their current response at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Accepts connections for `dc` until shutdown.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    dc: Arc<Datacenter>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let mut modes = dc.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = poll_fn(|cx| dc.poll_accept(cx)) => accepted,
            changed = modes.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            () = stopped(&mut stop) => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                Counters::add(&dc.counters.connections, 1);
                let task = connection(shared.clone(), dc.clone(), stream, stop.clone());
                let done = done.clone();
                tokio::spawn(async move {
                    task.await;
                    drop(done);
                });
            }
            Err(e) => {
                tracing::warn!(datacenter = %dc.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    dc.close();
}

/// Counts a connection as open while it lives.
struct Open<'a>(&'a Datacenter);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection as the mode says: a blackhole in `hang`, HTTP/1.1
/// otherwise; closed when the data centre starts refusing, or at shutdown.
async fn connection(
    shared: Arc<Shared>,
    dc: Arc<Datacenter>,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    Counters::add(&dc.counters.open, 1);
    let _open = Open(&dc);
    let mut modes = dc.subscribe();
    if *modes.borrow_and_update() == Mode::Hang {
        // Never read: the client's bytes sit in the socket buffers until the
        // mode changes, then the connection is closed unanswered.
        hang(&mut modes, &mut stop).await;
        return;
    }
    let service = {
        let (shared, dc, stop) = (shared.clone(), dc.clone(), stop.clone());
        service_fn(move |req| upload::handle(shared.clone(), dc.clone(), stop.clone(), req))
    };
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(datacenter = %dc.name, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = modes.changed() => {
                if changed.is_err() || *modes.borrow_and_update() == Mode::Refuse {
                    return; // dropping the connection closes it
                }
            }
            () = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                return;
            }
        }
    }
}
