//! One client connection, from accept to close, as a sequence of phases,
//! each bounded by one deadline:
//!
//! ```text
//! accept ─► proxy_header ─► tls_handshake ─► FirstRequest ─► Busy ⇄ Responding ⇄ Idle ⇄ Head
//!                                                              └──► draining
//! ```
//!
//! | phase | ends when | bounded by |
//! |---|---|---|
//! | `proxy_header` (`required` listeners) | the PROXY header is read | `tls_handshake` |
//! | `tls_handshake` | TLS is up (ALPN picks h2 or HTTP/1.1) | `tls_handshake` |
//! | [`Phase::FirstRequest`] | the first request head is complete | `request_head`, from the handshake |
//! | [`Phase::Busy`] | no request is in flight | each request's own deadlines (`request_body_idle`, `upstream_*`) |
//! | [`Phase::Responding`] (HTTP/1) | no response body is being sent ([`Served`]) | `keepalive_idle` from the response head |
//! | an HTTP/2 response body ([`Streaming`]), in any phase | its end | `keepalive_idle` from its head: then GOAWAY, dropped after the close grace (sooner by `client_send_idle`) |
//! | [`Phase::Idle`] | a request (HTTP/1: a head's first byte) arrives | `keepalive_idle`; HTTP/1 parks after `IDLE_RELEASE`, holding no hyper buffers |
//! | [`Phase::Head`] (HTTP/1) | the head is complete | `request_head`, from its first byte |
//! | draining (shutdown) | the requests in flight end | heads still `request_head`; the process `shutdown_grace` |
//!
//! The first two are functions that run to their end ([`proxy_header`],
//! [`handshake`]); the HTTP phases are tracked by [`Activity`], whose
//! [`Activity::expired`] is a single timer for the current phase's deadline
//! that re-checks the phase when it fires. On HTTP/1 it is never set further
//! than `request_head` ahead, so a head starting never needs it earlier; it
//! is woken early only when another phase's deadline falls before it
//! (`keepalive_idle` shorter than `request_head`, a write blocking): not
//! once per request. A request whose client leaves
//! mid-delivery is [`Detached`] so that its delivery and record finish.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::shutdown::CutExecutor;
use prometheus::IntCounterVec;
use residency_core::origin::Proxied;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::config::{Limits, Listener, Timeouts};
use crate::lazy::Gated;
use crate::metrics::Metrics;
use crate::proxy::{self, Conn, ProxyBody};
use crate::proxy_protocol::{self, Prefixed};
use crate::shutdown::stopped;
use crate::state::Instance;

/// Counts something in a gauge while it lives (a connection in
/// `connections_active`, a parked one in `connections_idle`).
pub(super) struct Counted<'a>(&'a prometheus::IntGauge);

impl<'a> Counted<'a> {
    pub(super) fn new(gauge: &'a prometheus::IntGauge) -> Counted<'a> {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one accepted connection through its phases: PROXY header (on
/// `required` listeners), TLS handshake, then HTTP/1.1 — parked between
/// requests — or HTTP/2. Every phase is bounded; the task ends when the
/// connection does.
pub(super) async fn serve(
    instance: Arc<Instance>,
    index: usize,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = &instance.metrics;
    let _active = Counted::new(&metrics.connections_active);
    // The listener settings this connection was accepted with (each
    // request loads the snapshot current when it starts). The snapshot
    // itself is let go once the connection is set up (below).
    let state = instance.snapshot();
    let listener = &state.config.listeners[index];
    let timeouts = state.config.timeouts;
    let limits = state.config.limits;

    // One budget from accept to a finished handshake, PROXY header included.
    let deadline = tokio::time::Instant::now() + timeouts.tls_handshake;
    let admitted = proxy_header(metrics, listener, deadline, stream, peer);
    let Some((proxied, named, io)) = admitted.await else {
        return;
    };
    let Some(_per_client) = per_client(&instance, listener, &limits, named, peer) else {
        return;
    };
    let Some(tls) = handshake(metrics, &state.tls[index], deadline, io, peer).await else {
        return;
    };
    let (sni, cert) = {
        // Kept whether or not tenants are configured now: a reload may add
        // them while this connection lives.
        let session = tls.get_ref().1;
        let sni = session
            .server_name()
            .map(|s| s.to_ascii_lowercase().into_boxed_str());
        let cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| crate::tenancy::cert_names(leaf))
            .map(Box::new);
        (sni, cert)
    };
    let activity = Arc::new(Activity::new(&instance, &limits, &timeouts));
    let held = activity.clone();
    let conn = Arc::new(Conn {
        peer,
        proxied,
        trusted: listener.trusted_proxies.clone(),
        listener: index,
        sni,
        cert,
        hold: Some(crate::upstream::body::Hold(Arc::new(move || {
            Box::new(held.hold())
        }))),
        permit,
    });
    // Not held for the connection's life: a keep-alive connection kept its
    // accept's snapshot (GeoIP database, pool, TLS keys) for as long as it
    // stayed open, one more per reload.
    drop(state);
    // The box of the last request's future, for the next (see `Spare`).
    let spare = Arc::new(Mutex::new(None));
    let service = {
        let activity = activity.clone();
        let instance = instance.clone();
        let spare = spare.clone();
        service_fn(move |req| {
            let busy = activity.begin();
            // Each request runs on the snapshot current when it starts.
            // (`conn` holds the connection's permit: see `Conn::permit`.)
            let (instance, state, conn) = (instance.clone(), instance.snapshot(), conn.clone());
            // Boxed: hyper hands a finished HTTP/1 connection's stream back
            // (to release its buffers while idle) only for Unpin futures,
            // and a request whose client left moves, box and all, into a
            // task of its own (`Detached`).
            let mut fut = spare
                .lock()
                .ok()
                .and_then(|mut spare: std::sync::MutexGuard<'_, Option<_>>| spare.take())
                .unwrap_or_else(|| Box::pin(None));
            fut.set(Some(proxy::handle(instance, state, conn, req)));
            Detached {
                fut: Some(fut),
                busy: Some(busy),
                spare: spare.clone(),
            }
        })
    };
    // A parked connection holds no request's box either.
    let release = || {
        if let Ok(mut spare) = spare.lock() {
            spare.take();
        }
    };

    // HTTP/1 heads are watched from their first byte by `Activity`, which
    // enforces request_head and keepalive_idle (hyper's own head timer is
    // left off: it would also run while a keep-alive connection is idle,
    // and costs a timer entry per request).
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = Watched {
        inner: tls,
        activity: activity.clone(),
        heads: !h2,
    };
    // Gated (here and below): these branches are polled each time the
    // connection's task wakes, several times per request, though they can
    // only make progress when their own timer or signal fires.
    let idle = pin!(activity.expired());
    let mut idle = pin!(Gated::new(idle));
    // Created once: a fresh `stopped` future per wake-up would re-register
    // with the watch channel on every request.
    let shutdown = pin!(stopped(&mut stop));
    let mut shutdown = pin!(Gated::new(shutdown));
    // One timer for the connection's life, from its handshake.
    let aged = Box::pin(tokio::time::sleep(timeouts.connection_max_age));
    let mut aged = pin!(Gated::new(aged));
    let mut phases = Phases::new(
        idle.as_mut(),
        &activity,
        shutdown.as_mut(),
        aged.as_mut(),
        timeouts.keepalive_idle,
        timeouts.discard_body,
        &metrics.connections_closed,
    );
    let (io, prefix) = if h2 {
        (io, Bytes::new())
    } else {
        let served = serve_http1(
            io,
            &service,
            &release,
            &activity,
            limits,
            metrics,
            peer,
            &mut phases,
        );
        match served.await {
            Some(h2_without_alpn) => h2_without_alpn,
            None => return,
        }
    };
    activity.http2.store(true, Ordering::Relaxed);
    let cut = instance.cut.subscribe();
    serve_http2(io, prefix, service, limits, peer, phases, cut).await;
}

/// Bytes of response data one HTTP/2 stream may queue for sending.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// The TLS stream of an accepted connection. Boxed: moved by value it would
/// size every phase of the connection's task, and an idle connection holds
/// little besides its task (this keeps the task near 2 KiB, from 8).
type Tls = Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>;

/// The deadlines every HTTP phase selects on: the watchdog (`request_head`,
/// `keepalive_idle` or `client_send_idle`, named by its output), the
/// shutdown flag and the connection's age (`connection_max_age`: HTTP/2
/// then sends GOAWAY, HTTP/1's next answer closes it); and how long a connection closed
/// for idleness may take to finish what it has started (`keepalive_idle`
/// again) before it is dropped.
struct Phases<'a, I, S> {
    idle: Pin<&'a mut I>,
    /// The connection's, for the close grace ([`Phases::grace`]).
    activity: &'a Activity,
    shutdown: Pin<&'a mut S>,
    aged: Pin<&'a mut Gated<Aged>>,
    close_grace: Duration,
    /// How long an HTTP/1 connection the proxy closes after a response
    /// reads and drops what the client still sends (`timeouts.discard_body`;
    /// see [`close_lingering`]).
    linger: Duration,
    /// `residency_connections_closed_total`: each connection is counted
    /// once, by what made the proxy end it.
    closed: &'a IntCounterVec,
}

impl<'a, I, S> Phases<'a, I, S> {
    fn new(
        idle: Pin<&'a mut I>,
        activity: &'a Activity,
        shutdown: Pin<&'a mut S>,
        aged: Pin<&'a mut Gated<Aged>>,
        close_grace: Duration,
        linger: Duration,
        closed: &'a IntCounterVec,
    ) -> Self {
        Phases {
            idle,
            activity,
            shutdown,
            aged,
            close_grace,
            linger,
            closed,
        }
    }

    /// What a connection closed for a deadline (GOAWAY, or hyper's
    /// graceful shutdown) has to finish what it started: `close_grace`,
    /// cut short by a write to the client blocked for `client_send_idle`,
    /// which bounds a connection in any phase, also this one (it used to
    /// wait out the whole grace: twice `keepalive_idle` for a client that
    /// had stopped reading an answer). Resolves with why it ends: the
    /// deadline that closed it (`fired`), or [`CLIENT_SEND`].
    fn grace(&self, fired: &'static str) -> Grace<'a> {
        let (activity, limit) = (self.activity, self.close_grace);
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(limit) => fired,
                () = activity.send_stalled() => CLIENT_SEND,
            }
        })
    }

    /// Counts the connection as ended by the proxy, for `reason` (one of
    /// [`CONNECTION_CLOSES`](crate::metrics::CONNECTION_CLOSES)).
    fn closing(&self, reason: &'static str) {
        self.closed.with_label_values(&[reason]).inc();
    }
}

/// Why hyper ended an HTTP/1 connection with an error, when it was the
/// proxy's refusal: its own 431 (or 414) or 400 for a head it would not
/// read. `None` for the client's doing (a reset, a close mid-message).
fn http1_refusal(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        Some("head_too_large")
    } else if e.is_parse() {
        Some("bad_request")
    } else {
        None
    }
}

