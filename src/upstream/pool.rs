//! The upstream connection pool: HTTP/1.1 keep-alive connections, kept per
//! upstream (indexed by [`UpstreamId`]), `http` or `https`.
//!
//! A request takes the most recently used idle connection of its upstream
//! (stale ones are dropped on the way), or connects a new one. A connection
//! goes back to the pool when its response body has been read to the end
//! and it can take a next request (its request body written too: a data
//! centre may answer before it has read the body); one dropped earlier
//! (client gone, error) is closed by hyper. At most
//! `pool_max_idle_per_host` idle connections are kept per upstream, none
//! longer than `pool_idle_timeout` (a reaper task closes the expired ones).
//!
//! A request that a pooled connection never started writing (the upstream
//! had closed it) is sent again on the next connection: provably nothing
//! of it reached the upstream. Connecting (TCP and TLS together) is
//! bounded by `timeouts.upstream_connect`.
//!
//! At most `upstream.max_connections_per_upstream` connections are open to
//! one upstream (busy and idle; each holds a permit for its lifetime). A
//! request that finds none idle and no room waits for either, up to
//! `timeouts.upstream_connect`, and then fails as [`Error::Saturated`]:
//! nothing was sent, so it may go to another permitted upstream.
//!
//! This replaces hyper-util's general-purpose client on the hot path: no
//! pool key hashing, no connector clone and no extra task per request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

use super::body::{BodySlot, ForwardBody};
use super::progress::{Tracked, Watch, WriteProgress};
use residency_core::policy::UpstreamId;

/// The largest response head a data centre may send (its fields, each
/// counted as `name: value` and CRLF), and hyper's `max_buf_size` for an
/// upstream connection. hyper checks that only before each read while a
/// head is incomplete (and reserves up to as much again), so its buffer
/// stays under twice this, and a larger head read in one go is refused by
/// the caller (`proxy::headers::from_upstream`).
pub const RESPONSE_HEAD_LIMIT: usize = 64 * 1024;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP connect failed or timed out: nothing was sent.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed or timed out: nothing was sent.
    #[error("TLS: {0}")]
    Tls(io::Error),
    /// The exchange failed on an established connection.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// `max_connections_per_upstream` connections were busy for the whole
    /// of `upstream_connect`: nothing was sent.
    #[error("max_connections_per_upstream connections busy for upstream_connect")]
    Saturated,
    /// The request waited for its connection and its caller asked to
    /// look again before it is sent ([`Pool::send_or_return`]): nothing
    /// was sent; a connection made is kept for the resend.
    #[error("handed back unsent after waiting for a connection, for its caller to look again")]
    Waited,
}

impl Error {
    /// The proxy's own resources ran out (its socket could not be made:
    /// out of file descriptors, EMFILE/ENFILE, or buffers, ENOBUFS): says
    /// nothing of the upstream's health.
    pub fn is_local_exhaustion(&self) -> bool {
        // Linux's errno values (std has no ErrorKind for them).
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        const ENOBUFS: i32 = 105;
        matches!(self, Error::Connect(e) if matches!(e.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS)))
    }

    /// True when no connection was established (so nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::Tls(_))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls(_))
    }
}

/// Where one upstream is reached.
#[derive(Debug)]
struct Target {
    /// Host name or address, without IPv6 brackets.
    host: String,
    port: u16,
    /// `https`: the name its certificate must carry.
    tls: Option<ServerName<'static>>,
    /// `Host` for requests that carry none.
    authority: HeaderValue,
}

struct Idle {
    tx: SendRequest<ForwardBody>,
    progress: Arc<WriteProgress>,
    since: Instant,
}

/// One upstream's connection limit.
struct Room {
    /// One permit per connection that may be open.
    permits: Arc<Semaphore>,
    /// Woken when a connection goes back to the idle list.
    freed: Notify,
}

struct Inner {
    targets: Vec<Target>,
    idle: Vec<Mutex<Vec<Idle>>>,
    /// Shared with the pool of the configuration this one replaced, for the
    /// upstreams both have ([`Pool::inherit`]).
    rooms: Vec<Arc<Room>>,
    /// Replaced by a reload's pool: connections its requests finish with
    /// close instead of waiting idle (they hold their room's permits).
    retired: AtomicBool,
    max_connections: usize,
    tls: TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    response_idle: Duration,
    send_idle: Duration,
    reaper_started: AtomicBool,
}

/// Settings of a [`Pool`].
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_upstream: usize,
    /// The longest a response body may send nothing (`upstream_response_idle`).
    pub response_idle: Duration,
    /// `upstream_send_idle`: a connection whose writes stay blocked twice
    /// that long is closed, whether or not a request still watches it
    /// (after an early answer, none does).
    pub send_idle: Duration,
    /// Connections open to one upstream at most (busy and idle).
    pub max_connections_per_upstream: usize,
}

