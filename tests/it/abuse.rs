//! Work a client can start and abandon is bounded.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::support::*;

/// The customer-facing log listener holds at most
/// `transparency.max_connections`: idle connections beyond it are closed at
/// once and counted, the ones within keep being served, and uploads are
/// unaffected.
#[tokio::test]
async fn the_log_listener_caps_its_connections() {
    use tokio::io::AsyncReadExt;
    let proxy = Proxy::start(Setup {
        transparency: Some("max_connections = 5\n".into()),
        ..Setup::default()
    })
    .await;
    let addr = proxy.log_addr.unwrap();
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Give the accept loop time to take the five.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "connection {i} over the cap was not closed"
        );
    }
    let rejected = metric_value(
        &proxy,
        "residency_connections_rejected_total{reason=\"log_connection_limit\"}",
    )
    .await;
    assert!(rejected >= 20.0, "counted: {rejected}");
    assert_eq!(
        proxy.client().upload_from(CH, "still served").await.status,
        201
    );
    drop(idle);
    eventually("the log listener serves again", async || {
        proxy.log_get("/checkpoint").await.0 == 200
    })
    .await;
    proxy.stop().await;
}

/// `transparency.max_connections_per_client`: one address holding that
/// many connections to the log listener has one more closed at once and
/// counted, while another address is served; its place comes back when
/// one of its connections ends. Without it, one client could hold every
/// connection `transparency.max_connections` allows and no customer could
/// check a receipt.
#[tokio::test]
async fn one_client_cannot_hold_the_log_listener() {
    let proxy = Proxy::start(Setup {
        transparency: Some("max_connections = 50\nmax_connections_per_client = 3\n".into()),
        ..Setup::default()
    })
    .await;
    // Served: a checkpoint comes back on it.
    let ask = b"GET /checkpoint HTTP/1.1\r\nHost: log\r\nConnection: close\r\n\r\n";
    assert_one_address_is_capped(
        proxy.log_addr.unwrap(),
        3,
        ask,
        b"HTTP/1.1 200",
        async || {
            let rejected = metric_value(
                &proxy,
                "residency_connections_rejected_total{reason=\"log_client_connection_limit\"}",
            )
            .await;
            assert!(rejected >= 1.0, "counted: {rejected}");
        },
    )
    .await;
    proxy.stop().await;
}

/// One client address holds at most 16 of the admin listener's 64
/// connections: a local process that opens and holds them cannot take the
/// listener from the liveness probe and the scraper, which come from
/// other addresses (abuse audit, stop 62: all 64 were taken, and
/// `/healthz` refused).
#[tokio::test]
async fn one_client_cannot_hold_the_admin_listener() {
    let proxy = Proxy::start(Setup::default()).await;
    let ask = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    assert_one_address_is_capped(proxy.admin, 16, ask, b"HTTP/1.1 200", async || {
        // Read from another address: 127.0.0.1's places are held.
        use tokio::io::AsyncWriteExt;
        let mut tcp = connect_from("127.0.0.2", proxy.admin).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = String::from_utf8(read_to_close(&mut tcp).await).unwrap();
        let series =
            "residency_connections_rejected_total{reason=\"admin_client_connection_limit\"}";
        let rejected = metric(&text, series).unwrap_or(0.0);
        assert!(rejected >= 1.0, "counted: {rejected}");
    })
    .await;
    proxy.stop().await;
}

