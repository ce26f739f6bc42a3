//! Proof of residency end to end: uploads through the proxy get receipts,
//! receipts and the log's proofs verify against the public key alone, and
//! any tampering — with a receipt, a checkpoint or a stored record — makes
//! `verify` say INVALID.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use base64::Engine as _;
use residency_log::note::{Checkpoint, Signer, Verifier};
use residency_log::receipt::Receipt;
use residency_log::record::Record;
use residency_tools::verify::{verify, Report, VerifyArgs};

use crate::support::*;

/// A proxy with the transparency log on; `lines` go into `[transparency]`.
async fn with_log(lines: &str) -> Proxy {
    Proxy::start(Setup {
        transparency: Some(lines.to_string()),
        ..Setup::default()
    })
    .await
}

fn args(key: &str) -> VerifyArgs {
    VerifyArgs {
        key: key.to_string(),
        ..VerifyArgs::default()
    }
}

async fn check(args: &VerifyArgs) -> Report {
    verify(args).await
}

fn sha256_hex(data: &[u8]) -> String {
    residency_core::hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[tokio::test]
async fn an_upload_gets_a_receipt_that_verifies_and_names_where_it_went() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    let body = "cpu=0.93\n".repeat(100);
    let reply = proxy.client().upload_from(CH, &body).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let header = reply
        .header("residency-receipt")
        .expect("a receipt")
        .to_string();
    let receipt = Receipt::parse(&header).unwrap();
    assert_eq!(receipt.log, LOG_ORIGIN);
    assert!(receipt.signature.is_some(), "receipts = signed by default");

    // What the record says.
    let record = Record::from_bytes(&receipt.record).unwrap();
    assert_eq!(record.request_id, reply.header("x-request-id").unwrap());
    assert_eq!(record.datacenter.as_deref(), Some("zurich"));
    assert_eq!(record.jurisdiction.as_deref(), Some("ch"));
    assert_eq!(record.country.as_deref(), Some("CH"));
    assert_eq!(record.upstream_status, Some(201));
    assert_eq!(record.client.source.as_deref(), Some("x_forwarded_for"));
    assert_eq!(
        record.client.address.as_deref(),
        Some("192.0.2.0/24"),
        "minimised"
    );
    let digest = record.body.as_ref().unwrap();
    assert_eq!(digest.bytes, body.len() as u64);
    assert_eq!(digest.sha256, sha256_hex(body.as_bytes()));
    assert_eq!(
        digest.sha256,
        sha256_hex(&proxy.upstream("zurich").last().body)
    );
    let state = proxy.instance.snapshot();
    assert_eq!(record.policy_sha256, state.policy_hash);
    let mmdb = std::fs::read(proxy.dir.path().join("geo.mmdb")).unwrap();
    assert_eq!(record.geoip.sha256, sha256_hex(&mmdb));
    assert_eq!(record.geoip.build_epoch, 1_750_000_000);

    // Offline, with the public key alone.
    let mut a = args(&key);
    a.receipt = Some(header.clone());
    let report = check(&a).await;
    assert!(report.valid(), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("data centre zurich, jurisdiction ch"),
        "{text}"
    );

    // With the log: inclusion in a signed checkpoint.
    a.log = Some(proxy.log_url());
    let report = check(&a).await;
    assert!(report.valid(), "{report}");
    assert!(report.to_string().contains("inclusion proof"), "{report}");

    // With the customer's own copy of the file: the same, or not.
    let copy = proxy.dir.path().join("my-upload.txt");
    std::fs::write(&copy, &body).unwrap();
    a.file = Some(copy.clone());
    let report = check(&a).await;
    assert!(report.valid(), "{report}");
    assert!(
        report
            .to_string()
            .contains("ok  your file is the upload the record describes (900 bytes, SHA-256 "),
        "the match is said: {report}"
    );
    std::fs::write(&copy, format!("{body}!")).unwrap();
    let report = check(&a).await;
    assert!(
        report
            .to_string()
            .contains("INVALID: your file is 901 bytes"),
        "{report}"
    );
    a.file = None;

    // Another log's key: INVALID.
    let other = Signer::from_pkcs8(LOG_ORIGIN, &Signer::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let mut b = args(&other);
    b.receipt = Some(header.clone());
    let report = check(&b).await;
    assert!(!report.valid(), "{report}");
    assert!(report.to_string().contains("INVALID"), "{report}");

    proxy.stop().await;
}

/// Changing any single byte of a receipt makes it INVALID.
#[tokio::test]
async fn every_byte_of_a_receipt_is_protected() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    let reply = proxy.client().upload_from(DE, "x=1").await;
    let header = reply.header("residency-receipt").unwrap().to_string();
    proxy.stop().await;

    let bytes = header.as_bytes();
    let mut checked = 0;
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] = match bytes[i] {
            b'A' => b'B',
            c if c.is_ascii_alphanumeric() => b'A',
            _ => b'Q',
        };
        let Ok(text) = String::from_utf8(changed) else {
            continue;
        };
        let mut a = args(&key);
        a.receipt = Some(text.clone());
        let report = check(&a).await;
        assert!(!report.valid(), "byte {i} changed, still VALID: {text}");
        checked += 1;
    }
    assert_eq!(checked, bytes.len());
}

#[tokio::test]
async fn log_receipts_need_the_log_and_refusals_are_recorded() {
    let proxy = with_log("receipts = \"log\"\nclient_address = \"none\"").await;
    let key = proxy.log_key();
    let reply = proxy.client().upload_from(CH, "x=1").await;
    let header = reply.header("residency-receipt").unwrap().to_string();
    let receipt = Receipt::parse(&header).unwrap();
    assert!(receipt.signature.is_none());
    let record = Record::from_bytes(&receipt.record).unwrap();
    assert_eq!(record.client.address, None, "client_address = none");

    let mut a = args(&key);
    a.receipt = Some(header);
    let report = check(&a).await;
    assert!(!report.valid(), "an unsigned receipt alone proves nothing");
    assert!(report.to_string().contains("no signature"), "{report}");
    a.log = Some(proxy.log_url());
    let report = check(&a).await;
    assert!(report.valid(), "{report}");

    // A refusal is a record too, found by its request id.
    let refused = proxy.client().upload_from(UNKNOWN, "x=1").await;
    assert_eq!(refused.status, 451);
    assert!(refused.header("residency-receipt").is_none());
    let id = refused.header("x-request-id").unwrap();
    let (status, body) = proxy.log_get(&format!("/records/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let entry: serde_json::Value = serde_json::from_str(&body).unwrap();
    let record = Record::from_bytes(entry["record"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(record.outcome.as_str(), "refused");
    assert_eq!(record.reason.as_deref(), Some("origin_unknown"));
    assert_eq!(record.datacenter, None);

    // The upload can be verified from its request id alone.
    let mut c = args(&key);
    c.log = Some(proxy.log_url());
    c.request_id = Some(reply.header("x-request-id").unwrap().to_string());
    let report = check(&c).await;
    assert!(report.valid(), "{report}");

    let (status, _) = proxy.log_get("/records/0123").await;
    assert_eq!(status, 404);
    proxy.stop().await;
}

#[tokio::test]
async fn checkpoints_are_c2sp_notes_and_the_log_only_grows() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    let dir = TempDir::new("tlog-verify");
    for _ in 0..3 {
        let reply = proxy.client().upload_from(CH, "a").await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    }
    proxy.checkpoint_covers(&key, 3).await;
    // Only GET and HEAD; a 405 says so (RFC 9110 §15.5.6).
    let (status, headers, _) = plain_exchange(proxy.log_addr.unwrap(), "POST", "/checkpoint").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    // Save what we saw.
    let seen = dir.path().join("seen.checkpoint");
    let mut a = args(&key);
    a.log = Some(proxy.log_url());
    a.save_checkpoint = Some(seen.clone());
    let report = check(&a).await;
    assert!(report.valid(), "{report}");
    let note = std::fs::read_to_string(&seen).unwrap();

    // Byte-exact C2SP tlog-checkpoint, signed as a C2SP signed note.
    let (body, signature) = note.split_once("\n\n").unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], LOG_ORIGIN);
    let size: u64 = lines[1].parse().unwrap();
    assert!(size >= 3, "{note}");
    let root = base64::engine::general_purpose::STANDARD
        .decode(lines[2])
        .unwrap();
    assert_eq!(root.len(), 32);
    assert_eq!(lines.len(), 3);
    let prefix = format!("\u{2014} {LOG_ORIGIN} ");
    let sig_line = signature.strip_suffix('\n').unwrap();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(sig_line.strip_prefix(&prefix).unwrap())
        .unwrap();
    assert_eq!(blob.len(), 4 + 64);
    // Any Ed25519 verifier: ring, over the note text.
    let verifier = Verifier::parse(&key).unwrap();
    assert_eq!(blob[..4], verifier.key_id());
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, verifier.public_key())
        .verify(format!("{body}\n").as_bytes(), &blob[4..])
        .expect("the checkpoint signature verifies with plain Ed25519");

    // More uploads; the new checkpoint is consistent with the saved one.
    for _ in 0..5 {
        let reply = proxy.client().upload_from(DE, "b").await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    }
    proxy.checkpoint_covers(&key, 8).await;
    let mut b = args(&key);
    b.log = Some(proxy.log_url());
    b.previous = Some(seen.clone());
    let report = check(&b).await;
    assert!(report.valid(), "{report}");
    assert!(report.to_string().contains("consistency proof"), "{report}");

    // A tampered saved checkpoint is INVALID.
    let tampered = dir.path().join("tampered.checkpoint");
    std::fs::write(
        &tampered,
        note.replacen(&lines[1].to_string(), &(size + 1).to_string(), 1),
    )
    .unwrap();
    b.previous = Some(tampered.clone());
    let report = check(&b).await;
    assert!(!report.valid(), "{report}");
    let mut c = args(&key);
    c.checkpoint = Some(tampered);
    assert!(!check(&c).await.valid());

    // A forged history: a checkpoint of the same size with another root,
    // signed by the right key, is caught by the consistency proof.
    let forged_key_dir = TempDir::new("tlog-forge");
    let signer_bytes = std::fs::read(proxy.dir.path().join("log.key")).unwrap();
    let signer = Signer::from_pkcs8(LOG_ORIGIN, &signer_bytes).unwrap();
    let forged = Checkpoint {
        origin: LOG_ORIGIN.into(),
        size,
        root: [7u8; 32],
        extensions: Vec::new(),
    }
    .sign(&signer)
    .unwrap();
    let forged_path = forged_key_dir.path().join("forged.checkpoint");
    std::fs::write(&forged_path, forged).unwrap();
    b.previous = Some(forged_path);
    let report = check(&b).await;
    assert!(!report.valid(), "{report}");
    assert!(report.to_string().contains("rewrote history"), "{report}");
    proxy.stop().await;
}

