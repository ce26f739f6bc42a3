//! Listeners and the connection lifecycle.
//!
//! [`bind`] opens every socket first (so tests and the demo can bind port 0
//! and read the addresses); [`Bound::run`] then serves until the shutdown
//! future resolves. Each accepted connection runs in its own task through
//! named, bounded phases:
//!
//! 1. admission — a connection-limit permit, or the connection is closed;
//! 2. `proxy_header` — on `proxy_protocol = "required"` listeners, only from
//!    `trusted_proxies`, within the handshake deadline;
//! 3. `tls_handshake` — rustls with the listener's SNI-aware config;
//! 4. HTTP — hyper-util's auto builder (HTTP/1.1 and h2) with bounded
//!    header sizes and streams, and a watchdog that closes connections that
//!    send no first request within `request_head`, do not complete a later
//!    HTTP/1 head within `request_head` of its first byte, or sit idle for
//!    `keepalive_idle`.
//!
//! On shutdown, accepting stops, every connection is asked to finish
//! gracefully, and `run` waits up to `timeouts.shutdown_grace` for them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::admin;
use crate::proxy::{self, Conn};
use crate::proxy_protocol::{self, Prefixed};
use crate::state::Shared;

/// Sockets bound and ready to serve.
pub struct Bound {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    admin: TcpListener,
    /// The customer-facing transparency log listener, if configured.
    transparency: Option<TcpListener>,
    /// The config file to watch for hot reload, if any.
    config_path: Option<std::path::PathBuf>,
}

/// Binds every ingest listener and the admin listener of the current state.
pub async fn bind(shared: Arc<Shared>) -> std::io::Result<Bound> {
    let state = shared.state();
    let mut listeners = Vec::new();
    for l in &state.config.listeners {
        let socket = TcpListener::bind(l.address).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding listener {}: {e}", l.address))
        })?;
        listeners.push(socket);
    }
    let admin = TcpListener::bind(state.config.admin.address)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding admin listener {}: {e}", state.config.admin.address),
            )
        })?;
    let transparency = match shared.log.as_ref().and_then(|l| l.settings().address) {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding transparency listener {address}: {e}"),
            )
        })?),
        None => None,
    };
    Ok(Bound {
        shared,
        listeners,
        admin,
        transparency,
        config_path: None,
    })
}

impl Bound {
    /// The ingest listeners' local addresses, in config order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The transparency log listener's address, when there is one.
    pub fn transparency_address(&self) -> Option<SocketAddr> {
        self.transparency.as_ref()?.local_addr().ok()
    }

    /// Reload from `path` on SIGHUP and when watched files change.
    pub fn watch(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = self.shared.state();
        let limits = state.config.limits;
        let grace = state.config.timeouts.shutdown_grace;
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let mut tasks = Vec::new();
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let shared = self.shared.clone();
            let permits = permits.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(accept_loop(
                shared, index, listener, permits, stop,
            )));
        }
        tasks.push(tokio::spawn(admin::serve(
            self.shared.clone(),
            self.admin,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(refresh_gauges(
            self.shared.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::upstream::check::run(
            self.shared.clone(),
            stop_rx.clone(),
        )));

        if let Some(log) = &self.shared.log {
            tasks.push(tokio::spawn(checkpoints(log.clone(), stop_rx.clone())));
            if let Some(listener) = self.transparency {
                let log = log.clone();
                tasks.push(tokio::spawn(admin::serve_plain(
                    listener,
                    stop_rx.clone(),
                    move |req| crate::transparency::http::route(&log, req),
                )));
            }
        }

        if let Some(path) = self.config_path {
            tasks.push(tokio::spawn(crate::reload::run(
                self.shared.clone(),
                path,
                stop_rx.clone(),
            )));
        }

        shutdown.await;
        self.shared.set_ready(false);
        let delay = self.shared.state().config.timeouts.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutting down: readiness off; still accepting while load balancers notice"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!("shutting down: accepting stopped, draining connections");
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(grace, permits.acquire_many(all)).await;
        match drained {
            Ok(_) => tracing::info!("all connections finished"),
            Err(_) => tracing::warn!(
                phase = "shutdown_grace",
                "timeout: closing remaining connections"
            ),
        };
        if let Some(log) = self.shared.log.clone() {
            // Every record appended is covered by a signed checkpoint.
            match tokio::task::spawn_blocking(move || log.checkpoint()).await {
                Ok(Ok(cp)) => tracing::info!(size = cp.size, "final checkpoint signed"),
                Ok(Err(e)) => tracing::error!(error = %e, "final checkpoint failed"),
                Err(e) => tracing::error!(error = %e, "final checkpoint failed"),
            }
        }
    }
}

/// Signs a checkpoint every `checkpoint_interval` (when records were added)
/// until `stop`; the final one is signed after the connections have drained.
async fn checkpoints(log: Arc<crate::transparency::log::Log>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(log.settings().checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut stop) => return,
        }
        let l = log.clone();
        match tokio::task::spawn_blocking(move || l.checkpoint()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
        log.refresh_age();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    index: usize,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared
                .metrics
                .connections_rejected
                .with_label_values(&["connection_limit"])
                .inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            shared.clone(),
            index,
            stream,
            peer,
            permit,
            stop.clone(),
        ));
    }
}

