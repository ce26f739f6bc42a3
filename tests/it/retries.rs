//! The retry matrix: each failure point × body under/over the replay limit ×
//! with/without `Idempotency-Key`, proven by what the upstreams themselves
//! saw. The failing data centre is `zurich` (priority 1); `geneva`
//! (priority 2, same jurisdiction) is healthy and records every delivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use residency_log::receipt::Receipt;
use residency_log::record::Record;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ConnectRefused,
    TlsFailure,
    ClosedBeforeRead,
    ClosedMidBody,
    ClosedAfterBody,
    ServerError,
}

/// What a faulty upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Requests whose head arrived (a delivery attempt).
    heads: AtomicUsize,
}

/// Starts an upstream that fails in the given way; returns its URL.
async fn faulty(fault: Fault, seen: Arc<Seen>) -> String {
    if fault == Fault::ConnectRefused {
        return format!("http://{}", closed_port().await);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                if fault == Fault::TlsFailure {
                    let _ = tcp.write_all(b"this is not TLS\r\n\r\n").await;
                    return;
                }
                if fault == Fault::ClosedBeforeRead {
                    return; // dropped: nothing read
                }
                let Some((head, mut body_read, length)) = read_head(&mut tcp).await else {
                    return;
                };
                if head.starts_with("GET /healthz") {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    return;
                }
                seen.heads.fetch_add(1, Ordering::SeqCst);
                if fault == Fault::ClosedMidBody {
                    return; // close with the rest of the body unread
                }
                let mut buf = vec![0u8; 16 * 1024];
                while body_read < length {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body_read += n,
                    }
                }
                if fault == Fault::ServerError {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
                        .await;
                }
                // ClosedAfterBody: the whole body was read; close without answering.
            });
        }
    });
    let scheme = if fault == Fault::TlsFailure {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// Reads an HTTP/1.1 request head; returns it, the body bytes already read
/// past it, and the declared Content-Length.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> Option<(String, usize, usize)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return Some((head, buf.len() - end - 4, length));
        }
    }
}

/// The proxy of the matrix: `zurich` at `url` (priority 1), `geneva`
/// behind it in the same jurisdiction, with the transparency log on.
async fn with_zurich_at(url: &str) -> Proxy {
    with_zurich_upstreams(&[url]).await
}

/// As [`with_zurich_at`], zurich with each of `urls` as an upstream.
async fn with_zurich_upstreams(urls: &[&str]) -> Proxy {
    let upstreams = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Proxy::start(Setup {
        datacenters: vec![("geneva", "ch", 2, true), ("frankfurt", "eu", 1, true), ("virginia", "us", 1, true)],
        extra: format!(
            "\n[datacenters.zurich]\njurisdiction = \"ch\"\npriority = 1\nupstreams = [{upstreams}]\n\n[health]\npath = \"off\"\n"
        ),
        transparency: Some(String::new()),
        ..Setup::default()
    })
    .await
}

