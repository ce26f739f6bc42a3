//! The upstream connection pool against a raw HTTP/1.1 server that counts
//! its connections: reuse, chunked ends, stale connections, expiry, the
//! idle bound, and how failures to connect are told apart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::BodyExt;
use residency_core::policy::UpstreamId;
use residency_proxy::upstream::body::ForwardBody;
use residency_proxy::upstream::pool::{Error, Pool, PoolSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::closed_port;

#[derive(Clone, Copy)]
enum Mode {
    /// `Content-Length` answers, connection kept.
    Length,
    /// Chunked answers, connection kept.
    Chunked,
    /// Answers, then closes the connection.
    Close,
    /// Waits 200 ms before answering.
    Slow,
}

/// A raw HTTP/1.1 server: counts accepted and ended connections.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            ended: Arc::default(),
        };
        let (accepted, ended) = (server.accepted.clone(), server.ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    serve(stream, mode).await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    /// A pool with this server as its one upstream, over `scheme`.
    fn pool(&self, scheme: &str, idle_timeout: Duration, max_idle: usize) -> Pool {
        new_pool(&format!("{scheme}://{}", self.addr), idle_timeout, max_idle)
    }

    /// Waits (at most 3 s) until `n` connections have ended.
    async fn wait_ended(&self, n: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.ended() < n {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Serves requests with a `Content-Length` body until the client closes.
async fn serve(mut stream: TcpStream, mode: Mode) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let answer: &[u8] = match mode {
            Mode::Length | Mode::Close | Mode::Slow => {
                b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
            }
            Mode::Chunked => {
                b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n"
            }
        };
        if let Mode::Slow = mode {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if let Mode::Close = mode {
            return;
        }
    }
}

fn new_pool(uri: &str, idle_timeout: Duration, max_idle: usize) -> Pool {
    let tls = residency_tls::client_config(None).unwrap();
    Pool::new(
        [uri.parse::<Uri>().unwrap()],
        tls,
        PoolSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout,
            max_idle_per_upstream: max_idle,
            response_idle: Duration::from_secs(30),
            send_idle: Duration::from_secs(30),
            max_connections_per_upstream: 1024,
        },
    )
    .unwrap()
}

/// A pool of `server` with one connection allowed, waited for up to 1 s
/// (`upstream_connect`).
fn one_connection_pool(server: &Server) -> Pool {
    let tls = residency_tls::client_config(None).unwrap();
    Pool::new(
        [format!("http://{}", server.addr).parse::<Uri>().unwrap()],
        tls,
        PoolSettings {
            connect_timeout: Duration::from_millis(1000),
            idle_timeout: Duration::from_secs(30),
            max_idle_per_upstream: 4,
            response_idle: Duration::from_secs(30),
            send_idle: Duration::from_secs(30),
            max_connections_per_upstream: 1,
        },
    )
    .unwrap()
}

/// A request carrying `pool`'s `Host`, as the forwarding's do
/// (`send_or_return` does not add one).
fn hosted(pool: &Pool) -> Request<ForwardBody> {
    let mut req = request();
    req.headers_mut()
        .insert(http::header::HOST, pool.host(U).clone());
    req
}

const U: UpstreamId = UpstreamId(0);

fn request() -> Request<ForwardBody> {
    let (body, _sent) = ForwardBody::replay(Bytes::from_static(b"hello"));
    Request::post("/v1/telemetry").body(body).unwrap()
}

/// One request, its body read to the end.
async fn exchange(pool: &Pool) -> String {
    let resp = pool.send(U, request()).await.expect("an answer");
    assert_eq!(resp.status(), 201);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    for mode in [Mode::Length, Mode::Chunked] {
        let server = Server::start(mode).await;
        let pool = server.pool("http", Duration::from_secs(30), 4);
        for _ in 0..5 {
            assert_eq!(exchange(&pool).await, "ok");
            assert_eq!(pool.idle(U), 1, "the connection went back to the pool");
        }
        assert_eq!(server.accepted(), 1);
    }
}

#[tokio::test]
async fn a_body_dropped_before_its_end_does_not_return_the_connection() {
    let server = Server::start(Mode::Chunked).await;
    let pool = server.pool("http", Duration::from_secs(30), 4);
    let resp = pool.send(U, request()).await.unwrap();
    drop(resp);
    assert_eq!(pool.idle(U), 0);
    assert_eq!(exchange(&pool).await, "ok");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn connections_the_upstream_closed_are_replaced() {
    let server = Server::start(Mode::Close).await;
    let pool = server.pool("http", Duration::from_secs(30), 4);
    for _ in 0..3 {
        assert_eq!(exchange(&pool).await, "ok");
        // Let the connection task see the upstream's close.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.accepted(), 3);
}

#[tokio::test]
async fn idle_connections_expire_and_close() {
    let server = Server::start(Mode::Length).await;
    let pool = server.pool("http", Duration::from_millis(200), 4);
    exchange(&pool).await;
    assert_eq!(pool.idle(U), 1);
    server
        .wait_ended(1, "an idle connection outlived its timeout")
        .await;
    assert_eq!(pool.idle(U), 0);
    exchange(&pool).await;
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn at_most_max_idle_connections_are_kept() {
    let server = Server::start(Mode::Slow).await;
    let pool = server.pool("http", Duration::from_secs(30), 2);
    let exchanges: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { exchange(&pool).await })
        })
        .collect();
    for e in exchanges {
        assert_eq!(e.await.unwrap(), "ok");
    }
    assert_eq!(server.accepted(), 4);
    assert_eq!(pool.idle(U), 2);
    server
        .wait_ended(2, "connections beyond max_idle stayed open")
        .await;
}

#[tokio::test]
async fn failures_to_connect_are_told_apart() {
    let closed = closed_port().await;
    let pool = new_pool(&format!("http://{closed}"), Duration::from_secs(30), 4);
    let e = pool.send(U, request()).await.unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e}");
    assert!(e.is_connect() && !e.is_tls());

    // https to a plain HTTP server: the TLS handshake fails.
    let server = Server::start(Mode::Length).await;
    let pool = server.pool("https", Duration::from_secs(30), 4);
    let e = pool.send(U, request()).await.unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e}");
    assert!(e.is_connect() && e.is_tls());
}

