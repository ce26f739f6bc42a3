//! A small HTTP/1.1 listener: the admin endpoints and the customer-facing
//! log endpoints (synchronous answers), and the witness server
//! (asynchronous ones), each optionally over TLS. Each
//! connection gets hyper's head timer (and a TLS handshake the same 10 s),
//! and is dropped once its writes stay blocked that long (a client that
//! stopped reading its answers); a listener holds at most its cap of
//! connections; at shutdown, connections finish their current response (at
//! most 5 s).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::shutdown::{accept, stopped};
use crate::upstream::progress::{Tracked, WriteProgress};

/// The read buffer, and so the longest request head, of these listeners.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Blocking answers of one listener running at once (Tokio's blocking
/// pool holds 512 threads).
const BLOCKING_ANSWERS: usize = 32;

/// At most how many connections a listener holds; the connection over the
/// limit is closed at once and `rejected` counts it.
pub struct Cap {
    pub max_connections: usize,
    pub rejected: prometheus::IntCounter,
    /// Of `max_connections`, what one client address may hold, and the
    /// count of connections closed for it (`None`: no limit per client).
    pub per_client: Option<(u32, prometheus::IntCounter)>,
    /// `answer` does blocking I/O: run it on a blocking thread ([`serve`]).
    pub blocking: bool,
    /// Requests one client address may make a second, and the count of
    /// those answered 429 for it (`None`: no limit).
    pub rate: Option<(Arc<crate::client_limit::Rate>, prometheus::IntCounter)>,
}

/// Where a listener's TLS server config comes from, asked at each
/// handshake: a fixed one (the witness), or the current state's (the log
/// listener's, which a reload renews).
pub type TlsSource = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// A TLS server config for these listeners: `certs` chosen by SNI (the
/// first the default), HTTP/1.1 only.
pub fn http1_tls(
    certs: &[residency_tls::CertSource],
) -> Result<Arc<rustls::ServerConfig>, residency_tls::TlsError> {
    let mut config = (*residency_tls::server_config(certs, None)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a connection may take to send its request head (and, with
/// TLS, to finish its handshake).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on `listener` — over TLS when `tls` is set — with a
/// synchronous `answer` until `stop` turns true (the admin and the
/// transparency listeners). With `cap.blocking`, `answer` may block (it
/// reads files) and runs on the blocking thread pool, never on an async
/// worker.
pub async fn serve<F>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    cap: Cap,
    tls: Option<TlsSource>,
    answer: F,
) where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let blocking = cap.blocking;
    // Answers running on blocking threads at once: the others wait here,
    // holding no thread, so a flood of reads never takes the blocking pool
    // the log's own work (checkpoints, the fleet's tick) runs on.
    let threads = Arc::new(tokio::sync::Semaphore::new(BLOCKING_ANSWERS));
    let answer = move |req: Request<Incoming>| {
        let answer = answer.clone();
        let threads = threads.clone();
        async move {
            if !blocking {
                return answer(&req);
            }
            // Only the log's listener blocks: its answer, as the log API's
            // own are (data, never a page).
            let shutting_down = || {
                crate::log_api::respond(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    b"{\"error\":\"shutting down\"}".to_vec(),
                )
            };
            // (The semaphore is never closed.) The permit goes with the
            // work: it ends with the answer, not with a client that left.
            let Ok(thread) = threads.acquire_owned().await else {
                return shutting_down();
            };
            tokio::task::spawn_blocking(move || {
                let _thread = thread;
                answer(&req)
            })
            .await
            .unwrap_or_else(|_| shutting_down())
        }
    };
    serve_async(listener, stop, cap, tls, answer).await
}

/// As [`serve`], with an asynchronous `answer` that owns the request (and
/// may read its body): the witness server.
pub async fn serve_async<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    cap: Cap,
    tls: Option<TlsSource>,
    answer: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(cap.max_connections));
    // What each client holds, grouped as for the ingest listeners.
    let clients = Arc::new(crate::client_limit::InFlight::default());
    // Kept to wait for at shutdown; finished ones are reaped as we go.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Some((stream, peer)) = accept(&listener, &mut stop).await else {
            break;
        };
        let client = match &cap.per_client {
            None => None,
            Some((max, rejected)) => match clients.enter(peer.ip(), *max) {
                Some(counted) => counted,
                None => {
                    rejected.inc();
                    tracing::debug!(%peer, "a client at its connection limit: connection closed");
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            cap.rejected.inc();
            continue;
        };
        let answer = answer.clone();
        let mut stop = stop.clone();
        let tls = tls.as_ref().map(|source| TlsAcceptor::from(source()));
        let rate = cap
            .rate
            .clone()
            .map(|(rate, limited)| (rate, limited, peer.ip()));
        connections.spawn(async move {
            let _permit = permit;
            let _client = client;
            let answer = move |req: Request<Incoming>| {
                let limited = rate
                    .as_ref()
                    .filter(|(rate, _, client)| !rate.admit(*client))
                    .map(|(_, limited, _)| limited.inc());
                // A body left unread ends the connection after the 429
                // (hyper reads at most a little of it): said so.
                let closing = !hyper::body::Body::is_end_stream(req.body());
                let answer = limited.is_none().then(|| answer(req));
                async move {
                    match answer {
                        Some(answer) => answer.await,
                        None => too_many_requests(closing),
                    }
                }
            };
            let Some(tls) = tls else {
                return connection(stream, answer, stop).await;
            };
            // A handshake still going at shutdown is dropped.
            let handshake = tokio::time::timeout(HEAD_TIMEOUT, tls.accept(stream));
            let done = tokio::select! {
                done = handshake => done,
                () = stopped(&mut stop) => return,
            };
            match done {
                Ok(Ok(stream)) => connection(stream, answer, stop).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
    // Stopped: each connection finishes its current response (at most 5 s).
    while connections.join_next().await.is_some() {}
}

/// 429 for a client past `transparency.requests_per_second_per_client`
/// (only the log listener has a rate), with `Retry-After`, and
/// `Connection: close` when `closing`.
fn too_many_requests(closing: bool) -> Response<Full<Bytes>> {
    let mut resp = crate::log_api::respond(
        http::StatusCode::TOO_MANY_REQUESTS,
        "application/json",
        br#"{"error":"too many requests from this client address (transparency.requests_per_second_per_client): retry after a second"}"#.to_vec(),
    );
    let h = resp.headers_mut();
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    if closing {
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// One connection: its requests until it ends or `stop` turns true.
async fn connection<S, F, Fut>(stream: S, answer: F, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(answer(req).await) }
    });
    let progress = WriteProgress::passing_errors();
    let stream = Tracked::new(stream, progress.clone());
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        // These listeners' requests are small GETs (the witness's POST is
        // read as a body): a head may take 16 KiB, not hyper's ~400 KiB
        // per connection.
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        // The connection first: `stalled` sees its writes block in the
        // same pass (it registers no waker of its own).
        biased;
        _ = conn.as_mut() => {}
        () = progress.stalled(HEAD_TIMEOUT) => {
            tracing::debug!("a client stopped reading its answers: connection dropped");
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
