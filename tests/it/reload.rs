//! Hot reload under continuous load: a new certificate, a new GeoIP database
//! and a new policy are picked up with zero failed requests; a corrupt
//! database, a broken config, a certificate with the wrong key and a failing
//! GeoIP canary each leave the old state serving, and are counted.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::support::*;

const FAST: &str = "\n[timeouts]\nreload_poll = \"100ms\"\n";

/// Replaces a file atomically (write aside, rename), as operators should.
fn replace(path: &Path, bytes: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn gauge(proxy: &Proxy, name: &str) -> f64 {
    let (_, text) = proxy.admin_get("/metrics").await;
    metric(&text, name).unwrap()
}

async fn reloads(proxy: &Proxy, result: &str) -> f64 {
    let (_, text) = proxy.admin_get("/metrics").await;
    metric(
        &text,
        &format!("residency_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

fn db(rows: &str) -> Vec<u8> {
    let rows = residency_tools::geoip::parse_csv(rows).unwrap();
    residency_tools::geoip::build_country_db(&rows, 1_760_000_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_database_and_policy_reload_under_load_without_a_failed_request() {
    let mut proxy = Proxy::start(Setup {
        extra: FAST.into(),
        ..Setup::default()
    })
    .await;
    let (new_cert, new_key) = residency_tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    proxy.certs.push(new_cert.clone());
    let client = proxy.client();

    // Continuous load: a new TLS connection per upload, from CH, DE and GB.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (client, stop, statuses) = (client.clone(), stop.clone(), statuses.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let origin = [CH, DE, GB][i % 3];
                let reply = client
                    .send_body(
                        "POST",
                        "/v1/telemetry",
                        &[("x-forwarded-for", origin)],
                        body(format!("load {i}")),
                    )
                    .await;
                let status = reply.map(|r| r.status.as_u16()).unwrap_or(0);
                statuses.lock().unwrap().push(status);
                i += 1;
            }
        })
    };
    let (_, before) = proxy.admin_get("/metrics").await;
    // Which build runs, for a fleet in a rolling upgrade.
    let build = format!(
        "residency_build_info{{commit=\"{}\",version=\"{}\"}} 1",
        residency_tools::COMMIT.unwrap_or_default(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(before.lines().any(|l| l == build), "{build}");
    let hash_before = before
        .lines()
        .find(|l| l.starts_with("residency_policy_info"))
        .unwrap()
        .to_string();

    // 1. A new certificate: new connections present it.
    replace(&proxy.dir.path().join("a.key"), &new_key);
    replace(&proxy.dir.path().join("a.pem"), &new_cert);
    let want = der(&new_cert);
    eventually("the new certificate is served", async || {
        client
            .send("GET", "/x", &[("x-forwarded-for", UNKNOWN)], "")
            .await
            .peer_cert
            == want
    })
    .await;

    // 2. A new GeoIP database: 198.51.100.0/24 moves from DE to CH.
    assert_eq!(
        client
            .upload_from(DE, "before")
            .await
            .header("residency-datacenter"),
        Some("frankfurt")
    );
    replace(
        &proxy.dir.path().join("geo.mmdb"),
        db(&GEOIP_CSV.replace("198.51.100.0/24,DE", "198.51.100.0/24,CH")),
    );
    eventually("the DE address now lands in zurich", async || {
        client
            .upload_from(DE, "after")
            .await
            .header("residency-datacenter")
            == Some("zurich")
    })
    .await;

    // 3. A new policy: the UK may no longer be stored in the EU.
    assert_eq!(
        client
            .upload_from(GB, "before")
            .await
            .header("residency-datacenter"),
        Some("frankfurt")
    );
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    replace(
        &proxy.config_path,
        config.replace("store_in = [\"uk\", \"eu\"]", "store_in = [\"uk\"]"),
    );
    eventually("GB now lands in london", async || {
        client
            .upload_from(GB, "after")
            .await
            .header("residency-datacenter")
            == Some("london")
    })
    .await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let statuses = statuses.lock().unwrap().clone();
    assert!(statuses.len() > 20, "{} uploads under load", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 201),
        "failed requests during reloads: {statuses:?}"
    );
    assert!(reloads(&proxy, "success").await >= 3.0);
    // (A poll between the key and the certificate renames may see a
    // mismatched pair and fail that one reload; the old state keeps serving.)
    let (_, after) = proxy.admin_get("/metrics").await;
    let hash_after = after
        .lines()
        .find(|l| l.starts_with("residency_policy_info"))
        .unwrap()
        .to_string();
    assert_ne!(
        hash_before, hash_after,
        "residency_policy_info follows the policy"
    );
    proxy.stop().await;
}

fn body(text: String) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes::Bytes::from(text))
        .map_err(|e| match e {})
        .boxed()
}

#[tokio::test]
async fn bad_reloads_keep_the_old_state_serving() {
    let proxy = Proxy::start(Setup {
        extra: FAST.into(),
        ..Setup::default()
    })
    .await;
    let client = proxy.client();
    let original_cert = der(&proxy.certs[0]);
    let dir = proxy.dir.path().to_path_buf();
    let good_config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let still_serving = async || {
        let reply = client.upload_from(CH, "still here").await;
        assert_eq!(reply.status, 201);
        assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
        assert_eq!(reply.peer_cert, original_cert);
    };
    let mut failures = 0.0;
    let last_successful = "residency_config_last_reload_successful";
    assert_eq!(gauge(&proxy, last_successful).await, 1.0);

    // A corrupt database.
    replace(&dir.join("geo.mmdb"), b"this is not a MaxMind database");
    failures += 1.0;
    eventually("corrupt database counted", async || {
        reloads(&proxy, "failure").await == failures
    })
    .await;
    still_serving().await;
    assert_eq!(gauge(&proxy, last_successful).await, 0.0);

    // A broken config (also restores nothing: the database is still corrupt,
    // so put a good one back first and let that reload succeed).
    replace(&dir.join("geo.mmdb"), db(GEOIP_CSV));
    eventually("good database reloads", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    assert_eq!(gauge(&proxy, last_successful).await, 1.0);
    replace(
        &proxy.config_path,
        good_config.replace("countries = [\"GB\"]", "countries = [\"UK\"]"),
    );
    failures += 1.0;
    eventually("broken config counted", async || {
        reloads(&proxy, "failure").await == failures
    })
    .await;
    still_serving().await;
    let successes = reloads(&proxy, "success").await;
    replace(&proxy.config_path, &good_config);
    eventually("the good config reloads", async || {
        reloads(&proxy, "success").await > successes
    })
    .await;

    // A certificate whose key does not match.
    let (other_cert, _) = residency_tls::self_signed(&["localhost"]).unwrap();
    replace(&dir.join("a.pem"), &other_cert);
    failures += 1.0;
    eventually("wrong key counted", async || {
        reloads(&proxy, "failure").await == failures
    })
    .await;
    still_serving().await;
    let successes = reloads(&proxy, "success").await;
    replace(&dir.join("a.pem"), &proxy.certs[0]);
    eventually("the good certificate reloads", async || {
        reloads(&proxy, "success").await > successes
    })
    .await;

    // A database that fails an operator's canary (DE address must stay DE).
    let canary = "\n[[geoip.canaries]]\naddress = \"198.51.100.20\"\ncountry = \"DE\"\n";
    let with_canary = good_config.replace(
        "database = \"geo.mmdb\"",
        &format!("database = \"geo.mmdb\"{canary}"),
    );
    let successes = reloads(&proxy, "success").await;
    replace(&proxy.config_path, &with_canary);
    eventually("canary config reloads", async || {
        reloads(&proxy, "success").await > successes
    })
    .await;
    replace(
        &dir.join("geo.mmdb"),
        db(&GEOIP_CSV.replace("198.51.100.0/24,DE", "198.51.100.0/24,FR")),
    );
    failures += 1.0;
    eventually("failed canary counted", async || {
        reloads(&proxy, "failure").await == failures
    })
    .await;
    assert_eq!(
        client
            .upload_from(DE, "x")
            .await
            .header("residency-datacenter"),
        Some("frankfurt")
    );
    still_serving().await;
    proxy.stop().await;
}

/// Listeners are matched to their sockets by address across a reload: a
/// config listing the same listeners in another order keeps each socket's
/// own settings (here, whom it trusts to name the client), where it used
/// to give each socket the settings of whatever now stood at its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_listeners_keep_their_own_settings_across_a_reload() {
    let upstream = Upstream::start("zurich").await;
    let dcs = datacenters_at(upstream.addr);
    // The binary's first listener trusts 127.0.0.1's X-Forwarded-For; this
    // second one trusts no one.
    let port = free_port();
    let second = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\ntrusted_proxies = []\n[listeners.tls]\n\
         certificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n"
    );
    let binary = Binary::start("reorder", &dcs, &second).await;
    let trusting = binary.client();
    let mut untrusting = binary.client();
    untrusting.addr = format!("127.0.0.1:{port}").parse().unwrap();
    let statuses = async || {
        let a = trusting.upload_from(CH, "to the trusting listener").await;
        let b = untrusting.upload_from(CH, "to the other").await;
        (a.status.as_u16(), b.json()["error"].clone())
    };
    let before = statuses().await;
    assert_eq!(before.0, 201);
    assert_ne!(
        before.1,
        serde_json::Value::Null,
        "the untrusting listener stored it"
    );

    // The same listeners, the second one listed first.
    let path = binary.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    replace(&path, format!("{second}{}", text.replacen(&second, "", 1)));
    let pid = binary.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    eventually("the reload succeeds", async || {
        let (_, text) = plain_request(binary.admin, "GET", "/metrics").await;
        metric(&text, "residency_reloads_total{result=\"success\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(statuses().await, before, "{}", binary.log());
}

/// The log listener's certificate (`[transparency.tls]`) is renewed like
/// the ingest listeners': a new certificate written over the old files is
/// served to the next handshake, without a restart (customers' browsers
/// open the log's page over it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_listeners_certificate_is_renewed_by_a_reload() {
    log_certificate_renewed(false).await;
}

/// As above after a reload that changed a `[transparency]` setting needing
/// a restart: the running log keeps its settings, but its listener's
/// renewed certificate is still served (the whole section used to be kept
/// as it was, so the old certificate stayed until it expired).
#[tokio::test]
async fn the_log_certificate_is_renewed_after_a_restart_only_log_setting_changed() {
    log_certificate_renewed(true).await;
}

async fn log_certificate_renewed(log_setting_changed_first: bool) {
    let proxy = Proxy::start(Setup {
        extra: FAST.into(),
        second_cert: Some(vec!["log.example"]),
        transparency: Some(
            "[transparency.tls]\ncertificates = [{ cert = \"b.pem\", key = \"b.key\" }]\n".into(),
        ),
        ..Setup::default()
    })
    .await;
    let (new_cert, new_key) = residency_tls::self_signed(&["log.example"]).unwrap();
    let old_cert = proxy.certs[1].clone();
    let log = Client::new(
        proxy.log_addr.unwrap(),
        &[old_cert.clone(), new_cert.clone()],
    )
    .sni(Some("log.example"));
    let served = async || {
        let reply = log.send("GET", "/checkpoint", &[], "").await;
        assert_eq!(reply.status, 200);
        reply.peer_cert
    };
    assert_eq!(served().await, der(&old_cert));
    let pending = "residency_config_restart_pending";
    assert_eq!(gauge(&proxy, pending).await, 0.0);
    if log_setting_changed_first {
        let config = std::fs::read_to_string(&proxy.config_path).unwrap();
        assert!(config.contains("checkpoint_interval = \"50ms\""));
        replace(
            &proxy.config_path,
            config.replace(
                "checkpoint_interval = \"50ms\"",
                "checkpoint_interval = \"60ms\"",
            ),
        );
        eventually("the reload", async || {
            reloads(&proxy, "success").await >= 1.0
        })
        .await;
        // Not in effect until a restart, and said so.
        assert_eq!(gauge(&proxy, pending).await, 1.0);
    }

    replace(&proxy.dir.path().join("b.key"), &new_key);
    replace(&proxy.dir.path().join("b.pem"), &new_cert);
    eventually("the new certificate is served", async || {
        served().await == der(&new_cert)
    })
    .await;
    assert!(reloads(&proxy, "success").await >= 1.0);
    let want = if log_setting_changed_first { 1.0 } else { 0.0 };
    assert_eq!(gauge(&proxy, pending).await, want);
    proxy.stop().await;
}

/// A reload keeps counting the connections the old configuration's
/// requests still hold against `max_connections_per_upstream` (each
/// reload's new pool counted from nothing: a data centre could get the cap
/// again after every reload), and the connections those requests finish
/// with close instead of waiting idle with their permits.
#[tokio::test]
async fn a_reload_keeps_counting_the_connections_held_against_the_cap() {
    let proxy = Proxy::start(Setup {
        extra: "[upstream]\nmax_connections_per_upstream = 1\n[timeouts]\nupstream_connect = \"300ms\"\nreload_poll = \"100ms\"\n".into(),
        ..Setup::default()
    })
    .await;
    let zurich = format!(
        "residency_upstream_connections{{datacenter=\"zurich\",upstream=\"http://{}/\"}}",
        proxy.upstream("zurich").addr
    );
    let slow = slow_upload(&proxy, 2000).await;
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    replace(&proxy.config_path, format!("{config}\n# reloaded\n"));
    eventually("the reload", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    assert_eq!(
        metric_value(&proxy, &zurich).await,
        1.0,
        "the held one counts"
    );
    let reply = proxy.client().upload_from(CH, "during").await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.json()["error"], "upstream_saturated");
    assert_eq!(slow.await.unwrap().status, 201);
    // Its connection closed with its request (idle in the old pool, it
    // would keep the one permit): the new configuration's uploads get it.
    for i in 0..3 {
        let reply = proxy.client().upload_from(CH, "after").await;
        assert_eq!(reply.status, 201, "upload {i}: {:?}", reply.body);
    }
    proxy.stop().await;
}

/// Who may name the client is decided as a connection is accepted, with
/// its PROXY header: a connection accepted while its listener trusted no
/// one keeps its own address as the client's after a reload that trusts
/// its peer (here, as when a listener moves behind a balancer and starts
/// requiring PROXY headers). It used to take the new `trusted_proxies`
/// per request, so a client on a connection opened before the reload
/// chose its jurisdiction with `X-Forwarded-For`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_the_trust_it_was_accepted_with() {
    use hyper_util::rt::TokioIo;
    let proxy = Proxy::start(Setup {
        trusted: vec![],
        extra: "[timeouts]\nreload_poll = \"100ms\"\n".into(),
        ..Setup::default()
    })
    .await;
    let tls = proxy.client().connect().await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let upload = |send: &mut hyper::client::conn::http1::SendRequest<String>| {
        let req = http::Request::post("/v1/telemetry")
            .header("host", "localhost")
            .header("x-forwarded-for", CH)
            .body("cpu=0.5".to_string())
            .unwrap();
        send.send_request(req)
    };
    let before = upload(&mut send).await.unwrap();
    assert_eq!(before.status(), 451, "loopback is no one's client address");

    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let trusting = text.replace(
        "trusted_proxies = []",
        "trusted_proxies = [\"127.0.0.0/8\"]",
    );
    assert_ne!(text, trusting);
    replace(&proxy.config_path, trusting);
    eventually("the reload succeeds", async || {
        metric_value(&proxy, "residency_reloads_total{result=\"success\"}").await >= 1.0
    })
    .await;
    // A new connection is the new listener's.
    assert_eq!(proxy.client().upload_from(CH, "cpu=0.5").await.status, 201);
    // The old one is still the old listener's.
    send.ready().await.unwrap();
    let after = upload(&mut send).await.unwrap();
    assert_eq!(after.status(), 451);
    proxy.stop().await;
}

/// `upstream.replay_budget_bytes` needs a restart, so a reload's
/// `replay_limit_bytes` is checked against the budget in effect, not the
/// one the new config names: a limit above it was accepted (the new
/// budget covered it) and then no body could be kept for a replay.
#[tokio::test]
async fn a_replay_limit_above_the_budget_in_effect_is_refused() {
    let proxy = Proxy::start(Setup {
        extra: format!("{FAST}[upstream]\nreplay_budget_bytes = 1048576\n"),
        ..Setup::default()
    })
    .await;
    let path = proxy.dir.path().join("proxy.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    replace(
        &path,
        config.replace(
            "replay_budget_bytes = 1048576",
            "replay_budget_bytes = 67108864\nreplay_limit_bytes = 2097152",
        ),
    );
    eventually("the reload is refused", async || {
        reloads(&proxy, "failure").await >= 1.0
    })
    .await;
    assert_eq!(reloads(&proxy, "success").await, 0.0);
    // Within the budget in effect, the same reload applies.
    replace(
        &path,
        config.replace(
            "replay_budget_bytes = 1048576",
            "replay_budget_bytes = 67108864\nreplay_limit_bytes = 1048576",
        ),
    );
    eventually("the reload applies", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    proxy.stop().await;
}

/// A snapshot — its GeoIP database, pool, health table, TLS keys — is
/// freed once no request runs on it, though a connection accepted under it
/// stays open: each keep-alive connection kept the snapshot of its accept
/// in memory for as long as it lived (a database per reload, with a client
/// that sends a request now and then).
#[tokio::test]
async fn a_connection_does_not_keep_the_snapshot_it_was_accepted_under() {
    use http_body_util::{BodyExt, Full};
    let proxy = Proxy::start(Setup {
        extra: FAST.into(),
        ..Setup::default()
    })
    .await;
    let first = Arc::downgrade(&proxy.instance.snapshot());
    let tls = proxy.client().connect().await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let upload = |body: &'static str| {
        http::Request::post("/v1/telemetry")
            .header("host", "localhost")
            .header("x-forwarded-for", CH)
            .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let reply = send.send_request(upload("before")).await.unwrap();
    assert_eq!(reply.status(), 201);
    reply.into_body().collect().await.unwrap();
    let path = proxy.dir.path().join("proxy.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    replace(&path, format!("{config}\n# reloaded\n"));
    eventually("the reload applies", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    // The same connection, still open and used.
    let reply = send.send_request(upload("after")).await.unwrap();
    assert_eq!(reply.status(), 201);
    reply.into_body().collect().await.unwrap();
    eventually("the first snapshot is freed", async || {
        first.upgrade().is_none()
    })
    .await;
    assert!(!conn.is_finished(), "the connection is still open");
    drop(send);
    proxy.stop().await;
}

/// A reload that failed because the config names files not there yet (a
/// certificate written after the config that names it) is tried again
/// when they appear: the files the failed config named are watched too.
/// Only the running state's were, so the fix went unseen until some other
/// change or a SIGHUP.
#[tokio::test]
async fn a_reload_that_failed_for_a_missing_file_applies_when_it_appears() {
    let mut proxy = Proxy::start(Setup {
        extra: FAST.into(),
        ..Setup::default()
    })
    .await;
    let path = proxy.dir.path().join("proxy.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains("cert = \"a.pem\", key = \"a.key\""));
    replace(
        &path,
        config.replace(
            "cert = \"a.pem\", key = \"a.key\"",
            "cert = \"b.pem\", key = \"b.key\"",
        ),
    );
    eventually("the reload fails", async || {
        reloads(&proxy, "failure").await >= 1.0
    })
    .await;
    let (cert, key) = residency_tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    proxy.certs.push(cert.clone());
    replace(&proxy.dir.path().join("b.key"), &key);
    replace(&proxy.dir.path().join("b.pem"), &cert);
    eventually("the reload applies once the files are there", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    let client = proxy.client();
    let served = client
        .send("GET", "/x", &[("x-forwarded-for", UNKNOWN)], "")
        .await
        .peer_cert;
    assert_eq!(served, der(&cert));
    proxy.stop().await;
}

/// A tenant removed by a reload takes its `metrics_by_tenant` series with
/// it (they stayed until a restart: with tenants coming and going, the
/// series grew without bound and named customers who had left; scale
/// audit, stop 65); one still configured keeps its count.
#[tokio::test]
async fn a_removed_tenant_s_series_goes_with_it() {
    let tenants = "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"acme.test\"]\n\
                   [[tenants]]\nname = \"gone\"\njurisdiction = \"ch\"\nsni = [\"gone.test\"]\n";
    let proxy = Proxy::start(Setup {
        extra: format!("{FAST}{tenants}[tenancy]\nmetrics_by_tenant = true\n"),
        second_cert: Some(vec!["acme.test"]),
        ..Setup::default()
    })
    .await;
    let series = |t: &str| format!("residency_tenant_requests_by_tenant_total{{tenant=\"{t}\"}}");
    let reply = proxy
        .client()
        .sni(Some("acme.test"))
        .upload_from(CH, "acme's")
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(metric(&text, &series("acme")), Some(1.0));
    assert_eq!(metric(&text, &series("gone")), Some(0.0));
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let without = "[[tenants]]\nname = \"gone\"\njurisdiction = \"ch\"\nsni = [\"gone.test\"]\n";
    assert!(config.contains(without));
    replace(&proxy.config_path, config.replace(without, ""));
    eventually("the reload", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(metric(&text, &series("gone")), None, "{text}");
    assert_eq!(metric(&text, &series("acme")), Some(1.0));
    proxy.stop().await;
}

/// A data centre a reload renames takes its series with it — requests,
/// attempt durations, its upstreams' saturation and hang counters — and
/// the new name has its own from the reload on (soak audit, stop 66: each
/// renamed data centre left 29 series behind for good); so does a data
/// centre a jurisdiction may no longer store in (verification, stop 66).
#[tokio::test]
async fn a_renamed_data_centre_s_series_go_with_it() {
    let proxy = Proxy::start(Setup {
        extra: FAST.to_string(),
        ..Setup::default()
    })
    .await;
    let reply = proxy.client().upload_from(US, "to virginia").await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let series = |dc: &str| {
        [
            format!("residency_requests_total{{datacenter=\"{dc}\",jurisdiction=\"us\",status_class=\"2xx\"}}"),
            format!("residency_upstream_duration_seconds_count{{datacenter=\"{dc}\"}}"),
        ]
    };
    let (_, text) = proxy.admin_get("/metrics").await;
    for s in series("virginia") {
        assert_eq!(metric(&text, &s), Some(1.0), "{s}: {text}");
    }
    let uk_in_frankfurt = "residency_requests_total{datacenter=\"frankfurt\",jurisdiction=\"uk\",status_class=\"2xx\"}";
    assert_eq!(metric(&text, uk_in_frankfurt), Some(0.0), "{text}");
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(config.contains("[datacenters.virginia]"));
    assert!(config.contains("store_in = [\"uk\", \"eu\"]"));
    replace(
        &proxy.config_path,
        config
            .replace("[datacenters.virginia]", "[datacenters.richmond]")
            .replace("store_in = [\"uk\", \"eu\"]", "store_in = [\"uk\"]"),
    );
    eventually("the reload", async || {
        reloads(&proxy, "success").await >= 1.0
    })
    .await;
    let (_, text) = proxy.admin_get("/metrics").await;
    assert!(!text.contains("\"virginia\""), "{text}");
    assert_eq!(metric(&text, uk_in_frankfurt), None, "{text}");
    for s in series("richmond") {
        assert_eq!(metric(&text, &s), Some(0.0), "{s}: {text}");
    }
    let saturated = text
        .lines()
        .filter(|l| l.starts_with("residency_upstream_saturated_total{"))
        .count();
    assert_eq!(
        saturated,
        config.matches("[datacenters.").count(),
        "one per upstream (one each): {text}"
    );
    proxy.stop().await;
}

/// Active checks that span a reload count: a check's verdict is recorded
/// on the upstream (same data centre and URL) of the state in force when
/// it ends, not on the state it started in, which the reload had copied
/// already. With reloads more frequent than a check's timeout, a hung data
/// centre was never taken down (reload audit, stop 68).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_span_reloads_still_take_a_hung_upstream_down() {
    // Accepts, and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hung.accept().await {
            conns.push(c);
        }
    });
    let proxy = Proxy::start(Setup {
        extra: format!(
            "[health]\ninterval = \"300ms\"\ntimeout = \"300ms\"\nrecovery_interval = \"100ms\"\n\
             [datacenters.geneva]\njurisdiction = \"ch\"\nupstreams = [\"http://{hung_addr}\"]\n"
        ),
        ..Setup::default()
    })
    .await;
    let up =
        format!("residency_upstream_up{{datacenter=\"geneva\",upstream=\"http://{hung_addr}/\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0u32;
    loop {
        // A reload every 100 ms: each check (300 ms to its timeout) spans
        // some.
        let config = std::fs::read_to_string(&proxy.config_path).unwrap();
        n += 1;
        std::fs::write(&proxy.config_path, format!("{config}\n# reload {n}\n")).unwrap();
        residency_proxy::reload::reload(&proxy.instance, &proxy.config_path).unwrap();
        if gauge(&proxy, &up).await == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "geneva never went down across {n} reloads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stop().await;
    held.abort();
}