/// Counts the connection as active while alive.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.connections_active.dec();
    }
}

async fn connection(
    shared: Arc<Shared>,
    index: usize,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    shared.metrics.connections_active.inc();
    let _active = ActiveGuard(shared.clone());
    // One snapshot for the whole connection.
    let state = shared.state();
    let listener = &state.config.listeners[index];
    let timeouts = state.config.timeouts;
    let limits = state.config.limits;
    let metrics = &shared.metrics;

    let (proxy_source, io) = if listener.proxy_protocol {
        if !listener.trusted_proxies.contains(peer.ip()) {
            metrics
                .connections_rejected
                .with_label_values(&["proxy_untrusted_peer"])
                .inc();
            tracing::warn!(peer = %peer, "PROXY listener: connection from an untrusted peer closed");
            return;
        }
        match tokio::time::timeout(timeouts.tls_handshake, proxy_protocol::read_header(stream))
            .await
        {
            Ok(Ok((source, io))) => (Some(source.unwrap_or(peer.ip().to_canonical())), io),
            Ok(Err(e)) => {
                metrics
                    .connections_rejected
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::warn!(peer = %peer, error = %e, "PROXY header refused; connection closed");
                return;
            }
            Err(_) => {
                metrics
                    .connections_rejected
                    .with_label_values(&["proxy_header_timeout"])
                    .inc();
                tracing::warn!(peer = %peer, phase = "proxy_header", "timeout");
                return;
            }
        }
    } else {
        (None, Prefixed::new(bytes::Bytes::new(), stream))
    };

    let acceptor = tokio_rustls::TlsAcceptor::from(state.tls[index].clone());
    let tls = match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(io)).await {
        Ok(Ok(tls)) => {
            metrics.tls_handshakes.with_label_values(&["success"]).inc();
            tls
        }
        Ok(Err(e)) => {
            metrics.tls_handshakes.with_label_values(&["failure"]).inc();
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshakes.with_label_values(&["timeout"]).inc();
            tracing::debug!(peer = %peer, phase = "tls_handshake", "timeout");
            return;
        }
    };

    let conn = Arc::new(Conn {
        peer,
        proxy_source,
        listener: index,
    });
    let activity = Arc::new(Activity::new());
    // HTTP/1 heads are watched from their first byte (hyper's own head
    // timer also runs while a keep-alive connection is idle, so it is set
    // to the sum of both deadlines and the watchdog enforces each).
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let tls = Watched {
        inner: tls,
        activity: (!h2).then(|| activity.clone()),
    };
    let service = {
        let activity = activity.clone();
        let shared = shared.clone();
        service_fn(move |req| {
            let busy = activity.begin();
            // Each request runs on the snapshot current when it starts.
            let fut = proxy::handle(shared.clone(), shared.state(), conn.clone(), req);
            async move {
                let resp = fut.await;
                drop(busy);
                resp
            }
        })
    };

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(
            timeouts
                .request_head
                .saturating_add(timeouts.keepalive_idle),
        )
        .max_buf_size(limits.max_request_head_bytes.max(8192))
        .keep_alive(true)
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_request_head_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut served = pin!(builder.serve_connection(TokioIo::new(tls), service));
    let mut idle = pin!(activity.idle(timeouts.request_head, timeouts.keepalive_idle));
    // Created once: a fresh `stopped` future per wake-up would re-register
    // with the watch channel on every request.
    let mut shutdown = pin!(stopped(&mut stop));
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.as_mut(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            phase = idle.as_mut(), if !closing => {
                tracing::debug!(peer = %peer, phase, "timeout");
                if phase == "request_head" {
                    // Nothing is in flight, and hyper's graceful shutdown
                    // waits for a head it has started reading: just close.
                    return;
                }
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// HTTP/1: bytes of a next request head arrived with nothing in
    /// flight, since `head_ms`; cleared when that request starts.
    head_pending: AtomicBool,
    head_ms: AtomicU64,
    head_started: tokio::sync::Notify,
    /// Set by the first request; until then the connection gets only the
    /// request-head deadline (hyper-util's protocol sniffing has none).
    started: AtomicBool,
    first_request: tokio::sync::Notify,
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            head_ms: AtomicU64::new(0),
            head_started: tokio::sync::Notify::new(),
            started: AtomicBool::new(false),
            first_request: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_pending.store(false, Ordering::Relaxed);
        if !self.started.swap(true, Ordering::Relaxed) {
            self.first_request.notify_one();
        }
        Busy(self.clone())
    }

    /// HTTP/1 bytes were read: with nothing in flight, they start the next
    /// request head, which then has `request_head` to complete.
    fn read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.head_pending.swap(true, Ordering::Relaxed)
        {
            self.head_ms.store(self.now_ms(), Ordering::Relaxed);
            self.head_started.notify_one();
        }
    }

    /// Resolves once the connection has had nothing in flight for `idle`,
    /// has not started a first request within `first`, or (HTTP/1) has not
    /// completed a started request head within `first`.
    async fn idle(&self, first: Duration, idle: Duration) -> &'static str {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        loop {
            let started = self.started.load(Ordering::Relaxed);
            let head = started && self.head_pending.load(Ordering::Relaxed);
            let (since, limit) = if head {
                (self.head_ms.load(Ordering::Relaxed), ms(first))
            } else if started {
                (self.last_ms.load(Ordering::Relaxed), ms(idle))
            } else {
                (0, ms(first))
            };
            let quiet_for = self.now_ms().saturating_sub(since);
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet_for >= limit {
                return if started && !head {
                    "keepalive_idle"
                } else {
                    "request_head"
                };
            }
            let wait = Duration::from_millis(limit.saturating_sub(quiet_for).max(100));
            if head {
                tokio::time::sleep(wait).await;
            } else if started {
                // A head starting meanwhile has a shorter deadline.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.head_started.notified() => {}
                }
            } else {
                // The first request switches to the keep-alive deadline.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.first_request.notified() => {}
                }
            }
        }
    }
}

/// The client stream, telling [`Activity`] when bytes arrive (HTTP/1 only;
/// `activity` is `None` for h2, whose pings and window updates are not
/// request heads).
struct Watched<T> {
    inner: T,
    activity: Option<Arc<Activity>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(activity)) = (&result, &this.activity) {
            if buf.filled().len() > before {
                activity.read();
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Keeps `residency_datacenter_up` current as passive down-marks expire.
async fn refresh_gauges(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.refresh_gauges(),
            () = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
