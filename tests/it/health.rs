//! Health in a running proxy: active checks take a dead data centre out of
//! rotation before any request is sent to it; drain and undrain through the
//! admin API; traffic spills only within the permitted set.

use std::time::Duration;

use bytes::Bytes;

use crate::support::*;

const FAST_CHECKS: &str = "\n[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n";

fn two_ch_datacenters(zurich_live: bool) -> Setup {
    Setup {
        datacenters: vec![
            ("zurich", "ch", 1, zurich_live),
            ("geneva", "ch", 2, true),
            ("frankfurt", "eu", 1, true),
            ("virginia", "us", 1, true),
        ],
        extra: FAST_CHECKS.into(),
        ..Setup::default()
    }
}

/// Polls `/metrics` until `line` has `value`, for at most 5 s.
async fn wait_for_metric(proxy: &Proxy, line: &str, value: f64) {
    for _ in 0..100 {
        let (_, text) = proxy.admin_get("/metrics").await;
        if metric(&text, line) == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{line} never became {value}");
}

#[tokio::test]
async fn active_checks_take_a_dead_datacenter_out_before_any_request() {
    let proxy = Proxy::start(two_ch_datacenters(false)).await;
    wait_for_metric(
        &proxy,
        "residency_datacenter_up{datacenter=\"zurich\",jurisdiction=\"ch\"}",
        0.0,
    )
    .await;
    let (status, ready) = proxy.admin_get("/readyz").await;
    assert_eq!(status, 200);
    assert!(ready.contains("datacenter zurich: down"), "{ready}");
    assert!(ready.contains("datacenter geneva: up"), "{ready}");

    let reply = proxy.client().upload_from(CH, "after the checks").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("residency-datacenter"), Some("geneva"));
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "residency_upstream_retries_total{reason=\"connect_failed\"}"
        ),
        Some(0.0),
        "no request was sent to the dead data centre"
    );
    assert_eq!(
        proxy.upstream("frankfurt").count() + proxy.upstream("virginia").count(),
        0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn drain_and_undrain_move_new_requests_within_the_jurisdiction() {
    let proxy = Proxy::start(two_ch_datacenters(true)).await;
    let client = proxy.client();
    assert_eq!(
        client
            .upload_from(CH, "a")
            .await
            .header("residency-datacenter"),
        Some("zurich")
    );

    // An upload in flight to zurich when the drain starts still finishes there.
    let zurich = proxy.upstream("zurich");
    // Consume the permit the first upload left in `first_bytes`.
    let _ = tokio::time::timeout(Duration::from_millis(50), zurich.first_bytes.notified()).await;
    let (tx, body) = channel_body();
    let inflight = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body)
                .await
        })
    };
    tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        proxy.upstream("zurich").first_bytes.notified(),
    )
    .await
    .expect("zurich sees the in-flight upload");

    let (status, text) = proxy
        .admin_request("POST", "/datacenters/zurich/drain")
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        client
            .upload_from(CH, "b")
            .await
            .header("residency-datacenter"),
        Some("geneva")
    );
    tx.send(Bytes::from_static(b"second half")).await.unwrap();
    drop(tx);
    let reply = inflight.await.unwrap().unwrap();
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.header("residency-datacenter"),
        Some("zurich"),
        "in-flight request finished where it started"
    );
    assert_eq!(
        proxy.upstream("zurich").last().body,
        "first half, second half"
    );

    let (_, ready) = proxy.admin_get("/readyz").await;
    assert!(ready.contains("datacenter zurich: drained"), "{ready}");
    // `/decide` tells a drained data centre from a down one.
    let (_, decided) = proxy.admin_get(&format!("/decide?ip={CH}")).await;
    let decided: serde_json::Value = serde_json::from_str(&decided).unwrap();
    let zurich = decided["permitted"]
        .as_array()
        .and_then(|p| p.iter().find(|d| d["datacenter"] == "zurich"))
        .unwrap_or_else(|| panic!("{decided}"));
    assert_eq!(
        (&zurich["up"], &zurich["drained"]),
        (&false.into(), &true.into()),
        "{decided}"
    );
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "residency_datacenter_drained{datacenter=\"zurich\"}"
        ),
        Some(1.0)
    );

    // Draining geneva too leaves CH with nothing: 503, never another jurisdiction.
    assert_eq!(
        proxy
            .admin_request("POST", "/datacenters/geneva/drain")
            .await
            .0,
        200
    );
    let reply = client.upload_from(CH, "c").await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        proxy.upstream("frankfurt").count() + proxy.upstream("virginia").count(),
        0
    );

    for dc in ["zurich", "geneva"] {
        assert_eq!(
            proxy
                .admin_request("POST", &format!("/datacenters/{dc}/undrain"))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        client
            .upload_from(CH, "d")
            .await
            .header("residency-datacenter"),
        Some("zurich")
    );
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "residency_datacenter_drained{datacenter=\"zurich\"}"
        ),
        Some(0.0)
    );

    assert_eq!(
        proxy
            .admin_request("POST", "/datacenters/mars/drain")
            .await
            .0,
        404
    );
    let (status, headers, _) =
        plain_exchange(proxy.admin, "GET", "/datacenters/zurich/drain").await;
    assert_eq!(status, 405);
    assert_eq!(
        headers["allow"], "POST",
        "RFC 9110: a 405 says what is allowed"
    );
    let (status, headers, _) = plain_exchange(proxy.admin, "DELETE", "/metrics").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    // A path the listener does not serve is 404 whatever the method (it
    // was 405 under /datacenters/ for any method but POST).
    for method in ["GET", "POST"] {
        let (status, _, _) = plain_exchange(proxy.admin, method, "/datacenters/zurich/bogus").await;
        assert_eq!(status, 404, "{method}");
    }
    proxy.stop().await;
}

