//! Answers given before the request body was read reach the client.
//!
//! A refusal decided before forwarding (here 451: unknown origin) does not
//! read the upload, but the client is still sending it. The proxy answers,
//! then reads and discards the body (bounded), so neither a TCP reset
//! (HTTP/1.1) nor an early stream reset (HTTP/2) takes the answer away.
//! Checked with Debian's curl, which drops an HTTP/2 response whose stream
//! is reset while it is still sending (curl 7.88: error 92), and with hyper.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const VERSIONS: [Http; 2] = [Http::One, Http::Two];

/// Body sizes from 1 KiB to 8 MiB; curl sends `Expect: 100-continue` above 1 MiB.
const SIZES: [usize; 4] = [1024, 300 * 1024, 1024 * 1024, 8 * 1024 * 1024];

/// Runs curl `runs` times (4 at a time) and returns the status codes it printed.
async fn curl_statuses(
    proxy: &Proxy,
    version_flag: &str,
    body: &std::path::Path,
    headers: &[&str],
    runs: usize,
) -> Vec<String> {
    let ca = proxy.dir.path().join("curl-ca.pem");
    std::fs::write(&ca, &proxy.certs[0]).unwrap();
    let port = proxy.addr.port();
    let mut statuses = Vec::new();
    for batch in (0..runs).collect::<Vec<_>>().chunks(4) {
        let mut children = Vec::new();
        for _ in batch {
            let child = Command::new("curl")
                .args(["-s", version_flag, "--max-time", "30", "--cacert"])
                .arg(&ca)
                .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
                .args(headers.iter().flat_map(|h| ["-H", h]))
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .args(["-o", "/dev/null", "-w", "%{http_code} %{errormsg}"])
                .arg(format!("https://localhost:{port}/v1/telemetry"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl runs (apt-get install curl)");
            children.push(child);
        }
        for child in children {
            let out = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            statuses.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_reach_curl_over_http1_and_http2() {
    let proxy = Proxy::start(Setup::default()).await;
    for size in SIZES {
        let body = proxy.dir.path().join(format!("body-{size}"));
        std::fs::write(&body, vec![b'x'; size]).unwrap();
        for flag in ["--http1.1", "--http2"] {
            let xff = format!("X-Forwarded-For: {UNKNOWN}");
            let statuses = curl_statuses(&proxy, flag, &body, &[&xff], 25).await;
            let failed: Vec<&String> = statuses.iter().filter(|s| !s.starts_with("451")).collect();
            assert!(
                failed.is_empty(),
                "{size} bytes over {flag}: {} of {} runs did not read 451: {failed:?}",
                failed.len(),
                statuses.len()
            );
        }
    }
    assert_eq!(
        proxy.counts().values().sum::<usize>(),
        0,
        "no upstream saw an upload"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_reach_hyper_clients() {
    let proxy = Proxy::start(Setup::default()).await;
    for size in SIZES {
        for v in VERSIONS {
            for _ in 0..5 {
                let body = "x".repeat(size);
                let reply = proxy.client().version(v).upload_from(UNKNOWN, &body).await;
                assert_eq!(reply.status, 451, "{size} bytes over {v:?}");
                assert_eq!(reply.json()["error"], "origin_unknown");
            }
        }
    }
    proxy.stop().await;
}

/// After a refusal's body has been discarded, the HTTP/1.1 connection serves
/// the next request.
#[tokio::test]
async fn a_discarded_body_keeps_the_connection() {
    use tokio::io::AsyncWriteExt;
    let proxy = Proxy::start(Setup::default()).await;
    let mut tls = proxy.client().connect().await.unwrap();
    let body = "x".repeat(64 * 1024);
    for origin in [UNKNOWN, CH] {
        let head = format!(
            "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {origin}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body.as_bytes()).await.unwrap();
    }
    tls.flush().await.unwrap();
    let text = read_answers(
        &mut tls,
        2,
        std::time::Duration::from_secs(10),
        "both answers within 10 s",
    )
    .await;
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["451", "201"], "{text}");
    assert_eq!(proxy.upstream("zurich").count(), 1);
    proxy.stop().await;
}

/// Setup for data centres that answer early: their 503s must not eject them.
fn tolerant() -> Setup {
    Setup {
        extra: "[health]\npassive_failures = 1000000\n".into(),
        ..Setup::default()
    }
}

/// A data centre that answers before reading the upload and closes the
/// connection (here 503 at once): the client reads that answer, not a 502
/// and not a reset. 25 curl runs per body size and HTTP version: 100 per
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacentre_early_answers_reach_curl_over_http1_and_http2() {
    let proxy = Proxy::start(tolerant()).await;
    for size in SIZES {
        let body = proxy.dir.path().join(format!("body-{size}"));
        std::fs::write(&body, vec![b'x'; size]).unwrap();
        for flag in ["--http1.1", "--http2"] {
            let headers = [
                &*format!("X-Forwarded-For: {CH}"),
                "X-Test-Refuse-Early: 503",
            ];
            let statuses = curl_statuses(&proxy, flag, &body, &headers, 25).await;
            let failed: Vec<&String> = statuses.iter().filter(|s| !s.starts_with("503")).collect();
            assert!(
                failed.is_empty(),
                "{size} bytes over {flag}: {} of {} runs did not read the data centre's 503: {failed:?}",
                failed.len(),
                statuses.len()
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacentre_early_answers_reach_hyper_clients() {
    let proxy = Proxy::start(tolerant()).await;
    for size in SIZES {
        for v in VERSIONS {
            for _ in 0..5 {
                let reply = proxy
                    .client()
                    .version(v)
                    .send(
                        "POST",
                        "/v1/telemetry",
                        &[("x-forwarded-for", CH), ("x-test-refuse-early", "413")],
                        "x".repeat(size),
                    )
                    .await;
                assert_eq!(reply.status, 413, "{size} bytes over {v:?}");
                assert_eq!(reply.json()["error"], "datacenter_refused");
                assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
            }
        }
    }
    proxy.stop().await;
}

/// Runs `tests/clients/upload.py` (Python's http.client for HTTP/1.1, httpx
/// with h2 for HTTP/2) `runs` times and returns the statuses it read.
async fn python_statuses(
    proxy: &Proxy,
    version: &str,
    size: usize,
    headers: &[&str],
    runs: usize,
) -> Vec<String> {
    let ca = proxy.dir.path().join("python-ca.pem");
    std::fs::write(&ca, &proxy.certs[0]).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/upload.py");
    let url = format!("https://localhost:{}/v1/telemetry", proxy.addr.port());
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .args([version, &url])
        .arg(&ca)
        .args([size.to_string(), runs.to_string()])
        .args(headers);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("Debian's python3 runs (apt-get install python3-httpx python3-h2)");
    assert!(
        out.status.success(),
        "upload.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Python's clients read the proxy's refusals (451) and a data centre's
/// early answer (503) with bodies from 1 KiB to 8 MiB: 25 uploads per size,
/// version and case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_python_clients_over_http1_and_http2() {
    let proxy = Proxy::start(tolerant()).await;
    let unknown = format!("X-Forwarded-For: {UNKNOWN}");
    let ch = format!("X-Forwarded-For: {CH}");
    let cases: [(&str, Vec<&str>); 2] = [
        ("451", vec![unknown.as_str()]),
        ("503", vec![ch.as_str(), "X-Test-Refuse-Early: 503"]),
    ];
    for size in SIZES {
        for version in ["1.1", "2"] {
            for (want, headers) in &cases {
                let runs = 25;
                let statuses = python_statuses(&proxy, version, size, headers, runs).await;
                let failed: Vec<&String> = statuses.iter().filter(|s| s != want).collect();
                assert!(
                    statuses.len() == runs && failed.is_empty(),
                    "{size} bytes over HTTP/{version}: {} of {} runs did not read {want}: {failed:?}",
                    failed.len(),
                    statuses.len()
                );
            }
        }
    }
    proxy.stop().await;
}

/// An HTTP/2 upload refused before forwarding is read and discarded even
/// when it says `Expect: 100-continue`: the HTTP/1.1 reasons to close
/// instead (no `100 Continue` went out, so the client need not send the
/// body, and a next request would be read as it) do not hold for HTTP/2,
/// whose client sends its body after its own wait. It used to be dropped,
/// and h2 reset the stream (`NO_ERROR`) while the client was still sending
/// — which curl takes for a failed request.
#[tokio::test]
async fn an_http2_refusal_with_expect_still_reads_the_body() {
    let proxy = Proxy::start(Setup::default()).await;
    let tls = proxy.client().h2().connect().await.unwrap();
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    // Past the stream's 1 MiB window: still sending when the answer comes.
    let body = bytes::Bytes::from(vec![b'x'; 4 << 20]);
    let req = http::Request::post("https://localhost/v1/telemetry")
        .header("x-forwarded-for", UNKNOWN)
        .header("expect", "100-continue")
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(req, false).unwrap();
    stream.send_data(body, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.status(), 451);
    let mut answer = response.into_body();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        let _ = answer.flow_control().release_capacity(chunk.len());
    }
    let reset = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| stream.poll_reset(cx)),
    )
    .await;
    assert!(reset.is_err(), "the stream was reset: {reset:?}");
    proxy.stop().await;
}

/// A data centre's early answer to an HTTP/1.1 upload declared larger than
/// `limits.discard_body_bytes` says `Connection: close` (RFC 9112 §9.6), as
/// the proxy's own refusals do: past that bound the rest is given up and
/// the connection closed. One whose rest is discarded whole keeps the
/// connection for the next request, and says nothing of closing.
#[tokio::test]
async fn an_early_answer_past_the_discard_bound_says_close() {
    use tokio::io::AsyncWriteExt;
    let proxy = Proxy::start(Setup {
        extra: "[health]\npassive_failures = 1000000\n[limits]\ndiscard_body_bytes = 4096\n[timeouts]\ndiscard_body = \"1s\"\n"
            .into(),
        ..Setup::default()
    })
    .await;
    let head = |refuse: bool, length: usize| {
        let refuse = if refuse {
            "X-Test-Refuse-Early: 413\r\n"
        } else {
            ""
        };
        format!(
            "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\n{refuse}Content-Length: {length}\r\n\r\n"
        )
    };
    // 1 MiB declared, 10 bytes sent: the answer comes at once, saying close.
    let mut tls = proxy.client().connect().await.unwrap();
    tls.write_all(head(true, 1 << 20).as_bytes()).await.unwrap();
    tls.write_all(b"0123456789").await.unwrap();
    tls.flush().await.unwrap();
    let (raw, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert_eq!(raw_status(&raw), Some(413), "{text}");
    assert!(
        text.contains("\r\nconnection: close\r\n"),
        "an early answer after which the connection closes says so: {text}"
    );
    // 1000 bytes declared and sent: discarded, the connection kept.
    let mut tls = proxy.client().connect().await.unwrap();
    let mut two = head(true, 1000).into_bytes();
    two.extend_from_slice(&[b'x'; 1000]);
    two.extend_from_slice(head(false, 100).as_bytes());
    two.extend_from_slice(&[b'x'; 100]);
    tls.write_all(&two).await.unwrap();
    tls.flush().await.unwrap();
    let text = read_answers(&mut tls, 2, Duration::from_secs(10), "both answers").await;
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["413", "201"], "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    proxy.stop().await;
}