/// A record altered on disk no longer proves anything: its leaf is not in
/// the signed tree.
#[tokio::test]
async fn a_stored_record_altered_on_disk_fails_verification() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    let reply = proxy.client().upload_from(CH, "x=1").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let path = proxy.dir.path().join("log").join("staging.0");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.windows(id.len()).any(|w| w == id.as_bytes()));
    // Same length, one byte different: the data centre's name.
    let at = bytes.windows(8).position(|w| w == b"\"zurich\"").unwrap();
    bytes[at + 6] = b'k';
    std::fs::write(&path, bytes).unwrap();
    let mut a = args(&key);
    a.log = Some(proxy.log_url());
    a.request_id = Some(id);
    let report = check(&a).await;
    assert!(!report.valid(), "{report}");
    assert!(report.to_string().contains("not in the log"), "{report}");
    proxy.stop().await;
}

/// Every appended record's metric, and a checkpoint at shutdown.
#[tokio::test]
async fn metrics_count_records_and_checkpoints() {
    let proxy = with_log("checkpoint_interval = \"1h\"").await;
    for _ in 0..4 {
        proxy.client().upload_from(CH, "a").await;
    }
    proxy.client().upload_from(UNKNOWN, "a").await;
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(&text, "residency_log_records_appended_total"),
        Some(5.0)
    );
    assert_eq!(metric(&text, "residency_log_size"), Some(5.0));
    assert_eq!(metric(&text, "residency_log_write_errors_total"), Some(0.0));
    let instance = proxy.instance.clone();
    let path = proxy.dir.path().join("log").join("checkpoint");
    let before = std::fs::read_to_string(&path).unwrap();
    let verifier = Verifier::parse(&proxy.log_key()).unwrap();
    assert!(Checkpoint::open(&before, &verifier).unwrap().size < 5);
    // The final checkpoint, at shutdown, covers everything.
    proxy.stop().await;
    let note = instance.log.as_ref().unwrap().latest().note.clone();
    let verifier = Verifier::parse(
        &instance
            .log
            .as_ref()
            .unwrap()
            .current()
            .signer()
            .verifier_key(),
    )
    .unwrap();
    assert_eq!(Checkpoint::open(&note, &verifier).unwrap().size, 5);
    assert_eq!(
        instance.metrics.log.checkpoint_size.get(),
        5,
        "checkpoint size metric"
    );
}

// A client that goes away after sending its upload, while the data centre
// is still answering, does not take the record with it: the upload was
// stored, so the log says so.
#[tokio::test]
async fn an_upload_whose_client_left_before_the_answer_is_still_recorded() {
    let proxy = with_log("checkpoint_interval = \"1h\"").await;
    let mut tls = proxy.client().connect().await.unwrap();
    let request = format!(
        "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {CH}\r\n\
         X-Test-Answer-Delay-Ms: 300\r\nContent-Length: 5\r\n\r\nhello"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tls);

    let appended = || async {
        let (_, text) = proxy.admin_get("/metrics").await;
        metric(&text, "residency_log_records_appended_total")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while appended().await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "no record for an upload the data centre stored (stored: {})",
            proxy.upstream("zurich").count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.upstream("zurich").count(), 1);
    let log = proxy.instance.log.clone().unwrap();
    let record = Record::from_bytes(&log.current().record(0).unwrap().unwrap()).unwrap();
    assert_eq!(record.outcome.as_str(), "stored");
    assert_eq!(record.datacenter.as_deref(), Some("zurich"));
    assert_eq!(record.body.unwrap().bytes, 5);
    proxy.stop().await;
}

/// `[transparency]` for a subprocess proxy, with absolute paths so a
/// restarted proxy finds the same log.
fn section(dir: &std::path::Path, log_port: u16, lines: &str) -> String {
    format!(
        "[transparency]\ndirectory = \"{}\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"{}\"\n\
         address = \"127.0.0.1:{log_port}\"\ncheckpoint_interval = \"20ms\"\n{lines}\n",
        dir.join("log").display(),
        dir.join("log.key").display()
    )
}

/// kill -9 while uploads are being written, then restart on the same log:
/// every checkpoint issued before the kill is consistent with the new
/// tree, and every receipt given out before the kill is still included.
#[tokio::test]
async fn kill_9_during_writes_keeps_the_tree_consistent_with_every_checkpoint() {
    let keep = TempDir::new("tlog-kill");
    let key = log_key(keep.path());
    let zurich = Upstream::start("zurich").await;
    let others = Upstream::start("others").await;
    let dcs = [
        ("zurich", "ch", zurich.addr),
        ("frankfurt", "eu", others.addr),
        ("virginia", "us", others.addr),
    ];
    let log_port = free_port();
    let proxy = Binary::start("tlog-kill-1", &dcs, &section(keep.path(), log_port, "")).await;
    let log_url = format!("http://127.0.0.1:{log_port}");

    // Eight writers upload as fast as they can until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = proxy.client();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let body = format!("writer={w} upload={i}");
                let body: Body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                    http_body_util::Full::new(bytes::Bytes::from(body)),
                    |e| match e {},
                ));
                let Ok(reply) = client
                    .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body)
                    .await
                else {
                    break;
                };
                if let Some(r) = reply.header("residency-receipt") {
                    receipts.push(r.to_string());
                }
            }
            receipts
        }));
    }
    // Collect checkpoints while they write.
    let mut seen = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (status, note) = plain_request(
            format!("127.0.0.1:{log_port}").parse().unwrap(),
            "GET",
            "/checkpoint",
        )
        .await;
        assert_eq!(status, 200);
        seen.push(note);
    }
    let mut proxy = proxy;
    proxy.child.0.kill().unwrap(); // SIGKILL, mid-write
    let _ = proxy.child.0.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut receipts = Vec::new();
    for w in writers {
        receipts.extend(w.await.unwrap());
    }
    let verifier = Verifier::parse(&key).unwrap();
    let sizes: Vec<u64> = seen
        .iter()
        .map(|n| Checkpoint::open(n, &verifier).unwrap().size)
        .collect();
    assert!(
        sizes.last() > sizes.first(),
        "checkpoints grew while writing: {sizes:?}"
    );
    assert!(receipts.len() > 50, "only {} receipts", receipts.len());

    // Restart on the same directory and key.
    let log_port = free_port();
    let restarted = Binary::start("tlog-kill-2", &dcs, &section(keep.path(), log_port, "")).await;
    let log_url2 = format!("http://127.0.0.1:{log_port}");
    assert_ne!(log_url, log_url2);
    let reply = restarted
        .client()
        .upload_from(CH, "after the restart")
        .await;
    assert_eq!(reply.status, 201);
    tokio::time::sleep(Duration::from_millis(100)).await;

    for (i, note) in seen.iter().enumerate() {
        let path = keep.path().join(format!("seen-{i}.checkpoint"));
        std::fs::write(&path, note).unwrap();
        let mut a = args(&key);
        a.log = Some(log_url2.clone());
        a.previous = Some(path);
        let report = check(&a).await;
        assert!(
            report.valid(),
            "checkpoint {i} (size {}): {report}",
            sizes[i]
        );
    }
    // Every receipt handed out before the kill is in the restarted log
    // (durable before acknowledged): each one verifies, signature and
    // inclusion, against the restarted log's checkpoint.
    for (i, r) in receipts.iter().enumerate() {
        let mut a = args(&key);
        a.log = Some(log_url2.clone());
        a.receipt = Some(r.clone());
        let report = check(&a).await;
        assert!(report.valid(), "receipt {i}: {report}\n{}", restarted.log());
    }
}