/// Idempotent uploads are held for replay only within
/// `upstream.replay_budget_bytes`; with it spent they stream like any other
/// upload (and are counted), they are not refused.
#[tokio::test]
async fn replay_copies_are_bounded_by_the_budget() {
    let proxy = Proxy::start(Setup {
        extra: "[upstream]\nreplay_budget_bytes = 100000\n".into(),
        ..Setup::default()
    })
    .await;
    let series = "residency_replay_budget_exhausted_total";
    let headers = [("x-forwarded-for", CH), ("idempotency-key", "k1")];
    // 64 KiB of room (replay_limit_bytes) fits once in 100,000 bytes.
    let reply = proxy
        .client()
        .send("POST", "/v1/telemetry", &headers, "first")
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(metric_value(&proxy, series).await, 0.0, "within the budget");
    // Two at once: the second finds the budget held by the first.
    let (tx, body) = channel_body();
    let client = proxy.client();
    let held = tokio::spawn(async move {
        client
            .send_body(
                "POST",
                "/v1/telemetry",
                &[("x-forwarded-for", CH), ("idempotency-key", "k2")],
                body,
            )
            .await
    });
    tx.send(Bytes::from_static(b"part one")).await.unwrap();
    eventually("the first upload holds its replay room", async || {
        proxy.instance.replay_budget.available_permits() < 100_000
    })
    .await;
    let reply = proxy
        .client()
        .send("POST", "/v1/telemetry", &headers, "second")
        .await;
    assert_eq!(reply.status, 201, "streamed without a replay copy");
    assert_eq!(metric_value(&proxy, series).await, 1.0);
    drop(tx);
    assert_eq!(held.await.unwrap().unwrap().status, 201);
    assert_eq!(
        proxy.instance.replay_budget.available_permits(),
        100_000,
        "all given back"
    );
    proxy.stop().await;
}

/// A data centre that reads the request head and then stops reading (its
/// TCP window shuts): the upload is aborted `upstream_send_idle` after the
/// writes stopped moving, answered 504 `upstream_timeout` and counted as a
/// failed request of that upstream — it does not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_is_abandoned_after_send_idle() {
    use tokio::io::AsyncReadExt;
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stuck.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = stuck.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            held.push(s); // open, never read again
        }
    });
    let proxy = Proxy::start(Setup {
        extra: format!(
            "[datacenters.stuck]\njurisdiction = \"ch\"\npriority = 0\nupstreams = [\"http://{addr}\"]\n\
             [timeouts]\nupstream_send_idle = \"1s\"\n[health]\npath = \"off\"\n"
        ),
        ..Setup::default()
    })
    .await;
    // Enough to fill the socket buffers on the way (a few MiB on loopback).
    let body = "x".repeat(16 * 1024 * 1024);
    let started = std::time::Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        proxy.client().upload_from(CH, &body),
    )
    .await
    .expect("the upload does not hang");
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert_eq!(reply.json()["error"], "upstream_timeout");
    // Filling the socket buffers takes a moment; then 1 s of no progress
    // (the deadline), and the answer within another second.
    eprintln!("zero-window upstream: answered 504 after {took:?}");
    assert!(took < Duration::from_secs(3), "aborted after {took:?}");
    // Counted against that data centre.
    let series =
        "residency_requests_total{datacenter=\"stuck\",jurisdiction=\"ch\",status_class=\"5xx\"}";
    assert_eq!(metric_value(&proxy, series).await, 1.0);
    assert_eq!(
        proxy.counts().values().sum::<usize>(),
        0,
        "nothing stored elsewhere"
    );
    proxy.stop().await;
}

/// A data centre that sends its answer's head and part of its body, then
/// nothing: the proxy gives up after `upstream_response_idle` and ends the
/// client's response (an error to the client, not a hang).
#[tokio::test]
async fn a_stalled_response_body_is_abandoned_after_response_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalling.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = stalling.accept().await {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Head and the 5-byte body, then the partial answer.
            while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"hello")) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\npartial")
                .await;
            held.push(s);
        }
    });
    let proxy = Proxy::start(Setup {
        extra: format!(
            "[datacenters.stalling]\njurisdiction = \"ch\"\npriority = 0\nupstreams = [\"http://{addr}\"]\n\
             [timeouts]\nupstream_response_idle = \"1s\"\n[health]\npath = \"off\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let body: Body = http_body_util::Full::new(Bytes::from_static(b"hello"))
        .map_err(|e| match e {})
        .boxed();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        proxy
            .client()
            .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body),
    )
    .await
    .expect("the response does not hang");
    let took = started.elapsed();
    assert!(
        result.is_err(),
        "an incomplete body is an error to the client: {result:?}"
    );
    assert!(took < Duration::from_secs(5), "abandoned after {took:?}");
    proxy.stop().await;
}