/// Why an HTTP/2 connection ended with an error, when the proxy ended it:
/// the error code of the GOAWAY h2 sent for the client's protocol error,
/// or the client not answering pings. `None` for the client's doing (its
/// own GOAWAY, a reset or closed socket).
fn http2_refusal(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        return Some("http2_ping_timeout");
    }
    let h2 = std::error::Error::source(e)?.downcast_ref::<h2::Error>()?;
    if !h2.is_library() {
        return None;
    }
    Some(match h2.reason()? {
        h2::Reason::NO_ERROR => return None,
        h2::Reason::PROTOCOL_ERROR => "http2_protocol_error",
        h2::Reason::FLOW_CONTROL_ERROR => "http2_flow_control_error",
        h2::Reason::FRAME_SIZE_ERROR => "http2_frame_size_error",
        h2::Reason::COMPRESSION_ERROR => "http2_compression_error",
        h2::Reason::ENHANCE_YOUR_CALM => "http2_enhance_your_calm",
        _ => "http2_other_error",
    })
}

/// [`Phases::grace`]: boxed, and only once a deadline fired.
type Grace<'a> = Pin<Box<dyn Future<Output = &'static str> + Send + 'a>>;

/// Resolves `grace` after it was armed (a connection closing for
/// idleness); never while it is `None`.
async fn closed_by(grace: &mut Option<Grace<'_>>) -> &'static str {
    match grace {
        Some(grace) => grace.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The PROXY phase: on `required` listeners, the peer must be a trusted
/// proxy and its header must arrive within `deadline`. Returns what the
/// header said of the client (`None` on other listeners), the address it
/// named if any (`LOCAL`, `UNKNOWN`: none), and the stream (with any bytes
/// read past the header put back in front), or `None` when the connection
/// was refused (counted and logged).
async fn proxy_header(
    metrics: &Metrics,
    listener: &Listener,
    deadline: tokio::time::Instant,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Option<Proxied>, Option<IpAddr>, Prefixed<TcpStream>)> {
    if !listener.proxy_protocol {
        return Some((None, None, Prefixed::new(Bytes::new(), stream)));
    }
    let reject = |reason: &str| {
        metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
    };
    // Any client that reaches the listener can cause these: each is
    // counted, and a warning said at most once a minute (each kind), the
    // rest at debug.
    static UNTRUSTED: AtomicU64 = AtomicU64::new(0);
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static TIMED_OUT: AtomicU64 = AtomicU64::new(0);
    if !listener.trusted_proxies.contains(peer.ip()) {
        reject("proxy_untrusted_peer");
        if crate::throttle::minute_passed(&UNTRUSTED) {
            tracing::warn!(peer = %peer, "PROXY listener: connection from an untrusted peer closed (said at most once a minute; residency_connections_rejected_total counts them)");
        } else {
            tracing::debug!(peer = %peer, "PROXY listener: connection from an untrusted peer closed");
        }
        return None;
    }
    match tokio::time::timeout_at(deadline, proxy_protocol::read_header(stream)).await {
        Ok(Ok((source, io))) => {
            let proxied = source.map_or(Proxied::Unnamed, Proxied::Named);
            Some((Some(proxied), source, io))
        }
        Ok(Err(e)) => {
            reject(e.reason());
            if crate::throttle::minute_passed(&REFUSED) {
                tracing::warn!(peer = %peer, error = %e, "PROXY header refused; connection closed (said at most once a minute; residency_connections_rejected_total counts them)");
            } else {
                tracing::debug!(peer = %peer, error = %e, "PROXY header refused; connection closed");
            }
            None
        }
        Err(_) => {
            reject("proxy_header_timeout");
            if crate::throttle::minute_passed(&TIMED_OUT) {
                tracing::warn!(peer = %peer, phase = "proxy_header", "timeout (said at most once a minute; residency_connections_rejected_total counts them)");
            } else {
                tracing::debug!(peer = %peer, phase = "proxy_header", "timeout");
            }
            None
        }
    }
}

/// Counts the connection against its client's
/// `limits.max_connections_per_client`: the address a PROXY header
/// `named`, else the peer's, unless the listener takes PROXY headers and
/// this one named no client (the balancer's own connection), or the peer
/// is one of a plain listener's trusted proxies (a front's connections
/// carry many clients). `None`: the client
/// holds its share already; the connection is closed, counted and not
/// served (`Some(None)`: not counted).
fn per_client(
    instance: &Instance,
    listener: &Listener,
    limits: &Limits,
    named: Option<IpAddr>,
    peer: SocketAddr,
) -> Option<Option<crate::client_limit::Counted>> {
    let client = match named {
        Some(source) => source,
        // LOCAL (the balancer's own health checks), UNKNOWN.
        None if listener.proxy_protocol => return Some(None),
        None if listener.trusted_proxies.contains(peer.ip()) => return Some(None),
        None => peer.ip(),
    };
    let counted = instance
        .client_connections
        .enter(client, limits.max_connections_per_client);
    if counted.is_none() {
        instance
            .metrics
            .connections_rejected
            .with_label_values(&["client_connection_limit"])
            .inc();
        tracing::debug!(
            peer = %peer,
            client = %client,
            "limits.max_connections_per_client reached; connection closed"
        );
    }
    counted
}

/// The TLS phase, bounded by `deadline`; counted by result.
async fn handshake(
    metrics: &Metrics,
    config: &Arc<rustls::ServerConfig>,
    deadline: tokio::time::Instant,
    io: Prefixed<TcpStream>,
    peer: SocketAddr,
) -> Option<Tls> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    // Boxed, like the stream it yields.
    let handshake = Box::pin(acceptor.accept(io));
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => {
            metrics.tls_handshakes.with_label_values(&["success"]).inc();
            Some(Box::new(tls))
        }
        Ok(Err(e)) => {
            metrics.tls_handshakes.with_label_values(&["failure"]).inc();
            if residency_tls::refused_for_expired_crl(&e) && expired_crl_warning_due() {
                tracing::warn!(peer = %peer, error = %e, "client certificate refused: the listener's client_crl is past its nextUpdate; write a fresh CRL over the file (said at most once a minute)");
            } else {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            metrics.tls_handshakes.with_label_values(&["timeout"]).inc();
            tracing::debug!(peer = %peer, phase = "tls_handshake", "timeout");
            None
        }
    }
}

/// Whether a minute has passed since the last warning that a client was
/// refused for an expired CRL: with one, every such client is refused, and
/// a warning each would flood the log.
fn expired_crl_warning_due() -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    crate::throttle::minute_passed(&LAST)
}

/// HTTP/1.1 until the connection ends (`None`), or, when its first bytes
/// are the h2 preface (HTTP/2 without ALPN), the stream and those bytes.
/// Between requests the connection is parked: once quiet for
/// [`IDLE_RELEASE`], hyper's buffers are released and one small read waits
/// for the next request, whose bytes start a fresh hyper connection.
#[allow(clippy::too_many_arguments)]
async fn serve_http1<S, I, D>(
    mut io: Watched<Tls>,
    service: &S,
    release: &impl Fn(),
    activity: &Arc<Activity>,
    limits: Limits,
    metrics: &Metrics,
    peer: SocketAddr,
    phases: &mut Phases<'_, I, D>,
) -> Option<(Watched<Tls>, Bytes)>
where
    S: HttpService<Incoming, ResBody = Served> + Clone + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: Future<Output = &'static str>,
    D: Future<Output = ()>,
{
    let mut h1 = http1::Builder::new();
    // half_close: a client that shuts its side once its request is
    // complete still gets the answer (hyper's default takes the end of
    // input for a request cut short and drops the connection, answer and
    // all). Its deadlines still bound it.
    // The head's limit is hyper's `max_header_size`: exact at any
    // configured value, and also that of a chunked body's trailers. The
    // read buffer may grow past it, to `request_body_buffer_bytes`, while
    // a body streams: tokio-rustls fills it with every record that has
    // arrived, and each read is one body chunk and one write to the data
    // centre (two 16 KiB records a read at the default: half the writes
    // upstream of a 16 KiB buffer). It also bounds what of an answer's
    // body is gathered before a write to the client (`writev(false)`).
    h1.max_buf_size(
        limits
            .max_request_head_bytes
            .max(limits.request_body_buffer_bytes),
    )
    .max_header_size(limits.max_request_head_bytes)
    .keep_alive(true)
    .half_close(true)
    .writev(false);
    let mut prefix = Bytes::new();
    // Until the first bytes tell HTTP/1 from an h2 preface: h2 without
    // ALPN ("prior knowledge"). A client that negotiated http/1.1 and then
    // sends the preface gets hyper's 400 for a malformed request (hyper
    // itself would close without one): over TLS, h2 is chosen by ALPN
    // (RFC 9113 §3.3).
    let prior_knowledge = io.inner.get_ref().1.alpn_protocol().is_none();
    let mut sniffing = true;
    loop {
        let preface = h2_preface(&prefix);
        if prefix.is_empty() || (sniffing && preface.is_none()) {
            // Parked: the connection holds only its TLS state (no hyper
            // buffers) until the next request's bytes arrive.
            let _parked = (!sniffing).then(|| Counted::new(&metrics.connections_idle));
            release();
            prefix = without_empty_lines(park(&mut io, prefix, peer, phases).await?);
            continue;
        }
        if sniffing {
            sniffing = false;
            if preface == Some(true) {
                if !prior_knowledge {
                    phases.closing("bad_request");
                    let _ = io.write_all(&h2_preface_refused()).await;
                    close_lingering(io, true, phases.linger, phases.shutdown.as_mut()).await;
                    return None;
                }
                io.heads = false;
                return Some((io, prefix));
            }
        }
        let (stream, rest) =
            serve_until_quiet(&h1, prefix, io, service, activity, peer, phases).await?;
        let rest = without_empty_lines(rest);
        if !rest.is_empty() {
            activity.head_read_while_busy();
        }
        io = stream;
        prefix = rest;
    }
}

/// Waits, holding no HTTP buffers, for a parked connection's next bytes
/// (at most [`WAKE_READ`], read onto the stack) and returns `prefix` with
/// them appended; `None` when it ends, times out or shuts down.
async fn park<I, D>(
    io: &mut Watched<Tls>,
    prefix: Bytes,
    peer: SocketAddr,
    phases: &mut Phases<'_, I, D>,
) -> Option<Bytes>
where
    I: Future<Output = &'static str>,
    D: Future<Output = ()>,
{
    let mut buf = [0u8; WAKE_READ];
    let read = tokio::select! {
        read = io.read(&mut buf) => read,
        () = phases.shutdown.as_mut() => {
            close(io).await;
            return None;
        }
        // Not closed under a client that may be sending its next request
        // (keepalive_idle still bounds it): that request is answered, with
        // `Connection: close`.
        () = phases.aged.as_mut(), if !io.activity.aged.load(Ordering::Relaxed) => {
            tracing::debug!(peer = %peer, phase = AGED, "the next answer closes the connection");
            io.activity.aged.store(true, Ordering::Relaxed);
            return Some(prefix);
        }
        phase = phases.idle.as_mut() => {
            tracing::debug!(peer = %peer, phase, "timeout");
            phases.closing(phase);
            close(io).await;
            return None;
        }
    };
    match read {
        Ok(0) => None,
        Ok(n) => Some(concat(prefix, &buf[..n])),
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            None
        }
    }
}

