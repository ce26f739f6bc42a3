//! A small HTTP/1.1 listener for synchronous answers: the admin endpoints
//! and the customer-facing log endpoints (optionally over TLS). Each
//! connection gets hyper's head timer (and a TLS handshake the same 10 s);
//! a listener holds at most its cap of connections; at shutdown,
//! connections finish their current response (at most 5 s).

use std::convert::Infallible;
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

/// At most how many connections a listener holds; the connection over the
/// limit is closed at once and `rejected` counts it.
pub struct Cap {
    pub max_connections: usize,
    pub rejected: prometheus::IntCounter,
    /// `answer` does blocking I/O: run it on a blocking thread.
    pub blocking: bool,
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
    mut stop: watch::Receiver<bool>,
    cap: Cap,
    tls: Option<TlsAcceptor>,
    answer: F,
) where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let permits = Arc::new(Semaphore::new(cap.max_connections));
    loop {
        let Some((stream, _)) = accept(&listener, &mut stop).await else {
            return;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            cap.rejected.inc();
            continue;
        };
        let answer = answer.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let blocking = cap.blocking;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, answer, blocking, stop).await,
                Some(tls) => match tokio::time::timeout(HEAD_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, answer, blocking, stop).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
        });
    }
}

/// One connection: its requests until it ends or `stop` turns true.
async fn connection<S, F>(stream: S, answer: F, blocking: bool, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let answer = answer.clone();
        async move {
            if !blocking {
                return Ok::<_, Infallible>(answer(&req));
            }
            match tokio::task::spawn_blocking(move || answer(&req)).await {
                Ok(response) => Ok(response),
                Err(_) => {
                    let mut busy = Response::new(Full::new(Bytes::from_static(
                        b"{\"error\":\"shutting down\"}",
                    )));
                    *busy.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    Ok(busy)
                }
            }
        }
    });
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
