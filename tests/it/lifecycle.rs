//! The real binary's lifecycle: SIGTERM during a 10 MiB upload lets it
//! finish, while readiness turns false and new connections are refused.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_upload_in_flight_finish_and_refuses_new_connections() {
    let zurich = Upstream::start("zurich").await;
    let others = Upstream::start("others").await;
    let dcs = [
        ("zurich", "ch", zurich.addr),
        ("frankfurt", "eu", others.addr),
        ("virginia", "us", others.addr),
    ];
    // One worker: the binary on Tokio's single-threaded scheduler, signals
    // and shutdown included.
    let extra = "[runtime]\nworker_threads = 1\n\
                 [timeouts]\nshutdown_delay = \"1s\"\nshutdown_grace = \"20s\"\n";
    let mut proxy = Binary::start("sigterm", &dcs, extra).await;
    let (addr, admin) = (proxy.addr, proxy.admin);
    let log_path = proxy.log_path.clone();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // A 10 MiB upload, first MiB sent.
    let client = proxy.client();
    let (tx, body) = channel_body();
    let upload = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body)
                .await
        })
    };
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    for _ in 0..16 {
        tx.send(chunk.clone()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), zurich.first_bytes.notified())
        .await
        .expect("the upstream sees the upload start");

    let pid = proxy.pid().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());

    // Readiness goes false first, while the listener still accepts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready(admin) {
        assert!(
            Instant::now() < deadline,
            "readiness never went false: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then accepting stops: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after SIGTERM: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client
        .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], {
            let (_, b) = channel_body();
            b
        })
        .await
        .is_err());
    // The admin listener still answers while the upload drains: a liveness
    // probe passes, and `/metrics` shows the drain.
    let (status, _, body) = plain_exchange(admin, "GET", "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = plain_exchange(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("residency_connections_active"), "{body}");

    // The upload in flight finishes: the remaining 9 MiB, then 201.
    for _ in 16..160 {
        tx.send(chunk.clone()).await.expect("body still being read");
    }
    drop(tx);
    let reply = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("upload finished")
        .unwrap()
        .expect("upload completes");
    assert_eq!(reply.status, 201, "{:?}\n{}", reply.body, log());
    assert_eq!(zurich.last().body.len(), 10 * 1024 * 1024);

    // And the process exits cleanly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = proxy.child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit: {}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit {code}: {}", log());
    assert_eq!(others.count(), 0);
}

/// A SIGHUP while `serve` is still starting — here its log's database takes
/// the connection and never answers — used to end the process (SIGHUP's
/// default action before the reload task listened), and systemd's
/// `Restart=on-failure` does not restart a service a SIGHUP ended (the
/// shipped unit's `ExecReload` sends one). It is now recorded, and the
/// proxy goes on starting.
#[tokio::test]
async fn a_sighup_while_starting_does_not_end_the_proxy() {
    let database = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = database.local_addr().unwrap().port();
    let keep = TempDir::new("early-sighup-keys");
    log_key(keep.path());
    let password = keep.path().join("db-password");
    std::fs::write(&password, "secret\n").unwrap();
    let extra = format!(
        "[transparency]\nstorage = \"postgres\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"{}\"\n\
         [transparency.postgres]\nurl = \"postgres://residency@127.0.0.1:{port}/residency?sslmode=disable\"\n\
         password_file = \"{}\"\ntimeout = \"20s\"\n",
        keep.path().join("log.key").display(),
        password.display()
    );
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let dcs = datacenters_at(up);
    let mut proxy = Binary::spawn_wrapped("early-sighup", &dcs, &extra, &[]);
    // Starting: it has connected to its database, and waits for an answer.
    let (_held, _) = tokio::time::timeout(Duration::from_secs(20), database.accept())
        .await
        .unwrap_or_else(|_| panic!("never connected to its database: {}", proxy.log()))
        .unwrap();
    let pid = proxy.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy.child.0.try_wait().unwrap(),
        None,
        "SIGHUP ended the proxy while it started: {}",
        proxy.log()
    );
}

/// Under systemd's `Type=notify` (the shipped unit), `serve` says
/// `READY=1` to `$NOTIFY_SOCKET` once its listeners are bound — so
/// `systemctl reload` (SIGHUP) waits until the proxy serves — and
/// `STOPPING=1` when SIGTERM begins its shutdown.
#[tokio::test]
async fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let variable = format!("NOTIFY_SOCKET={}", path.display());
    let proxy = Binary::spawn_wrapped(
        "notify",
        &datacenters_at(up),
        "",
        &["env", variable.as_str()],
    );
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1: {e}: {}", proxy.log()));
    assert_eq!(&buf[..n], b"READY=1");
    // Said once serving: the admin listener answers at once.
    assert!(ready(proxy.admin), "{}", proxy.log());
    // `env` executes the proxy in its own place: the same process.
    let pid = proxy.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// `timeouts.connection_max_age`: past it a connection takes no new