/// Runs one cell of the matrix and checks the outcome.
async fn cell(fault: Fault, body_len: usize, with_key: bool) {
    let seen = Arc::new(Seen::default());
    let url = faulty(fault, seen.clone()).await;
    let proxy = with_zurich_at(&url).await;
    let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
    let mut headers = vec![("x-forwarded-for", CH)];
    if with_key {
        headers.push(("idempotency-key", "upload-42"));
    }
    let reply = proxy
        .client()
        .send("POST", "/v1/telemetry", &headers, body.clone())
        .await;

    let provably_unsent = matches!(fault, Fault::ConnectRefused | Fault::TlsFailure);
    let replayable = with_key && body_len <= 64 * 1024;
    let retried = provably_unsent || replayable;
    let what = format!("{fault:?}, {body_len} bytes, key {with_key}");
    let geneva = proxy.upstream("geneva");
    if retried {
        assert_eq!(reply.status, 201, "{what}: {:?}", reply.body);
        assert_eq!(
            reply.header("residency-datacenter"),
            Some("geneva"),
            "{what}"
        );
        assert_eq!(geneva.count(), 1, "{what}: exactly one delivery to geneva");
        let got = geneva.last();
        assert_eq!(got.body, body, "{what}: byte-identical");
        // The retry carries the rewritten headers, addressed to geneva.
        let h = |name: &str| got.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(h("host"), Some(geneva.addr.to_string().as_str()), "{what}");
        assert_eq!(h("x-request-id"), reply.header("x-request-id"), "{what}");
        assert_eq!(h("residency-jurisdiction"), Some("ch"), "{what}");
        assert_eq!(h("x-forwarded-proto"), Some("https"), "{what}");
        assert_eq!(got.headers.get_all("host").iter().count(), 1, "{what}");
        let (_, metrics) = proxy.admin_get("/metrics").await;
        let reason = match fault {
            Fault::ConnectRefused => "connect_failed",
            Fault::TlsFailure => "tls_failed",
            _ => "idempotent_replay",
        };
        let label = format!("residency_upstream_retries_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &label), Some(1.0), "{what}");
    } else {
        let want = if fault == Fault::ServerError {
            503
        } else {
            502
        };
        assert_eq!(reply.status, want, "{what}: {:?}", reply.body);
        assert_eq!(geneva.count(), 0, "{what}: never re-sent");
    }
    // The log's record names every data centre that may hold the body:
    // zurich too once the body may have reached it (a replay), never when
    // nothing was sent there (a failed connection or handshake).
    let id = reply.header("x-request-id").unwrap();
    let (status, entry) = proxy.log_get(&format!("/records/{id}")).await;
    assert_eq!(status, 200, "{what}: {entry}");
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    let record = Record::from_bytes(entry["record"].as_str().unwrap().as_bytes()).unwrap();
    let earlier: Vec<&str> = record.also_sent_to.iter().map(|d| d.as_ref()).collect();
    if retried {
        assert_eq!(record.datacenter.as_deref(), Some("geneva"), "{what}");
        let receipt = Receipt::parse(reply.header("residency-receipt").unwrap()).unwrap();
        assert_eq!(
            Record::from_bytes(&receipt.record).unwrap(),
            record,
            "{what}"
        );
    } else {
        assert_eq!(record.datacenter.as_deref(), Some("zurich"), "{what}");
    }
    if retried && !provably_unsent {
        assert_eq!(earlier, ["zurich"], "{what}");
    } else {
        assert!(earlier.is_empty(), "{what}: {earlier:?}");
    }
    // The failing upstream's own record: how many times the request reached it.
    let heads = seen.heads.load(Ordering::SeqCst);
    let connections = seen.connections.load(Ordering::SeqCst);
    match fault {
        Fault::ConnectRefused => assert_eq!(connections, 0, "{what}"),
        Fault::TlsFailure | Fault::ClosedBeforeRead => assert_eq!(heads, 0, "{what}"),
        _ => assert_eq!(heads, 1, "{what}: exactly one delivery attempt to zurich"),
    }
    if !matches!(fault, Fault::ConnectRefused) {
        assert_eq!(connections, 1, "{what}: one connection to zurich");
    }
    assert_eq!(
        proxy.upstream("frankfurt").count(),
        0,
        "{what}: never outside the permitted set"
    );
    proxy.stop().await;
}

async fn matrix(fault: Fault) {
    for body_len in [1024, 128 * 1024] {
        for with_key in [false, true] {
            cell(fault, body_len, with_key).await;
        }
    }
}

#[tokio::test]
async fn connect_refused_is_always_retried() {
    matrix(Fault::ConnectRefused).await;
}

#[tokio::test]
async fn tls_failure_is_always_retried() {
    matrix(Fault::TlsFailure).await;
}

#[tokio::test]
async fn closed_before_any_byte_read_is_retried_only_when_replayable() {
    matrix(Fault::ClosedBeforeRead).await;
}

#[tokio::test]
async fn closed_mid_body_is_retried_only_when_replayable() {
    matrix(Fault::ClosedMidBody).await;
}

#[tokio::test]
async fn closed_after_the_body_is_retried_only_when_replayable() {
    matrix(Fault::ClosedAfterBody).await;
}

#[tokio::test]
async fn server_error_is_retried_only_when_replayable() {
    matrix(Fault::ServerError).await;
}

/// Uploads `len` bytes through a proxy whose zurich is at `url`: the
/// client gets 502, then zurich's connections and the client's are all let
/// go.
async fn refused_then_let_go(url: &str, len: usize) {
    let proxy = with_zurich_at(url).await;
    let reply = proxy
        .client()
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", CH)],
            vec![7u8; len],
        )
        .await;
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    eventually(
        "the connection to zurich and the client's connection are let go",
        async || {
            let (_, metrics) = proxy.admin_get("/metrics").await;
            zurich_connections(&proxy).await == 0.0
                && metric(&metrics, "residency_connections_active") == Some(0.0)
        },
    )
    .await;
    proxy.stop().await;
}