/// Probes do not wait for each other: an upstream that accepts and never
/// answers (each of its probes takes `health.timeout`, here 3 s) does not
/// slow the recovery of a data centre that comes back, which is taken back
/// within a few `recovery_interval`s. Probes used to run in rounds, each
/// waiting for its slowest: zurich then needed `healthy_threshold` × 3 s.
#[tokio::test]
async fn a_blackholed_upstream_does_not_slow_another_s_recovery() {
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = blackhole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream); // never answered
        }
    });
    let zurich = closed_port().await;
    let proxy = Proxy::start(Setup {
        datacenters: vec![("geneva", "ch", 2, true), ("frankfurt", "eu", 1, true)],
        extra: format!(
            "[health]\ninterval = \"3s\"\nrecovery_interval = \"50ms\"\ntimeout = \"3s\"\n\
             unhealthy_threshold = 1\nhealthy_threshold = 2\n\
             [datacenters.zurich]\njurisdiction = \"ch\"\npriority = 1\nupstreams = [\"http://{zurich}\"]\n\
             [datacenters.virginia]\njurisdiction = \"us\"\npriority = 1\nupstreams = [\"http://{hole}\"]\n"
        ),
        ..Setup::default()
    })
    .await;
    let up = "residency_datacenter_up{datacenter=\"zurich\",jurisdiction=\"ch\"}";
    wait_for_metric(&proxy, up, 0.0).await;
    // Into the blackhole's first probe, then zurich comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _zurich = Upstream::start_at("zurich", zurich).await;
    let back = std::time::Instant::now();
    wait_for_metric(&proxy, up, 1.0).await;
    assert!(
        back.elapsed() < Duration::from_millis(2500),
        "zurich was taken back after {:?}",
        back.elapsed()
    );
    proxy.stop().await;
}

/// One client whose uploads a data centre answers 500 (content it cannot
/// take) ejects that data centre after `passive_failures` in a row, but not
/// the jurisdiction's last one in rotation, though each upload's replay
/// (`Idempotency-Key`) counts against it too: other clients' uploads are
/// still stored there, not refused with 503.
#[tokio::test]
async fn one_client_s_server_errors_do_not_empty_its_jurisdiction() {
    let proxy = Proxy::start(two_ch_datacenters(true)).await;
    let client = proxy.client();
    for i in 0..5 {
        let key = format!("bad-{i}");
        let reply = client
            .send(
                "POST",
                "/v1/telemetry",
                &[
                    ("x-forwarded-for", CH),
                    ("x-test-refuse-early", "500"),
                    ("idempotency-key", &key),
                ],
                "cpu=0.5",
            )
            .await;
        assert_eq!(reply.status, 500, "{reply:?}");
    }
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let replays = "residency_upstream_retries_total{reason=\"idempotent_replay\"}";
    assert!(
        metric(&metrics, replays) >= Some(3.0),
        "the replays reached geneva: {metrics}"
    );
    let up = |dc: &str| {
        let addr = proxy.upstream(dc).addr;
        let line =
            format!("residency_upstream_up{{datacenter=\"{dc}\",upstream=\"http://{addr}/\"}}");
        metric(&metrics, &line)
    };
    assert_eq!(up("zurich"), Some(0.0), "zurich ejected: {metrics}");
    assert_eq!(
        up("geneva"),
        Some(1.0),
        "geneva, CH's last, kept: {metrics}"
    );
    let reply = client.upload_from(CH, "cpu=0.5").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("geneva"));
    proxy.stop().await;
}

