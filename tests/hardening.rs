//! Attacks whose cost is measured in the proxy's own process — latency
//! under slowloris, memory under a reset storm — in a test binary of its
//! own, one test at a time, so that no other test shares the machine
//! (cargo runs test binaries one after another).

#[path = "it/support.rs"]
mod support;

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

/// Times this process's runtime workers went idle: each is one wake-up of
/// a worker that had nothing to do (a timer firing, a socket turning
/// readable), summed over the workers.
fn parks() -> u64 {
    let metrics = tokio::runtime::Handle::current().metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_park_count(w))
        .sum()
}

/// Wake-ups a second over 3 s of this process doing nothing the test asks
/// for.
async fn wakeups_per_second() -> f64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, window) = (parks(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    (parks() - before) as f64 / window.elapsed().as_secs_f64()
}

/// Slowloris: 2,000 connections finish TLS, send part of a request head and
/// then one more byte every 10 s (the original tool sends a header line
/// every 15 s), spread evenly. What they cost the proxy is counted, not
/// timed:
///
/// * held but silent, they add at most 10 wake-ups a second to the
///   process's idle ones (each holds one timer, at its `request_head`
///   deadline; a re-check every 100 ms per connection would be 20,000
///   timer expiries a second, hundreds of wake-ups);
/// * while they trickle, 400 legitimate uploads on fresh connections all
///   succeed, and no attacker is cut off before its deadline.
///
/// The latency of those uploads with and without the attack is a
/// benchmark's (`cargo bench --bench slowloris`), not this test's.
/// Attackers and proxy share this process (debug build) and its 2 cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_cost_one_timer_each() {
    let _alone = ALONE.lock().await;
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
    upload_latencies(&proxy, 20).await;
    let idle = wakeups_per_second().await;

    let attack = Slowloris::open(&proxy, ATTACKERS).await;
    let active = metric_value(&proxy, "residency_connections_active").await;
    assert!(active >= ATTACKERS as f64, "{active} connections held");

    // The quiet window: nothing but the held connections (and the
    // proxy's own periodic work, counted before they came) can wake it.
    let held = wakeups_per_second().await;
    eprintln!("slowloris: {idle:.1} wake-ups a second idle, {held:.1} holding {ATTACKERS} silent connections");
    assert!(
        held - idle <= 10.0,
        "{ATTACKERS} silent connections woke the process {held:.1} times a second, {idle:.1} without them"
    );

    attack.trickle();
    let attacked = upload_latencies(&proxy, SAMPLES).await;
    let alive = attack.end().await;
    assert_eq!(alive, ATTACKERS, "the attack lasted the whole measurement");
    eprintln!(
        "slowloris: {SAMPLES} uploads under attack, median {:?}, p99 {:?}",
        attacked[SAMPLES / 2],
        p99(&attacked)
    );
    proxy.stop().await;
}

/// Slow bodies (RUDY): 200 connections send a whole request head and the
/// first bytes of a 100 KiB body, which the proxy forwards at once, then go
/// silent. Held so, in flight, they add less than one wake-up a second each
/// to the process's idle ones: the detector that releases an HTTP/1
/// connection's buffers once it is quiet re-checks a request in flight at
/// intervals doubling from 100 ms to 3.2 s (it re-checked every 100 ms:
/// about 950 wake-ups a second here). Counted, not timed, as for slowloris.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_in_flight_cost_less_than_a_wake_up_a_second_each() {
    use tokio::io::AsyncWriteExt;
    let _alone = ALONE.lock().await;
    const SLOW: usize = 200;
    rlimit::increase_nofile_limit(8 * SLOW as u64 + 1024).unwrap();
    let proxy = Proxy::start(Setup {
        // Long enough that no body is cut off while measuring.
        extra: "[timeouts]\nrequest_body_idle = \"60s\"\n".into(),
        ..Setup::default()
    })
    .await;
    upload_latencies(&proxy, 20).await;
    let idle = wakeups_per_second().await;
    let mut held = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut tls = proxy.client().connect().await.expect("connects");
        let head = format!(
            "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\n\
             Content-Length: 102400\r\n\r\nfirst bytes"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        held.push(tls);
    }
    let forwarding = format!(
        "residency_upstream_connections{{datacenter=\"zurich\",upstream=\"http://{}/\"}}",
        proxy.upstream("zurich").addr
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = metric_value(&proxy, &forwarding).await;
        if open >= SLOW as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} of {SLOW} bodies reached zurich"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the first re-checks, which come sooner.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let slow = wakeups_per_second().await;
    eprintln!(
        "slow bodies: {idle:.1} wake-ups a second idle, {slow:.1} holding {SLOW} bodies in flight"
    );
    assert!(
        slow - idle < SLOW as f64,
        "{SLOW} silent bodies in flight woke the process {slow:.1} times a second, {idle:.1} without them"
    );
    drop(held);
    proxy.stop().await;
}

/// HTTP/2 reset storm: 5,000 uploads sent and reset while their data
/// centre takes 2 s to answer. A reset frees the stream's slot at once, so
/// without a budget every one of them would run on upstream; with it, at
/// most `limits.max_detached_requests` (here 50) run detached, the rest are
/// cancelled and counted; and at most `max_connections_per_upstream` (here
/// 40) connections are open to the data centre; and the process's memory
/// grows by at most 32 MiB over the storm. A connection that cancels more
/// than 100 of its uploads, over a quarter of its requests, is sent away (GOAWAY,
/// `client_cancels`): the storm goes on over a new one each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_storm_is_bounded_by_the_detached_budget() {
    let _alone = ALONE.lock().await;
    let setup = Setup {
        extra: "[limits]\nh2_max_concurrent_streams = 50\nmax_detached_requests = 50\n[upstream]\nmax_connections_per_upstream = 40\n".into(),
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
    let connect = || async {
        let tls = proxy.client().h2().connect().await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    };
    let mut send = connect().await;
    let mut connections = 1;
    const STORM: usize = 5_000;
    let mut peak: f64 = 0.0;
    let started = std::time::Instant::now();
    for i in 0..STORM {
        if send.ready().await.is_err() {
            // Sent away: on with a new connection.
            send = connect().await;
            connections += 1;
        }
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
    let sent_away = metric_value(
        &proxy,
        "residency_connections_closed_total{reason=\"client_cancels\"}",
    )
    .await;
    assert!(
        connections > 1 && sent_away >= 1.0,
        "{connections} connections, {sent_away} sent away"
    );
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