/// A data centre that answers with a head the proxy refuses (a status
/// outside 100-599) while the upload is still being sent, stops reading,
/// then resets the connection: the answer was dropped before its end, so
/// hyper closes the connection without reading on, and the failed writes
/// of its last flush end it. They used to be held pending for an answer no
/// one wanted, until the stall watch (twice `upstream_send_idle`, 60 s).
#[tokio::test]
async fn a_connection_whose_answer_was_refused_is_let_go_when_it_is_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut tcp).await.is_none() {
                    return;
                }
                // Reading nothing more: the proxy's writes fill the
                // sockets and block, then the answer comes, then a reset.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 999 Unheard Of\r\ncontent-length: 100\r\n\r\nab")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let _ = tcp.set_zero_linger();
            });
        }
    });
    refused_then_let_go(&format!("http://{addr}"), 32 << 20).await;
}

/// zurich's open upstream connections, by the metric.
async fn zurich_connections(proxy: &Proxy) -> f64 {
    let (_, metrics) = proxy.admin_get("/metrics").await;
    metrics
        .lines()
        .filter(|l| l.starts_with("residency_upstream_connections{datacenter=\"zurich\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP/2 client resets its stream while its upload is blocked on a
/// data centre that stopped reading, and its request is cancelled (no
/// detached-request budget); then the data centre resets the connection.
/// No one wants an answer on it any more, so the failed writes of hyper's
/// last flush end it at once. They used to be held pending until the stall
/// watch (twice `upstream_send_idle`, 60 s), with the connection's place.
#[tokio::test]
async fn a_connection_whose_request_was_cancelled_is_let_go_when_it_is_reset() {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reset_tx, reset_rx) = tokio::sync::oneshot::channel::<()>();
    let reset_rx = Arc::new(tokio::sync::Mutex::new(Some(reset_rx)));
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let reset_rx = reset_rx.clone();
            tokio::spawn(async move {
                if read_head(&mut tcp).await.is_none() {
                    return;
                }
                // Reading nothing more until told, then a reset.
                if let Some(rx) = reset_rx.lock().await.take() {
                    let _ = rx.await;
                }
                let _ = tcp.set_zero_linger();
            });
        }
    });
    let proxy = Proxy::start(Setup {
        datacenters: vec![("geneva", "ch", 2, true), ("frankfurt", "eu", 1, true), ("virginia", "us", 1, true)],
        extra: format!(
            "\n[datacenters.zurich]\njurisdiction = \"ch\"\npriority = 1\nupstreams = [\"http://{addr}\"]\n\n\
             [health]\npath = \"off\"\n\n[limits]\nmax_detached_requests = 0\n"
        ),
        ..Setup::default()
    })
    .await;
    let tls = proxy.client().h2().connect().await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("https://localhost/v1/telemetry")
        .header("x-forwarded-for", CH)
        .body(Full::new(bytes::Bytes::from(vec![5u8; 32 << 20])))
        .unwrap();
    // The upload fills the sockets to zurich, then its stream is reset.
    let sent =
        tokio::time::timeout(std::time::Duration::from_secs(2), send.send_request(req)).await;
    assert!(
        sent.is_err(),
        "no answer while zurich reads nothing: {sent:?}"
    );
    eventually("the client's request is cancelled", async || {
        let (_, metrics) = proxy.admin_get("/metrics").await;
        metric(&metrics, "residency_detached_requests_cancelled_total") == Some(1.0)
    })
    .await;
    assert_eq!(zurich_connections(&proxy).await, 1.0);
    let _ = reset_tx.send(());
    eventually("the connection to zurich is let go", async || {
        zurich_connections(&proxy).await == 0.0
    })
    .await;
    drop(send);
    proxy.stop().await;
}