/// With its one allowed connection busy past `upstream_connect`, the only
/// permitted data centre is saturated: 503 `upstream_saturated` with
/// `Retry-After`, counted, naming no data centre (nothing was sent), and
/// the data centre is not marked down.
#[tokio::test]
async fn a_saturated_upstream_answers_503_and_stays_up() {
    let setup = Setup {
        extra: "[upstream]\nmax_connections_per_upstream = 1\n[timeouts]\nupstream_connect = \"300ms\"\n[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n".into(),
        ..Setup::default()
    };
    let proxy = Proxy::start(setup).await;
    let slow = slow_upload(&proxy, 1500).await;
    let reply = proxy.client().upload_from(CH, "fast").await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.json()["error"], "upstream_saturated");
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Nothing was sent: no data centre is named as where it went.
    assert_eq!(reply.header("residency-datacenter"), None);
    // Probes every 100 ms do not wait for the busy connection: still up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let up = format!(
        "residency_upstream_up{{datacenter=\"zurich\",upstream=\"http://{}/\"}}",
        proxy.upstream("zurich").addr
    );
    assert_eq!(
        metric_value(&proxy, &up).await,
        1.0,
        "probes pass while saturated"
    );
    assert_eq!(slow.await.unwrap().status, 201);
    let series = format!(
        "residency_upstream_saturated_total{{datacenter=\"zurich\",upstream=\"http://{}/\"}}",
        proxy.upstream("zurich").addr
    );
    assert_eq!(metric_value(&proxy, &series).await, 1.0);
    // Not ejected: the next upload goes through.
    assert_eq!(proxy.client().upload_from(CH, "again").await.status, 201);
    proxy.stop().await;
}

/// An admin client that pipelines requests and never reads the answers is
/// dropped once the listener's writes to it have been blocked for 10 s,
/// instead of holding its connection (and a blocked writer) for good.
#[tokio::test]
async fn an_admin_client_that_stops_reading_is_dropped() {
    use tokio::io::AsyncWriteExt;
    const REQUESTS: usize = 3_000;
    let proxy = Proxy::start(Setup::default()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window, so the listener's writes block early.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.admin).await.unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(REQUESTS);
    // Written in the background: the listener stops reading once blocked.
    let (mut read, mut write) = stream.split();
    let send = async {
        let _ = write.write_all(&request).await;
    };
    let wait = tokio::time::sleep(Duration::from_secs(14));
    tokio::join!(
        async {
            let _ = tokio::time::timeout(Duration::from_secs(14), send).await;
        },
        wait
    );
    let got = tokio::time::timeout(Duration::from_secs(60), read_to_close(&mut read))
        .await
        .expect("the connection ends");
    let answers = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        answers < REQUESTS,
        "all {answers} answers were written to a client that did not read"
    );
    proxy.stop().await;
}

/// A body that trickles in — never a gap as long as `request_body_idle`,
/// but far below `limits.min_request_body_rate` on average — is refused
/// with 408 once its first `request_body_idle` has passed, instead of
/// holding its data centre's connection for as long as the client likes.
#[tokio::test]
async fn a_body_that_trickles_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = Proxy::start(Setup {
        extra: "[timeouts]\nrequest_body_idle = \"1s\"\n[limits]\nmin_request_body_rate = 1024\n"
            .into(),
        ..Setup::default()
    })
    .await;
    let tls = proxy.client().connect().await.expect("TLS handshake");
    let (mut read, mut write) = tokio::io::split(tls);
    let head = format!(
        "POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {CH}\r\nContent-Length: 100000\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.unwrap();
    // Ten bytes every 300 ms, for at most 6 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if write.write_all(b"0123456789").await.is_err() {
                return;
            }
            let _ = write.flush().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n{") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(answer.is_ok(), "no answer to a trickling body within 5 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_body_timeout"), "{text}");
    assert_eq!(
        proxy.upstream("zurich").count(),
        0,
        "a trickled body was stored"
    );
    proxy.stop().await;
}