/// When records cannot be written (here: a file-size limit), uploads are
/// refused with 503 `log_unavailable`; nothing is acknowledged without its
/// record, and later uploads are refused before they are forwarded.
#[tokio::test]
async fn a_log_that_cannot_be_written_refuses_uploads() {
    let keep = TempDir::new("tlog-full");
    log_key(keep.path());
    let zurich = Upstream::start("zurich").await;
    let others = Upstream::start("others").await;
    let dcs = [
        ("zurich", "ch", zurich.addr),
        ("frankfurt", "eu", others.addr),
        ("virginia", "us", others.addr),
    ];
    let log_port = free_port();
    // The index file fits under the limit, and about two hundred records
    // in the staging bundle (which is renamed at 256).
    let proxy = Binary::start_wrapped(
        "tlog-full",
        &dcs,
        &section(keep.path(), log_port, ""),
        &["prlimit", "--fsize=100000", "--"],
    )
    .await;
    let client = proxy.client();
    let mut statuses = Vec::new();
    for i in 0..250 {
        let reply = client
            .send_body(
                "POST",
                "/v1/telemetry",
                &[("x-forwarded-for", CH)],
                http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                    http_body_util::Full::new(bytes::Bytes::from(format!("upload {i}"))),
                    |e| match e {},
                )),
            )
            .await;
        let Ok(reply) = reply else {
            panic!("{reply:?} {}", proxy.log())
        };
        if reply.status == 201 {
            assert!(reply.header("residency-receipt").is_some());
        } else {
            assert_eq!(reply.status, 503, "{reply:?}");
            assert_eq!(reply.json()["error"], "log_unavailable");
            assert_eq!(reply.header("retry-after"), Some("1"));
            assert!(reply.header("residency-receipt").is_none());
        }
        statuses.push(reply.status.as_u16());
    }
    let stored = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        (100..=240).contains(&stored) && statuses[..stored].iter().all(|s| *s == 201),
        "{statuses:?}"
    );
    // The first refusal reached the data centre (its record failed after
    // the answer); every later one was refused before forwarding.
    assert_eq!(zurich.count(), stored + 1, "{statuses:?}");
    let metrics = std::net::TcpStream::connect(proxy.admin).map(|_| ());
    assert!(metrics.is_ok());
    let (_, text) = plain_request(proxy.admin, "GET", "/metrics").await;
    assert!(
        metric(&text, "residency_log_write_errors_total").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "residency_log_records_appended_total"),
        Some(stored as f64)
    );
}

/// `on_write_error = "continue"` keeps acknowledging — without receipts —
/// and counts every record lost.
#[tokio::test]
async fn continue_on_write_error_acknowledges_without_receipts() {
    let keep = TempDir::new("tlog-cont");
    log_key(keep.path());
    let zurich = Upstream::start("zurich").await;
    let others = Upstream::start("others").await;
    let dcs = [
        ("zurich", "ch", zurich.addr),
        ("frankfurt", "eu", others.addr),
        ("virginia", "us", others.addr),
    ];
    let log_port = free_port();
    let proxy = Binary::start_wrapped(
        "tlog-cont",
        &dcs,
        &section(keep.path(), log_port, "on_write_error = \"continue\""),
        &["prlimit", "--fsize=100000", "--"],
    )
    .await;
    let client = proxy.client();
    let mut without = 0;
    for i in 0..250 {
        let reply = client.upload_from(CH, &format!("upload {i}")).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        if reply.header("residency-receipt").is_none() {
            without += 1;
        }
    }
    assert!(without >= 4, "{without}");
    assert_eq!(zurich.count(), 250);
    let (_, text) = plain_request(proxy.admin, "GET", "/metrics").await;
    assert_eq!(
        metric(&text, "residency_log_write_errors_total"),
        Some(without as f64)
    );
}