/// Pooled HTTP/1.1 connections to every upstream of one configuration.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("targets", &self.inner.targets)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// One slot per upstream URI, in [`UpstreamId`] order. `tls` verifies
    /// `https` upstreams (its ALPN is set to `http/1.1`). Fails on a URI
    /// without a host.
    pub fn new(
        upstreams: impl IntoIterator<Item = Uri>,
        mut tls: rustls::ClientConfig,
        settings: PoolSettings,
    ) -> Result<Pool, String> {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let targets = upstreams
            .into_iter()
            .map(|uri| target(&uri))
            .collect::<Result<Vec<_>, _>>()?;
        let idle = targets.iter().map(|_| Mutex::new(Vec::new())).collect();
        let max_connections = settings
            .max_connections_per_upstream
            .clamp(1, Semaphore::MAX_PERMITS);
        let rooms = targets
            .iter()
            .map(|_| {
                Arc::new(Room {
                    permits: Arc::new(Semaphore::new(max_connections)),
                    freed: Notify::new(),
                })
            })
            .collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                targets,
                idle,
                rooms,
                max_connections,
                tls: TlsConnector::from(Arc::new(tls)),
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.idle_timeout,
                max_idle: settings.max_idle_per_upstream,
                response_idle: settings.response_idle,
                send_idle: settings.send_idle,
                reaper_started: AtomicBool::new(false),
                retired: AtomicBool::new(false),
            }),
        })
    }

    /// A reload's pool takes over `old`'s connection limits: each upstream
    /// both have (the same host, port and scheme) shares its room, so the
    /// connections the old configuration's requests still hold count
    /// against `max_connections_per_upstream` (a fresh count per reload let
    /// a data centre get that many again after each). Unless the limit
    /// changed: then the new one counts from nothing. `old` is retired: its
    /// idle connections close now, its busy ones when their requests end.
    /// Call before `self` is shared (false, and nothing taken over, if it
    /// is).
    pub fn inherit(&mut self, old: &Pool) -> bool {
        let Some(inner) = Arc::get_mut(&mut self.inner) else {
            return false;
        };
        let before = &old.inner;
        if inner.max_connections == before.max_connections {
            for (target, room) in inner.targets.iter().zip(inner.rooms.iter_mut()) {
                let same = before.targets.iter().position(|t| t.same_place(target));
                if let Some(i) = same {
                    *room = before.rooms[i].clone();
                }
            }
        }
        before.retired.store(true, Ordering::Relaxed);
        for slot in &before.idle {
            if let Ok(mut idle) = slot.lock() {
                idle.clear();
            }
        }
        true
    }

    /// Sends `req` (origin-form URI) to upstream `u` and returns the
    /// response, its body still streaming. A request without `Host` gets
    /// the upstream's ([`Pool::host`]).
    pub async fn send(
        &self,
        u: UpstreamId,
        req: Request<ForwardBody>,
    ) -> Result<Response<Body>, Error> {
        let watch = Watch::default();
        self.send_with(u, self.hosted(u, req), &watch, true, true, None)
            .await
            .map_err(|(e, _)| e)
    }

    /// An active health probe: like [`Pool::send`], but never waits for
    /// the connection cap — with every permitted connection busy it opens
    /// one beyond the cap, closed after its exchange, so that a saturated
    /// upstream is not taken for a dead one. `fresh`: on a new connection,
    /// never an idle one (a probe that readmits an upstream must have
    /// tested TCP, TLS and the connect deadline: an old connection still
    /// works after the upstream stopped taking new ones).
    pub async fn probe(
        &self,
        u: UpstreamId,
        req: Request<ForwardBody>,
        fresh: bool,
    ) -> Result<Response<Body>, Error> {
        let watch = Watch::default();
        self.send_with(u, self.hosted(u, req), &watch, false, !fresh, None)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Pool::send`], handing the request back as it came when it was
    /// never sent (`Connect`, `Tls`), so that a retry elsewhere need not
    /// have kept a copy. The request carries its `Host` already (the
    /// forwarding sets [`Pool::host`] per attempt; not looked up here).
    /// `watch` gets the write progress of the connection the request goes
    /// out on.
    ///
    /// (Not an `async fn`, nor is `send_with`: an `async fn`'s future keeps
    /// each argument twice, and the request is 256 bytes; every level of
    /// the request's future is copied when it is created, issue 23.)
    ///
    /// A request that waits for its connection is handed back unsent
    /// ([`Error::Waited`]) each time it has — woken while it waited at the
    /// cap by a connection freed, or a new connection made (kept for the
    /// resend) — for the caller to look again before sending it again: it
    /// may find what it waited for taken by another request meanwhile, and
    /// wait again. One at hand is used at once. `waited` is the caller's,
    /// kept across the resends to one upstream: when its waiting ends
    /// (`upstream_connect` after it first waited), so that the resends of
    /// one request wait no longer than one would (an upload woken at the
    /// cap and handed back waited up to twice as long, and a resend that
    /// had to wait again was sent without being looked at again:
    /// verification, stop 70). (Not a callback: the request's future is
    /// moved whole, issue 23.)
    pub fn send_or_return<'a>(
        &'a self,
        u: UpstreamId,
        req: Request<ForwardBody>,
        watch: &'a Watch,
        waited: &'a mut Option<tokio::time::Instant>,
    ) -> impl Future<Output = Sent> + 'a {
        debug_assert!(req.headers().contains_key(header::HOST), "no Host");
        self.send_with(u, req, watch, true, true, Some(waited))
    }

    /// `capped`: wait for the connection cap (else open an unpooled
    /// connection beyond it when it is full). `reuse`: take an idle
    /// connection when there is one (else always a new one). `recheck`:
    /// hand the request back after each wait, its waiting's end kept there
    /// ([`Pool::send_or_return`]).
    #[allow(clippy::manual_async_fn)] // its arguments once, not twice
    fn send_with<'a>(
        &'a self,
        u: UpstreamId,
        mut req: Request<ForwardBody>,
        watch: &'a Watch,
        capped: bool,
        reuse: bool,
        mut recheck: Option<&'a mut Option<tokio::time::Instant>>,
    ) -> impl Future<Output = Sent> + 'a {
        async move {
            let inner = &self.inner;
            let room = &inner.rooms[u.0];
            // From when the cap is first met (read then: rarely needed),
            // or when a resend's waiting began.
            let mut deadline = recheck.as_deref().copied().flatten();
            let permit = loop {
                let idle = if reuse { self.checkout(u).await } else { None };
                if let Some((mut tx, progress)) = idle {
                    set(watch, &progress);
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(self.wrap(u, tx, progress, resp, true)),
                        Err(mut e) => match e.take_message() {
                            // Never written: the upstream had closed this one.
                            Some(unsent) => {
                                req = unsent;
                                continue;
                            }
                            None => return Err((Error::Http(e.into_error()), None)),
                        },
                    }
                }
                if let Ok(permit) = room.permits.clone().try_acquire_owned() {
                    break Some(permit);
                }
                if !capped {
                    break None;
                }
                // At the cap (rare): registered, then looked at again, so a
                // connection freed meanwhile is not missed.
                let freed = room.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if self.idle(u) > 0 || room.permits.available_permits() > 0 {
                    continue;
                }
                let deadline = *deadline.get_or_insert_with(|| {
                    let until = tokio::time::Instant::now() + inner.connect_timeout;
                    if let Some(waited) = recheck.as_deref_mut() {
                        *waited = Some(until);
                    }
                    until
                });
                // Woken after waiting at the cap (room made, or a
                // connection freed): handed back at once with `recheck`,
                // the room let go — not used to connect first: an upload
                // then refused would keep that connection, and its room,
                // in a pool a reload replaced (verification, stop 70).
                // The caller sends it again to take what was freed;
                // taken by another first, it waits again, and is handed
                // back again, until the same deadline.
                tokio::select! {
                    permit = room.permits.clone().acquire_owned() => match permit {
                        Ok(_) if recheck.is_some() => return Err((Error::Waited, Some(req))),
                        Ok(permit) => break Some(permit),
                        Err(_) => return Err((Error::Saturated, Some(req))),
                    },
                    () = &mut freed => {
                        // (Not for a notification left from before it
                        // waited, with nothing idle.)
                        if recheck.is_some() && self.idle(u) > 0 {
                            return Err((Error::Waited, Some(req)));
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        return Err((Error::Saturated, Some(req)));
                    }
                }
            };
            // Only a connection within the cap is pooled afterwards.
            let pooled = permit.is_some();
            // A resend whose waiting has run out (what it waited for taken
            // by others each time): not a connection more.
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err((Error::Saturated, Some(req)));
            }
            // Boxed: connecting is rare, and its TLS state is large.
            let (mut tx, progress) = match Box::pin(self.connect(u, permit)).await {
                Ok(connected) => connected,
                Err(e) => return Err((e, Some(req))),
            };
            // Connecting (and any wait for room) took time: the caller may
            // no longer want it sent there (reload audit, stop 69). Its
            // waiting began, if not before.
            if let Some(waited) = recheck {
                if waited.is_none() {
                    *waited = Some(tokio::time::Instant::now() + inner.connect_timeout);
                }
                if pooled {
                    self.keep_for_resend(u, tx, progress);
                }
                return Err((Error::Waited, Some(req)));
            }
            set(watch, &progress);
            match tx.send_request(req).await {
                Ok(resp) => Ok(self.wrap(u, tx, progress, resp, pooled)),
                Err(e) => Err((Error::Http(e), None)),
            }
        }
    }

    /// The freshest usable idle connection of `u`, if any.
    async fn checkout(
        &self,
        u: UpstreamId,
    ) -> Option<(SendRequest<ForwardBody>, Arc<WriteProgress>)> {
        let inner = &self.inner;
        loop {
            let Idle {
                mut tx,
                progress,
                since,
            } = inner.idle[u.0].lock().ok()?.pop()?;
            if since.elapsed() >= inner.idle_timeout || tx.is_closed() {
                continue;
            }
            if tx.is_ready() {
                return Some((tx, progress));
            }
            // Its connection task has not yet taken in the end of the last
            // exchange; bounded, since a wedged connection must not hold
            // the request.
            if let Ok(Ok(())) = tokio::time::timeout(inner.connect_timeout, tx.ready()).await {
                return Some((tx, progress));
            }
        }
    }

    /// A new connection to `u`; it holds `permit` (if any) while it is open.
    async fn connect(
        &self,
        u: UpstreamId,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(SendRequest<ForwardBody>, Arc<WriteProgress>), Error> {
        let inner = &self.inner;
        let target = &inner.targets[u.0];
        let deadline = tokio::time::Instant::now() + inner.connect_timeout;
        let tcp = connect_any(target.host.as_str(), target.port, deadline)
            .await
            .map_err(Error::Connect)?;
        tcp.set_nodelay(true).map_err(Error::Connect)?;
        // Bytes an upstream takes no more of are the kernel's to hold: a
        // connection given up on (below, or a request's watchdog) still
        // has them in its send buffer, up to 4 MiB, and a data centre
        // whose kernel keeps acknowledging the window probes while it
        // reads nothing keeps the closed socket, and them, for as long as
        // it hangs (abuse audit, stop 62: 750 MB for 200 uploads). The
        // kernel drops a connection whose sent data (or window probes)
        // went unanswered past this — the proxy gave up on it by then.
        let stalled = inner.send_idle.saturating_mul(2);
        user_timeout(&tcp, stalled);
        let io: Box<dyn Io> = match &target.tls {
            None => Box::new(tcp),
            Some(name) => {
                let tls = tokio::time::timeout_at(deadline, inner.tls.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| Error::Tls(connect_elapsed()))?
                    .map_err(Error::Tls)?;
                Box::new(tls)
            }
        };
        let progress = WriteProgress::new();
        let io = Tracked::new(io, progress.clone());
        // hyper's default is ~400 KiB, and its read buffer may grow that
        // far on every connection. A head with more than 100 fields (hyper's
        // default) is an error too.
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(RESPONSE_HEAD_LIMIT)
            .handshake(TokioIo::new(io))
            .await?;
        // A request's own watchdog ends its attempt at `upstream_send_idle`
        // of blocked writes; this bound also covers a request body still
        // written after the answer came (an early answer), which no request
        // watches any more: a data centre that stops reading then cannot
        // keep the connection, its permit and the client's body forever.
        let watched = progress.clone();
        tokio::spawn(async move {
            // The requests' response deadlines (`WriteProgress::due_in`),
            // polled only when its timer or a new deadline wakes it.
            let due = std::pin::pin!(watched.watch_due());
            let mut due = crate::lazy::Gated::new(due);
            let mut conn = std::pin::pin!(conn);
            let mut stalled = std::pin::pin!(watched.stalled(stalled));
            // Polled by hand, in this order (`select!`'s bookkeeping cost
            // ~100 instructions a request, issue 23): the connection
            // first, so that `stalled` sees its writes block in the same
            // pass (it registers no waker of its own).
            std::future::poll_fn(|cx| {
                if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    return Poll::Ready(());
                }
                if stalled.as_mut().poll(cx).is_ready() {
                    tracing::warn!(phase = "upstream_send_idle", "the upstream took no bytes for twice upstream_send_idle; its connection is closed");
                    return Poll::Ready(());
                }
                Pin::new(&mut due).poll(cx)
            })
            .await;
            drop(permit);
        });
        Ok((tx, progress))
    }

    fn wrap(
        &self,
        u: UpstreamId,
        tx: SendRequest<ForwardBody>,
        progress: Arc<WriteProgress>,
        resp: Response<Incoming>,
        pooled: bool,
    ) -> Response<Body> {
        let idle_ms = u32::try_from(self.inner.response_idle.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        resp.map(|inner| Body {
            inner,
            idle_ms,
            timer: None,
            ended: false,
            ahead: None,
            lease: pooled.then(|| Lease {
                pool: self.clone(),
                u,
                tx,
            }),
            progress: Some(progress),
            slot: None,
        })
    }

    /// A new connection made for a request handed back to be looked at
    /// again ([`Error::Waited`]): idle for it to take when it is sent
    /// again, the next thing its task does — even with pooling off
    /// (`pool_max_idle_per_host = 0`) or the idle list full, which [`put`]
    /// would refuse, and the request would connect a second time.
    /// (`max_idle` bounds what stays idle; this does not stay.)
    ///
    /// [`put`]: Pool::put
    #[cold]
    fn keep_for_resend(
        &self,
        u: UpstreamId,
        tx: SendRequest<ForwardBody>,
        progress: Arc<WriteProgress>,
    ) {
        if let Ok(mut idle) = self.inner.idle[u.0].lock() {
            idle.push(Idle {
                tx,
                progress,
                since: Instant::now(),
            });
        }
    }

    /// Keeps `tx` for the next request to `u`, if there is room.
    fn put(&self, u: UpstreamId, tx: SendRequest<ForwardBody>, progress: Arc<WriteProgress>) {
        let inner = &self.inner;
        if inner.max_idle == 0
            || tx.is_closed()
            || progress.failed()
            || inner.retired.load(Ordering::Relaxed)
        {
            return;
        }
        let Ok(mut idle) = inner.idle[u.0].lock() else {
            return;
        };
        if idle.len() >= inner.max_idle {
            return;
        }
        idle.push(Idle {
            tx,
            progress,
            since: Instant::now(),
        });
        drop(idle);
        let room = &inner.rooms[u.0];
        // Only at the cap can a request be waiting for this connection.
        if room.permits.available_permits() == 0 {
            room.freed.notify_one();
        }
        // Started with the first idle connection (a body may be dropped
        // outside the runtime: then the next one starts it).
        if !inner.reaper_started.swap(true, Ordering::Relaxed) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(reap(Arc::downgrade(inner)))),
                Err(_) => inner.reaper_started.store(false, Ordering::Relaxed),
            }
        }
    }

    /// The `Host` of requests to `u` (its URL's authority): [`Pool::send`]
    /// and [`Pool::probe`] set it on a request that carries none.
    pub fn host(&self, u: UpstreamId) -> &HeaderValue {
        &self.inner.targets[u.0].authority
    }

    /// `req` with [`Pool::host`] unless it has a `Host` of its own.
    fn hosted(&self, u: UpstreamId, mut req: Request<ForwardBody>) -> Request<ForwardBody> {
        if let header::Entry::Vacant(e) = req.headers_mut().entry(header::HOST) {
            e.insert(self.host(u).clone());
        }
        req
    }

    /// Idle connections kept for `u` (tests, metrics).
    pub fn idle(&self, u: UpstreamId) -> usize {
        self.inner.idle[u.0].lock().map_or(0, |idle| idle.len())
    }

    /// Connections open to `u`, busy and idle (metrics).
    pub fn open(&self, u: UpstreamId) -> usize {
        let inner = &self.inner;
        inner.max_connections - inner.rooms[u.0].permits.available_permits()
    }
}

fn set(watch: &Watch, progress: &Arc<WriteProgress>) {
    watch.set(progress);
}

/// Closes expired idle connections until the pool is gone.
async fn reap(pool: Weak<Inner>) {
    let period = match pool.upgrade() {
        Some(inner) => {
            (inner.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        for slot in &inner.idle {
            if let Ok(mut idle) = slot.lock() {
                idle.retain(|i| i.since.elapsed() < inner.idle_timeout && !i.tx.is_closed());
            }
        }
    }
}

impl Target {
    /// The same server, reached the same way.
    fn same_place(&self, other: &Target) -> bool {
        self.host == other.host && self.port == other.port && self.tls == other.tls
    }
}

fn target(uri: &Uri) -> Result<Target, String> {
    let host = uri
        .host()
        .ok_or_else(|| format!("{uri}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tls = if https {
        Some(ServerName::try_from(host.clone()).map_err(|e| format!("{uri}: {e}"))?)
    } else {
        None
    };
    let authority = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .ok_or_else(|| format!("{uri}: no authority"))?;
    Ok(Target {
        host,
        port,
        tls,
        authority,
    })
}

/// A TCP or TLS upstream stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The pooled connection a response body holds, returned to the pool once the
/// body has been read to the end.
struct Lease {
    pool: Pool,
    u: UpstreamId,
    tx: SendRequest<ForwardBody>,
}

/// What [`Pool::send_or_return`] comes to: the response, its body still
/// streaming, or the error and, when it was never sent, the request.
pub type Sent = Result<Response<Body>, (Error, Option<Request<ForwardBody>>)>;

/// An upstream response body. Read to its end, it returns its connection to
/// the pool; dropped earlier, the connection closes.
pub struct Body {
    inner: Incoming,
    /// `upstream_response_idle` in milliseconds (at least 1), and its
    /// timer once the body waited. Not a `Duration`: the response
    /// carrying the body stays well within the 256 bytes glibc's `memcpy`
    /// copies without a loop (issue 23; test
    /// `a_response_carrying_a_body_fits_a_short_copy`).
    idle_ms: u32,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body ended (`is_end_stream` alone misses a chunked body's end).
    ended: bool,
    lease: Option<Lease>,
    /// The connection's write progress: told when the body is dropped
    /// before its end, and kept with the connection when it is pooled
    /// (then taken from here).
    progress: Option<Arc<WriteProgress>>,
    /// Frames taken in ahead of the client ([`Body::take_in`]), in order.
    ahead: Option<Box<Ahead>>,
    /// The request's body slot, told when the answer has been taken from
    /// the connection ([`Body::tell_when_taken`]): the request's count
    /// against its client waits for that.
    slot: Option<Arc<BodySlot>>,
}

/// See [`Body::ahead`].
type Ahead = std::collections::VecDeque<Result<Frame<Bytes>, BodyError>>;

/// The most frames [`Body::take_in`] holds ahead of the client.
const AHEAD_FRAMES: usize = 64;

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("inner", &self.inner)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Why an upstream response body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    /// Nothing arrived for `timeouts.upstream_response_idle`.
    #[error("the upstream sent no response body data within upstream_response_idle")]
    Idle,
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(ahead) = &mut this.ahead {
            if let Some(frame) = ahead.pop_front() {
                return Poll::Ready(Some(frame));
            }
            if this.ended {
                return Poll::Ready(None);
            }
        }
        this.poll_upstream(cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.ahead {
            Some(ahead) if !ahead.is_empty() => false,
            _ => self.ended || self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.ahead {
            // Taken in whole: its length is known now.
            Some(ahead) if self.ended && ahead.iter().all(Result::is_ok) => SizeHint::with_exact(
                ahead
                    .iter()
                    .filter_map(|f| f.as_ref().ok()?.data_ref())
                    .map(|d| d.len() as u64)
                    .sum(),
            ),
            _ => self.inner.size_hint(),
        }
    }
}

impl Body {
    /// The next frame from the data centre (trailers skipped), the body's
    /// idle deadline running while it waits.
    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    // A timer only once the body has had to wait (a small
                    // answer usually arrives with its head).
                    let idle = this.idle();
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        tracing::warn!(phase = "upstream_response_idle", "timeout");
                        return Poll::Ready(Some(Err(BodyError::Idle)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(polled) => {
                    if let Some(timer) = &mut this.timer {
                        let idle = Duration::from_millis(u64::from(this.idle_ms));
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                    match polled {
                        None => {
                            this.ended = true;
                            this.give_back();
                            return Poll::Ready(None);
                        }
                        // A data centre's trailers are not passed on: an
                        // HTTP/1 client never gets them (`Trailer` is
                        // removed), and to an HTTP/2 client a hop-by-hop
                        // field among them resets the stream, a
                        // `Residency-*` one would pass unstripped.
                        Some(Ok(frame)) if frame.is_trailers() => continue,
                        Some(polled) => {
                            // The last frame taken in: the connection goes
                            // back now, not once the client has taken the
                            // frame (one that keeps its window shut would
                            // hold it, uncounted, for as long as its
                            // connection's deadlines let it).
                            if this.inner.is_end_stream() {
                                this.give_back();
                            }
                            return Poll::Ready(Some(polled.map_err(BodyError::from)));
                        }
                    }
                }
            }
        }
    }

    /// `upstream_response_idle`.
    fn idle(&self) -> Duration {
        Duration::from_millis(u64::from(self.idle_ms))
    }

    /// Tells `slot` when the answer has been taken from the connection
    /// to its end, or dropped ([`BodySlot::answer_taken`]); `false` if it
    /// has been already. A client that does not read a long answer (an
    /// HTTP/2 window kept shut, a socket not read) holds the data centre's
    /// connection until then, so the request stays counted against it,
    /// or one client could take every connection
    /// `upstream.max_connections_per_upstream` allows.
    pub fn tell_when_taken(&mut self, slot: &Arc<BodySlot>) -> bool {
        if self.ended || self.inner.is_end_stream() {
            return false;
        }
        self.slot = Some(slot.clone());
        true
    }

    /// An answer of unknown length (chunked) not yet taken in: see
    /// [`Body::take_in`].
    pub fn length_unknown(&self) -> bool {
        !self.ended && self.ahead.is_none() && self.inner.size_hint().exact().is_none()
    }

    /// Takes an answer of unknown length in ahead of the client, up to
    /// `limit` bytes: a small one — the usual answer to an upload — to its
    /// end, so its connection goes back to the pool now. Otherwise its end
    /// would be read only once the client had taken the last frame, and a
    /// client that keeps its window shut would hold the connection (an
    /// answer of known length goes back as its last frame is taken in: see
    /// `poll_frame`). Each frame waits at most `upstream_response_idle`, as
    /// when streamed; an error is passed on in its place. The whole taking
    /// in also lasts at most one `upstream_response_idle`, and at most
    /// [`AHEAD_FRAMES`] frames: a data centre sending a byte per chunk just
    /// within the idle time held the answer's head back from the client
    /// for days (16 KiB × the idle time), and a frame each.
    pub async fn take_in(&mut self, limit: usize) {
        let mut ahead = Ahead::new();
        let mut taken = 0;
        let until = tokio::time::Instant::now() + self.idle();
        while taken < limit && ahead.len() < AHEAD_FRAMES {
            let next = std::future::poll_fn(|cx| self.poll_upstream(cx));
            let Ok(next) = tokio::time::timeout_at(until, next).await else {
                break; // the rest streams
            };
            match next {
                Some(Ok(frame)) => {
                    taken += frame.data_ref().map_or(0, Bytes::len);
                    ahead.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    ahead.push_back(Err(e));
                    break;
                }
                None => break,
            }
        }
        self.ahead = Some(Box::new(ahead));
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if !(self.ended || self.inner.is_end_stream()) {
            // Dropped before its end (an answer refused as unusable, a
            // client gone): hyper closes the connection, and a write that
            // fails then ends it.
            if let Some(progress) = &self.progress {
                progress.unwanted();
            }
        }
        self.give_back();
        if let Some(slot) = self.slot.take() {
            slot.answer_taken();
        }
    }
}

impl Body {
    /// Gives the connection back to its pool once the answer has been
    /// taken in to its end (dropped before then, it is not reused).
    fn give_back(&mut self) {
        if !(self.ended || self.inner.is_end_stream()) {
            return;
        }
        // The answer has been taken from the connection: the request's
        // count goes, if its body is done too.
        if let Some(slot) = self.slot.take() {
            slot.answer_taken();
        }
        let (Some(lease), Some(progress)) = (self.lease.take(), self.progress.take()) else {
            return;
        };
        if lease.tx.is_ready() {
            lease.pool.put(lease.u, lease.tx, progress);
            return;
        }
        // Closing (`Connection: close`, HTTP/1.0, an error): nothing to
        // wait for.
        if lease.tx.is_closed() || progress.failed() {
            return;
        }
        // The response ended before the request did (the data centre
        // answered early and still reads the body), or the connection's
        // task has not yet taken in the end of the exchange: pooled only
        // once the connection can take a next request, so that one does
        // not wait on a body still being sent (up to `upstream_connect`).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Lease { pool, u, mut tx } = lease;
        let idle_timeout = pool.inner.idle_timeout;
        drop(runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(idle_timeout, tx.ready()).await {
                pool.put(u, tx, progress);
            }
        }));
    }
}
/// `TCP_USER_TIMEOUT` of `after` on an upstream socket (Linux reads it as
/// a signed int of milliseconds: at most about 24.8 days). Not set where
/// the platform has none, or the kernel refuses it: a warning, not a
/// failed connection.
fn user_timeout(tcp: &TcpStream, after: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let after = after.min(Duration::from_millis(i32::MAX as u64));
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(after)) {
            tracing::warn!(error = %e, "TCP_USER_TIMEOUT not set on an upstream connection");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, after);
}

/// A TCP connection to one of `host`'s addresses by `deadline`: the
/// resolver's first address is tried, and while no attempt has succeeded
/// the next starts [`CONNECT_STAGGER`] later (or at once when one fails),
/// the earlier ones kept running; the first connection made wins (RFC 8305,
/// "Happy Eyeballs", without its reordering). A first address that drops
/// the attempt silently took the whole `upstream_connect` before, and the
/// upstream was marked down although its next address served (IPv6 audit,
/// stop 66). An unspecified address (`0.0.0.0`, `::`: a DNS filter's
/// answer for a blocked name) is never connected to: it reaches this host,
/// which may be another data centre.
async fn connect_any(
    host: &str,
    port: u16,
    deadline: tokio::time::Instant,
) -> io::Result<TcpStream> {
    let resolved: Vec<std::net::SocketAddr> =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| connect_elapsed())??
            .collect();
    let addrs: Vec<std::net::SocketAddr> = resolved
        .iter()
        .copied()
        // (`::ffff:0.0.0.0` too, which Linux connects to this host.)
        .filter(|a| !a.ip().to_canonical().is_unspecified())
        .collect();
    if addrs.is_empty() && !resolved.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{host} resolves only to an unspecified address (0.0.0.0, ::), which would reach this host: not connected"),
        ));
    }
    connect_first(&addrs, deadline).await
}

/// `upstream_connect` ran out (TCP, the name's lookup, or TLS).
fn connect_elapsed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "upstream_connect elapsed")
}

/// How long an attempt runs alone before the next address's starts
/// (RFC 8305's recommended Connection Attempt Delay).
const CONNECT_STAGGER: Duration = Duration::from_millis(250);

/// [`connect_any`] of addresses already resolved.
async fn connect_first(
    addrs: &[std::net::SocketAddr],
    deadline: tokio::time::Instant,
) -> io::Result<TcpStream> {
    use futures_util::StreamExt as _;
    let mut pending = addrs.iter().copied();
    let mut attempts = futures_util::stream::FuturesUnordered::new();
    match pending.next() {
        Some(first) => attempts.push(TcpStream::connect(first)),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the host name has no address",
            ))
        }
    }
    let mut stagger = std::pin::pin!(tokio::time::sleep(CONNECT_STAGGER));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Err(connect_elapsed()),
            Some(result) = attempts.next() => match result {
                Ok(tcp) => return Ok(tcp),
                Err(e) => {
                    match pending.next() {
                        Some(next) => {
                            attempts.push(TcpStream::connect(next));
                            stagger.as_mut().reset(tokio::time::Instant::now() + CONNECT_STAGGER);
                        }
                        None if attempts.is_empty() => return Err(e),
                        None => {}
                    }
                }
            },
            () = &mut stagger, if pending.len() > 0 => {
                if let Some(next) = pending.next() {
                    attempts.push(TcpStream::connect(next));
                }
                stagger.as_mut().reset(tokio::time::Instant::now() + CONNECT_STAGGER);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// An address that never answers a connection attempt does not hold up
    /// the next: it starts a stagger later, within a health probe's
    /// default 1 s though `upstream_connect` is 3 s; alone, the silent one
    /// runs out of time. The silent one is a loopback listener whose
    /// accept queue is full (the kernel then drops further SYNs).
    #[tokio::test]
    async fn an_address_that_drops_the_attempt_leaves_time_for_the_next() {
        let silent = tokio::net::TcpSocket::new_v4().unwrap();
        silent.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let silent = silent.listen(0).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        // Fill its queue (never accepted) until an attempt hangs.
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_millis(300),
                tokio::net::TcpStream::connect(silent_addr),
            )
            .await
            {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break,
            }
            assert!(held.len() < 64, "the queue never filled");
        }
        let serving = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let serving_addr = serving.local_addr().unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            super::connect_first(&[silent_addr, serving_addr], deadline),
        )
        .await
        .expect("within a probe's 1 s")
        .expect("the second address");
        assert_eq!(tcp.peer_addr().unwrap(), serving_addr);
        // Alone, the silent one runs out of the time.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        let e = super::connect_first(&[silent_addr], deadline)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // A refused address gives way at once, and the last error is said.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        let e = super::connect_first(&[closed], deadline).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let tcp = super::connect_first(&[closed, serving_addr], deadline)
            .await
            .unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), serving_addr);
        drop((held, silent));
    }

    /// A name that resolves only to an unspecified address (a DNS filter's
    /// `0.0.0.0` for a blocked name) is not connected to: it would reach
    /// this host, where another data centre may listen.
    #[tokio::test]
    async fn an_unspecified_resolved_address_is_never_connected_to() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        for host in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            let e = super::connect_any(host, 9, deadline).await.unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AddrNotAvailable,
                "{host}: {e}"
            );
        }
    }

    /// The response carrying a `Body` is moved whole several times on its
    /// way to the client; at 256 bytes or less glibc's `memcpy` copies it
    /// without its loop (issue 23: 272 bytes cost ~650 instructions a
    /// request in scenario A).
    #[test]
    fn a_response_carrying_a_body_fits_a_short_copy() {
        assert!(std::mem::size_of::<http::Response<super::Body>>() <= 256);
        // As the client's answer, wrapped (`Gathered`, or a refusal).
        assert!(std::mem::size_of::<http::Response<crate::proxy::ProxyBody>>() <= 256);
    }
}