/// `limits.max_requests_per_client`: a client with that many uploads being
/// forwarded (here slow ones, each holding a data centre's connection) gets
/// 429 for one more, with `Retry-After`, and nothing of it is sent; another
/// client is served meanwhile, and the first gets its slots back as its
/// uploads end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_hold_more_than_its_share_of_upstream_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = Proxy::start(Setup {
        extra: "[limits]\nmax_requests_per_client = 2\n".into(),
        ..Setup::default()
    })
    .await;
    // Two uploads from CH whose bodies have begun and not ended.
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut tls = proxy.client().connect().await.expect("TLS handshake");
        let head = format!(
            "POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {CH}\r\nContent-Length: 18\r\n\r\nslow upload {i}"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let reached = proxy.upstream("zurich").first_bytes.notified();
        tokio::time::timeout(Duration::from_secs(5), reached)
            .await
            .expect("the slow upload reaches the data centre");
        slow.push(tls);
    }

    let third = proxy.client().upload_from(CH, "a third at once").await;
    assert_eq!(third.status, 429, "{:?}", third.json());
    assert_eq!(third.json()["error"], "too_many_requests");
    assert_eq!(third.header("retry-after"), Some("1"));
    let other = proxy.client().upload_from(DE, "another client").await;
    assert_eq!(other.status, 201, "{:?}", other.json());

    for mut tls in slow {
        tls.write_all(b"-ends").await.unwrap();
        tls.flush().await.unwrap();
        let mut answer = vec![0u8; 12];
        tls.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 201");
    }
    let again = proxy.client().upload_from(CH, "after they ended").await;
    assert_eq!(again.status, 201, "{:?}", again.json());
    assert_eq!(
        proxy.upstream("zurich").count(),
        3,
        "the refused one was sent"
    );
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "residency_rejections_total{reason=\"too_many_requests\"}"
        ),
        Some(1.0)
    );
    proxy.stop().await;
}

/// `limits.max_connections_per_client`: a client holding that many
/// connections has one more closed before TLS, and counted; another client
/// connects meanwhile, and the first gets its place back once one of its
/// connections ends. The connections it holds keep being served.
#[tokio::test]
async fn a_client_cannot_hold_more_than_its_share_of_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = Proxy::start(Setup {
        // The peer is the client: no front is trusted.
        trusted: vec![],
        extra: "[limits]\nmax_connections_per_client = 3\n".into(),
        ..Setup::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(proxy.client().connect().await.expect("TLS handshake"));
    }
    assert!(
        proxy.client().connect().await.is_err(),
        "a fourth connection from 127.0.0.1 was served"
    );
    let other = proxy.client().from("127.0.0.2").connect().await;
    assert!(other.is_ok(), "another client was refused: {other:?}");

    // A held connection is still served (127.0.0.1 is not located: 451).
    let mut tls = held.pop().unwrap();
    tls.write_all(b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 451"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // That connection is closed now: its place comes back.
    drop(tls);
    let again = std::sync::Mutex::new(None);
    eventually("a place for 127.0.0.1 again", async || {
        let tls = proxy.client().connect().await.ok();
        let ok = tls.is_some();
        *again.lock().unwrap() = tls;
        ok
    })
    .await;
    assert!(
        proxy.client().connect().await.is_err(),
        "the place taken again, a fourth connection was served"
    );
    let rejected = metric_value(
        &proxy,
        "residency_connections_rejected_total{reason=\"client_connection_limit\"}",
    )
    .await;
    assert!(rejected >= 1.0, "{rejected} connections counted as refused");
    proxy.stop().await;
}

/// Behind a PROXY-protocol balancer the client is the address its header
/// names, not the balancer's, and the balancer's own connections (`PROXY
/// UNKNOWN`) are not counted; without PROXY, a trusted front's own
/// connections are not counted (its clients are, request by request).
#[tokio::test]
async fn connections_count_for_the_client_a_proxy_header_names_not_for_a_trusted_front() {
    let proxy = Proxy::start(Setup {
        listener_extra: "proxy_protocol = \"required\"".into(),
        extra: "[limits]\nmax_connections_per_client = 2\n".into(),
        ..Setup::default()
    })
    .await;
    let header = |source: &str| format!("PROXY TCP4 {source} 127.0.0.1 5555 443\r\n").into_bytes();
    let mut held = Vec::new();
    for _ in 0..2 {
        let tls = proxy.client().preamble(header(CH)).connect().await;
        held.push(tls.expect("TLS handshake"));
    }
    let third = proxy.client().preamble(header(CH)).connect().await;
    assert!(third.is_err(), "a third connection for {CH} was served");
    let reply = proxy
        .client()
        .preamble(header(DE))
        .upload_from(DE, "another client behind the balancer")
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    // The balancer's own connections (no client named) are not counted.
    for _ in 0..3 {
        let local = proxy
            .client()
            .preamble(b"PROXY UNKNOWN\r\n".to_vec())
            .connect()
            .await;
        held.push(local.expect("a PROXY UNKNOWN connection"));
    }
    proxy.stop().await;

    let front = Proxy::start(Setup {
        extra: "[limits]\nmax_connections_per_client = 2\n".into(),
        ..Setup::default()
    })
    .await;
    for _ in 0..4 {
        held.push(
            front
                .client()
                .connect()
                .await
                .expect("a trusted front's connection"),
        );
    }
    let reply = front.client().upload_from(CH, "through the front").await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    front.stop().await;
}

/// An upload of 2048 bytes from CH that the data centre answers 201
/// before its end (with `extra` header lines, e.g. to make that answer
/// chunked): sent up to its first half; its connection.
async fn answered_early_half_sent(
    proxy: &Proxy,
    extra: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut tls = proxy.client().connect().await.expect("TLS handshake");
    let head = format!(
        "POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {CH}\r\n\
         X-Test-Answer-Early: 409\r\n{extra}Content-Length: 2048\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&[b'a'; 1024]).await.unwrap();
    tls.flush().await.unwrap();
    // Not a 2xx, which would be refused (its data centre's request cut
    // off): an answer the client is given at once, the body still sent.
    assert_eq!(
        status_line(&mut tls, "the early answer").await,
        "HTTP/1.1 409"
    );
    tls
}

/// Counted once: an upload answered early, whose body is still sent,
/// holds one of its client's places, not two (one for its answer, one for
/// its body, as a review caught a first version doing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answered_early_counts_once_against_its_client() {
    let proxy = Proxy::start(Setup {
        extra: "[limits]\nmax_requests_per_client = 2\n".into(),
        ..Setup::default()
    })
    .await;
    let first = answered_early_half_sent(&proxy, "").await;
    let second = proxy.client().upload_from(CH, "beside it").await;
    assert_eq!(second.status, 201, "{:?}", second.json());
    drop(first);
    proxy.stop().await;
}

/// After an early answer, the rest of the body still holds the data
/// centre's connection, so the request stays counted against
/// `limits.max_requests_per_client` until the body has been sent (it was
/// released at the response head: a client could hold any number of
/// connections that way, one trickling body each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_sent_after_an_early_answer_counts_against_its_client() {
    body_still_sent_counts("", "").await;
}

