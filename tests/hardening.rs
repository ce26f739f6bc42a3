//! Attacks whose cost is measured in the proxy's own process — latency
//! under slowloris, memory under a reset storm — in a test binary of its
//! own, one test at a time, so that no other test shares the machine
//! (cargo runs test binaries one after another).

#[path = "it/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// One measured test at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Upload latencies (fresh TLS connection, 1 KiB body, 201 each), sorted.
async fn upload_latencies(proxy: &Proxy, n: usize) -> Vec<Duration> {
    let body = "x".repeat(1024);
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let reply = proxy.client().upload_from(CH, &body).await;
        took.push(started.elapsed());
        assert_eq!(reply.status, 201);
    }
    took.sort();
    took
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// Slowloris: 2,000 connections finish TLS, send part of a request head and
/// then one more byte every 10 s (the original tool sends a header line
/// every 15 s), spread evenly. Legitimate uploads meanwhile keep their p99
/// latency within 2× of the same uploads without the attack. Attackers and
/// proxy share this process (debug build) and its 2 cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_slow_legitimate_uploads() {
    let _alone = ALONE.lock().await;
    use tokio::io::AsyncWriteExt;
    const ATTACKERS: usize = 2_000;
    const SAMPLES: usize = 400;
    // Each attacker holds a socket on both ends of this process.
    rlimit::increase_nofile_limit(4 * ATTACKERS as u64 + 1024).unwrap();
    let proxy = Proxy::start(Setup {
        // Long enough that no attacker is cut off while measuring.
        extra: "[timeouts]\nrequest_head = \"60s\"\n".into(),
        ..Setup::default()
    })
    .await;
    // Warm-up, then the baseline.
    upload_latencies(&proxy, 20).await;
    let baseline = upload_latencies(&proxy, SAMPLES).await;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut attackers = tokio::task::JoinSet::new();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..ATTACKERS {
        let client = proxy.client();
        let (mut stopping, opened, gate) = (stopping.clone(), opened.clone(), gate.clone());
        attackers.spawn(async move {
            let mut tls = {
                let _handshaking = gate.acquire().await.unwrap();
                let mut tls = client.connect().await.expect("attacker connects");
                tls.write_all(b"POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-")
                    .await
                    .unwrap();
                tls.flush().await.unwrap();
                tls
            };
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Spread the trickle evenly over the 10 s.
            tokio::time::sleep(Duration::from_millis((i * 5 % 10_000) as u64)).await;
            for _ in 0..6 {
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return true,
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
                    return false;
                }
            }
            true
        });
    }
    eventually("2,000 slowloris connections open", async || {
        opened.load(std::sync::atomic::Ordering::Relaxed) == ATTACKERS
    })
    .await;
    let active = metric_value(&proxy, "residency_connections_active").await;
    assert!(active >= ATTACKERS as f64, "{active} connections held");

    let attacked = upload_latencies(&proxy, SAMPLES).await;
    stop.send_replace(true);
    let mut alive = 0;
    while let Some(still_open) = attackers.join_next().await {
        alive += usize::from(still_open.unwrap());
    }
    assert_eq!(alive, ATTACKERS, "the attack lasted the whole measurement");
    let (before, during) = (p99(&baseline), p99(&attacked));
    eprintln!(
        "slowloris: p99 {before:?} without, {during:?} with {ATTACKERS} connections (median {:?} / {:?})",
        baseline[SAMPLES / 2],
        attacked[SAMPLES / 2]
    );
    assert!(
        during <= before * 2,
        "p99 {during:?} under attack, {before:?} without: more than 2x"
    );
    proxy.stop().await;
}

/// HTTP/2 reset storm: 5,000 uploads sent and reset on one connection while
/// their data centre takes 2 s to answer. A reset frees the stream's slot at
/// once, so without a budget every one of them would run on upstream; with
/// it, at most `h2_max_concurrent_streams` (here 50) run detached, the rest
/// are cancelled and counted; and at most `max_connections_per_upstream`
/// (here 40) connections are open to the data centre; and the process's
/// memory grows by at most 32 MiB over the storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_storm_is_bounded_by_the_detached_budget() {
    let _alone = ALONE.lock().await;
    let setup = Setup {
        extra: "[limits]\nh2_max_concurrent_streams = 50\n[upstream]\nmax_connections_per_upstream = 40\n".into(),
        ..Setup::default()
    };
    let proxy = Proxy::start(setup).await;
    let zurich = format!(
        "residency_upstream_connections{{datacenter=\"zurich\",upstream=\"http://{}/\"}}",
        proxy.upstream("zurich").addr
    );
    let mut peak_connections: f64 = 0.0;
    let rss_before = rss();
    let mut rss_peak = rss_before;
    let tls = proxy.client().h2().connect().await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    const STORM: usize = 5_000;
    let mut peak: f64 = 0.0;
    let started = std::time::Instant::now();
    for i in 0..STORM {
        send.ready().await.expect("connection stays usable");
        let body: Body = Full::new(Bytes::from_static(b"reset me"))
            .map_err(|e| match e {})
            .boxed();
        let req = Request::post("https://localhost/v1/telemetry")
            .header("x-forwarded-for", CH)
            .header("x-test-answer-delay-ms", "2000")
            .body(body)
            .unwrap();
        // Dropped unanswered: hyper resets the stream (RST_STREAM CANCEL).
        let _ = tokio::time::timeout(Duration::from_millis(2), send.send_request(req)).await;
        if i % 250 == 249 {
            peak = peak.max(metric_value(&proxy, "residency_detached_requests").await);
            peak_connections = peak_connections.max(metric_value(&proxy, &zurich).await);
            rss_peak = rss_peak.max(rss());
        }
    }
    let storm = started.elapsed();
    let cancelled = metric_value(&proxy, "residency_detached_requests_cancelled_total").await;
    assert!(peak <= 50.0, "at most 50 detached at once, saw {peak}");
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "reset storm: RSS {} -> peak {} MiB",
        rss_before >> 20,
        rss_peak >> 20
    );
    assert!(grown <= 32 << 20, "RSS grew by {} MiB", grown >> 20);
    assert!(
        (1.0..=40.0).contains(&peak_connections),
        "at most 40 upstream connections, saw {peak_connections}"
    );
    // Every delivery still running ends within its 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let delivered = proxy.upstream("zurich").count();
    // 50 at a time, each holding its place for the 2 s the data centre
    // takes (plus the requests answered before their reset: none, at 2 s).
    let rounds = storm.as_secs_f64() / 2.0 + 2.0;
    let bound = (50.0 * rounds) as usize;
    assert!(
        delivered <= bound,
        "upstream requests bounded by the budget: {delivered} of {STORM} sent in {storm:?} (bound {bound})"
    );
    assert!(
        cancelled as usize + delivered >= STORM / 2,
        "the storm reached the proxy: {cancelled} cancelled, {delivered} delivered"
    );
    // Those that queued for a connection end too (at the latest after
    // upstream_connect, as 503 upstream_saturated).
    eventually("no detached request left", async || {
        metric_value(&proxy, "residency_detached_requests").await == 0.0
    })
    .await;
    proxy.stop().await;
}