/// A data centre that closes the connection while the body is still being
/// written (its kernel resets it): once the connection's reads have ended,
/// the failed writes end it too. They used to be held pending for an answer
/// that could no longer come, also while hyper flushed before closing,
/// which kept the upstream connection (and its place under the cap) and
/// the client's connection until the stall watch closed it, after twice
/// `timeouts.upstream_send_idle` (60 s by default).
#[tokio::test]
async fn a_connection_reset_mid_upload_is_let_go_at_once() {
    let url = faulty(Fault::ClosedBeforeRead, Arc::new(Seen::default())).await;
    refused_then_let_go(&url, 128 * 1024).await;
}

/// A replay to another upstream of the same data centre names that data
/// centre once, as `datacenter`: `also_sent_to` lists only other ones.
#[tokio::test]
async fn a_replay_within_one_data_centre_names_it_once() {
    let seen = Arc::new(Seen::default());
    let failing = faulty(Fault::ServerError, seen.clone()).await;
    let good = Upstream::start("zurich-b").await;
    let proxy = with_zurich_upstreams(&[&failing, &format!("http://{}", good.addr)]).await;
    // zurich's two upstreams take turns: within two uploads, one meets the
    // failing one first and is replayed on the other.
    let mut replayed = None;
    for _ in 0..4 {
        let heads = seen.heads.load(Ordering::SeqCst);
        let reply = proxy
            .client()
            .send(
                "POST",
                "/v1/telemetry",
                &[("x-forwarded-for", CH), ("idempotency-key", "upload-7")],
                vec![1u8; 1024],
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        if seen.heads.load(Ordering::SeqCst) > heads {
            replayed = Some(reply);
            break;
        }
    }
    let reply = replayed.expect("an upload met the failing upstream first");
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
    assert_eq!(proxy.upstream("geneva").count(), 0, "stayed in zurich");
    let receipt = Receipt::parse(reply.header("residency-receipt").unwrap()).unwrap();
    let record = Record::from_bytes(&receipt.record).unwrap();
    assert_eq!(record.datacenter.as_deref(), Some("zurich"));
    assert!(record.also_sent_to.is_empty(), "{:?}", record.also_sent_to);
    proxy.stop().await;
}

/// An upload with `Idempotency-Key` that zurich reads whole and answers
/// 503 to, whose replay to geneva cannot connect; `passive_failures` as
/// configured. Returns the answer and its record's bytes.
async fn replayed_to_a_closed_port(passive_failures: u32) -> (Reply, String) {
    let seen = Arc::new(Seen::default());
    let failing = faulty(Fault::ServerError, seen.clone()).await;
    // geneva refuses connections: the replay sends it nothing.
    let geneva = closed_port().await;
    let proxy = Proxy::start(Setup {
        datacenters: vec![("frankfurt", "eu", 1, true), ("virginia", "us", 1, true)],
        extra: format!(
            "\n[datacenters.zurich]\njurisdiction = \"ch\"\npriority = 1\nupstreams = [\"{failing}\"]\n\n\
             [datacenters.geneva]\njurisdiction = \"ch\"\npriority = 2\nupstreams = [\"http://{geneva}\"]\n\n\
             [health]\npath = \"off\"\npassive_failures = {passive_failures}\n"
        ),
        transparency: Some(String::new()),
        ..Setup::default()
    })
    .await;
    let reply = proxy
        .client()
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", CH), ("idempotency-key", "upload-9")],
            vec![7u8; 1024],
        )
        .await;
    assert_eq!(seen.heads.load(Ordering::SeqCst), 1, "zurich got it once");
    let id = reply.header("x-request-id").unwrap();
    let (status, entry) = proxy.log_get(&format!("/records/{id}")).await;
    assert_eq!(status, 200, "{entry}");
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    proxy.stop().await;
    (reply, entry["record"].as_str().unwrap().to_string())
}