/// As above, the early answer chunked and small, so taken in whole before
/// the request's count was handed over (the count went with it, while the
/// body was still sent: a review's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_sent_after_a_chunked_early_answer_counts_against_its_client() {
    body_still_sent_counts("X-Test-Answer-Chunked: 1\r\n", "").await;
}

/// As above, past `upstream.pool_idle_timeout`: the count stays for as
/// long as the body is sent (it went when the connection's wait to be
/// pooled again gave up: a review's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_past_the_pool_s_idle_timeout_still_counts_against_its_client() {
    body_still_sent_counts("", "[upstream]\npool_idle_timeout = \"1s\"\n").await;
}

async fn body_still_sent_counts(answer: &str, config: &str) {
    use tokio::io::AsyncWriteExt;
    let proxy = Proxy::start(Setup {
        extra: format!("[limits]\nmax_requests_per_client = 1\n{config}"),
        ..Setup::default()
    })
    .await;
    let mut tls = answered_early_half_sent(&proxy, answer).await;
    if !config.is_empty() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let second = proxy
        .client()
        .upload_from(CH, "while the first body is sent")
        .await;
    assert_eq!(second.status, 429, "{:?}", second.json());

    tls.write_all(&[b'b'; 1024]).await.unwrap();
    tls.flush().await.unwrap();
    eventually(
        "the first body's end gives the client's place back",
        async || proxy.client().upload_from(CH, "after it").await.status == 201,
    )
    .await;
    proxy.stop().await;
}

/// A data centre's connection goes back to the pool once its answer has
/// been taken in, not once the client has read it: an HTTP/2 client that
/// keeps its windows shut gets its 201 head, and its 4-byte body waits on
/// the window, but the only connection `max_connections_per_upstream`
/// allows serves the next upload at once (it held it, uncounted by
/// `max_requests_per_client`, until its connection's deadlines dropped it).
#[tokio::test]
async fn a_client_that_does_not_read_its_answer_holds_no_data_centre_connection() {
    holds_no_data_centre_connection(false).await;
}

