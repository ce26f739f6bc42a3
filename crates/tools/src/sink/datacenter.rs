//! One data centre's port: its listener (closed and re-bound on the same
//! port as the mode goes to and from `refuse`), its mode (a `watch` every
//! connection and request follows), its counters and injected-error PRNG.
//! [`super::serve`] accepts and serves its connections.
//!
//! Mode changes take effect before [`Datacenter::set_mode`] returns: the
//! listener is closed (or listening again) by then. Open connections follow
//! within a scheduling tick: `refuse` closes them, leaving `hang` closes the
//! blackholed ones.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::model::{Counters, DatacenterStats, Mode, Rng};
use super::{stopped, SinkError};

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

    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        match &lock(&self.slot).listener {
            Some(listener) => listener.poll_accept(cx),
            // Woken by the mode watch when a listener is back.
            None => Poll::Pending,
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