/// The `keygen` and `verify` commands as a customer runs them.
#[tokio::test]
async fn keygen_and_verify_commands() {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = env!("CARGO_BIN_EXE_residency-proxy");
    let dir = TempDir::new("tlog-cli");
    let out = std::process::Command::new(bin)
        .args(["keygen", "--name", "cli.example/log", "--out"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(dir.path().join("k.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let public = std::fs::read_to_string(dir.path().join("k.pub")).unwrap();
    assert!(public.starts_with("cli.example/log+"), "{public}");
    Verifier::parse(public.trim()).unwrap();
    // Never overwrites a key.
    let again = std::process::Command::new(bin)
        .args(["keygen", "--name", "cli.example/log", "--out"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    // An input to change: exit 2, naming the file.
    assert_eq!(again.status.code(), Some(2));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("k.key exists; keygen never overwrites"),
        "{said}"
    );
    // Nor a public key alone: nothing is written then.
    std::fs::write(dir.path().join("p.pub"), "given to customers\n").unwrap();
    let over_pub = std::process::Command::new(bin)
        .args(["keygen", "--name", "cli.example/log", "--out"])
        .arg(dir.path().join("p"))
        .output()
        .unwrap();
    assert_eq!(over_pub.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&over_pub.stderr).contains("p.pub exists; keygen never overwrites")
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p.pub")).unwrap(),
        "given to customers\n"
    );
    assert!(!dir.path().join("p.key").exists());

    let proxy = with_log("").await;
    let key_file = dir.path().join("log.pub");
    std::fs::write(&key_file, proxy.log_key()).unwrap();
    let reply = proxy.client().upload_from(GB, "uk data").await;
    assert_eq!(reply.status, 201);
    let receipt_file = dir.path().join("receipt.txt");
    std::fs::write(
        &receipt_file,
        format!(
            "residency-receipt: {}\r\n",
            reply.header("residency-receipt").unwrap()
        ),
    )
    .unwrap();
    let (k, r) = (key_file.clone(), receipt_file.clone());
    let verify = move |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("verify")
            .arg("--key")
            .arg(&k)
            .arg("--receipt")
            .arg(format!("@{}", r.display()))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let url = proxy.log_url();
    let (code, stdout) = tokio::task::spawn_blocking(move || verify(&["--log", &url]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("VALID: upload"), "{stdout}");
    assert!(
        stdout.contains("jurisdiction uk") && stdout.contains("from GB"),
        "{stdout}"
    );
    // Against another key: exit 1, INVALID.
    std::fs::write(&key_file, public).unwrap();
    let out = std::process::Command::new(bin)
        .arg("verify")
        .arg("--key")
        .arg(&key_file)
        .arg("--receipt")
        .arg(format!("@{}", receipt_file.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("INVALID: "), "{stdout}");
    proxy.stop().await;
}

/// An honest log that has not signed a checkpoint since the upload (as
/// when its disk was out for a while; here its `checkpoint_interval` is an
/// hour): `verify --log`, having waited its 10 s for a covering
/// checkpoint, says NOT CHECKED (exit 3) and what to do — not INVALID
/// (exit 1), which says something was found wrong.
#[tokio::test]
async fn a_receipt_no_checkpoint_covers_yet_is_not_checked() {
    let bin = env!("CARGO_BIN_EXE_residency-proxy");
    let proxy = with_log("checkpoint_interval = \"1h\"").await;
    let dir = TempDir::new("verify-not-covered");
    let key = dir.path().join("log.pub");
    std::fs::write(&key, proxy.log_key()).unwrap();
    let reply = proxy.client().upload_from(CH, "cpu=0.93").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let receipt = reply.header("residency-receipt").unwrap().to_string();
    let index = Receipt::parse(&receipt).unwrap().index;
    let (_, note) = proxy.log_get("/checkpoint").await;
    let size = Checkpoint::open(&note, &Verifier::parse(&proxy.log_key()).unwrap())
        .unwrap()
        .size;
    assert!(size <= index, "the checkpoint covers {index}: {note}");
    let url = proxy.log_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .arg("verify")
            .arg("--key")
            .arg(&key)
            .args(["--receipt", &receipt, "--log", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "NOT CHECKED: the checkpoint (tree size {size}) does not cover the receipt's index {index} yet: retry after the log's next checkpoint; if none covers it after the log's checkpoint interval, the log has not included the record (nothing was found wrong)\n"
        )
    );
    proxy.stop().await;
}

/// An auditor without network access: saved checkpoint and proof files.
#[tokio::test]
async fn saved_proof_files_verify_offline() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    let dir = TempDir::new("tlog-offline");
    let mut receipts = Vec::new();
    for i in 0..5 {
        let reply = proxy.client().upload_from(CH, &format!("u{i}")).await;
        receipts.push(reply.header("residency-receipt").unwrap().to_string());
    }
    proxy.checkpoint_covers(&key, 5).await;
    let (_, first) = proxy.log_get("/checkpoint").await;
    let first_size = Checkpoint::open(&first, &Verifier::parse(&key).unwrap())
        .unwrap()
        .size;
    for i in 0..3 {
        proxy.client().upload_from(DE, &format!("v{i}")).await;
    }
    proxy.checkpoint_covers(&key, 8).await;
    let (_, second) = proxy.log_get("/checkpoint").await;
    let second_size = Checkpoint::open(&second, &Verifier::parse(&key).unwrap())
        .unwrap()
        .size;
    let receipt = Receipt::parse(&receipts[2]).unwrap();
    let (_, proof) = proxy
        .log_get(&format!(
            "/proof/inclusion?index={}&size={second_size}",
            receipt.index
        ))
        .await;
    let (_, consistency) = proxy
        .log_get(&format!(
            "/proof/consistency?from={first_size}&to={second_size}"
        ))
        .await;
    proxy.stop().await; // everything below is offline

    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut a = args(&key);
    a.receipt = Some(receipts[2].clone());
    a.checkpoint = Some(file("second.checkpoint", &second));
    a.proof = Some(file("inclusion.json", &proof));
    a.previous = Some(file("first.checkpoint", &first));
    a.consistency_proof = Some(file("consistency.json", &consistency));
    let report = check(&a).await;
    assert!(report.valid(), "{report}");
    assert!(report.to_string().contains("inclusion proof"), "{report}");
    assert!(report.to_string().contains("consistency proof"), "{report}");

    // One hash of the inclusion proof changed: INVALID.
    let mut bad: serde_json::Value = serde_json::from_str(&proof).unwrap();
    if let Some(first_hash) = bad["hashes"][0].as_str() {
        let flipped = if first_hash.starts_with('0') {
            "1"
        } else {
            "0"
        };
        bad["hashes"][0] = format!("{flipped}{}", &first_hash[1..]).into();
    }
    a.proof = Some(file("bad-inclusion.json", &bad.to_string()));
    let report = check(&a).await;
    assert!(!report.valid(), "{report}");
    // A consistency proof for other sizes: INVALID.
    a.proof = Some(file("inclusion.json", &proof));
    let mut wrong: serde_json::Value = serde_json::from_str(&consistency).unwrap();
    wrong["from"] = (first_size - 1).into();
    a.consistency_proof = Some(file("wrong-consistency.json", &wrong.to_string()));
    let report = check(&a).await;
    assert!(!report.valid(), "{report}");
}

/// `[transparency.tls]`: the log listener speaks HTTPS (and nothing else);
/// `verify --log https://… --ca` checks a receipt's inclusion through it.
#[tokio::test]
async fn the_log_listener_serves_https_when_configured() {
    let proxy =
        with_log("[transparency.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]\n")
            .await;
    let key = proxy.log_key();
    let reply = proxy.client().upload_from(CH, "over https").await;
    assert_eq!(reply.status, 201);
    let receipt = reply.header("residency-receipt").unwrap().to_string();
    let ca = proxy.dir.path().join("a.pem");
    let port = proxy.log_addr.unwrap().port();

    let mut a = args(&key);
    a.receipt = Some(receipt);
    a.log = Some(format!("https://localhost:{port}"));
    a.ca = Some(ca.clone());
    let mut report = check(&a).await;
    for _ in 0..100 {
        if report.valid() {
            break;
        }
        // Until a checkpoint covers the record.
        tokio::time::sleep(Duration::from_millis(100)).await;
        report = check(&a).await;
    }
    assert!(report.valid(), "{report}");
    assert!(report.to_string().contains("inclusion proof"), "{report}");

    // Plain HTTP gets no answer from a TLS listener.
    let mut plain = tokio::net::TcpStream::connect(proxy.log_addr.unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /checkpoint HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "no plain-HTTP answer"
    );
    proxy.stop().await;
}

/// Refusals cannot exhaust the log: beyond `refusal_records_per_second`
/// (here a burst of 5, 1 a second) they are folded into one summary record
/// per reason, whose count and id hash account for every one of them; a
/// stored upload is still its own record with its receipt.
#[tokio::test]
async fn refusals_over_their_budget_become_summary_records() {
    let proxy = with_log(
        "refusal_records_per_second = 1\nrefusal_records_burst = 5\ncheckpoint_interval = \"1s\"\n",
    )
    .await;
    let key = proxy.log_key();
    const REFUSED: usize = 60;
    let mut ids = Vec::new();
    let started = Instant::now();
    for _ in 0..REFUSED {
        let reply = proxy.client().upload_from(UNKNOWN, "x").await;
        assert_eq!(reply.status, 451);
        ids.push(reply.header("x-request-id").unwrap().to_string());
    }
    let stored = proxy.client().upload_from(CH, "kept").await;
    assert_eq!(stored.status, 201);
    assert!(stored.header("residency-receipt").is_some());

    let log = proxy.instance.log.clone().unwrap();
    // Which refusals have records of their own, and what the summaries
    // account for, in the signed tree.
    let account = || {
        let mut own = Vec::new();
        let mut summaries = Vec::new();
        for i in 0..log.latest().size {
            let record = Record::from_bytes(&log.current().record(i).unwrap().unwrap()).unwrap();
            match record.summary {
                Some(s) => summaries.push(s),
                None if record.outcome == residency_log::record::Outcome::Refused => {
                    own.push(record.request_id.to_string())
                }
                None => {}
            }
        }
        (own, summaries)
    };
    // Summaries are written with the checkpoints (every 50 ms here).
    eventually(
        "every refusal accounted for in the signed tree",
        async || {
            let (own, summaries) = account();
            own.len() + summaries.iter().map(|s| s.count as usize).sum::<usize>() == REFUSED
        },
    )
    .await;
    let (own, summaries) = account();
    let size = log.latest().size;
    // The burst, one a second after it, one summary per checkpoint (1 s)
    // and the upload: far fewer than one per refusal.
    let secs = started.elapsed().as_secs() + 2;
    let bound = 5 + secs + secs + 1;
    assert!(
        size <= bound && size < REFUSED as u64 / 2,
        "{REFUSED} refusals and an upload made {size} records (bound {bound})"
    );
    let summarized = metric_value(&proxy, "residency_log_refusals_summarized_total").await;
    let counted: u64 = summaries.iter().map(|s| s.count).sum();
    assert!(counted > 0, "some refusals were folded");
    assert_eq!(counted as f64, summarized);
    let written = metric_value(&proxy, "residency_log_refusal_summaries_total").await;
    assert_eq!(
        written,
        summaries.len() as f64,
        "one count per summary record"
    );
    // Each summary (one per checkpoint interval) hashes the next `count`
    // folded ids, in the order they were refused.
    let folded: Vec<&String> = ids.iter().filter(|id| !own.contains(id)).collect();
    let mut at = 0;
    for s in &summaries {
        let group: String = folded[at..at + s.count as usize]
            .iter()
            .map(|id| format!("{id}\n"))
            .collect();
        assert_eq!(s.request_ids_sha256, sha256_hex(group.as_bytes()));
        at += s.count as usize;
    }
    // The summary is in the signed tree like any record.
    let mut a = args(&key);
    a.log = Some(proxy.log_url());
    assert!(check(&a).await.valid());
    proxy.stop().await;
}

/// C2SP tlog-proof: `verify --export-proof` writes one once the receipt's
/// inclusion is proven, the log serves one at `/proof/{id}.tlog-proof`,
/// both with the record on the `extra` line, and `verify --proof-file`
/// checks either offline with the key alone, for that record or for
/// `--entry`; another entry, another record on the extra line, or an
/// edited index, is INVALID; a proof without a record needs `--entry`.
#[tokio::test]
async fn tlog_proofs_are_exported_served_and_checked_offline() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    let reply = proxy.client().upload_from(CH, "proof me").await;
    assert_eq!(reply.status, 201);
    let header = reply.header("residency-receipt").unwrap().to_string();
    let receipt = Receipt::parse(&header).unwrap();
    let id = reply.header("x-request-id").unwrap().to_string();
    let dir = proxy.dir.path();
    let entry = dir.join("entry.json");
    std::fs::write(&entry, &receipt.record).unwrap();

    let exported = dir.join("exported.tlog-proof");
    let mut a = args(&key);
    a.receipt = Some(header.clone());
    a.log = Some(proxy.log_url());
    a.export_proof = Some(exported.clone());
    let report = check(&a).await;
    assert!(report.valid(), "{report}");
    let text = std::fs::read_to_string(&exported).unwrap();
    let extra = base64::engine::general_purpose::STANDARD.encode(&receipt.record);
    assert!(
        text.starts_with(&format!(
            "c2sp.org/tlog-proof@v1\nextra {extra}\nindex {}\n",
            receipt.index
        )),
        "{text}"
    );

    let (status, served) = proxy.log_get(&format!("/proof/{id}.tlog-proof")).await;
    assert_eq!(status, 200, "{served}");
    let served_path = dir.join("served.tlog-proof");
    std::fs::write(&served_path, &served).unwrap();

    assert_eq!(served, text, "the same proof, served and exported");

    for proof in [&exported, &served_path] {
        for given in [Some(entry.clone()), None] {
            let mut offline = args(&key);
            offline.proof_file = Some(proof.clone());
            offline.entry = given.clone();
            let report = check(&offline).await;
            assert!(report.valid(), "{report}");
            let said = report.to_string();
            assert!(said.contains("tlog-proof"), "{said}");
            let from = if given.is_some() {
                "--entry"
            } else {
                "the proof's extra line"
            };
            assert!(said.contains(&format!("(from {from})")), "{said}");
            assert!(said.contains("Stored in data centre zurich"), "{said}");
        }
    }

    // Another record on the extra line: INVALID; with no extra line the
    // record must be given.
    let swapped = dir.join("swapped.tlog-proof");
    let other_record = base64::engine::general_purpose::STANDARD.encode(b"{\"v\":1}");
    std::fs::write(&swapped, text.replace(&extra, &other_record)).unwrap();
    let mut offline = args(&key);
    offline.proof_file = Some(swapped);
    assert!(!check(&offline).await.valid());
    let bare = dir.join("bare.tlog-proof");
    std::fs::write(&bare, text.replace(&format!("extra {extra}\n"), "")).unwrap();
    offline.proof_file = Some(bare.clone());
    let report = check(&offline).await;
    assert!(!report.valid());
    assert!(report.to_string().contains("--entry"), "{report}");
    offline.entry = Some(entry.clone());
    assert!(check(&offline).await.valid());

    // Another entry, or the same proof with another index: INVALID.
    let other = dir.join("other.json");
    std::fs::write(&other, b"{\"v\":1}").unwrap();
    let mut offline = args(&key);
    offline.proof_file = Some(exported.clone());
    offline.entry = Some(other);
    assert!(!check(&offline).await.valid());
    let edited = dir.join("edited.tlog-proof");
    std::fs::write(
        &edited,
        text.replace(
            &format!("index {}", receipt.index),
            &format!("index {}", receipt.index + 1),
        ),
    )
    .unwrap();
    offline.proof_file = Some(edited);
    offline.entry = Some(entry);
    let report = check(&offline).await;
    assert!(!report.valid(), "{report}");

    // A refusal's record is in the log, and its proof holds, but it is no
    // proof of storage: INVALID, as its receipt would be (crypto audit,
    // stop 66: VALID, "Stored in data centre ?").
    let refused = proxy.client().upload_from(UNKNOWN, "refused").await;
    assert_eq!(refused.status, 451);
    let id = refused.header("x-request-id").unwrap().to_string();
    let mut served = String::new();
    for _ in 0..100 {
        let (status, body) = proxy.log_get(&format!("/proof/{id}.tlog-proof")).await;
        if status == 200 {
            served = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served.starts_with("c2sp.org/tlog-proof@v1\n"), "{served}");
    let refusal = dir.join("refusal.tlog-proof");
    std::fs::write(&refusal, &served).unwrap();
    let mut offline = args(&key);
    offline.proof_file = Some(refusal);
    let report = check(&offline).await;
    assert!(!report.valid(), "{report}");
    assert!(
        report.to_string().contains(
            "INVALID: the record says the upload was refused (origin_unknown), not stored"
        ),
        "{report}"
    );
    proxy.stop().await;
}

/// A tile carries a weak entity tag, its generation's key ID: a client
/// that has it asks with `If-None-Match` (weakly compared, in a list, or
/// `*`) and is answered 304 without a body or a content type, with the
/// tag and the caching of the 200; a tile not yet covered is still a 404.
/// After a roll the root's same path is the next generation's tile, with
/// another tag, and a client holding the old one gets it whole; under
/// `/generations/1/` the old tag still holds.
#[tokio::test]
async fn a_tile_the_client_has_is_answered_304_until_a_roll_changes_it() {
    let proxy = with_log("max_records = 5").await;
    let log = proxy.log_addr.unwrap();
    let first_key = proxy.log_key();
    for i in 0..3 {
        let reply = proxy.client().upload_from(CH, &format!("upload {i}")).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    proxy.checkpoint_covers(&first_key, 3).await;
    let path = "/tile/0/000.p/1";
    let (status, headers, body) = plain_exchange(log, "GET", path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-cache", "a log that rolls");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
    let strong = etag.trim_start_matches("W/").to_string();
    let listed = format!("\"elsewhere\", {etag}");
    for known in [etag.as_str(), &strong, &listed, "*"] {
        let (status, h, body) =
            plain_exchange_with(log, "GET", path, &[("if-none-match", known)]).await;
        assert_eq!(status, 304, "{known}");
        assert!(body.is_empty(), "{known}: {body}");
        assert_eq!(h["etag"], etag.as_str());
        assert_eq!(h["cache-control"], "no-cache");
        assert!(h.get("content-type").is_none(), "{h:?}");
    }
    // An entry bundle's tag is its generation's too.
    let (status, _, _) = plain_exchange_with(
        log,
        "GET",
        "/tile/entries/000.p/3",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, 304);
    let (status, _, again) =
        plain_exchange_with(log, "GET", path, &[("if-none-match", "\"elsewhere\"")]).await;
    assert_eq!((status, again), (http::StatusCode::OK, body.clone()));
    let (status, _, _) =
        plain_exchange_with(log, "GET", "/tile/0/000.p/4", &[("if-none-match", "*")]).await;
    assert_eq!(status, 404, "not covered yet");

    // Rolled (5 records), and one in the next generation.
    for i in 3..6 {
        let reply = proxy.client().upload_from(CH, &format!("upload {i}")).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let second_key = proxy.log_key();
    assert_ne!(second_key, first_key);
    proxy.checkpoint_covers(&second_key, 1).await;
    let (status, h, now) = plain_exchange_with(log, "GET", path, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 200, "another generation's tile at the root");
    assert_ne!(h["etag"], etag.as_str());
    assert_ne!(now, body);
    let (status, h, _) = plain_exchange_with(
        log,
        "GET",
        &format!("/generations/1{path}"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, 304);
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    proxy.stop().await;
}

/// `max_records` is a generation's size: at it the log seals its origin
/// (a last checkpoint covers every record) and rolls to `<origin>/2`
/// instead of refusing. Receipts name the origin of their generation;
/// each generation is served under `/generations/<n>/` and verifies with
/// its own key, fetched by `verify --log` from its prefix.
#[tokio::test]
async fn a_full_log_rolls_to_a_new_origin_and_old_receipts_still_verify() {
    let proxy = with_log("max_records = 5").await;
    let mut receipts = Vec::new();
    for i in 0..8 {
        let reply = proxy.client().upload_from(CH, &format!("upload {i}")).await;
        assert_eq!(reply.status, 201, "upload {i}: {reply:?}");
        let header = reply.header("residency-receipt").unwrap().to_string();
        receipts.push((header, reply.header("x-request-id").unwrap().to_string()));
    }
    let second = format!("{LOG_ORIGIN}/2");
    for (i, (header, _)) in receipts.iter().enumerate() {
        let r = Receipt::parse(header).unwrap();
        let (origin, index) = if i < 5 {
            (LOG_ORIGIN, i as u64)
        } else {
            (second.as_str(), i as u64 - 5)
        };
        assert_eq!((r.log.as_str(), r.index), (origin, index), "receipt {i}");
    }

    let (status, body) = proxy.log_get("/generations").await;
    assert_eq!(status, 200, "{body}");
    let list: residency_log::api::Generations = serde_json::from_str(&body).unwrap();
    let g: Vec<_> = list
        .generations
        .iter()
        .map(|g| (g.generation, g.origin.as_str(), g.sealed, g.prefix.as_str()))
        .collect();
    assert_eq!(
        g,
        [
            (1, LOG_ORIGIN, true, "/generations/1/"),
            (2, second.as_str(), false, "/generations/2/")
        ]
    );
    assert_eq!(
        list.generations[0].size, 5,
        "sealed with every record covered"
    );
    let first_key = list.generations[0].key.clone();
    let second_key = proxy.log_key();
    assert_eq!(list.generations[1].key, second_key);
    assert_ne!(first_key, second_key);
    let (_, served_key) = proxy.log_get("/key").await;
    assert_eq!(
        served_key.trim(),
        second_key,
        "the root serves the current origin"
    );
    let (_, note) = proxy.log_get("/generations/1/checkpoint").await;
    let sealed = Checkpoint::open(&note, &Verifier::parse(&first_key).unwrap()).unwrap();
    assert_eq!((sealed.origin.as_str(), sealed.size), (LOG_ORIGIN, 5));
    let (status, _) = proxy.log_get("/generations/3/checkpoint").await;
    assert_eq!(status, 404);

    // Each receipt verifies with its generation's key, from the tiles
    // under that generation's prefix; not with the other's.
    proxy.checkpoint_covers(&second_key, 3).await;
    // Generation 2's origin, `<origin>/2`, is a URL prefix of it too.
    for path in ["checkpoint", "tile/0/000.p/3", "tile/entries/000.p/3"] {
        let (status, body) = proxy.log_get(&format!("/2/{path}")).await;
        assert_eq!(status, 200, "/2/{path}");
        assert_eq!(
            body,
            proxy.log_get(&format!("/generations/2/{path}")).await.1
        );
    }
    // A roll changes what the root's tiles are: revalidated there, cached
    // for good under a generation's prefix.
    let log = proxy.log_addr.unwrap();
    for (path, cache) in [
        ("/tile/0/000.p/3", "no-cache"),
        (
            "/generations/2/tile/0/000.p/3",
            "public, max-age=31536000, immutable",
        ),
        ("/2/tile/0/000.p/3", "public, max-age=31536000, immutable"),
        (
            "/generations/1/tile/0/000.p/5",
            "public, max-age=31536000, immutable",
        ),
    ] {
        let (status, headers, _) = plain_exchange(log, "GET", path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["cache-control"], cache, "{path}");
    }
    let (status, _) = proxy.log_get("/3/checkpoint").await;
    assert_eq!(status, 404);
    // Each generation's prefix is a whole tlog-tiles log to Go's client.
    for (prefix, key, origin, size) in [
        ("/generations/1", &first_key, LOG_ORIGIN, 5),
        ("/generations/2", &second_key, second.as_str(), 3),
        ("/2", &second_key, second.as_str(), 3),
    ] {
        let url = format!("{}{prefix}", proxy.log_url());
        let ok = go_tlog_check(&url, key, origin, None).await;
        assert!(
            ok.starts_with(&format!("ok size={size} entries={size} ")),
            "{prefix}: {ok}"
        );
    }
    for (i, key) in [(2, &first_key), (6, &second_key)] {
        let mut a = args(key);
        a.receipt = Some(receipts[i].0.clone());
        a.log = Some(proxy.log_url());
        let report = check(&a).await;
        assert!(report.valid(), "receipt {i}: {report}");
        let mut by_id = args(key);
        by_id.request_id = Some(receipts[i].1.clone());
        by_id.log = Some(proxy.log_url());
        let report = check(&by_id).await;
        assert!(report.valid(), "request id {i}: {report}");
    }
    // With the other generation's key, as the page: a receipt is checked
    // against the generation it names, a request id is looked up in the
    // log's other generations; each against that generation's own
    // checkpoint, signed by the same key under its origin's name.
    for (i, key, found) in [(2, &second_key, 1), (6, &first_key, 2)] {
        let mut crossed = args(key);
        crossed.receipt = Some(receipts[i].0.clone());
        crossed.log = Some(proxy.log_url());
        let report = check(&crossed).await;
        assert!(report.valid(), "receipt {i}: {report}");
        let line = format!("the record is in generation {found} of the log");
        assert!(report.checks[0].starts_with(&line), "{report}");
        let mut by_id = args(key);
        by_id.request_id = Some(receipts[i].1.clone());
        by_id.log = Some(proxy.log_url());
        let report = check(&by_id).await;
        assert!(report.valid(), "request id {i}: {report}");
        assert!(report.checks[0].starts_with(&line), "{report}");
    }
    // Without the log, a receipt of another generation is the key's
    // mismatch it is.
    let mut offline = args(&second_key);
    offline.receipt = Some(receipts[2].0.clone());
    assert!(!check(&offline).await.valid());
    let mut unknown = args(&second_key);
    unknown.request_id = Some("no-such-request".into());
    unknown.log = Some(proxy.log_url());
    let report = check(&unknown).await;
    let why = report.verdict.unwrap_err();
    assert!(
        why.contains("no record for request id no-such-request (yet): not in the given key's generation, nor in the 1 other generation(s)"),
        "{why}"
    );

    let metrics = proxy.admin_get("/metrics").await.1;
    assert!(metrics.contains("residency_log_generation 2"), "{metrics}");
    assert!(
        metrics.contains("residency_log_write_errors_total 0"),
        "{metrics}"
    );
    proxy.stop().await;
}

/// The log and admin listeners take request heads of up to 16 KiB (their
/// requests are small GETs), not hyper's default of about 400 KiB per
/// connection: a longer one gets 431. (The witness serves through the
/// same function, `plain_http::serve_async`.)
#[tokio::test]
async fn the_log_and_admin_listeners_bound_a_request_head() {
    use tokio::io::AsyncWriteExt;
    let proxy = with_log("").await;
    let admin = proxy.admin;
    for addr in [proxy.log_addr.unwrap(), admin] {
        for (padding, want) in [(8 * 1024, "200"), (100 * 1024, "431")] {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
                "a".repeat(padding)
            );
            // Sent whole or cut off once answered.
            let _ = tcp.write_all(head.as_bytes()).await;
            let line = status_line(&mut tcp, "an answer").await;
            let status = line.split(' ').nth(1).unwrap_or_default().to_string();
            // /healthz is the admin's; the log answers it 404: a parsed head.
            let parsed = if addr == admin {
                want
            } else if want == "200" {
                "404"
            } else {
                want
            };
            assert_eq!(
                status, parsed,
                "{addr} with {padding} bytes of header: {line}"
            );
        }
    }
    proxy.stop().await;
}

/// The drill's log check ties each receipt to its own request: two
/// uploads of the same body from the same place get receipts that pass
/// every other check (signature, inclusion, data centre, body) for either
/// upload, so each is proven only when its record names the request the
/// answer named (`X-Request-Id`).
#[tokio::test]
async fn the_drill_s_log_check_ties_each_receipt_to_its_request() {
    use std::collections::HashMap;

    use residency_tools::loadtest::generator::Outcome;
    use residency_tools::loadtest::logcheck;
    use residency_tools::loadtest::plan::LogTarget;

    let proxy = with_log("").await;
    let key = proxy.log_key();
    let body = "cpu=0.42\n".repeat(50);
    let (a, b) = (
        proxy.client().upload_from(CH, &body).await,
        proxy.client().upload_from(CH, &body).await,
    );
    assert_eq!(
        (a.status.as_u16(), b.status.as_u16()),
        (201, 201),
        "{a:?} {b:?}"
    );
    proxy.checkpoint_covers(&key, 2).await;
    let sha256: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, body.as_bytes())
        .as_ref()
        .try_into()
        .unwrap();
    let outcome = |index, request: &Reply, receipt: &Reply| {
        drill_outcome(index, request, receipt, "zurich", sha256)
    };
    let target = LogTarget {
        url: format!("http://{}", proxy.log_addr.unwrap()),
        key,
    };
    let stored_in = HashMap::from([(0, vec!["zurich".to_string()]), (1, vec!["zurich".into()])]);

    // The check's verdicts (verified, failed) and its first failure.
    let checked = async |outcomes: &[Outcome], stored: &HashMap<u64, Vec<String>>| {
        let report = logcheck::check(&target, None, outcomes, stored).await;
        assert_eq!(report.error, None, "{report:?}");
        let first = report.failure_samples.first().cloned().unwrap_or_default();
        ((report.receipts_verified, report.receipts_failed), first)
    };

    let own = [outcome(0, &a, &a), outcome(1, &b, &b)];
    assert_eq!(checked(&own, &stored_in).await, ((2, 0), String::new()));

    let swapped = [outcome(0, &a, &b), outcome(1, &b, &a)];
    let (counts, first) = checked(&swapped, &stored_in).await;
    assert_eq!(counts, (0, 2));
    assert!(first.contains("the answer names request"), "{first}");

    // A copy the log does not account for: a sink holds upload 0 in
    // geneva too, and its record names zurich alone.
    let elsewhere = HashMap::from([
        (0, vec!["geneva".to_string(), "zurich".into()]),
        (1, vec!["zurich".into()]),
    ]);
    let (counts, first) = checked(&own, &elsewhere).await;
    assert_eq!(counts, (1, 1));
    assert!(
        first.contains("the sinks stored it in [\"geneva\", \"zurich\"]"),
        "{first}"
    );
    proxy.stop().await;
}

/// Uploads still with a data centre when `shutdown_grace` runs out are
/// cut — the process must end — but not out of the log: each is a refusal
/// (`shutdown`) in a summary record naming the data centre, which may have
/// stored it, written before the final checkpoint. They left no record,
/// though the data centre had read them whole (HTTP audit, stop 61). Here
/// zurich reads each upload and never answers; one comes over HTTP/1.1,
/// one over HTTP/2. A third, to frankfurt, is answered 201 at its first
/// bytes while the rest never comes: cut while its answer waits for the
/// end of the body, it is recorded the same way (it was not, stop 62).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cut_at_the_end_of_shutdown_grace_are_recorded() {
    cut_at_the_end_of_shutdown_grace(true).await;
}

/// The same with every upload over HTTP/1.1: the cut was said to no one
/// (no HTTP/2 connection listened for it), so it was not kept, and the
/// requests dropped waited for it past the final checkpoint, their
/// summary never written (lifecycle audit, stop 63).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cut_at_the_end_of_shutdown_grace_over_http1_alone_are_recorded() {
    cut_at_the_end_of_shutdown_grace(false).await;
}

/// Two uploads to a zurich that never answers (the second over HTTP/2
/// with `h2`, else HTTP/1.1 too), cut at the end of `shutdown_grace`: in a
/// `shutdown` summary. (A third, whose data centre answered 201 at its
/// first bytes and waited for a rest that never came, was in one too: such
/// a 2xx is refused at once now.)
async fn cut_at_the_end_of_shutdown_grace(h2: bool) {
    use tokio::io::AsyncReadExt;
    let keep = TempDir::new("tlog-cut");
    log_key(keep.path());
    // Reads a request (head and its 5-byte body), keeps its request id,
    // never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = silent.accept().await {
            let ids_tx = ids_tx.clone();
            held.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        if body.len() >= 5 {
                            let id = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("x-request-id: ")
                                        .map(str::to_string)
                                })
                                .unwrap_or_default();
                            let _ = ids_tx.send(id);
                            got.clear();
                        }
                    }
                }
                // (held open: never answered)
            }));
        }
    });
    let others = Upstream::start("others").await;
    let dcs = [
        ("zurich", "ch", silent_addr),
        ("frankfurt", "eu", others.addr),
        ("virginia", "us", others.addr),
    ];
    let log_port = free_port();
    let extra = section(keep.path(), log_port, "")
        + "[timeouts]\nshutdown_delay = \"0s\"\nshutdown_grace = \"1s\"\nupstream_response = \"60s\"\n\
           [health]\npath = \"off\"\n";
    let mut proxy = Binary::start("tlog-cut", &dcs, &extra).await;
    let mut uploads = Vec::new();
    let second = match h2 {
        true => proxy.client().h2(),
        false => proxy.client(),
    };
    for client in [proxy.client(), second] {
        uploads.push(tokio::spawn(async move {
            let body: Body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                http_body_util::Full::new(bytes::Bytes::from_static(b"cut!!")),
                |e| match e {},
            ));
            client
                .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body)
                .await
        }));
    }
    let mut cut_ids = Vec::new();
    for _ in 0..2 {
        let id = tokio::time::timeout(Duration::from_secs(10), ids.recv())
            .await
            .expect("zurich reads both uploads")
            .unwrap();
        assert!(!id.is_empty());
        cut_ids.push(id);
    }
    proxy
        .terminate(Duration::from_secs(20), "did not exit")
        .await;
    let log = proxy.log();
    assert_eq!(
        log.matches("request dropped while its upload was with a data centre")
            .count(),
        2,
        "{log}"
    );
    for upload in uploads {
        let reply = upload.await.unwrap();
        assert!(reply.is_err(), "cut, not answered: {reply:?}");
    }

    // The log, reopened: the two are one summary of `shutdown`, naming
    // zurich, in the signed tree.
    let restarted = Binary::start("tlog-cut-2", &dcs, &section(keep.path(), log_port, "")).await;
    let addr = format!("127.0.0.1:{log_port}").parse().unwrap();
    let (_, checkpoint) = plain_request(addr, "GET", "/checkpoint").await;
    let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    let mut found = None;
    for i in 0..size {
        let (status, body) = plain_request(addr, "GET", &format!("/entries/{i}")).await;
        assert_eq!(status, 200, "{body}");
        let entry: residency_log::api::Entry = serde_json::from_str(&body).unwrap();
        let record = Record::from_bytes(entry.record.as_bytes()).unwrap();
        if record.reason.as_deref() == Some("shutdown") {
            let summary = record.summary.clone().expect("a summary");
            assert_eq!(record.datacenter.as_deref(), Some("zurich"), "{body}");
            assert!(summary.first <= summary.last, "{body}");
            found = Some((summary.count, summary.request_ids_sha256.to_string()));
        }
    }
    let (count, ids_sha256) =
        found.unwrap_or_else(|| panic!("no shutdown summary in {size} records"));
    assert_eq!(count, 2);
    // In the order they were cut: either.
    let hash = |a: &str, b: &str| sha256_hex(format!("{a}\n{b}\n").as_bytes());
    assert!(
        ids_sha256 == hash(&cut_ids[0], &cut_ids[1])
            || ids_sha256 == hash(&cut_ids[1], &cut_ids[0]),
        "{ids_sha256} for {cut_ids:?}"
    );
    drop(restarted);
}