/// Serves HTTP/1 until the connection ends (`None`), or until it has been
/// quiet for [`IDLE_RELEASE`] after a request, when hyper closes its idle
/// state and hands the stream back unshut, with the bytes it had read past
/// the last request.
async fn serve_until_quiet<S, I, D>(
    h1: &http1::Builder,
    prefix: Bytes,
    io: Watched<Tls>,
    service: &S,
    activity: &Arc<Activity>,
    peer: SocketAddr,
    phases: &mut Phases<'_, I, D>,
) -> Option<(Watched<Tls>, Bytes)>
where
    S: HttpService<Incoming, ResBody = Served> + Clone + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: Future<Output = &'static str>,
    D: Future<Output = ()>,
{
    let served_before = activity.requests();
    let mut served =
        Box::new(h1.serve_connection(TokioIo::new(Prefixed::new(prefix, io)), service.clone()));
    let quiet = pin!(activity.quiet(served_before, IDLE_RELEASE));
    let mut quiet = pin!(Gated::new(quiet));
    let mut closing = false;
    let mut releasing = false;
    let mut timed_out = false;
    let mut grace = None;
    let mut stalled = false;
    let mut head_late = false;
    let result = loop {
        tokio::select! {
            biased;
            result = std::future::poll_fn(|cx| served.poll_without_shutdown(cx)) => {
                break result;
            }
            () = phases.shutdown.as_mut(), if !closing => {
                Pin::new(&mut *served).graceful_shutdown();
                closing = true;
            }
            // The next response head says `Connection: close` (see
            // `Detached`), as nginx's `keepalive_time` does: not hyper's
            // graceful shutdown, which would close a connection idle between
            // two requests under a client that may be sending its next.
            () = phases.aged.as_mut(), if !activity.aged.load(Ordering::Relaxed) => {
                tracing::debug!(peer = %peer, phase = AGED, "the next answer closes the connection");
                activity.aged.store(true, Ordering::Relaxed);
            }
            // Also while draining for shutdown: a head started
            // then still has only request_head to complete.
            phase = phases.idle.as_mut(), if !timed_out => {
                tracing::debug!(peer = %peer, phase, "timeout");
                phases.closing(phase);
                timed_out = true;
                if phase == "request_head" {
                    // Nothing is in flight, and hyper's graceful
                    // shutdown waits for a head it has started
                    // reading: a head begun is answered 408 (below), a
                    // connection that sent none just closed.
                    if !activity.head_pending.load(Ordering::Relaxed) {
                        return None;
                    }
                    head_late = true;
                    break Ok(());
                }
                if phase == CLIENT_SEND {
                    // Nothing more can be written: hyper is left, but
                    // the answers already in the socket still go (below).
                    stalled = true;
                    break Ok(());
                }
                if !closing {
                    Pin::new(&mut *served).graceful_shutdown();
                    closing = true;
                }
                grace = Some(phases.grace(phase));
            }
            phase = closed_by(&mut grace) => {
                tracing::debug!(peer = %peer, phase, "still not done after closing: dropped");
                return None;
            }
            () = quiet.as_mut(), if !closing && !releasing => {
                Pin::new(&mut *served).graceful_shutdown();
                // hyper ends a connection idle between two requests at
                // once, with no I/O. Anything else — a request body still
                // read or discarded, a response still written, keep-alive
                // off — is not between two requests: that connection is
                // closed when hyper is done, never parked (its next bytes
                // may be the rest of a body).
                match std::future::poll_fn(|cx| Poll::Ready(served.poll_without_shutdown(cx))).await {
                    Poll::Ready(result) => {
                        releasing = true;
                        break result;
                    }
                    Poll::Pending => closing = true,
                }
            }
        }
    };
    let failed = result.is_err();
    // A response body that failed (a data centre's answer that broke
    // off): hyper ends the connection part-way through the answer.
    let mut broken = false;
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
        // (Once: a connection closed for a deadline may still end with
        // hyper's error.)
        if let Some(reason) = http1_refusal(&e).filter(|_| !timed_out) {
            phases.closing(reason);
        }
        broken = activity.broken.swap(false, Ordering::Relaxed);
    }
    let parts = served.into_parts();
    let (rest, mut stream) = parts.io.into_inner().into_parts();
    if head_late {
        // Empty lines alone (a client's CRLF after a body: RFC 9112 §2.2
        // has a server ignore them) begin no head: closed without a word,
        // as an idle connection. Nor is a 408 sent behind an answer of
        // hyper's own (its 400 or 431) the client is not reading.
        let partial = parts.read_buf.iter().chain(rest.iter());
        if partial.copied().all(empty_line) {
            close(stream).await;
            return None;
        }
        if activity.sending() {
            return None;
        }
        // hyper wrote nothing of this request: the refusal is ours to
        // send, then the connection closes as after any refusal (the
        // rest of the head, if it comes, read and dropped).
        // (Shutting down: without lingering, as below.)
        let answer = head_timed_out();
        let _ = tokio::time::timeout(CLOSE_GRACE, stream.write_all(&answer)).await;
        let linger = if closing {
            Duration::ZERO
        } else {
            phases.linger
        };
        close_lingering(stream, true, linger, phases.shutdown.as_mut()).await;
        return None;
    }
    if stalled {
        // A client whose reads did not free the socket's buffer for
        // client_send_idle: a slow reader of a long pipelined burst may
        // still be reading (the kernel wakes a writer only once a third
        // of a full buffer has gone). The answers already in the socket
        // are its stored uploads' 201s among them: the write side is shut
        // behind them (no close_notify: nothing more can be written) and
        // what the client still sends is read and dropped, so that the
        // close sends no reset that would destroy them.
        close_lingering(stream, false, phases.linger, phases.shutdown.as_mut()).await;
        return None;
    }
    // A broken answer ends without TLS close_notify: a response delimited
    // by the connection's close (no length: an HTTP/1.0 client) is
    // complete only when the close is a valid one (RFC 9112 §9.8), so a
    // clean close would make it look whole.
    let notify = !broken;
    if closing {
        // Shut down or idle too long: end the stream as hyper would have,
        // without lingering (`shutdown` may have fired).
        close_lingering(stream, notify, Duration::ZERO, phases.shutdown.as_mut()).await;
        return None;
    }
    if failed || !releasing {
        // hyper ended it (the client closed, a response said `close`,
        // hyper answered a head it could not parse with its own 400 or 431,
        // written and flushed before the error, or an answer broke off):
        // the client may still be sending an upload nobody reads.
        close_lingering(stream, notify, phases.linger, phases.shutdown.as_mut()).await;
        return None;
    }
    // What hyper read came from the front of our prefix, so the
    // unread rest follows it.
    Some((stream, concat(parts.read_buf, &rest)))
}

