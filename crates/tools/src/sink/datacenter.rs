//! One data centre's port: its listener (closed and re-bound on the same
//! port as the mode goes to and from `refuse`), its mode (a `watch` every
//! connection and request follows), its counters and injected-error PRNG, the
//! accept loop and the per-connection task.
//!
//! Mode changes take effect before [`Datacenter::set_mode`] returns: the
//! listener is closed (or listening again) by then. Open connections follow
//! within a scheduling tick: `refuse` closes them, leaving `hang` closes the
//! blackholed ones.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use super::model::{Counters, DatacenterStats, Mode, Rng};
use super::{stopped, upload, Shared, SinkError};

/// How long open connections may finish their current response at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The listening socket, or none while refusing or after shutdown.
#[derive(Debug)]
struct Slot {
    listener: Option<TcpListener>,
    /// Shut down: never listen again.
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Datacenter {
    pub name: String,
    /// The bound address (port 0 resolved); re-bound as is after `refuse`.
    pub addr: SocketAddr,
    slot: Mutex<Slot>,
    mode: watch::Sender<Mode>,
    /// Draws for uploads and for health checks, kept apart so that probes
    /// arriving on a timer do not shift which uploads fail.
    rng: Mutex<(Rng, Rng)>,
    pub counters: Counters,
    /// The runtime the listener is registered with (re-binding may be asked
    /// for from any thread).
    runtime: Handle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Datacenter {
    /// Binds `addr` (port 0 picks one). Must run inside a Tokio runtime.
    pub async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<Datacenter> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding data centre `{name}` on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        Ok(Datacenter {
            name: name.to_owned(),
            addr,
            slot: Mutex::new(Slot {
                listener: Some(listener),
                closed: false,
            }),
            mode: watch::Sender::new(Mode::Normal),
            rng: Mutex::new(Datacenter::seeds(name)),
            counters: Counters::default(),
            runtime: Handle::current(),
        })
    }

    fn seeds(name: &str) -> (Rng, Rng) {
        (Rng::seeded(name), Rng::seeded(&format!("{name}/healthz")))
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Mode> {
        self.mode.subscribe()
    }

    pub fn stats(&self) -> DatacenterStats {
        self.counters.stats(self.mode(), self.addr)
    }

    /// Clears the counters and restarts the PRNG sequences.
    pub fn reset(&self) {
        self.counters.reset();
        *lock(&self.rng) = Datacenter::seeds(&self.name);
    }

    /// A draw in `[0, 1)` for an injected error.
    pub fn draw(&self, health_check: bool) -> f64 {
        let mut rng = lock(&self.rng);
        if health_check {
            rng.1.next_f64()
        } else {
            rng.0.next_f64()
        }
    }

    /// Switches the mode. The listener is closed or re-bound before this
    /// returns; entering `error` restarts the PRNG so a drill is repeatable.
    pub fn set_mode(&self, mode: Mode) -> Result<(), SinkError> {
        mode.validate().map_err(SinkError::InvalidMode)?;
        let mut slot = lock(&self.slot);
        match (mode, slot.listener.is_some()) {
            (Mode::Refuse, true) => slot.listener = None,
            (Mode::Refuse, false) => {}
            (_, false) if !slot.closed => slot.listener = Some(self.rebind()?),
            _ => {}
        }
        if matches!(mode, Mode::Error { .. }) {
            *lock(&self.rng) = Datacenter::seeds(&self.name);
        }
        let old = self.mode.send_replace(mode);
        drop(slot);
        tracing::info!(datacenter = %self.name, address = %self.addr, from = %old, to = %mode, "data centre mode changed");
        Ok(())
    }

    /// Listens on the same address again, synchronously.
    fn rebind(&self) -> Result<TcpListener, SinkError> {
        let rebind = || -> io::Result<TcpListener> {
            let std = std::net::TcpListener::bind(self.addr)?;
            std.set_nonblocking(true)?;
            let _runtime = self.runtime.enter();
            TcpListener::from_std(std)
        };
        rebind().map_err(|source| SinkError::Rebind {
            datacenter: self.name.clone(),
            address: self.addr,
            source,
        })
    }

    /// Stops listening for good (shutdown).
    pub fn close(&self) {
        let mut slot = lock(&self.slot);
        slot.closed = true;
        slot.listener = None;
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        match &lock(&self.slot).listener {
            Some(listener) => listener.poll_accept(cx),
            // Woken by the mode watch when a listener is back.
            None => Poll::Pending,
        }
    }
}

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

/// Waits while the mode stays `hang` (or until shutdown).
pub(crate) async fn hang(modes: &mut watch::Receiver<Mode>, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = modes.wait_for(|m| *m != Mode::Hang) => {}
        () = stopped(stop) => {}
    }
}
