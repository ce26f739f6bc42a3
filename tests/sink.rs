//! `residency-proxy sink` over real sockets on 127.0.0.1: uploads and their
//! records, every failure mode, the admin port and the limits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use residency_tools::sink::{Mode, Record, Sink, SinkOptions, Stats};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A sink with data centres `zurich` and `geneva`.
async fn start_with(options: SinkOptions) -> Sink {
    let dcs = [("zurich".into(), local()), ("geneva".into(), local())];
    let sink = Sink::start_with(&dcs, local(), options).await;
    sink.expect("sink starts")
}

async fn start() -> Sink {
    start_with(SinkOptions::default()).await
}

fn dc(sink: &Sink, name: &str) -> SocketAddr {
    sink.datacenter_addr(name).expect("known data centre")
}

/// One request on a fresh connection: status and whole body.
async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sink");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body.into())).expect("valid request")
}

async fn upload(addr: SocketAddr, body: &'static [u8]) -> StatusCode {
    let req = request(Method::POST, "/v1/telemetry", &[], body);
    send(addr, req).await.expect("upload answered").0
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    let req = request(Method::GET, path, &[], "");
    send(addr, req).await.expect("answered")
}

/// An admin request; the answer parsed as JSON.
async fn admin(sink: &Sink, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let req = request(method, path, &[], body.to_owned());
    let (status, bytes) = send(sink.admin_addr(), req).await.expect("admin answers");
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

async fn mode_via_admin(sink: &Sink, name: &str, body: Value) -> (StatusCode, Value) {
    let path = format!("/datacenters/{name}/mode");
    admin(sink, Method::POST, &path, &body.to_string()).await
}

async fn set_mode(sink: &Sink, name: &str, body: Value) -> Value {
    let (status, state) = mode_via_admin(sink, name, body).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    state
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn upload_is_stored_with_its_hash_length_and_headers() {
    let sink = start().await;
    let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let headers = [
        ("x-upload-id", "up-1"),
        ("idempotency-key", "idem-1"),
        ("x-request-id", "req-1"),
        ("residency-origin-country", "CH"),
        ("residency-jurisdiction", "ch"),
    ];
    let req = request(Method::PUT, "/v1/telemetry", &headers, body.clone());
    let (status, answer) = send(dc(&sink, "zurich"), req).await.expect("answered");
    assert_eq!(status, StatusCode::CREATED);
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(answer["stored_in"], "zurich");
    assert_eq!(answer["sha256"], sha256_hex(&body));
    assert_eq!(answer["bytes"], 700_000);
    assert_eq!(answer["request_id"], "req-1");

    let records = sink.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let now_ms = now.expect("clock").as_millis() as u64;
    assert!(r.received_at_ms <= now_ms && r.received_at_ms + 60_000 > now_ms);
    let want = Record {
        datacenter: "zurich".into(),
        upload_id: Some("up-1".into()),
        request_id: Some("req-1".into()),
        sha256: sha256_hex(&body),
        bytes: 700_000,
        origin_country: Some("CH".into()),
        jurisdiction: Some("ch".into()),
        received_at_ms: r.received_at_ms,
    };
    assert_eq!(*r, want);

    // `Idempotency-Key` stands in for a missing `X-Upload-Id`; else null.
    let req = request(Method::POST, "/", &[("idempotency-key", "idem-2")], "x");
    let (status, _) = send(dc(&sink, "geneva"), req).await.expect("answered");
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(upload(dc(&sink, "geneva"), b"").await, StatusCode::CREATED);
    let geneva = sink.records_for("geneva");
    assert_eq!(geneva[0].upload_id.as_deref(), Some("idem-2"));
    assert_eq!(geneva[1].upload_id, None);
    assert_eq!(geneva[1].sha256, sha256_hex(b""));

    // A record keeps 256 bytes of a header value: a client chooses its
    // length, and the sink keeps up to max_records of them.
    let long = "k".repeat(16 * 1024);
    let req = request(Method::POST, "/", &[("idempotency-key", &long)], "x");
    let (status, _) = send(dc(&sink, "geneva"), req).await.expect("answered");
    assert_eq!(status, StatusCode::CREATED);
    let kept = sink.records_for("geneva")[2].upload_id.clone().unwrap();
    assert_eq!(kept, "k".repeat(256));

    // Health checks are answered, not stored.
    let (status, ok) = get(dc(&sink, "zurich"), "/healthz").await;
    assert_eq!((status, &ok[..]), (StatusCode::OK, &b"ok\n"[..]));
    assert_eq!(sink.records().len(), 4);
    sink.stop().await;
}

#[tokio::test]
async fn refuse_closes_the_port_and_normal_reopens_the_same_one() {
    let sink = start().await;
    let addr = dc(&sink, "zurich");
    let mut open = TcpStream::connect(addr).await.expect("connects");
    let state = set_mode(&sink, "zurich", json!({"mode": "refuse"})).await;
    assert_eq!(
        (&state["datacenter"], &state["mode"]),
        (&json!("zurich"), &json!("refuse"))
    );
    let err = TcpStream::connect(addr).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The connection opened before is closed too.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Other data centres are untouched.
    assert_eq!(upload(dc(&sink, "geneva"), b"g").await, StatusCode::CREATED);

    sink.set_mode("zurich", Mode::Normal).expect("normal");
    assert_eq!(sink.datacenter_addr("zurich"), Some(addr));
    assert_eq!(upload(addr, b"back").await, StatusCode::CREATED);
    assert_eq!(sink.records_for("zurich").len(), 1);
    sink.stop().await;
}

#[tokio::test]
async fn hang_blackholes_until_the_mode_changes() {
    let sink = start().await;
    let addr = dc(&sink, "zurich");
    // A keep-alive connection opened before the hang, and one opened during it.
    let stream = TcpStream::connect(addr).await.expect("connects");
    let (mut before, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sink.set_mode("zurich", Mode::Hang).expect("hang");
    let during = tokio::spawn(upload_result(addr));
    let before = tokio::spawn(async move {
        let resp = before
            .send_request(request(Method::POST, "/", &[], "b"))
            .await?;
        Ok::<_, BoxError>(resp.status())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!during.is_finished() && !before.is_finished(), "answered");
    assert_eq!(sink.stats().datacenters["zurich"].connections, 2);

    sink.set_mode("zurich", Mode::Normal).expect("normal");
    // The blackholed requests end unanswered, and nothing was stored.
    let both = async { (during.await, before.await) };
    let ended = tokio::time::timeout(Duration::from_secs(2), both).await;
    let (during, before) = ended.expect("hung requests end when the mode changes");
    assert!(during.expect("task").is_err());
    assert!(before.expect("task").is_err());
    assert!(sink.records().is_empty());
    assert_eq!(upload(addr, b"after").await, StatusCode::CREATED);
    sink.stop().await;
}

async fn upload_result(addr: SocketAddr) -> Result<(StatusCode, Bytes), BoxError> {
    send(addr, request(Method::POST, "/", &[], "during")).await
}

#[tokio::test]
async fn slow_delays_each_answer_after_storing() {
    let sink = start().await;
    let state = set_mode(&sink, "geneva", json!({"mode": "slow", "delay_ms": 300})).await;
    assert_eq!(state["delay_ms"], 300);
    let started = Instant::now();
    assert_eq!(
        upload(dc(&sink, "geneva"), b"slowly").await,
        StatusCode::CREATED
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(dc(&sink, "geneva"), "/healthz").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sink.records_for("geneva").len(), 1);
    assert_eq!(sink.mode("geneva"), Some(Mode::Slow { delay_ms: 300 }));
    sink.stop().await;
}

#[tokio::test]
async fn error_answers_503_and_stores_nothing() {
    let sink = start().await;
    let addr = dc(&sink, "zurich");
    let state = set_mode(&sink, "zurich", json!({"mode": "error"})).await;
    assert_eq!(state["error_rate"], 1.0);
    for _ in 0..3 {
        let req = request(Method::POST, "/", &[], "lost");
        let (status, body) = send(addr, req).await.expect("answered");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"], "injected_failure");
    }
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(sink.records().is_empty());
    let stats = &sink.stats().datacenters["zurich"];
    assert_eq!((stats.errors, stats.uploads), (3, 0));

    // Rate 0: never fails. A partial rate is deterministic per data centre.
    set_mode(&sink, "zurich", json!({"mode": "error", "error_rate": 0.0})).await;
    assert_eq!(upload(addr, b"kept").await, StatusCode::CREATED);
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let half = Mode::Error { error_rate: 0.5 };
        sink.set_mode("zurich", half).expect("error");
        let mut run = Vec::new();
        for _ in 0..20 {
            run.push(upload(addr, b"maybe").await);
        }
        outcomes.push(run);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert!(outcomes[0].contains(&StatusCode::CREATED));
    assert!(outcomes[0].contains(&StatusCode::SERVICE_UNAVAILABLE));
    sink.stop().await;
}

#[tokio::test]
async fn admin_stats_records_filter_and_reset() {
    let sink = start().await;
    upload(dc(&sink, "zurich"), b"12345").await;
    upload(dc(&sink, "zurich"), b"678").await;
    upload(dc(&sink, "geneva"), b"9").await;

    let (status, stats) = admin(&sink, Method::GET, "/stats", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["records"], 3);
    assert_eq!(stats["dropped_records"], 0);
    let zurich = &stats["datacenters"]["zurich"];
    assert_eq!(
        (&zurich["mode"], &zurich["uploads"]),
        (&json!("normal"), &json!(2))
    );
    assert_eq!(
        (&zurich["bytes"], &zurich["errors"]),
        (&json!(8), &json!(0))
    );
    assert_eq!(zurich["connections"], 2);
    assert_eq!(zurich["address"], dc(&sink, "zurich").to_string());
    let typed_before = stats.clone();
    let typed: Stats = serde_json::from_value(stats).expect("typed stats");
    assert_eq!(typed.datacenters["geneva"].uploads, 1);

    let (status, all) = admin(&sink, Method::GET, "/records", "").await;
    assert_eq!(status, StatusCode::OK);
    let all: Vec<Record> = serde_json::from_value(all).expect("records");
    assert_eq!(all, sink.records());
    let (_, geneva) = admin(&sink, Method::GET, "/records?datacenter=geneva", "").await;
    let geneva: Vec<Record> = serde_json::from_value(geneva).expect("records");
    assert_eq!(geneva.len(), 1);
    assert_eq!(geneva[0].sha256, sha256_hex(b"9"));
    let (status, err) = admin(&sink, Method::GET, "/records?datacenter=oslo", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].as_str().is_some_and(|e| e.contains("oslo")));

    let (status, after) = admin(&sink, Method::POST, "/reset", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["records"], 0);
    // Its records begin anew: a load test that read the value before
    // knows what it held is gone.
    let since = |v: &serde_json::Value| v["records_since_ms"].as_u64().expect("records_since_ms");
    assert!(
        since(&after) > since(&typed_before),
        "{after} {typed_before}"
    );
    assert_eq!(after["datacenters"]["zurich"]["uploads"], 0);
    assert_eq!(after["datacenters"]["zurich"]["connections"], 0);
    assert!(sink.records().is_empty());
    let (status, ok) = get(sink.admin_addr(), "/healthz").await;
    assert_eq!((status, &ok[..]), (StatusCode::OK, &b"ok\n"[..]));
    sink.stop().await;
}

#[tokio::test]
async fn bad_admin_requests_name_the_problem() {
    let sink = start().await;
    let cases = [
        (json!({"mode": "sideways"}), "sideways"),
        (json!({"mode": "error", "error_rate": 2}), "error_rate"),
        (json!({"mode": "slow", "delay_ms": "soon"}), "delay_ms"),
        (json!({"mode": "slow", "colour": 1}), "colour"),
        (json!({}), "mode"),
        (json!("slow"), "JSON object"),
    ];
    for (body, mention) in cases {
        let (status, err) = mode_via_admin(&sink, "zurich", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        let message = err["error"].as_str().unwrap_or_default();
        assert!(message.contains(mention), "{message:?} lacks {mention:?}");
    }
    let (status, err) = admin(&sink, Method::POST, "/datacenters/zurich/mode", "{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().is_some_and(|e| e.contains("JSON")));
    let (status, err) = mode_via_admin(&sink, "oslo", json!({"mode": "normal"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].as_str().is_some_and(|e| e.contains("oslo")));
    assert_eq!(sink.mode("zurich"), Some(Mode::Normal));
    assert!(sink.set_mode("oslo", Mode::Hang).is_err());
    let negative = Mode::Error { error_rate: -0.1 };
    assert!(sink.set_mode("zurich", negative).is_err());
    sink.stop().await;
}

#[tokio::test]
async fn limits_bound_bodies_and_records() {
    let options = SinkOptions {
        max_records: 1,
        max_body_bytes: 1000,
        ..SinkOptions::default()
    };
    let sink = start_with(options).await;
    let addr = dc(&sink, "zurich");
    let big = request(Method::POST, "/", &[], vec![7u8; 5000]);
    let (status, _) = send(addr, big).await.expect("answered");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(upload(addr, b"first").await, StatusCode::CREATED);
    assert_eq!(upload(addr, b"second").await, StatusCode::CREATED);
    let stats = sink.stats();
    assert_eq!((stats.records, stats.dropped_records), (1, 1));
    assert_eq!(stats.datacenters["zurich"].uploads, 2);

    // A body cut off mid-stream is neither stored nor acknowledged.
    let mut raw = TcpStream::connect(addr).await.expect("connects");
    raw.write_all(b"POST / HTTP/1.1\r\nhost: sink\r\ncontent-length: 100\r\n\r\nonly a part")
        .await
        .expect("written");
    raw.shutdown().await.expect("half-closed");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), raw.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 2"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink.stats().datacenters["zurich"].rejected < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.stats().datacenters["zurich"].rejected, 2);
    assert_eq!(sink.records().len(), 1);
    sink.stop().await;
}

#[tokio::test]
async fn stop_ends_hanging_connections_and_closes_every_port() {
    let sink = start().await;
    let addr = dc(&sink, "geneva");
    let admin_addr = sink.admin_addr();
    sink.set_mode("geneva", Mode::Hang).expect("hang");
    let hung = tokio::spawn(upload_result(addr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(3), sink.stop())
        .await
        .expect("stop returns promptly");
    let hung = tokio::time::timeout(Duration::from_secs(1), hung).await;
    assert!(hung.expect("ended").expect("task").is_err());
    for a in [addr, admin_addr] {
        assert!(TcpStream::connect(a).await.is_err(), "{a} still listening");
    }
}