/// Out of file descriptors for a while (`prlimit` on the running proxy,
/// soft limit at the descriptors it holds): the log refuses what it cannot
/// write — 503 `log_unavailable`, never a 2xx without its record — and
/// takes writes again, and signs checkpoints again, once descriptors are
/// free, without a restart (exhaustion audit, stop 65: the helper stopped
/// preparing bundles for good, the writer's own failed open poisoned the
/// log, and a failed open before an fsync was taken for a failed fsync, no
/// checkpoint signed until a restart).
#[tokio::test]
async fn the_log_comes_back_after_running_out_of_file_descriptors() {
    use tokio::io::AsyncReadExt;
    let keep = TempDir::new("tlog-fds");
    log_key(keep.path());
    let upstream = Upstream::start("zurich").await;
    let dcs = datacenters_at(upstream.addr);
    let log_port = free_port();
    let extra = section(keep.path(), log_port, "") + "[health]\npath = \"off\"\n";
    let proxy = Binary::start("tlog-fds", &dcs, &extra).await;
    let pid = proxy.pid();
    // One keep-alive connection for every upload: no descriptor needed.
    let mut tls = proxy.client().connect().await.expect("TLS handshake");
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut upload = async |n: usize, statuses: &mut std::collections::BTreeMap<u16, usize>| {
        for i in 0..n {
            let body = format!("fd {i}");
            let head = format!(
                "POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {CH}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            // The head, then its body by Content-Length.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let (status, end, length) = loop {
                let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                    .await
                    .expect("an answer within 10 s")
                    .unwrap();
                assert!(
                    n > 0,
                    "connection closed: {}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..i]).to_ascii_lowercase();
                    let status: u16 = head[9..12].parse().unwrap();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    break (status, i + 4, length);
                }
            };
            while got.len() < end + length {
                let n = tls.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            *statuses.entry(status).or_default() += 1;
        }
    };
    let limit = |soft: &str| open_files_limit(pid, soft);
    // The first bundle and a half, with descriptors to spare: the helper
    // has the next bundle ready.
    upload(300, &mut statuses).await;
    assert_eq!(statuses.get(&201), Some(&300), "{statuses:?}");
    // None to spare: the next bundle is taken as prepared, the helper's
    // preparing the one after fails, and so does the writer's own open of
    // it when that bundle fills; checkpoints cannot open what they fsync.
    // (At 3: the lowest free descriptor is the one the kernel gives, so
    // a limit at the count still let one through whenever a file open for
    // a moment — a checkpoint's temporary file — was closed; nothing below
    // stdin, stdout and stderr is ever free.)
    limit("3");
    upload(600, &mut statuses).await;
    let refused = statuses.get(&503).copied().unwrap_or(0);
    assert!(
        refused > 0,
        "nothing refused while out of descriptors: {statuses:?}"
    );
    // Descriptors again: uploads are taken again — at once, or once the
    // log's next try of a write finds it takes writes (a refusal in
    // between costs no write) — and a checkpoint covers them.
    limit("4096");
    let since = Instant::now();
    loop {
        let before = statuses.get(&201).copied().unwrap_or(0);
        upload(1, &mut statuses).await;
        if statuses.get(&201).copied().unwrap_or(0) > before {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "still refused 10 s after descriptors came back: {statuses:?}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = statuses[&201];
    upload(20, &mut statuses).await;
    assert_eq!(statuses[&201] - before, 20, "{statuses:?}\n{}", proxy.log());
    let acknowledged = statuses[&201] as u64;
    let addr = format!("127.0.0.1:{log_port}").parse().unwrap();
    eventually(
        "a checkpoint covers every acknowledged upload",
        async || {
            let (status, checkpoint) = plain_request(addr, "GET", "/checkpoint").await;
            status == 200
                && checkpoint
                    .lines()
                    .nth(1)
                    .and_then(|l| l.parse::<u64>().ok())
                    .is_some_and(|size| size >= acknowledged)
        },
    )
    .await;
    drop(proxy);
}

/// One client address may make `transparency.requests_per_second_per_client`
/// requests a second of the log listener (its burst at once); the next is
/// answered 429 with `Retry-After` and a JSON body naming the setting, and
/// counted, while another address is answered as before (log API audit,
/// stop 66: one client reading entry bundles as fast as it could kept more
/// than a core busy).
#[tokio::test]
async fn a_client_reading_the_log_too_fast_is_answered_429() {
    let keep = TempDir::new("tlog-rate");
    log_key(keep.path());
    let upstream = Upstream::start("zurich").await;
    let log_port = free_port();
    let extra = section(
        keep.path(),
        log_port,
        "requests_per_second_per_client = 1\nrequests_burst_per_client = 10",
    );
    let proxy = Binary::start("tlog-rate", &datacenters_at(upstream.addr), &extra).await;
    let log = std::net::SocketAddr::from(([127, 0, 0, 1], log_port));
    // The burst, then one a second: until the first 429 (bounded).
    let started = Instant::now();
    let mut answered = 0u64;
    let (headers, body) = loop {
        let (status, headers, body) = plain_exchange(log, "GET", "/checkpoint").await;
        if status == 429 {
            break (headers, body);
        }
        assert_eq!(status, 200, "{body}");
        answered += 1;
        assert!(answered <= 40, "never limited");
    };
    let seconds = started.elapsed().as_secs();
    assert!(
        (10..=10 + seconds + 1).contains(&answered),
        "{answered} answered in {seconds} s"
    );
    // One with a body it does not read says it closes the connection
    // (tried again should a second's token have come meanwhile).
    let mut closing = None;
    for _ in 0..3 {
        use tokio::io::AsyncReadExt;
        let mut tcp = tokio::net::TcpStream::connect(log).await.unwrap();
        tcp.write_all(b"POST /checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        tcp.write_all(&[b'x'; 1000]).await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if head.starts_with("http/1.1 429") {
            closing = Some(head);
            break;
        }
    }
    let closing = closing.expect("a 429");
    assert!(closing.contains("\r\nconnection: close\r\n"), "{closing}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["content-type"], "application/json");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("transparency.requests_per_second_per_client"),
        "{body}"
    );
    // Another client address is not limited by this one's requests.
    let other = "127.0.0.2".parse().unwrap();
    let (status, _, body) = plain_exchange_from(other, log, "GET", "/checkpoint").await;
    assert_eq!(status, 200, "{body}");
    let (_, _, metrics) = plain_exchange(proxy.admin, "GET", "/metrics").await;
    assert!(
        metric(&metrics, "residency_log_requests_limited_total").unwrap() >= 1.0,
        "{metrics}"
    );
}

/// A flood of reads of the public log from one client (32 keep-alive
/// connections asking for an entry bundle, gzipped anew each time) keeps
/// the proxy's threads bounded: each answer's slot was freed just before
/// its blocking thread was idle again, so the next started one more thread
/// — 14 → 126 threads and 0.9 GB with mimalloc's heap per thread (log API
/// audit, stop 66). Bounded by count and time.
#[tokio::test]
async fn a_flood_of_log_reads_keeps_the_threads_bounded() {
    use tokio::io::AsyncReadExt;
    let keep = TempDir::new("tlog-threads");
    log_key(keep.path());
    let upstream = Upstream::start("zurich").await;
    let log_port = free_port();
    // (No rate per client: the flood is what this test is about.)
    let extra = section(keep.path(), log_port, "requests_per_second_per_client = 0")
        + "[health]\npath = \"off\"\n";
    let proxy = Binary::start("tlog-threads", &datacenters_at(upstream.addr), &extra).await;
    let client = proxy.client();
    for i in 0..300 {
        let reply = client.upload_from(CH, &format!("record {i}")).await;
        assert_eq!(reply.status, 201);
    }
    let threads = |pid: u32| -> usize {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        line_value(&status, "Threads:")
    };
    let pid = proxy.pid();
    let before = threads(pid);
    let until = Instant::now() + Duration::from_secs(6);
    let mut readers = Vec::new();
    for _ in 0..32 {
        readers.push(tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", log_port))
                .await
                .unwrap();
            let mut answered = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            while Instant::now() < until && answered < 5_000 {
                tcp.write_all(b"GET /tile/entries/000 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                // The head, then the body by its Content-Length.
                let mut got = Vec::new();
                let (end, length) = loop {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed");
                    got.extend_from_slice(&buf[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..i]).to_ascii_lowercase();
                        assert!(head.starts_with("http/1.1 200"), "{head}");
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        break (i + 4, length);
                    }
                };
                while got.len() < end + length {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed mid-body");
                    got.extend_from_slice(&buf[..n]);
                }
                answered += 1;
            }
            answered
        }));
    }
    let mut most = before;
    while readers.iter().any(|r| !r.is_finished()) {
        most = most.max(threads(pid));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut answered = 0;
    for r in readers {
        answered += r.await.unwrap();
    }
    assert!(answered > 100, "{answered} answers");
    // The runtime's workers, the log's own threads, and at most 64
    // blocking ones.
    assert!(
        most <= before + 64,
        "{most} threads at most during {answered} answers, {before} before"
    );
}

/// The number after `key` on its line of a /proc status file.
fn line_value(status: &str, key: &str) -> usize {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A proof's size, index, `from` or `to` that is not an integer is a 400
/// naming it; it was read as absent — the latest size — and answered 200
/// (privacy audit, stop 68). Absent, the latest size is still the default.
#[tokio::test]
async fn a_proof_parameter_that_is_not_a_number_is_a_400() {
    let proxy = with_log("").await;
    let key = proxy.log_key();
    for i in 0..3 {
        proxy.client().upload_from(CH, &format!("u{i}")).await;
    }
    proxy.checkpoint_covers(&key, 3).await;
    for (path, name) in [
        ("/proof/inclusion?index=1&size=abc", "size"),
        ("/proof/inclusion?index=x&size=3", "index"),
        ("/proof/inclusion?index=1&size=", "size"),
        ("/proof/consistency?from=1&to=abc", "to"),
        ("/proof/consistency?from=-1&to=3", "from"),
        // A sign is no digit (Rust's parser takes `+5`: verification, stop 68).
        ("/proof/inclusion?index=1&size=+3", "size"),
        ("/proof/inclusion?index=%2B1&size=3", "index"),
    ] {
        let (status, body) = proxy.log_get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.contains(&format!("{name}: not a non-negative integer")),
            "{path}: {body}"
        );
    }
    // Given twice, neither is guessed (the first was taken).
    let (status, body) = proxy
        .log_get("/proof/inclusion?index=1&size=3&size=2")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("size: given more than once"), "{body}");
    // Escaped digits are digits (the query was not decoded: 400).
    let (status, body) = proxy.log_get("/proof/inclusion?index=%31&size=%33").await;
    assert_eq!(status, 200, "{body}");
    let proof: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(proof["index"], 1);
    for path in ["/proof/inclusion?index=1", "/proof/consistency?from=1"] {
        let (status, body) = proxy.log_get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    proxy.stop().await;
}