/// A replay that finds no data centre up (zurich's 503 ejected it, geneva's
/// refused connection too): the record names none as where the upload
/// went (`datacenter` null, 503 `no_healthy_datacenter`) and still names
/// zurich, which the first attempt sent the body to.
#[tokio::test]
async fn a_replay_that_finds_nothing_up_still_names_where_the_body_went() {
    let (reply, record) = replayed_to_a_closed_port(1).await;
    let record = Record::from_bytes(record.as_bytes()).unwrap();
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "no_healthy_datacenter",
        "{:?}",
        reply.body
    );
    assert_eq!(record.datacenter, None, "{record:?}");
    let earlier: Vec<&str> = record.also_sent_to.iter().map(|d| d.as_ref()).collect();
    assert_eq!(earlier, ["zurich"]);
    assert_eq!(record.reason.as_deref(), Some("no_healthy_datacenter"));
}

/// A replay that could not connect, its attempts spent while zurich is
/// still up: geneva, which got nothing, is not named as where the upload
/// went (it was, in the record and `Residency-Datacenter`); zurich is.
#[tokio::test]
async fn a_replay_that_sent_nothing_does_not_name_its_data_centre() {
    let (reply, record) = replayed_to_a_closed_port(3).await;
    let record = Record::from_bytes(record.as_bytes()).unwrap();
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    assert_eq!(reply.header("residency-datacenter"), None);
    assert_eq!(record.datacenter, None, "{record:?}");
    let earlier: Vec<&str> = record.also_sent_to.iter().map(|d| d.as_ref()).collect();
    assert_eq!(earlier, ["zurich"]);
}

/// The drill's log check passes an upload held in two data centres when
/// its record names both: zurich read the whole body and answered 503, the
/// replay stored it in geneva, and the record says geneva with zurich
/// among `also_sent_to`. The check fails it when a copy is somewhere the
/// record does not name (frankfurt here).
#[tokio::test]
async fn the_drill_s_log_check_passes_an_upload_its_record_names_both_copies_of() {
    use std::collections::HashMap;

    use residency_tools::loadtest::logcheck;
    use residency_tools::loadtest::plan::LogTarget;

    let url = faulty(Fault::ServerError, Arc::new(Seen::default())).await;
    let proxy = with_zurich_at(&url).await;
    let key = proxy.log_key();
    let body = vec![3u8; 2048];
    let reply = proxy
        .client()
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", CH), ("idempotency-key", "upload-11")],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.header("residency-datacenter"), Some("geneva"));
    proxy.checkpoint_covers(&key, 1).await;
    let sha256: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &body)
        .as_ref()
        .try_into()
        .unwrap();
    let outcomes = [drill_outcome(0, &reply, &reply, "geneva", sha256)];
    let target = LogTarget {
        url: format!("http://{}", proxy.log_addr.unwrap()),
        key,
    };
    let check = async |stored: &[&str]| {
        let stored = HashMap::from([(0, stored.iter().map(|s| s.to_string()).collect())]);
        let report = logcheck::check(&target, None, &outcomes, &stored).await;
        assert_eq!(report.error, None, "{report:?}");
        (report.receipts_verified, report.receipts_failed)
    };
    assert_eq!(check(&["geneva", "zurich"]).await, (1, 0));
    assert_eq!(check(&["geneva"]).await, (1, 0), "a copy named, not held");
    assert_eq!(check(&["frankfurt", "geneva"]).await, (0, 1));
    proxy.stop().await;
}

/// An upload from `origin`, buffered for replay (it has an
/// `Idempotency-Key`), whose body comes when the test sends it.
fn waiting_upload(
    proxy: &Proxy,
    origin: &'static str,
    key: &'static str,
) -> (
    tokio::sync::mpsc::Sender<bytes::Bytes>,
    tokio::task::JoinHandle<Reply>,
) {
    waiting_upload_by(proxy.client(), origin, key)
}

