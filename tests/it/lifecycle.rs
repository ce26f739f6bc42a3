//! The real binary's lifecycle: SIGTERM during a 10 MiB upload lets it
//! finish, while readiness turns false and new connections are refused.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_upload_in_flight_finish_and_refuses_new_connections() {
    let dir = TempDir::new("sigterm");
    let (cert, key) = residency_proxy::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(dir.path().join("a.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("a.key"), &key).unwrap();
    let rows = residency_proxy::geo::build::parse_csv(GEOIP_CSV).unwrap();
    let db = residency_proxy::geo::build::build_country_db(&rows, 1_750_000_000).unwrap();
    std::fs::write(dir.path().join("geo.mmdb"), db).unwrap();
    let zurich = Upstream::start("zurich").await;
    let others = Upstream::start("others").await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        r#"
[[listeners]]
address = "{addr}"
trusted_proxies = ["127.0.0.1"]
[listeners.tls]
certificates = [{{ cert = "a.pem", key = "a.key" }}]
[admin]
address = "{admin}"
[geoip]
database = "geo.mmdb"
[timeouts]
shutdown_delay = "1s"
shutdown_grace = "20s"
{POLICY}
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://{z}"]
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["http://{o}"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["http://{o}"]
"#,
        z = zurich.addr,
        o = others.addr,
    );
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("proxy.log");
    let child = Command::new(env!("CARGO_BIN_EXE_residency-proxy"))
        .args(["--log-level", "info", "serve", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start residency-proxy serve");
    let mut child = Killed(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(admin) {
        assert!(Instant::now() < deadline, "not ready: {}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A 10 MiB upload, first MiB sent.
    let client = Client::new(addr, &[cert]);
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

    let pid = child.0.id().to_string();
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
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit: {}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit {code}: {}", log());
    assert_eq!(others.count(), 0);
}