/// A drain is taken from operators' tools, not from a web page: a request
/// a browser sends for one (with `Origin`, or `Sec-Fetch-Site`) is refused,
/// so a page an operator visits cannot take data centres out of rotation.
/// An unknown path is not found, whatever the method; `/decide` does not
/// move live load sharing.
#[tokio::test]
async fn the_admin_api_takes_no_drain_from_a_web_page() {
    let proxy = Proxy::start(two_ch_datacenters(true)).await;
    for fields in [
        &[("origin", "https://evil.example")][..],
        &[("origin", "null")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-origin")][..],
    ] {
        let (status, _, body) =
            plain_exchange_with(proxy.admin, "POST", "/datacenters/zurich/drain", fields).await;
        assert_eq!(status, 403, "{fields:?}: {body}");
        assert!(body.contains("from_a_web_page"), "{body}");
    }
    let (_, ready) = proxy.admin_get("/readyz").await;
    assert!(ready.contains("datacenter zurich: up"), "{ready}");
    let (status, _, _) = plain_exchange_with(
        proxy.admin,
        "POST",
        "/datacenters/zurich/drain",
        &[("sec-fetch-site", "none")],
    )
    .await;
    assert_eq!(
        status, 200,
        "typed into the address bar: the operator's own"
    );
    assert_eq!(
        proxy
            .admin_request("POST", "/datacenters/zurich/undrain")
            .await
            .0,
        200
    );
    assert_eq!(proxy.admin_request("POST", "/nope").await.0, 404);

    // Asking which data centre an address gets does not take a turn of
    // the load sharing between zurich and a geneva of the same priority.
    let proxy_even = Proxy::start(Setup {
        datacenters: vec![
            ("zurich", "ch", 1, true),
            ("geneva", "ch", 1, true),
            ("frankfurt", "eu", 1, true),
            ("virginia", "us", 1, true),
        ],
        ..Setup::default()
    })
    .await;
    let client = proxy_even.client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let reply = client.upload_from(CH, "d").await;
        seen.push(reply.header("residency-datacenter").unwrap().to_string());
        let (status, _) = proxy_even.admin_get(&format!("/decide?ip={CH}")).await;
        assert_eq!(status, 200);
    }
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "uploads alternate: {seen:?}"
    );
    proxy_even.stop().await;
    proxy.stop().await;
}

/// A reload that turns active checks off (`health.path = "off"`) brings
/// back an upstream the checks had marked down: no check would ever pass
/// it again, so keeping their last result kept it out of rotation until a
/// restart — every upload of its jurisdiction 503 when it was the only one.
#[tokio::test]
async fn turning_checks_off_brings_back_an_upstream_they_had_marked_down() {
    let proxy = Proxy::start(
        Setup {
            extra: "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\n\
                    [timeouts]\nreload_poll = \"100ms\"\n"
                .into(),
            ..Setup::default()
        }
        .with_down("zurich"),
    )
    .await;
    let up = "residency_datacenter_up{datacenter=\"zurich\",jurisdiction=\"ch\"}";
    wait_for_metric(&proxy, up, 0.0).await;
    let path = proxy.dir.path().join("proxy.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let zurich: std::net::SocketAddr = config
        .split("[datacenters.zurich]")
        .nth(1)
        .and_then(|s| s.split("http://").nth(1))
        .and_then(|s| s.split('"').next())
        .and_then(|a| a.parse().ok())
        .expect("zurich's upstream in the config");
    let off = config.replace("[health]\n", "[health]\npath = \"off\"\n");
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, off).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_for_metric(&proxy, "residency_reloads_total{result=\"success\"}", 1.0).await;
    // Only now does zurich listen: no check can have seen it up.
    let _zurich = Upstream::start_at("zurich", zurich).await;
    let reply = proxy.client().upload_from(CH, "checks off").await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
    wait_for_metric(&proxy, up, 1.0).await;
    proxy.stop().await;
}