/// HTTP/2 until the connection ends: bounded streams, windows and header
/// lists, pings for dead peers; GOAWAY at shutdown or when idle too long.
async fn serve_http2<S, I, D>(
    io: Watched<Tls>,
    prefix: Bytes,
    service: S,
    limits: Limits,
    peer: SocketAddr,
    mut phases: Phases<'_, I, D>,
    cut: tokio::sync::watch::Receiver<bool>,
) where
    S: HttpService<Incoming, ResBody = Served>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    CutExecutor: Http2ServerConnExec<S::Future, Served>,
    I: Future<Output = &'static str>,
    D: Future<Output = ()>,
{
    // A stream may use the whole connection window (1 MiB, as Go's server
    // allows): with 64 KiB per stream, HTTP/2 uploads from httpx crawled at
    // one window update per 64 KiB (an 8 MiB upload took 5.7 s; 0.26 s with
    // this). What a connection buffers stays bounded by the connection
    // window.
    let mut h2 = http2::Builder::new(CutExecutor(cut));
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_request_head_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        // What each stream's response may queue for the connection's
        // writes (hyper's default is 400 KiB): a client that keeps its
        // windows open but stops reading holds at most this per stream.
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let activity = Arc::clone(&io.activity);
    let mut served =
        Box::pin(h2.serve_connection(TokioIo::new(Prefixed::new(prefix, io)), service));
    let mut closing = false;
    let mut timed_out = false;
    let mut grace = None;
    loop {
        tokio::select! {
            biased;
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    // (Once: after a deadline's GOAWAY, a client gone dead
                    // still ends in a ping timeout.)
                    if let Some(reason) = http2_refusal(&e).filter(|_| !timed_out) {
                        phases.closing(reason);
                    }
                }
                return;
            }
            () = phases.shutdown.as_mut(), if !closing => {
                if activity.requests() == 0 {
                    // It never asked anything: closed now, as an idle
                    // HTTP/1 connection is. hyper would send its GOAWAY
                    // only after the client's preface, and end only once
                    // the client acknowledged the PING after it: a client
                    // that does neither held the shutdown for all of
                    // request_head.
                    return;
                }
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            // GOAWAY: the streams open finish, under their own deadlines.
            () = phases.aged.as_mut(), if !closing => {
                tracing::debug!(peer = %peer, phase = AGED, "GOAWAY");
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            // A client that cancels most of what it asks (see
            // `Activity::cancelled`): GOAWAY.
            () = activity.calm.notified(), if !closing => {
                tracing::debug!(peer = %peer, phase = CLIENT_CANCELS, "GOAWAY");
                phases.closing(CLIENT_CANCELS);
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            // Idle with streams still open (their responses not taken: a
            // client that keeps their windows shut) ends with GOAWAY, and
            // the connection is dropped if they are still open after
            // another keepalive_idle.
            phase = phases.idle.as_mut(), if !timed_out => {
                tracing::debug!(peer = %peer, phase, "timeout");
                phases.closing(phase);
                timed_out = true;
                if phase == "request_head" || phase == CLIENT_SEND {
                    return;
                }
                if !closing {
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
                grace = Some(phases.grace(phase));
            }
            phase = closed_by(&mut grace) => {
                tracing::debug!(peer = %peer, phase, "streams still open after closing: dropped");
                return;
            }
        }
    }
}

/// HTTP/2 requests a client may cancel (reset their stream before the
/// answer) on one connection before it is ended, if they are more than a
/// quarter of its requests (see [`Activity::cancelled`]).
const CANCELS_MAX: u64 = 100;

/// How long an HTTP/1 keep-alive connection with nothing in flight keeps
/// hyper's read and write buffers (8 KiB each) before releasing them; it
/// then waits holding only its TLS state, as nginx's keep-alive does.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// The longest [`Activity::quiet`] waits between looks at a connection with
/// a request in flight: its buffers are released at most this much later
/// than `IDLE_RELEASE` after a long request.
const QUIET_BUSY_MAX: Duration = Duration::from_millis(3200);
/// Bytes taken by the read that wakes a parked connection (the h2 preface
/// is 24); hyper reads the rest of the head itself.
const WAKE_READ: usize = 128;
/// How long a closing connection may take to send its TLS close_notify.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A lingering close ends when the client has sent nothing for this long,
/// as nginx's `lingering_timeout` (5 s): a closing refusal's unread body
/// goes here, not through a discarding, so a client that paused its upload
/// (its 408's silence ended, say) and sends on within it is not reset.
const LINGER_QUIET: Duration = Duration::from_secs(5);

/// The buffer a lingering close reads into.
const LINGER_READ: usize = 16 * 1024;
/// The watchdog's name for a client that stopped reading: its connection
/// is dropped at once (nothing more can be written to it, not even a
/// GOAWAY or close_notify).
const CLIENT_SEND: &str = "client_send_idle";
/// The reason a connection whose client cancelled most of its requests
/// was ended (see [`Activity::cancelled`]).
const CLIENT_CANCELS: &str = "client_cancels";
/// The timer of `connection_max_age` (boxed: [`Gated`] takes `Unpin`
/// futures).
type Aged = Pin<Box<tokio::time::Sleep>>;

/// The connection's age limit, in logs.
const AGED: &str = "connection_max_age";
/// The watchdog's name for an HTTP/2 response body still being sent
/// `keepalive_idle` after its head: the connection closes as an idle one
/// does (GOAWAY, then dropped after the close grace).
const STREAMING: &str = "response_body";

/// The h2 connection preface ("prior knowledge", RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The 400 for an HTTP/2 preface on a connection that negotiated
/// `http/1.1`, written by hand (hyper never saw a request), with the `Date`
/// RFC 9110 §6.6.1 asks of a 4xx.
fn h2_preface_refused() -> Vec<u8> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    format!(
        "HTTP/1.1 400 Bad Request\r\ndate: {date}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The 408 for an HTTP/1 request head begun and not complete within
/// `timeouts.request_head`, written by hand (hyper never finished the
/// head): `request_head_timeout`, with no request id (there is no request).
fn head_timed_out() -> Vec<u8> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let body = r#"{"error":"request_head_timeout"}"#;
    format!(
        "HTTP/1.1 408 Request Timeout\r\ndate: {date}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether `bytes` start with the h2 preface: `None` while too short to tell.
fn h2_preface(bytes: &[u8]) -> Option<bool> {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] != H2_PREFACE[..n] {
        Some(false)
    } else if n == H2_PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// A byte of an empty line (CR or LF), which a server ignores before a
/// request line (RFC 9112 §2.2). The one statement of the rule: the
/// [`Watched`] read, [`without_empty_lines`] and the `request_head`
/// refusal's guard all ask it.
fn empty_line(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

/// `bytes` without the empty lines that open it: no head (RFC 9112 §2.2
/// has a server ignore them; a client may send a CRLF after its body), so
/// they neither wake a parked connection's hyper nor start a
/// `request_head`.
fn without_empty_lines(bytes: Bytes) -> Bytes {
    let empty = bytes.iter().take_while(|b| empty_line(**b)).count();
    match empty {
        0 => bytes,
        n if n == bytes.len() => Bytes::new(),
        n => bytes.slice(n..),
    }
}

/// `head` then `tail` as one `Bytes`. An empty result is a fresh `Bytes`:
/// an empty one from hyper still owns its 8 KiB read buffer.
fn concat(head: Bytes, tail: &[u8]) -> Bytes {
    match (head.is_empty(), tail.is_empty()) {
        (true, true) => Bytes::new(),
        (false, true) => head,
        _ => {
            let mut joined = BytesMut::with_capacity(head.len() + tail.len());
            joined.extend_from_slice(&head);
            joined.extend_from_slice(tail);
            joined.freeze()
        }
    }
}

/// Ends a stream politely (TLS close_notify, then FIN), bounded in time.
async fn close<T: AsyncWrite + Unpin>(mut io: T) {
    let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
}

/// Ends an HTTP/1 connection hyper is done with (a refusal that closes it,
/// `Connection: close` either way, hyper's own 400) in stages, as RFC 9112
/// §9.6 has a server do: TLS close_notify and FIN first; then what the
/// client still sends — the rest of an upload the proxy refused and would
/// not read — is read and dropped, without decrypting it, until the client
/// closes, sends nothing for [`LINGER_QUIET`], or `linger` has passed, or
/// the proxy shuts down (`shutdown`, not resolved yet when this is called).
/// Closing a socket with bytes still unread makes the kernel answer with a
/// reset, which destroys the response at a client that has not read it
/// yet: the refusal would not reach it. Without `notify`, no close_notify
/// goes before the FIN (an answer that broke off).
async fn close_lingering<D: Future<Output = ()>>(
    mut stream: Watched<Tls>,
    notify: bool,
    linger: Duration,
    shutdown: Pin<&mut D>,
) {
    let mut tcp = if notify {
        close(&mut stream).await;
        (*stream.inner).into_inner().0
    } else {
        // What rustls still holds of the answer goes out, then the FIN
        // alone: the client sees the TLS stream end without close_notify.
        let _ = tokio::time::timeout(CLOSE_GRACE, stream.flush()).await;
        let mut tcp = (*stream.inner).into_inner().0;
        let _ = tokio::time::timeout(CLOSE_GRACE, tcp.shutdown()).await;
        tcp
    };
    if linger.is_zero() {
        return;
    }
    // On the heap, and only now: the connection's future stays small.
    let mut buf = vec![0u8; LINGER_READ];
    let drain = async {
        while let Ok(Ok(1..)) = tokio::time::timeout(LINGER_QUIET, tcp.read(&mut buf)).await {}
    };
    tokio::select! {
        _ = tokio::time::timeout(linger, drain) => {}
        () = shutdown => {}
    }
}

/// The phases of a connection's HTTP life, each bounded by one deadline
/// (on its `Activity`'s millisecond clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request yet: the first head must be complete `request_head`
    /// after the handshake.
    FirstRequest,
    /// HTTP/1, nothing in flight, the next head arriving since `since`: it
    /// has `request_head` from its first byte.
    Head { since: u64 },
    /// Requests in flight: each is bounded by its own body and upstream
    /// deadlines, the connection by none.
    Busy,
    /// HTTP/1, no request in flight but a response body still being sent
    /// since `since` (its head): not idle (never parked), and bounded as a
    /// response was before it counted: `keepalive_idle` from its head,
    /// then the close grace.
    Responding { since: u64 },
    /// Nothing in flight since `since`: `keepalive_idle`, then closed
    /// (HTTP/1 parks after `IDLE_RELEASE` of it).
    Idle { since: u64 },
}

impl Phase {
    /// The deadline's name in logs.
    fn name(self) -> &'static str {
        match self {
            Phase::FirstRequest | Phase::Head { .. } => "request_head",
            Phase::Busy => "busy",
            Phase::Responding { .. } | Phase::Idle { .. } => "keepalive_idle",
        }
    }

    /// When the phase's deadline passes (ms on the activity's clock).
    fn deadline(self, request_head: u64, keepalive_idle: u64) -> Option<u64> {
        match self {
            Phase::FirstRequest => Some(request_head),
            Phase::Head { since } => Some(since.saturating_add(request_head)),
            Phase::Busy => None,
            Phase::Responding { since } | Phase::Idle { since } => {
                Some(since.saturating_add(keepalive_idle))
            }
        }
    }
}

/// One connection's requests: which [`Phase`] it is in. Its deadlines run
/// as single timers that re-check the phase when they fire (on HTTP/1 at
/// least every `request_head`, so that a head starting never has to bring
/// the timer forward); the only wake-ups besides are a phase beginning
/// whose deadline falls before the timer's ([`Activity::due`]: a write
/// blocking, say) and, while [`Activity::quiet`] waits for one, a request
/// beginning — nothing happens per request otherwise (but a clock
/// read when a head starts and when a request ends, and the `streaming`
/// map's update per HTTP/2 response), and a connection stalled in its
/// first head (slowloris) costs one timer.
struct Activity {
    /// For the process-wide detached-request budget and its metrics.
    instance: Arc<Instance>,
    /// Requests of this connection running detached, at most `max_detached`
    /// (`h2_max_concurrent_streams`).
    detached: AtomicUsize,
    max_detached: usize,
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Requests begun on this connection.
    requests: AtomicU64,
    /// HTTP/2 requests whose client reset their stream before the answer
    /// (each may have cost a data centre a connection); past
    /// [`CANCELS_MAX`] and a quarter of the requests, `calm` is notified and the
    /// connection ends (GOAWAY).
    cancelled: AtomicU64,
    calm: tokio::sync::Notify,
    last_ms: AtomicU64,
    /// HTTP/1: bytes of a next request head arrived with nothing in
    /// flight, since `head_ms`; cleared when that request starts.
    head_pending: AtomicBool,
    head_ms: AtomicU64,
    /// `timeouts.request_head`, `keepalive_idle` and `client_send_idle`
    /// in ms, as the connection was accepted with.
    head_limit_ms: u64,
    idle_ms: u64,
    send_ms: u64,
    /// The watchdog's timer (ms on this clock).
    alarm: crate::lazy::Alarm,
    /// Woken when a request begins while `awaiting_request` is set.
    began: tokio::sync::Notify,
    awaiting_request: AtomicBool,
    /// Since when a write to the client has been blocked (the client is
    /// not reading), or [`NOT_BLOCKED`].
    blocked_ms: AtomicU64,
    /// The connection speaks HTTP/2 (a request then ends at its response
    /// head, and [`Served`] holds its [`Streaming`] entry).
    http2: AtomicBool,
    /// HTTP/1 response bodies still being sent ([`Served`]), the latest
    /// since `responding_ms`.
    responding: AtomicUsize,
    responding_ms: AtomicU64,
    /// HTTP/1 bytes read while only a response was being sent: a next head
    /// pipelined behind it, whose `request_head` starts when it ends.
    read_while_responding: AtomicBool,
    /// HTTP/2 response bodies still being sent ([`Streaming`]): when each
    /// began (its head), by a sequence number, so the first is the oldest.
    /// Each is bounded by `keepalive_idle` from its head whatever the
    /// connection's phase: a stream whose window the client keeps shut
    /// holds its data centre's connection, and other streams (a body
    /// trickled to a refusal) can keep the connection busy meanwhile.
    streaming: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    streaming_seq: AtomicU64,
    /// HTTP/1: the connection is `connection_max_age` old, and its next
    /// response head says `Connection: close`.
    aged: AtomicBool,
    /// Writes to the client that took bytes (only the connection's task
    /// writes: a plain load and store). A failed HTTP/2 response body
    /// waits for one after its failure ([`Failed`]).
    writes: AtomicU64,
    /// HTTP/1: a response body failed (an answer that broke off), so hyper
    /// ends the connection with an error ([`Served`]).
    broken: AtomicBool,
}

/// `Activity::blocked_ms` while writes go through.
const NOT_BLOCKED: u64 = u64::MAX;

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.now_ms();
        a.last_ms.store(now, Ordering::Relaxed);
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Idle, or responding: `keepalive_idle` from now.
            a.due(now.saturating_add(a.idle_ms));
        }
    }
}

