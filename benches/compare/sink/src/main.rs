//! compare-sink: the upstream of the proxy comparison benchmark.
//!
//! Plain HTTP/1.1 with keep-alive on one thread (a `current_thread` Tokio
//! runtime, so it stays on the core it is pinned to). Every request's body is
//! read to the end and counted before the answer is sent, then:
//!
//! * `GET /healthz`  -> 200 `ok`
//! * `GET /stats`    -> 200 `{"requests":N,"bytes":N,"body_errors":N}` (uploads only)
//! * anything else   -> 201 `stored` once the whole body has been read
//!
//! It does no hashing, logging or bookkeeping beyond three counters, so that
//! it costs as little as possible on the core it shares with the load
//! generator. Usage: `compare-sink 127.0.0.1:18080`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static BODY_ERRORS: AtomicU64 = AtomicU64::new(0);

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if req.method() == hyper::Method::GET && path == "/healthz" {
        return Ok(reply(StatusCode::OK, "ok\n"));
    }
    if req.method() == hyper::Method::GET && path == "/stats" {
        let s = format!(
            "{{\"requests\":{},\"bytes\":{},\"body_errors\":{}}}\n",
            REQUESTS.load(Relaxed),
            BYTES.load(Relaxed),
            BODY_ERRORS.load(Relaxed)
        );
        return Ok(reply(StatusCode::OK, s));
    }
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                }
            }
            Err(_) => {
                BODY_ERRORS.fetch_add(1, Relaxed);
                return Ok(reply(StatusCode::BAD_REQUEST, "body failed\n"));
            }
        }
    }
    REQUESTS.fetch_add(1, Relaxed);
    BYTES.fetch_add(n, Relaxed);
    Ok(reply(StatusCode::CREATED, "stored\n"))
}

fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()
        .expect("usage: compare-sink IP:PORT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        eprintln!("compare-sink listening on {addr}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
}