/// As [`waiting_upload`], by `client`.
fn waiting_upload_by(
    client: Client,
    origin: &'static str,
    key: &'static str,
) -> (
    tokio::sync::mpsc::Sender<bytes::Bytes>,
    tokio::task::JoinHandle<Reply>,
) {
    channel_upload(
        client,
        [("x-forwarded-for", origin), ("idempotency-key", key)],
    )
}

/// An upload from `origin` streamed as it is sent (no `Idempotency-Key`):
/// the sender sends its body, dropped it ends.
fn streamed_upload(
    client: Client,
    origin: &'static str,
) -> (
    tokio::sync::mpsc::Sender<bytes::Bytes>,
    tokio::task::JoinHandle<Reply>,
) {
    channel_upload(client, [("x-forwarded-for", origin)])
}

fn channel_upload<const N: usize>(
    client: Client,
    headers: [(&'static str, &'static str); N],
) -> (
    tokio::sync::mpsc::Sender<bytes::Bytes>,
    tokio::task::JoinHandle<Reply>,
) {
    let (tx, body) = channel_body();
    let reply = tokio::spawn(async move {
        client
            .send_body("POST", "/v1/telemetry", &headers, body)
            .await
            .unwrap()
    });
    (tx, reply)
}

/// Writes `config` and reloads it while the upload `(tx, reply)` waits,
/// then sends the rest of its body: it must be refused, `policy_changed`.
async fn reload_then_refused(
    proxy: &Proxy,
    config: String,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    reply: tokio::task::JoinHandle<Reply>,
    what: &str,
) {
    std::fs::write(&proxy.config_path, config).unwrap();
    residency_proxy::reload::reload(&proxy.instance, &proxy.config_path).unwrap();
    tx.send(bytes::Bytes::from_static(b"second half"))
        .await
        .unwrap();
    drop(tx);
    let reply = reply.await.unwrap();
    assert_eq!(reply.status, 503, "{what}: {reply:?}");
    assert_eq!(reply.json()["error"], "policy_changed", "{what}");
}

/// A reload that moves the client, not the data centre: an override
/// placing the Swiss client in Germany. Its upload, decided for zurich
/// before the reload, is not sent there after it (stop 68's verification:
/// it was).
#[tokio::test]
async fn an_upload_is_not_sent_where_a_reload_no_longer_places_its_client() {
    let proxy = Proxy::start(Setup::default()).await;
    let (to_zurich, moved) = waiting_upload(&proxy, CH, "moved-2");
    to_zurich
        .send(bytes::Bytes::from_static(b"first half, "))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let moved_config =
        format!("{config}\n[[geoip.overrides]]\nnetwork = \"{CH}/32\"\ncountry = \"DE\"\n");
    reload_then_refused(&proxy, moved_config, to_zurich, moved, "overridden").await;
    assert_eq!(
        proxy.upstream("zurich").count(),
        0,
        "sent where the client is no longer placed"
    );
    // Decided after it: Germany's data centre.
    let reply = proxy.client().upload_from(CH, "after").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("frankfurt"));
    proxy.stop().await;
}

/// An upload decided for a data centre that a reload then takes out of its
/// jurisdiction's permitted set — here while the upload, carrying an
/// `Idempotency-Key`, is still being read whole for replay — is not sent
/// there: 503 `policy_changed` with `Retry-After`, and nothing reaches the
/// data centre (here removed: zurich's server is named geneva by the
/// reload) (reload audit, stop 68: it was stored there, seconds after
/// the reload; with a large `replay_limit_bytes`, hours). Uploads decided
/// after the reload take the new policy; those a reload leaves permitted
/// are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_not_sent_where_a_reload_no_longer_permits_it() {
    let proxy = Proxy::start(Setup::default()).await;
    let (to_zurich, moved) = waiting_upload(&proxy, CH, "moved-1");
    let (to_frankfurt, kept) = waiting_upload(&proxy, DE, "kept-1");
    for tx in [&to_zurich, &to_frankfurt] {
        tx.send(bytes::Bytes::from_static(b"first half, "))
            .await
            .unwrap();
    }
    // Both decided (their heads read) before the reload.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let moved_config = config.replacen(
        "[datacenters.zurich]\njurisdiction = \"ch\"",
        "[datacenters.geneva]\njurisdiction = \"ch\"",
        1,
    );
    assert_ne!(moved_config, config);
    std::fs::write(&proxy.config_path, moved_config).unwrap();
    residency_proxy::reload::reload(&proxy.instance, &proxy.config_path).unwrap();
    for tx in [to_zurich, to_frankfurt] {
        tx.send(bytes::Bytes::from_static(b"second half"))
            .await
            .unwrap();
    }
    let reply = moved.await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["error"], "policy_changed");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        proxy.upstream("zurich").count(),
        0,
        "sent where no longer permitted"
    );
    let reply = kept.await.unwrap();
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("frankfurt"));
    // Decided after it: the Swiss data centre at that server is geneva now.
    let reply = proxy.client().upload_from(CH, "after").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("geneva"));
    proxy.stop().await;
}