/// A data centre whose health page never ends (or is huge): each probe
/// gathered the whole answer in memory until its timeout, then counted as
/// failed, so the data centre went down though it answered 200. The proxy
/// reads at most 64 KiB of it now, and the status decides.
#[tokio::test]
async fn an_endless_health_answer_is_not_gathered_and_passes_on_its_status() {
    use tokio::io::AsyncWriteExt;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    // Bounded: each answer stops when the proxy closes its connection, or
    // after 20 s.
    let upstream = raw_upstream(move |mut conn| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let chunk = [b'x'; 16384];
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            let until = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < until {
                out.extend_from_slice(b"4000\r\n");
                out.extend_from_slice(&chunk);
                out.extend_from_slice(b"\r\n");
                if conn.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
    })
    .await;
    let checks = "[health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n";
    let proxy = Binary::start("endless-health", &datacenters_at(upstream), checks).await;
    // Ten probe rounds of the three data centres (all at this upstream):
    // with each probe failing, two would take them down.
    eventually("ten probe rounds answered", async || {
        served.load(std::sync::atomic::Ordering::Relaxed) >= 30
    })
    .await;
    let (status, ready) = plain_request(proxy.admin, "GET", "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("datacenter zurich: up"), "{ready}");
    assert!(!proxy.log().contains("upstream down"), "{}", proxy.log());
}

/// A web page an operator visits can rebind its name to the admin address
/// (DNS rebinding) and read `/metrics` and `/decide` as same-origin; its
/// requests name the page's host, which the admin listener refuses (421).
#[tokio::test]
async fn the_admin_listener_refuses_a_host_it_does_not_answer_for() {
    let proxy = Proxy::start(Setup::default()).await;
    for path in ["/metrics", "/decide?ip=192.0.2.1", "/readyz"] {
        let (status, _, body) =
            plain_exchange_with(proxy.admin, "GET", path, &[("host", "attacker.example")]).await;
        assert_eq!(status, 421, "{path}: {body}");
        assert!(body.contains("admin.hosts"), "{body}");
    }
    let (status, _) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200, "by its address");
    let (status, _, _) = plain_exchange_with(
        proxy.admin,
        "GET",
        "/healthz",
        &[("host", "localhost:9900")],
    )
    .await;
    assert_eq!(status, 200, "as localhost");
    proxy.stop().await;
}

/// A GeoIP database older than `geoip.max_age` keeps the proxy not ready,
/// and `/readyz` says why (it said only `not ready`), as do the log, once,
/// and `check-config`.
#[tokio::test]
async fn a_geoip_database_past_max_age_is_named_as_the_reason_for_not_ready() {
    let up = Upstream::start("zurich").await;
    // The tests' database is built at 1,750,000,000 (June 2025).
    let proxy = Binary::spawn_wrapped("stale", &datacenters_at(up.addr), "max_age = \"30d\"", &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        if let Ok(Ok(answer)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::spawn(plain_request(proxy.admin, "GET", "/readyz")),
        )
        .await
        {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: the GeoIP database was built ")
            && body.contains(" days ago, longer than geoip.max_age (30days)"),
        "{body}"
    );
    assert!(body.contains("datacenter zurich: up"), "{body}");
    let _ = plain_request(proxy.admin, "GET", "/readyz").await;
    let log = proxy.log();
    assert_eq!(
        log.matches("not ready: the GeoIP database").count(),
        1,
        "{log}"
    );
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_residency-proxy"))
        .arg("check-config")
        .arg("--config")
        .arg(proxy.dir.path().join("proxy.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(
        out.contains("warning: the GeoIP database was built ")
            && out.contains("serve would not be ready (/readyz 503)"),
        "{out}"
    );
}

/// Out of file descriptors, a health check that cannot make its socket
/// says nothing of the data centre: it stays up (every data centre went
/// down for the proxy's own shortage, which would page "data centre down";
/// exhaustion audit, stop 65). The data centre closes each connection, so
/// every probe needs a new socket.
#[tokio::test]
async fn a_probe_the_proxy_cannot_make_marks_nothing_down() {
    use tokio::io::AsyncWriteExt;
    let dc = raw_upstream(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            .await;
        let _ = tcp.shutdown().await;
    })
    .await;
    let extra = "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n";
    let proxy = Binary::start("probe-fds", &datacenters_at(dc), extra).await;
    let pid = proxy.pid();
    let series =
        format!("residency_upstream_up{{datacenter=\"zurich\",upstream=\"http://{dc}/\"}}");
    let up = async || {
        let (_, text) = plain_request(proxy.admin, "GET", "/metrics").await;
        metric(&text, &series)
    };
    assert_eq!(up().await, Some(1.0));
    // The admin listener's connection for the metrics, and a client's,
    // kept open below: no descriptor is free for anything else.
    let mut admin = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let mut client = proxy.client().connect().await.expect("TLS handshake");
    let limit = |soft: &str| open_files_limit(pid, soft);
    limit("3");
    // Ten intervals: five times unhealthy_threshold.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // An upload now cannot reach the data centre (the proxy cannot make
    // its socket): refused, and the data centre not ejected for it.
    client
        .write_all(
            format!(
                "POST /v1/telemetry HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {CH}\r\n\
                 content-length: 2\r\n\r\nhi"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let refused = status_line(&mut client, "the refusal").await;
    assert_eq!(refused, "HTTP/1.1 503", "{refused}");
    admin
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut admin, Duration::from_secs(10)).await;
    limit("4096");
    let text = String::from_utf8_lossy(&text);
    assert_eq!(metric(&text, &series), Some(1.0), "{}", proxy.log());
    // Descriptors back: the next upload goes through at once.
    let reply = proxy.client().upload_from(CH, "back").await;
    assert_eq!(reply.status, 200, "{:?}\n{}", reply.body, proxy.log());
    assert!(
        proxy.log().contains("health check not made"),
        "{}",
        proxy.log()
    );
}