/// As above with an answer of unknown length (chunked): its end comes
/// after its last data, which the client's shut window would otherwise
/// keep the proxy from ever reading.
#[tokio::test]
async fn a_client_that_does_not_read_a_chunked_answer_holds_no_data_centre_connection() {
    holds_no_data_centre_connection(true).await;
}

async fn holds_no_data_centre_connection(chunked: bool) {
    let setup = Setup {
        extra: "[upstream]\nmax_connections_per_upstream = 1\n[timeouts]\nupstream_connect = \"300ms\"\n".into(),
        ..Setup::default()
    };
    let proxy = Proxy::start(setup).await;
    let tls = proxy.client().h2().connect().await.unwrap();
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut req = http::Request::post("https://localhost/v1/telemetry")
        .header("x-forwarded-for", "192.0.2.10")
        .body(())
        .unwrap();
    if chunked {
        req.headers_mut()
            .insert("x-test-answer-chunked", http::HeaderValue::from_static("0"));
    }
    let (response, mut stream) = send.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), true)
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("a response head")
        .unwrap();
    assert_eq!(held.status(), 201);
    for i in 0..3 {
        let reply = proxy.client().upload_from("192.0.2.99", "next").await;
        assert_eq!(reply.status, 201, "upload {i}: {:?}", reply.body);
    }
    drop((held, send));
    conn.abort();
    proxy.stop().await;
}

/// A data centre answering in chunks of a byte, each just within
/// `upstream_response_idle`, does not hold the answer's head back from the
/// client: it is taken in ahead for at most one idle time (and 64 frames),
/// then streamed. It used to wait for 16 KiB: 16,384 idle times.
#[tokio::test]
async fn a_trickled_answer_reaches_the_client_within_one_idle_time() {
    use tokio::io::AsyncWriteExt;
    let addr = raw_upstream(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        // A byte every 300 ms for at most a minute.
        for _ in 0..200 {
            if tcp.write_all(b"1\r\nx\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let proxy = Proxy::start(Setup {
        datacenters: vec![("frankfurt", "eu", 1, true), ("virginia", "us", 1, true)],
        extra: format!(
            "[datacenters.zurich]\njurisdiction = \"ch\"\nupstreams = [\"http://{addr}\"]\n\
             [health]\npath = \"off\"\n[timeouts]\nupstream_response_idle = \"1s\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let started = std::time::Instant::now();
    let client = proxy.client();
    let sent = client.response(
        "POST",
        "/v1/telemetry",
        &[("x-forwarded-for", CH)],
        http_body_util::Full::new(Bytes::new())
            .map_err(|e| match e {})
            .boxed(),
    );
    let (resp, _, _) = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("the answer's head within 10 s")
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(resp);
    proxy.stop().await;
}

/// A client that pipelines a burst and reads only once it has written it
/// all (the audit's Python client: `sendall`, then `recv`): the answers back
/// up, the proxy's writes block with no request in flight, and it must not
/// take that for a connection idle between requests. It did: it ended
/// keep-alive mid-burst and closed with the rest of the burst unread, and
/// the kernel's reset destroyed thousands of answers already sent, 201s of
/// stored uploads among them (abuse audit F1). Every request is answered,
/// uploads included, and every upload the data centres stored was
/// answered 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_read_only_once_written_gets_every_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ROUNDS: usize = 200;
    let proxy = Proxy::start(Setup::default()).await;
    let get =
        format!("GET /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\n\r\n");
    let post = format!(
        "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\nContent-Length: 3\r\n\r\nabc"
    );
    // 99 refused (405) and one upload, 200 times: about 1.3 MB of heads.
    let burst = (get.repeat(99) + &post).repeat(ROUNDS);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small window: the answers back up at once.
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(proxy.addr).await.unwrap();
    let tls = proxy.client().handshake(tcp).await.unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(burst.as_bytes()).await;
        let _ = write.flush().await;
        write
    });
    // Read only once the burst is written and a second has passed (or
    // after 3 s, if it cannot be written: the proxy reads no more while its
    // answers back up): long past the 100 ms after which a connection with
    // nothing in flight is handed back from hyper.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let want = ROUNDS * 100;
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return "end of stream".to_string(),
                Ok(n) => answers.extend_from_slice(&buf[..n]),
                Err(e) => return e.to_string(),
            }
            let text = String::from_utf8_lossy(&answers);
            if text.matches("HTTP/1.1 ").count() >= want {
                return "all answered".to_string();
            }
        }
    })
    .await
    .unwrap_or_else(|_| "60 s".to_string());
    let text = String::from_utf8_lossy(&answers);
    let (refused, stored) = (
        text.matches("HTTP/1.1 405").count(),
        text.matches("HTTP/1.1 201").count(),
    );
    let uploads: usize = proxy.counts().values().sum();
    assert_eq!(
        (refused, stored),
        (ROUNDS * 99, ROUNDS),
        "{ended}: {} answers of {want}; the data centres stored {uploads}",
        text.matches("HTTP/1.1 ").count()
    );
    assert_eq!(uploads, ROUNDS, "stored, each answered 201");
    drop(writer);
    proxy.stop().await;
}