/// A reload that re-pins the tenant an upload was recognised as, or
/// removes it: its upload, decided for the old pin's data centre, is not
/// sent there after the reload.
#[tokio::test]
async fn an_upload_is_not_sent_where_a_reload_no_longer_pins_its_tenant() {
    let tenant = |j: &str| {
        format!(
            "[[tenants]]\nname = \"acme\"\njurisdiction = \"{j}\"\nsni = [\"acme.ingest.test\"]\n"
        )
    };
    let proxy = Proxy::start(Setup {
        second_cert: Some(vec!["acme.ingest.test"]),
        extra: tenant("eu"),
        ..Setup::default()
    })
    .await;
    let acme = || proxy.client().sni(Some("acme.ingest.test"));
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    for (round, after) in [(1, tenant("ch")), (2, String::new())] {
        // Pinned to eu from Switzerland: frankfurt.
        std::fs::write(&proxy.config_path, &config).unwrap();
        residency_proxy::reload::reload(&proxy.instance, &proxy.config_path).unwrap();
        let key = if round == 1 { "repinned" } else { "removed" };
        let (tx, reply) = waiting_upload_by(acme(), CH, key);
        tx.send(bytes::Bytes::from_static(b"first half, "))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let changed = config.replacen(&tenant("eu"), &after, 1);
        assert_ne!(changed, config);
        reload_then_refused(&proxy, changed, tx, reply, key).await;
        assert_eq!(
            proxy.upstream("frankfurt").count(),
            0,
            "{key}: sent where the tenant is no longer pinned"
        );
        // Decided after it: Switzerland's data centre, by the pin or by GeoIP.
        let reply = acme().upload_from(CH, "after").await;
        assert_eq!(reply.status, 201, "{key}: {reply:?}");
        assert_eq!(
            reply.header("residency-datacenter"),
            Some("zurich"),
            "{key}"
        );
    }
    proxy.stop().await;
}

/// A reload that gives the data centre another address: an upload decided
/// for the old address is not sent there (verification, stop 69: the
/// check by name let it go to an address the new configuration gives to
/// no one, or to another jurisdiction's data centre).
#[tokio::test]
async fn an_upload_is_not_sent_to_an_address_a_reload_took_from_its_data_centre() {
    let proxy = Proxy::start(Setup::default()).await;
    let (tx, reply) = waiting_upload(&proxy, CH, "readdressed");
    tx.send(bytes::Bytes::from_static(b"first half, "))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let new_zurich = Upstream::start("zurich").await;
    let old = format!("http://{}", proxy.upstream("zurich").addr);
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let moved = config.replacen(&old, &format!("http://{}", new_zurich.addr), 1);
    assert_ne!(moved, config);
    reload_then_refused(&proxy, moved, tx, reply, "readdressed").await;
    assert_eq!(
        proxy.upstream("zurich").count(),
        0,
        "sent to the old address"
    );
    let reply = proxy.client().upload_from(CH, "after").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(new_zurich.count(), 1, "decided after it: the new address");
    proxy.stop().await;
}

/// An upload that waited for a connection — the cap of one held by
/// another upload — is asked again once the connection is its own: a
/// reload meanwhile that took the address it was decided for sends it
/// nowhere (verification, stop 69: the check ran before the wait, and it
/// was stored at the old address after the reload).
#[tokio::test]
async fn an_upload_that_waited_for_a_connection_is_not_sent_where_a_reload_took_it() {
    waited_for_a_connection_across_a_reload(Some("waited")).await;
}