/// An HTTP/1 response body still being sent, after its request
/// ([`Phase::Responding`]).
struct Responding(Arc<Activity>);

impl Busy {
    /// The request has its response head: what is left is its body.
    fn responding(self) -> Responding {
        let a = self.0.clone();
        a.responding.fetch_add(1, Ordering::Relaxed);
        drop(self);
        // The time the request's end was just stored at: one clock read.
        // (Phases are read by this connection's own task, which is the one
        // running this: none sees the moment before.)
        a.responding_ms
            .store(a.last_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        Responding(a)
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.now_ms();
        a.last_ms.store(now, Ordering::Relaxed);
        if a.responding.fetch_sub(1, Ordering::Relaxed) == 1
            && a.read_while_responding.swap(false, Ordering::Relaxed)
            && a.in_flight.load(Ordering::Relaxed) == 0
            && !a.head_pending.swap(true, Ordering::Relaxed)
        {
            // A next head arrived behind the response: its request_head
            // starts now.
            a.head_ms.store(now, Ordering::Relaxed);
            a.due(now.saturating_add(a.head_limit_ms));
        } else {
            a.due(now.saturating_add(a.idle_ms));
        }
    }
}

/// An HTTP/2 response body still being sent ([`Activity::streaming`]).
struct Streaming {
    activity: Arc<Activity>,
    seq: u64,
    /// The connection's [`Activity::writes`] once hyper had queued what
    /// it was last handed of the response (its head, then each frame):
    /// read at the body's next poll, which hyper makes only after queuing.
    handed: u64,
    /// Something was handed since `handed` was read.
    fresh: bool,
}

impl Busy {
    /// The HTTP/2 request has its response head: what is left is its
    /// body, bounded from now on by `keepalive_idle`.
    fn streaming(self) -> Streaming {
        let activity = self.0.clone();
        drop(self);
        let since = activity.last_ms.load(Ordering::Relaxed);
        let seq = activity.streaming_seq.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut streaming = lock(&activity.streaming);
            streaming.insert(seq, since);
            streaming.len() == 1
        };
        if first {
            // The watchdog's timer may be set for later than this one's
            // bound (a busy connection re-checks only every keepalive_idle).
            activity.due(since.saturating_add(activity.idle_ms));
        }
        Streaming {
            activity,
            seq,
            handed: 0,
            fresh: true,
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        lock(&self.activity.streaming).remove(&self.seq);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Activity {
    fn new(instance: &Arc<Instance>, limits: &Limits, timeouts: &Timeouts) -> Activity {
        Activity {
            instance: instance.clone(),
            detached: AtomicUsize::new(0),
            max_detached: limits.h2_max_concurrent_streams as usize,
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            calm: tokio::sync::Notify::new(),
            last_ms: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            head_ms: AtomicU64::new(0),
            head_limit_ms: millis(timeouts.request_head),
            idle_ms: millis(timeouts.keepalive_idle),
            send_ms: millis(timeouts.client_send_idle),
            alarm: crate::lazy::Alarm::default(),
            began: tokio::sync::Notify::new(),
            awaiting_request: AtomicBool::new(false),
            blocked_ms: AtomicU64::new(NOT_BLOCKED),
            http2: AtomicBool::new(false),
            responding: AtomicUsize::new(0),
            responding_ms: AtomicU64::new(0),
            read_while_responding: AtomicBool::new(false),
            streaming: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            streaming_seq: AtomicU64::new(0),
            aged: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }
    }

    /// A phase began whose deadline is `at`: the watchdog is woken to
    /// re-arm when its timer is set for later. For a head it never is (on
    /// HTTP/1 the timer is set at most `request_head` ahead), so nothing
    /// is woken per request. Called from the connection's task, and for
    /// HTTP/2 streams and detached requests from their own tasks: a phase
    /// that begins while the watchdog reads the phase wakes it again
    /// ([`crate::lazy::Alarm`]).
    fn due(&self, at: u64) {
        self.alarm.due(at);
    }

    /// A write to the client returned `Pending` (`true`) or went through.
    /// Blocking starts `client_send_idle`: the watchdog re-arms for it if
    /// it has to.
    fn write_blocked(&self, blocked: bool) {
        let was = self.blocked_ms.load(Ordering::Relaxed);
        if blocked && was == NOT_BLOCKED {
            let now = self.now_ms();
            self.blocked_ms.store(now, Ordering::Relaxed);
            self.due(now.saturating_add(self.send_ms));
        } else if !blocked && was != NOT_BLOCKED {
            self.blocked_ms.store(NOT_BLOCKED, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// HTTP/2: a request whose client reset its stream before its answer.
    /// h2's own guard counts only streams reset before the proxy took them;
    /// one reset just after (a few milliseconds later) has already begun
    /// its upload to a data centre, which then breaks off, connection and
    /// all. A connection whose client does that more than [`CANCELS_MAX`]
    /// times, and for more than a quarter of its requests, is ended (half
    /// let a client cancelling every other upload go on for ever; one that
    /// cancels one in fifty is far from it).
    fn cancelled(&self) {
        let n = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if n > CANCELS_MAX && n.saturating_mul(4) > self.requests() {
            self.calm.notify_one();
        }
    }

    /// Whether a write to the client is blocked (it is not reading).
    fn sending(&self) -> bool {
        self.blocked_ms.load(Ordering::Relaxed) != NOT_BLOCKED
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_pending.store(false, Ordering::Relaxed);
        // (The first request ends FirstRequest's deadline: the watchdog
        // finds it gone when its timer fires.)
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.awaiting_request.load(Ordering::Relaxed) {
            self.began.notify_one();
        }
        Busy(self.clone())
    }

    /// Work in flight that is not a request of its own: a request's body
    /// still read or discarded after its answer (`Conn::hold`).
    fn hold(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn phase(&self) -> Phase {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            Phase::Busy
        } else if self.responding.load(Ordering::Relaxed) > 0 {
            Phase::Responding {
                since: self.responding_ms.load(Ordering::Relaxed),
            }
        } else if self.requests() == 0 {
            Phase::FirstRequest
        } else if self.head_pending.load(Ordering::Relaxed) {
            Phase::Head {
                since: self.head_ms.load(Ordering::Relaxed),
            }
        } else {
            Phase::Idle {
                since: self.last_ms.load(Ordering::Relaxed),
            }
        }
    }

    /// Resolves once a request has begun after the first `since`, and the
    /// connection has then been idle (no head arriving either, no write to
    /// the client blocked) for `after`:
    /// HTTP/1 hyper is idle and may hand its stream back. Until a request
    /// begins it waits for one (no timer); then it re-checks on a timer:
    /// `after` past the connection going idle, and while a request is in
    /// flight at intervals from `after` doubling up to [`QUIET_BUSY_MAX`],
    /// so that a body trickling for minutes does not wake it ten times a
    /// second (nothing tells it when a request ends: that would cost every
    /// request a notification).
    async fn quiet(&self, since: u64, after: Duration) {
        let after = millis(after);
        let mut busy = after;
        loop {
            if self.requests() == since {
                let began = self.began.notified();
                tokio::pin!(began);
                began.as_mut().enable();
                self.awaiting_request.store(true, Ordering::Relaxed);
                if self.requests() == since {
                    began.await;
                }
                self.awaiting_request.store(false, Ordering::Relaxed);
                continue;
            }
            let wait = match self.phase() {
                // Not while a write to the client is blocked: hyper is then
                // still sending answers (a client that pipelines and reads
                // late), not idle between requests, and its graceful
                // shutdown would end keep-alive with the rest of the
                // burst unread.
                Phase::Idle { since: idle } if !self.sending() => {
                    busy = after;
                    let quiet_for = self.now_ms().saturating_sub(idle);
                    if quiet_for >= after {
                        return;
                    }
                    after - quiet_for
                }
                _ => {
                    let wait = busy;
                    busy = (busy * 2).min(millis(QUIET_BUSY_MAX));
                    wait
                }
            };
            crate::lazy::sleep(Duration::from_millis(wait.max(10))).await;
        }
    }

    /// HTTP/1: hyper handed back, with the stream, bytes it had read past
    /// the last request: the start of a next head, read while the request
    /// before was in flight (the write of its end, from a client that
    /// pipelines), which no phase saw. The head has `request_head` from
    /// when that request ended, at the latest when its first byte came.
    fn head_read_while_busy(&self) {
        if let Phase::Idle { since } = self.phase() {
            if !self.head_pending.swap(true, Ordering::Relaxed) {
                self.head_ms.store(since, Ordering::Relaxed);
                self.due(since.saturating_add(self.head_limit_ms));
            }
        }
    }

    /// After a deadline fired (the watchdog is done): resolves once a
    /// write to the client has been blocked for `client_send_idle`.
    async fn send_stalled(&self) {
        self.alarm
            .wait(|| {
                let now = self.now_ms();
                match self.blocked_ms.load(Ordering::Relaxed) {
                    NOT_BLOCKED => Err((now, u64::MAX)),
                    since if now >= since.saturating_add(self.send_ms) => Ok(()),
                    since => Err((now, since.saturating_add(self.send_ms))),
                }
            })
            .await
    }

    /// HTTP/1 bytes were read: with nothing in flight, they start the next
    /// request head, which then has `request_head` to complete.
    fn read(&self) {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        if self.responding.load(Ordering::Relaxed) > 0 {
            self.read_while_responding.store(true, Ordering::Relaxed);
            return;
        }
        if !self.head_pending.swap(true, Ordering::Relaxed) {
            let now = self.now_ms();
            self.head_ms.store(now, Ordering::Relaxed);
            self.due(now.saturating_add(self.head_limit_ms));
        }
    }

    /// Resolves with the deadline's name once the current phase outlives
    /// it: `request_head` (the first head, or a later HTTP/1 head from its
    /// first byte) or `keepalive_idle`; or [`CLIENT_SEND`] once a write to
    /// the client has been blocked for `client_send_idle`, in any phase;
    /// or [`STREAMING`] once an HTTP/2 response body is still being sent
    /// `keepalive_idle` after its head, in any phase.
    /// One timer: when it fires the phase is looked at again (a busy
    /// connection is re-checked every `keepalive_idle`, an HTTP/1 one at
    /// least every `request_head`). A phase whose deadline falls before the
    /// timer's wakes it early ([`Activity::due`]); a head starting never
    /// does.
    async fn expired(&self) -> &'static str {
        self.alarm.wait(|| self.look()).await
    }

    /// The deadline whose phase has outlived it, or `(now, when the
    /// earliest passes)`.
    fn look(&self) -> Result<&'static str, (u64, u64)> {
        let (head, idle, send) = (self.head_limit_ms, self.idle_ms, self.send_ms);
        let phase = self.phase();
        let now = self.now_ms();
        let blocked = self.blocked_ms.load(Ordering::Relaxed);
        if blocked != NOT_BLOCKED && now >= blocked.saturating_add(send) {
            return Ok(CLIENT_SEND);
        }
        let at = match phase.deadline(head, idle) {
            Some(at) if now >= at => return Ok(phase.name()),
            Some(at) => at,
            None => now.saturating_add(idle),
        };
        // HTTP/1: a next head may start any time, with `request_head`
        // from then; set no later than that, the timer never has to be
        // brought forward for one (`due` wakes nothing per request).
        let at = if self.http2.load(Ordering::Relaxed) {
            at
        } else {
            at.min(now.saturating_add(head))
        };
        // The oldest HTTP/2 response still being sent, in any phase.
        let oldest = lock(&self.streaming)
            .first_key_value()
            .map(|(_, since)| *since);
        let at = match oldest.map(|since| since.saturating_add(idle)) {
            Some(due) if now >= due => return Ok(STREAMING),
            Some(due) => at.min(due),
            None => at,
        };
        let at = match blocked {
            NOT_BLOCKED => at,
            since => at.min(since.saturating_add(send)),
        };
        Err((now, at))
    }
}

/// A response body that keeps its HTTP/1 connection out of the idle phase
/// ([`Responding`]) until hyper has taken it to its end (or dropped it): a
/// response still streaming is not an idle connection, so it is neither
/// parked nor closed under it (hyper's graceful shutdown would end
/// keep-alive), and bytes of a next request pipelined meanwhile start
/// their `request_head` only when it ends. It is bounded as an idle
/// connection is ([`Phase::Responding`]), and a client that stops reading
/// it by `client_send_idle`.
pub(crate) struct Served {
    body: ProxyBody,
    responding: Option<Responding>,
    streaming: Option<Streaming>,
    /// The body's error, held back (see `poll_frame`).
    failed: Option<Box<Failed>>,
}

type ServedError = <ProxyBody as hyper::body::Body>::Error;

/// A response body's error, held back until what was given to hyper
/// before it has gone out to the client.
struct Failed {
    error: ServedError,
    /// HTTP/2: when to look at the connection's writes again.
    look: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wait before that look: 1 ms, doubling, and after the one of
    /// [`FAILED_WAIT_MAX`] the error goes to hyper regardless.
    wait: Duration,
}

/// The longest single wait of a failed HTTP/2 body for the connection's
/// writes (about twice that in all).
const FAILED_WAIT_MAX: Duration = Duration::from_millis(512);

impl Failed {
    fn new(error: ServedError) -> Failed {
        Failed {
            error,
            look: None,
            wait: Duration::from_millis(1),
        }
    }

    /// Whether what hyper was given before the failure has gone out.
    /// HTTP/1: yes, once polled again (hyper flushes when the body waits,
    /// in the same task). HTTP/2: once the connection's task, which writes
    /// the stream's queued head and data, has written since hyper had
    /// queued the last of it (at once if that was long before the
    /// failure), looked at on a timer (the connection does not wake this
    /// stream's task), for about a second at most. A write of the
    /// connection's other streams counts too, so on a connection busy
    /// with others this one's may still be dropped.
    fn sent(&mut self, streaming: Option<&Streaming>, cx: &mut Context<'_>) -> bool {
        let Some(streaming) = streaming else {
            return true;
        };
        loop {
            if streaming.activity.writes.load(Ordering::Relaxed) > streaming.handed {
                return true;
            }
            let wait = self.wait;
            if wait > FAILED_WAIT_MAX {
                return true;
            }
            let look = self
                .look
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            if look.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.wait = wait * 2;
            look.as_mut().reset(Instant::now() + self.wait);
        }
    }
}

impl hyper::body::Body for Served {
    type Data = Bytes;
    type Error = ServedError;

    /// A body that fails (a data centre's answer that broke off) fails
    /// to hyper only once what it was given before has gone out
    /// ([`Failed::sent`]): hyper writes an answer's head, with the receipt,
    /// and its data only when the body waits, and HTTP/2 drops a reset
    /// stream's queued frames, so a body that failed at once (an answer cut
    /// off within what was taken in with its head) would end the
    /// connection or stream with nothing sent. The client then has the
    /// data centre's status and sees the body cut short (see
    /// `serve_until_quiet`).
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(streaming) = this.streaming.as_mut().filter(|s| s.fresh) {
            streaming.handed = streaming.activity.writes.load(Ordering::Relaxed);
            streaming.fresh = false;
        }
        if let Some(failed) = &mut this.failed {
            if !failed.sent(this.streaming.as_ref(), cx) {
                return Poll::Pending;
            }
            if let Some(responding) = &this.responding {
                responding.0.broken.store(true, Ordering::Relaxed);
            }
            let failed = this.failed.take().map(|f| f.error);
            return Poll::Ready(failed.map(Err));
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                this.responding = None;
                this.streaming = None;
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = Some(Box::new(Failed::new(e)));
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(_))) => {
                if let Some(streaming) = &mut this.streaming {
                    streaming.fresh = true;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request's future that is not cancelled with its client: hyper drops
/// it when the connection (or the h2 stream) goes away, and then it moves
/// into a task of its own and runs to its end. A delivery in progress
/// completes and gets its transparency record; a body the client did not
/// finish still fails as `client_aborted`. The future holds the connection's
/// `proxy::Conn`, which owns its permit, so draining at shutdown waits for
/// it. Nothing extra
/// happens while the client stays.
///
/// Bounded: HTTP/2 frees a stream's concurrency slot as soon as it is
/// reset, so a client could reset streams faster than their deliveries end.
/// At most `h2_max_concurrent_streams` requests per connection and
/// `limits.max_detached_requests` per process run detached; beyond either,
/// a dropped request is cancelled like any future (counted in
/// `residency_detached_requests_cancelled_total`).
struct Detached<F: Future<Output = Answer> + Send + 'static> {
    /// The request's future, in a box that goes back to `spare` when it
    /// has ended (`None` inside it then).
    fut: Option<Pin<Box<Option<F>>>>,
    spare: Spare<F>,
    /// The request's place in its connection's activity (and, detached, in
    /// the budgets): held until the future ends (then, over HTTP/1, its
    /// response's body is [`Responding`]).
    busy: Option<Busy>,
}

/// What a request's future gives hyper.
type Answer = Result<http::Response<ProxyBody>, std::convert::Infallible>;

/// A connection's box for its next request's future: the last one's, given
/// back when its future ended. A request's future is over 3 KiB, which
/// mimalloc allocates on its slow path (~200 instructions, issue 23);
/// HTTP/1 runs one request at a time, so one box serves them all. A
/// request that is detached takes its box along; HTTP/2's concurrent
/// streams allocate when it is taken and keep one. Emptied when an HTTP/1
/// connection parks, which then holds no request's memory.
type Spare<F> = Arc<Mutex<Option<Pin<Box<Option<F>>>>>>;

/// A detached request's place in the budgets; given back when it ends (its
/// `Busy` with it).
struct DetachedBusy(Busy);

impl Busy {
    /// Takes a place in the connection's and the process's detached-request
    /// budgets, or hands itself back when either is full.
    fn detach(self) -> Result<DetachedBusy, Busy> {
        let a = &self.0;
        if a.detached.fetch_add(1, Ordering::Relaxed) >= a.max_detached {
            a.detached.fetch_sub(1, Ordering::Relaxed);
            return Err(self);
        }
        let global = &a.instance.detached;
        let limit = a.instance.snapshot().config.limits.max_detached_requests;
        if global.fetch_add(1, Ordering::Relaxed) >= limit {
            global.fetch_sub(1, Ordering::Relaxed);
            a.detached.fetch_sub(1, Ordering::Relaxed);
            return Err(self);
        }
        a.instance.metrics.detached.inc();
        Ok(DetachedBusy(self))
    }
}

impl Drop for DetachedBusy {
    fn drop(&mut self) {
        let a = &(self.0).0;
        a.detached.fetch_sub(1, Ordering::Relaxed);
        a.instance.detached.fetch_sub(1, Ordering::Relaxed);
        a.instance.metrics.detached.dec();
    }
}

impl<F: Future<Output = Answer> + Send + 'static> Future for Detached<F> {
    type Output = Result<http::Response<Served>, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(mut fut) = self.fut.take() else {
            return Poll::Pending;
        };
        // Taken out while polled: a future that panics is not detached.
        let polled = match fut.as_mut().as_pin_mut() {
            Some(inner) => inner.poll(cx),
            None => return Poll::Pending,
        };
        match polled {
            Poll::Pending => {
                self.fut = Some(fut);
                Poll::Pending
            }
            Poll::Ready(Ok(resp)) => {
                fut.set(None);
                if let Ok(mut spare) = self.spare.lock() {
                    // One kept (HTTP/2 may end several at once).
                    spare.get_or_insert(fut);
                }
                // Its request ends at the head; what is left is its body,
                // bounded from its head (HTTP/1: the connection's phase;
                // HTTP/2, where other streams may keep the connection
                // busy: each stream by itself).
                let (mut responding, mut streaming) = (None, None);
                let mut resp = resp;
                if let Some(busy) = self.busy.take() {
                    if !busy.0.http2.load(Ordering::Relaxed) {
                        if busy.0.aged.load(Ordering::Relaxed) {
                            // hyper ends keep-alive after this response.
                            resp.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        responding = Some(busy.responding());
                    } else if !hyper::body::Body::is_end_stream(resp.body()) {
                        streaming = Some(busy.streaming());
                    }
                }
                Poll::Ready(Ok(resp.map(|body| Served {
                    body,
                    responding,
                    streaming,
                    failed: None,
                })))
            }
            Poll::Ready(Err(never)) => match never {},
        }
    }
}

impl<F: Future<Output = Answer> + Send + 'static> Drop for Detached<F> {
    fn drop(&mut self) {
        let Some(mut fut) = self.fut.take() else {
            return;
        };
        if fut.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(busy) = self.busy.take() else {
            return;
        };
        if busy.0.http2.load(Ordering::Relaxed) {
            busy.0.cancelled();
        }
        // Cut at the end of shutdown_grace: dropped here (it records
        // itself), not moved to a task that would outlive the final
        // checkpoint.
        let cut = busy.0.instance.cut.subscribe();
        if *cut.borrow() {
            return;
        }
        match busy.detach() {
            Ok(detached) => drop(runtime.spawn(crate::shutdown::until_cut(
                async move {
                    // (Never `None`: looked at above.)
                    let _ = std::future::poll_fn(|cx| {
                        fut.as_mut()
                            .as_pin_mut()
                            .map_or(Poll::Pending, |inner| inner.poll(cx))
                    })
                    .await;
                    drop(detached);
                },
                cut,
            ))),
            Err(busy) => {
                busy.0.instance.metrics.detached_cancelled.inc();
                tracing::debug!(
                    "detached-request budget full: a request whose client left is cancelled"
                );
            }
        }
    }
}

/// The client stream, telling [`Activity`] when bytes arrive (HTTP/1 only:
/// `heads` is off for h2, whose pings and window updates are not request
/// heads) and when writes to the client block and unblock (both).
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    heads: bool,
}

impl<T> Watched<T> {
    /// Notes whether a write made progress.
    fn sent<R>(&self, polled: Poll<R>) -> Poll<R> {
        self.activity.write_blocked(polled.is_pending());
        polled
    }

    /// [`Watched::sent`] for a write, counted when it took bytes.
    fn wrote(&self, polled: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(1..)) = polled {
            let writes = &self.activity.writes;
            writes.store(writes.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        self.sent(polled)
    }
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
        if let Poll::Ready(Ok(())) = &result {
            // Empty lines before a head are no head (RFC 9112 §2.2: a
            // client's CRLF after its body): they start no request_head.
            let read = &buf.filled()[before..];
            if this.heads && !read.iter().copied().all(empty_line) {
                this.activity.read();
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
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.sent(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