/// An HTTP/2 client that resets most of its streams just after the proxy
/// took them (uploads begun, their data centre connections opened): h2's
/// own guard counts only streams reset before they are taken, so one
/// connection pushed 15,000 of them in 17 s, each costing a data centre a
/// connection (abuse audit F2). Past 100 cancelled requests, and more than
/// a quarter of its requests, the connection gets GOAWAY, counted as
/// `client_cancels`; streams answered are not cancellations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_cancels_most_of_its_uploads_is_sent_away() {
    let proxy = Proxy::start(Setup::default()).await;
    let tls = proxy.client().h2().connect().await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = |body: Body| {
        http::Request::post("https://localhost/v1/telemetry")
            .header("x-forwarded-for", CH)
            .body(body)
            .unwrap()
    };
    // Answered uploads first: they do not count.
    for i in 0..20 {
        let body = http_body_util::Full::new(Bytes::from(format!("upload {i}")))
            .map_err(|e| match e {})
            .boxed();
        let resp = send.clone().send_request(request(body)).await.unwrap();
        assert_eq!(resp.status(), 201);
    }
    let closed = || async {
        let (_, text) = proxy.admin_get("/metrics").await;
        metric(
            &text,
            "residency_connections_closed_total{reason=\"client_cancels\"}",
        )
    };
    assert_eq!(closed().await, Some(0.0));
    // Then, turn about, 20 answered uploads and 20 whose bodies never end,
    // reset once the proxy has taken them: half its requests cancelled
    // (re-audit F2: exactly half was never sent away).
    let mut cancelled = 0;
    let mut refused = false;
    while cancelled < 200 && !refused {
        for i in 0..20 {
            let body = http_body_util::Full::new(Bytes::from(format!("upload {i}")))
                .map_err(|e| match e {})
                .boxed();
            match send.clone().send_request(request(body)).await {
                Ok(resp) => assert_eq!(resp.status(), 201),
                Err(_) => refused = true, // the GOAWAY came
            }
        }
        let mut batch = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..20 {
            let (tx, body) = channel_body();
            tx.send(Bytes::from_static(b"cpu=0.9\n")).await.unwrap();
            senders.push(tx);
            let mut send = send.clone();
            let req = request(body);
            batch.push(tokio::spawn(async move { send.send_request(req).await }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for task in &batch {
            if task.is_finished() {
                refused = true; // answered or refused: the GOAWAY came
            }
            task.abort();
        }
        cancelled += batch.len();
        drop(senders);
        if send.clone().ready().await.is_err() {
            refused = true;
        }
    }
    eventually(
        "the connection counted as closed for client_cancels",
        async || closed().await == Some(1.0),
    )
    .await;
    assert!(cancelled <= 160, "sent away after {cancelled} cancelled");
    // GOAWAY: the connection ends, and new streams are refused.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the client's connection ended");
    proxy.stop().await;
}

/// A client that pipelines a long burst and reads it steadily but slower
/// than the kernel frees a full socket buffer (it wakes a blocked writer
/// only once a third of it has gone): its writes stay blocked for
/// `client_send_idle` (here 1 s) though it reads, and the connection is
/// given up. The answers already in the socket still reach it — the write
/// side is shut behind them, what it still sends is read and dropped — so
/// every upload stored was answered 201 but those whose answers were still
/// in hyper's write buffer (they were destroyed by the reset of a close
/// with its requests unread: 122 stored uploads unacknowledged, abuse
/// re-audit F1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pipelining_reader_given_up_still_gets_the_answers_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ROUNDS: usize = 250;
    let proxy = Proxy::start(Setup {
        extra: "[timeouts]\nclient_send_idle = \"1s\"\n".into(),
        ..Setup::default()
    })
    .await;
    let get =
        format!("GET /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\n\r\n");
    let post = format!(
        "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\nContent-Length: 3\r\n\r\nabc"
    );
    let burst = (get.repeat(99) + &post).repeat(ROUNDS);
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let tls = proxy.client().handshake(tcp).await.unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(burst.as_bytes()).await;
        write
    });
    // Reads 16 KiB every 100 ms (160 KiB/s): steady, never stopping.
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return "end of stream".to_string(),
                Ok(n) => answers.extend_from_slice(&buf[..n]),
                Err(e) => return e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| "90 s".to_string());
    let text = String::from_utf8_lossy(&answers);
    let answered = text.matches("HTTP/1.1 201").count();
    let stored: usize = proxy.counts().values().sum();
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let given_up = metric(
        &metrics,
        "residency_connections_closed_total{reason=\"client_send_idle\"}",
    );
    // All but what hyper's own write buffer held when the connection was
    // given up (up to 32 KiB of answers: about 130 here, so at most two
    // uploads' 201s); before, 126 of 140.
    assert_eq!(given_up, Some(1.0), "{ended}: the scenario: given up");
    assert!(
        stored > 0 && answered <= stored && stored - answered <= 2,
        "{ended}: {} answers; {stored} uploads stored, {answered} answered 201",
        text.matches("HTTP/1.1 ").count()
    );
    drop(writer);
    proxy.stop().await;
}