/// As above, streamed (no `Idempotency-Key`: not read whole first). It
/// waits for its connection with nothing of its body read, so it is asked
/// again too (reload audit, stop 70: it was stored at the old address).
#[tokio::test]
async fn a_streamed_upload_that_waited_for_a_connection_is_not_sent_where_a_reload_took_it() {
    waited_for_a_connection_across_a_reload(None).await;
}

/// Holds zurich's one connection with one upload while a second
/// (`idempotency_key`: read whole for replay first; `None`: streamed) waits
/// for it, moves zurich to a new address, then lets the first finish: the
/// second must be refused, `policy_changed`, and go nowhere.
async fn waited_for_a_connection_across_a_reload(idempotency_key: Option<&'static str>) {
    let proxy = Proxy::start(Setup {
        extra: "[upstream]\nmax_connections_per_upstream = 1\n[timeouts]\nupstream_connect = \"5s\"\n[health]\npath = \"off\"\n".into(),
        ..Setup::default()
    })
    .await;
    // Holds zurich's one connection until its second half.
    let (holder, held) = streamed_upload(proxy.client(), CH);
    holder
        .send(bytes::Bytes::from_static(b"first half, "))
        .await
        .unwrap();
    proxy.upstream("zurich").first_bytes.notified().await;
    let (tx, waiting) = match idempotency_key {
        // Read whole for replay, then waits for the connection.
        Some(key) => waiting_upload(&proxy, CH, key),
        // Waits for the connection before its body is read.
        None => streamed_upload(proxy.client(), CH),
    };
    tx.send(bytes::Bytes::from_static(b"whole")).await.unwrap();
    drop(tx);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let new_zurich = Upstream::start("zurich").await;
    let old = format!("http://{}", proxy.upstream("zurich").addr);
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let moved = config.replacen(&old, &format!("http://{}", new_zurich.addr), 1);
    assert_ne!(moved, config);
    std::fs::write(&proxy.config_path, moved).unwrap();
    residency_proxy::reload::reload(&proxy.instance, &proxy.config_path).unwrap();
    // The holder, streamed and decided before the reload, finishes there.
    holder
        .send(bytes::Bytes::from_static(b"second half"))
        .await
        .unwrap();
    drop(holder);
    assert_eq!(held.await.unwrap().status, 201);
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["error"], "policy_changed");
    assert_eq!(
        proxy.upstream("zurich").count(),
        1,
        "only the holder at the old address"
    );
    proxy.stop().await;
}

/// With pooling off (`pool_max_idle_per_host = 0`), an upload that made a
/// new connection is still handed back to be looked at again — and sent
/// on that connection, not on a second one (the pool keeps it for the
/// resend though it keeps none idle). Counted by a relay in front of the
/// data centre.
#[tokio::test]
async fn an_upload_handed_back_after_connecting_uses_that_connection_with_pooling_off() {
    let proxy = Proxy::start(Setup {
        extra: "[upstream]\npool_max_idle_per_host = 0\n[health]\npath = \"off\"\n".into(),
        ..Setup::default()
    })
    .await;
    let zurich = proxy.upstream("zurich").addr;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = accepted.clone();
    let relaying = tokio::spawn(async move {
        while let Ok((mut from, _)) = relay.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut to) = tokio::net::TcpStream::connect(zurich).await {
                    let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                }
            });
        }
    });
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let relayed = config.replacen(
        &format!("http://{zurich}"),
        &format!("http://{relay_addr}"),
        1,
    );
    assert_ne!(relayed, config);
    std::fs::write(&proxy.config_path, relayed).unwrap();
    residency_proxy::reload::reload(&proxy.instance, &proxy.config_path).unwrap();
    for (i, origin) in ["first", "second"].into_iter().enumerate() {
        let reply = proxy.client().upload_from(CH, origin).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            i + 1,
            "one connection an upload (none pooled), not two"
        );
    }
    assert_eq!(proxy.upstream("zurich").count(), 2);
    relaying.abort();
    proxy.stop().await;
}