/// With one connection allowed, a second request waits for the first to
/// finish and then reuses its connection; with the first one still busy
/// past `upstream_connect`, it fails as `Saturated` having sent nothing.
#[tokio::test]
async fn the_connection_cap_queues_then_refuses() {
    let server = Server::start(Mode::Slow).await;
    let pool = one_connection_pool(&server);
    // Waits for the slow (200 ms) first exchange, then shares its connection.
    let (a, b) = tokio::join!(exchange(&pool), exchange(&pool));
    assert_eq!((a.as_str(), b.as_str()), ("ok", "ok"));
    assert_eq!(server.accepted(), 1, "the cap held: one connection");
    assert_eq!(pool.open(U), 1);

    // The only connection stays busy (its response body unread).
    let held = pool.send(U, request()).await.unwrap();
    let started = std::time::Instant::now();
    let mut waited = None;
    match pool
        .send_or_return(U, hosted(&pool), &Default::default(), &mut waited)
        .await
    {
        Err((Error::Saturated, Some(_unsent))) => {}
        other => panic!("expected Saturated with the request back, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(waited.is_some(), "the waiting's end is kept for a resend");
    assert_eq!(server.accepted(), 1);
    drop(held);
    // Closing the busy connection frees its permit.
    assert_eq!(exchange(&pool).await, "ok");
    assert_eq!(server.accepted(), 2);
}

/// A request the pool handed back after a wait, sent again, is handed back
/// again each time it waits again (what it waited for taken by another
/// request before its resend: verification, stop 70, a resend that waited
/// again was sent without its caller looking again), with the connection
/// made kept for it; and its waiting, kept across the resends, ends
/// `upstream_connect` after it first began: a resend past it is refused at
/// once, not given a wait of its own (it was: twice `upstream_connect` in
/// all).
#[tokio::test]
async fn a_resend_that_waits_again_is_handed_back_again_within_one_wait() {
    let server = Server::start(Mode::Length).await;
    let pool = one_connection_pool(&server);
    // The one connection, busy (its response body unread).
    let held = pool.send(U, request()).await.unwrap();
    assert_eq!(server.accepted(), 1);
    // A resend: it waited before, its waiting ends in 5 s.
    let mut waited = Some(tokio::time::Instant::now() + Duration::from_secs(5));
    let until = waited;
    let resend = async {
        pool.send_or_return(U, hosted(&pool), &Default::default(), &mut waited)
            .await
    };
    let freeing = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Dropped unread: the connection closes, and its room is the
        // waiting request's.
        drop(held);
    };
    let (result, ()) = tokio::join!(resend, freeing);
    match result {
        Err((Error::Waited, Some(_unsent))) => {}
        other => panic!("expected the resend handed back again, got {other:?}"),
    }
    assert_eq!(waited, until, "the waiting's end is kept, not renewed");
    // Woken by the room made, it let it go: sent again, it connects, and
    // is handed back once more with the connection kept for it.
    match pool
        .send_or_return(U, hosted(&pool), &Default::default(), &mut waited)
        .await
    {
        Err((Error::Waited, Some(_unsent))) => {}
        other => panic!("expected it handed back after connecting, got {other:?}"),
    }
    assert_eq!(waited, until);
    // (Counted once the server's task has taken it in.)
    for _ in 0..100 {
        if server.accepted() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.accepted(), 2, "a connection was made for it");
    // Sent again, it takes the connection kept for it.
    let resp = pool
        .send_or_return(U, hosted(&pool), &Default::default(), &mut waited)
        .await
        .expect("sent on the connection kept for it");
    assert_eq!(resp.status(), 201);
    drop(resp);
    assert_eq!(
        server.accepted(),
        2,
        "on the connection kept, not a new one"
    );

    // Its waiting over, with room to connect: refused at once, nothing made.
    let accepted = server.accepted();
    let mut over = Some(tokio::time::Instant::now() - Duration::from_millis(1));
    let _busy = pool.send(U, request()).await.unwrap();
    let started = std::time::Instant::now();
    match pool
        .send_or_return(U, hosted(&pool), &Default::default(), &mut over)
        .await
    {
        Err((Error::Saturated, Some(_unsent))) => {}
        other => panic!("expected Saturated at once, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(server.accepted() <= accepted + 1, "no connection for it");
}

/// A probe that may take an upstream back opens a new connection: one
/// that stopped taking connections (its listener closed) still answers on
/// an old one, and a probe over that readmitted it, flapping with every
/// upload that then failed to connect. An ordinary probe reuses an idle
/// connection.
#[tokio::test]
async fn a_fresh_probe_does_not_take_an_idle_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Mode::Length));
        }
    });
    let pool = new_pool(&format!("http://{addr}"), Duration::from_secs(30), 4);
    assert_eq!(exchange(&pool).await, "ok");
    assert_eq!(pool.idle(U), 1);
    // No new connections from now on; the idle one still answers.
    accepting.abort();
    let _ = accepting.await;
    let probe = |fresh| {
        let req = Request::get("/health").body(ForwardBody::empty()).unwrap();
        pool.probe(U, req, fresh)
    };
    let fresh = probe(true).await;
    assert!(matches!(fresh, Err(Error::Connect(_))), "{fresh:?}");
    let reused = probe(false).await.expect("the idle connection answers");
    assert_eq!(reused.status(), 201);
}
