//! Slowloris against the proxy, in a test binary of its own: its latency
//! comparison must not share the machine with the other integration tests
//! (cargo runs test binaries one after another).

#[path = "it/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

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