/// request: HTTP/1's next answer says `Connection: close` (an upload whose
/// body straddles the age completes; a connection idle at the age answers
/// its next request so), then the connection closes.
#[tokio::test]
async fn http1_connections_end_after_connection_max_age() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = Proxy::start(Setup {
        extra: "[timeouts]\nconnection_max_age = \"1s\"\n".into(),
        ..Setup::default()
    })
    .await;
    let upload = |send: &mut hyper::client::conn::http1::SendRequest<Body>, body: Body| {
        let req = Request::post("/v1/telemetry")
            .header("host", "localhost")
            .header("x-forwarded-for", CH)
            .body(body)
            .unwrap();
        send.send_request(req)
    };
    let close = |resp: &Response<Incoming>| {
        resp.headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    };

    // Requests one after another: answered with keep-alive until the age,
    // then one with `Connection: close`, and the connection ends.
    let started = Instant::now();
    let tls = proxy.client().connect().await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut answered = 0;
    let closed_at = loop {
        assert!(started.elapsed() < Duration::from_secs(5), "never closed");
        let resp = upload(
            &mut send,
            Full::new(Bytes::from("hi")).map_err(|e| match e {}).boxed(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 201);
        answered += 1;
        if close(&resp) {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        closed_at >= Duration::from_millis(900),
        "closed after {closed_at:?}"
    );
    assert!(answered >= 5, "{answered} answered");
    tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("the connection ends after its last answer")
        .unwrap()
        .unwrap();

    // An upload in flight at the age is answered.
    let tls = proxy.client().connect().await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (chunks, body) = channel_body();
    let feed = tokio::spawn(async move {
        for _ in 0..4 {
            chunks.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
    let resp = upload(&mut send, body).await.unwrap();
    feed.await.unwrap();
    assert_eq!(resp.status(), 201);
    assert!(close(&resp), "{:?}", resp.headers());
    let zurich = proxy.upstream("zurich").last();
    assert_eq!(zurich.body.len(), 4000);

    // A keep-alive connection idle at the age is not cut under a client
    // that may be sending its next request (keepalive_idle is a minute):
    // that request is answered, with `Connection: close`.
    let mut tls = proxy.client().connect().await.unwrap();
    let request = |close: &str| {
        format!(
            "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\nContent-Length: 2\r\n{close}\r\nhi"
        )
    };
    tls.write_all(request("").as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 201");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tls.write_all(request("").as_bytes()).await.unwrap();
    let mut got = first.to_vec();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "still open after its answer");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert_eq!(text.matches("http/1.1 201").count(), 2, "{text}");
    assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    proxy.stop().await;
}

/// HTTP/2: past `timeouts.connection_max_age` the connection sends GOAWAY
/// and ends; every stream it accepted before is answered.
#[tokio::test]
async fn http2_connections_end_after_connection_max_age() {
    let proxy = Proxy::start(Setup {
        extra: "[timeouts]\nconnection_max_age = \"1s\"\n".into(),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    let tls = proxy.client().h2().connect().await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut answered = 0;
    let refused_at = loop {
        assert!(started.elapsed() < Duration::from_secs(5), "never closed");
        if send.ready().await.is_err() {
            break started.elapsed();
        }
        let req = Request::post("https://localhost/v1/telemetry")
            .header("x-forwarded-for", CH)
            .body(Full::new(Bytes::from("hi")).map_err(|e| match e {}).boxed())
            .unwrap();
        match send.send_request(req).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 201);
                answered += 1;
            }
            // Sent as the GOAWAY crossed it: refused, not lost.
            Err(_) => break started.elapsed(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refused_at >= Duration::from_millis(900),
        "ended after {refused_at:?}"
    );
    assert!(answered >= 5, "{answered} answered");
    assert_eq!(proxy.upstream("zurich").count(), answered);
    tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("the connection ends")
        .unwrap()
        .unwrap();
    proxy.stop().await;
}

/// An HTTP/2 connection that never asked anything does not hold up the
/// shutdown: one silent after its handshake (hyper would send GOAWAY only
/// after a preface), one that sent its preface and settings and never
/// acknowledges the PING that follows GOAWAY. Both were closed only when
/// `request_head` ended; here that is a minute, and so is the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_that_asked_nothing_do_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("up").await;
    let extra =
        "[timeouts]\nshutdown_delay = \"0s\"\nshutdown_grace = \"60s\"\nrequest_head = \"60s\"\n";
    let mut proxy = Binary::start("h2-idle-stop", &datacenters_at(up.addr), extra).await;
    let silent = proxy.client().h2().connect().await.unwrap();
    let mut prefaced = proxy.client().h2().connect().await.unwrap();
    prefaced
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    prefaced.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy
        .terminate(
            Duration::from_secs(20),
            "still waiting on the idle connections",
        )
        .await;
    assert!(
        proxy.log().contains("all connections finished"),
        "{}",
        proxy.log()
    );
    drop((silent, prefaced));
}