/// The proxy's sockets towards a data centre that hangs — its kernel
/// acknowledges the window probes, its process reads nothing — go away
/// once the proxy gives up on them: what they still held of the upload
/// (megabytes each) is not left to the kernel for as long as the data
/// centre hangs. They lingered in FIN-WAIT-1, holding about 4 MiB each,
/// until the data centre's process died (abuse audit, stop 62); now the
/// kernel drops them at twice `upstream_send_idle` of no progress
/// (TCP_USER_TIMEOUT), and the client's answer is the same 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_to_a_hung_data_centre_do_not_outlive_the_proxy_giving_up() {
    // Accepts and holds every connection, reading nothing.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let proxy = Proxy::start(Setup {
        datacenters: vec![
            ("frankfurt", "eu", 1, true),
            ("london", "uk", 2, true),
            ("virginia", "us", 1, true),
        ],
        extra: format!(
            "[timeouts]\nupstream_send_idle = \"1s\"\n[health]\npath = \"off\"\n\
             [datacenters.zurich]\njurisdiction = \"ch\"\npriority = 1\nupstreams = [\"http://127.0.0.1:{port}\"]\n"
        ),
        ..Setup::default()
    })
    .await;
    let reply = proxy
        .client()
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", CH)],
            vec![b'x'; 24 << 20],
        )
        .await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json()["error"], "upstream_timeout");
    // The proxy's side of each connection to the hole: its remote port.
    let towards_hole = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let suffix = format!(":{port:04X}");
        table
            .lines()
            .skip(1)
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|remote| remote.ends_with(&suffix))
            })
            .count()
    };
    // Gone at about 2 s here (its kernel's zero-window probes back off,
    // each counted against TCP_USER_TIMEOUT): 30 s leaves room for a
    // machine loaded by a whole test suite, which stretched it past
    // `eventually`'s 10 s once (CI, stop 63).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while towards_hole() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy's sockets to the hung data centre still there after 30 s: {}",
            towards_hole()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stop().await;
}

/// An `upstream_send_idle` longer than Linux's TCP_USER_TIMEOUT can hold
/// (a signed int of milliseconds, about 24.8 days for twice it) still
/// connects: every connection to a data centre failed with EINVAL, and
/// every upload was refused (review, stop 62).
#[tokio::test]
async fn a_long_upstream_send_idle_still_connects() {
    let proxy = Proxy::start(Setup {
        extra: "[timeouts]\nupstream_send_idle = \"30days\"\n".into(),
        ..Setup::default()
    })
    .await;
    let reply = proxy.client().upload_from(CH, "cpu=0.93").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    proxy.stop().await;
}
