//! Witness cosigning end to end: a real `residency-proxy witness` process
//! witnesses two proxies' logs; each proxy publishes the witness's
//! cosignature on its checkpoint, `verify --witness` accepts it (and
//! refuses a quorum the checkpoint does not meet), and the witness refuses
//! a rollback, also after a restart (its state file survives).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use residency_log::note::{Checkpoint, Verifier};
use residency_log::receipt::Receipt;
use residency_log::witness::{AddCheckpoint, CosignatureVerifier, Cosigner};
use residency_proxy::witnesses::Witnesses;
use residency_tools::fetch::Fetcher;
use residency_tools::verify::{verify, VerifyArgs};

use crate::support::*;

const WITNESS_NAME: &str = "witness.test/w1";
const ORIGIN_A: &str = "a.test/residency-log";
const ORIGIN_B: &str = "b.test/residency-log";

pub(crate) struct WitnessProcess {
    child: Killed,
    log: PathBuf,
}

impl WitnessProcess {
    /// Starts the binary and waits until its port accepts connections.
    pub(crate) async fn start(
        dir: &Path,
        addr: SocketAddr,
        logs: &[String],
        run: u32,
    ) -> WitnessProcess {
        Self::start_with(dir, addr, logs, run, &[]).await
    }

    /// As [`WitnessProcess::start`], with more arguments (`--tls-cert …`).
    async fn start_with(
        dir: &Path,
        addr: SocketAddr,
        logs: &[String],
        run: u32,
        extra: &[&str],
    ) -> WitnessProcess {
        let log = dir.join(format!("witness-{run}.log"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_residency-proxy"));
        command
            .args(["--log-level", "info", "witness", "--name", WITNESS_NAME])
            .arg("--key")
            .arg(dir.join("witness.key"))
            .arg("--state")
            .arg(dir.join("state.json"))
            .args(["--listen", &addr.to_string()]);
        for vkey in logs {
            command.arg("--log").arg(vkey);
        }
        command.args(extra);
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start residency-proxy witness");
        let mut witness = WitnessProcess {
            child: Killed(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = witness.child.0.try_wait() {
                panic!("witness exited with {status}: {}", witness.output());
            }
            assert!(
                Instant::now() < deadline,
                "witness not up: {}",
                witness.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        witness
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start_proxy(origin: &'static str, witness_url: &str, witness_vkey: &str) -> Proxy {
    start_proxy_with(origin, witness_url, witness_vkey, "").await
}

/// As [`start_proxy`], with more lines in the witness's entry (`ca = …`).
async fn start_proxy_with(
    origin: &'static str,
    witness_url: &str,
    witness_vkey: &str,
    extra: &str,
) -> Proxy {
    Proxy::start(Setup {
        transparency: Some(format!(
            "[[transparency.witnesses]]\nurl = \"{witness_url}\"\nkey = \"{witness_vkey}\"\n{extra}\n"
        )),
        log_origin: origin,
        ..Setup::default()
    })
    .await
}

/// A witness key written to `dir/witness.key` (as `WitnessProcess` reads
/// it): its verifier key and verifier.
pub(crate) fn witness_key(dir: &Path) -> (String, CosignatureVerifier) {
    let pkcs8 = Cosigner::generate_pkcs8().unwrap();
    std::fs::write(dir.join("witness.key"), &pkcs8).unwrap();
    let vkey = Cosigner::from_pkcs8(WITNESS_NAME, &pkcs8)
        .unwrap()
        .verifier_key();
    let verifier = CosignatureVerifier::parse(&vkey).unwrap();
    (vkey, verifier)
}

/// Waits (at most 30 s: the proxies back off while the witness starts)
/// for a checkpoint of at least `size` records that carries the witness's
/// cosignature; returns the note.
async fn cosigned_checkpoint(
    proxy: &Proxy,
    witness: &CosignatureVerifier,
    size: u64,
) -> (String, Checkpoint) {
    cosigned_at(proxy, "/checkpoint", &proxy.log_key(), witness, size).await
}

/// As [`cosigned_checkpoint`], for the checkpoint at `path`, signed with
/// the log key `log_key` (a generation's).
async fn cosigned_at(
    proxy: &Proxy,
    path: &str,
    log_key: &str,
    witness: &CosignatureVerifier,
    size: u64,
) -> (String, Checkpoint) {
    cosigned_within(proxy, path, log_key, witness, size, Duration::from_secs(30)).await
}

/// As [`cosigned_at`], waiting at most `limit`.
async fn cosigned_within(
    proxy: &Proxy,
    path: &str,
    log_key: &str,
    witness: &CosignatureVerifier,
    size: u64,
    limit: Duration,
) -> (String, Checkpoint) {
    let log = Verifier::parse(log_key).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        let (_, note) = proxy.log_get(path).await;
        let checkpoint = Checkpoint::open(&note, &log).expect("the log's signature verifies");
        if checkpoint.size >= size && witness.verify_note(&note).is_ok() {
            return (note, checkpoint);
        }
        assert!(
            Instant::now() < deadline,
            "{path}: no cosigned checkpoint of {size} records: {note}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Uploads through `proxy`; returns the record (receipt) and request id.
async fn upload(proxy: &Proxy) -> (Vec<u8>, String) {
    let reply = proxy.client().upload_from(CH, "x=1").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let receipt = Receipt::parse(reply.header("residency-receipt").unwrap()).unwrap();
    (
        receipt.record,
        reply.header("x-request-id").unwrap().to_string(),
    )
}

async fn add_checkpoint(witness: &Fetcher, old: u64, note: &str) -> (u16, Option<String>, String) {
    let body = AddCheckpoint {
        old,
        proof: vec![],
        note: note.to_string(),
    }
    .encode();
    let answer = witness
        .post("/add-checkpoint", "text/plain", Bytes::from(body))
        .await
        .unwrap();
    (
        answer.status.as_u16(),
        answer.content_type,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

#[tokio::test]
async fn a_witness_cosigns_two_logs_and_refuses_rollback_across_restarts() {
    let dir = TempDir::new("witness");
    let (wvkey, wkey) = witness_key(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("http://{addr}");

    // The proxies first (the witness needs their keys); they retry until
    // the witness is up.
    let a = start_proxy(ORIGIN_A, &url, &wvkey).await;
    let b = start_proxy(ORIGIN_B, &url, &wvkey).await;
    let logs = [a.log_key(), b.log_key()];
    let witness = WitnessProcess::start(dir.path(), addr, &logs, 1).await;

    upload(&a).await;
    upload(&b).await;
    let (first_a, cp_a) = cosigned_checkpoint(&a, &wkey, 1).await;
    let (_, cp_b) = cosigned_checkpoint(&b, &wkey, 1).await;
    assert_eq!(cp_a.origin, ORIGIN_A);
    assert_eq!(cp_b.origin, ORIGIN_B);

    // verify: the witness's cosignature, quorum 1 of 1, from the log.
    let args = VerifyArgs {
        key: a.log_key(),
        log: Some(a.log_url()),
        witnesses: vec![wvkey.clone()],
        quorum: Some(1),
        ..VerifyArgs::default()
    };
    let report = verify(&args).await;
    assert!(report.valid(), "{report}");
    assert!(
        report.to_string().contains("cosigned by 1 of 1 witnesses"),
        "{report}"
    );
    // The log's page in Chromium, with the key and the witness pinned in
    // the link: the cosignature shown as verified, and the receipt's
    // verdict requires it; with another witness's key pinned, not.
    let other_witness =
        Cosigner::from_pkcs8("witness.test/w9", &Cosigner::generate_pkcs8().unwrap())
            .unwrap()
            .verifier_key();
    let reply = a.client().upload_from(DE, "x=2").await;
    let receipt = reply.header("residency-receipt").unwrap().to_string();
    let seen = crate::page::browse(
        serde_json::json!({
            "phase": "witnessed",
            "base": format!("{}/", a.log_url()),
            "key": a.log_key(),
            "witness": wvkey,
            "other_witness": other_witness,
            "receipt": receipt,
            "profile": dir.path().join("profile"),
            "shots": crate::page::shots_dir(),
        }),
        dir.path(),
    )
    .await;
    let shown = seen["pinned"]["witnesses"].as_str().unwrap();
    assert!(
        shown.starts_with(WITNESS_NAME) && shown.ends_with(": verified"),
        "{seen}"
    );
    let verdict = &seen["pinned"]["verdict"];
    assert_eq!(verdict["class"], "ok", "{seen}");
    assert!(
        verdict["details"]
            .as_str()
            .unwrap()
            .contains("cosigned by 1 of 1 witnesses (quorum 1): witness.test/w1"),
        "{seen}"
    );
    assert!(
        seen["other"]["witnesses"]
            .as_str()
            .unwrap()
            .contains("not checked"),
        "{seen}"
    );
    assert_eq!(seen["other"]["verdict"]["step"], "witnesses", "{seen}");
    // A checkpoint the pinned witness did not cosign is not kept as the
    // baseline later checkpoints are held to (the log's own consistency
    // proof is not enough when the link pins witnesses).
    assert!(
        seen["other"]["history"]
            .as_str()
            .unwrap()
            .contains("is not kept as the one to check the log's growth against"),
        "{seen}"
    );
    crate::page::same_origin_only(&seen, &a.log_url());
    crate::page::clean_console(&seen, None);

    // A saved checkpoint, the witness key from a file, quorum by default.
    std::fs::write(dir.path().join("a.checkpoint"), &first_a).unwrap();
    std::fs::write(dir.path().join("w.pub"), format!("{wvkey}\n")).unwrap();
    let saved = VerifyArgs {
        key: a.log_key(),
        checkpoint: Some(dir.path().join("a.checkpoint")),
        witnesses: vec![dir.path().join("w.pub").display().to_string()],
        ..VerifyArgs::default()
    };
    let report = verify(&saved).await;
    assert!(report.valid(), "{report}");

    // Quorum 2 with a second witness that never cosigned: INVALID.
    let unknown = Cosigner::from_pkcs8("witness.test/w2", &Cosigner::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let two = VerifyArgs {
        witnesses: vec![wvkey.clone(), unknown.clone()],
        quorum: Some(2),
        ..saved.clone()
    };
    let report = verify(&two).await;
    assert!(!report.valid(), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("1 valid cosignature(s) of the 2 required from the 2 given witnesses: from witness.test/w1"),
        "{text}"
    );
    assert!(
        text.contains("no cosignature by witness.test/w2+"),
        "{text}"
    );
    // The other log's checkpoint with log A's key: INVALID as before.
    let (_, note_b) = b.log_get("/checkpoint").await;
    std::fs::write(dir.path().join("b.checkpoint"), &note_b).unwrap();
    let wrong = VerifyArgs {
        checkpoint: Some(dir.path().join("b.checkpoint")),
        ..saved.clone()
    };
    assert!(!verify(&wrong).await.valid());

    // The log grows; the witness cosigns the new checkpoint from its size.
    upload(&a).await;
    upload(&a).await;
    let (_, grown) = cosigned_checkpoint(&a, &wkey, cp_a.size + 2).await;

    // A rollback: the older checkpoint of log A, properly signed by A.
    let client = Fetcher::new(&url, None).unwrap();
    for old in [0, cp_a.size] {
        let (status, content_type, body) = add_checkpoint(&client, old, &first_a).await;
        assert_eq!(status, 409, "old {old}: {body}");
        assert_eq!(content_type.as_deref(), Some("text/x.tlog.size"));
        assert_eq!(body, format!("{}\n", grown.size));
    }

    // Metrics: exchanges counted per witness and result.
    let ok = format!(
        "residency_log_witness_cosignatures_total{{result=\"ok\",witness=\"{WITNESS_NAME}\"}}"
    );
    assert!(metric_value(&a, &ok).await >= 2.0);
    let (_, metrics) = a.admin_get("/metrics").await;
    for result in ["ok", "conflict", "refused", "error", "invalid_cosignature"] {
        let series = format!(
            "residency_log_witness_cosignatures_total{{result=\"{result}\",witness=\"{WITNESS_NAME}\"}}"
        );
        assert!(
            metric(&metrics, &series).is_some(),
            "{series} in\n{metrics}"
        );
    }

    // Restart the witness on the same state file: the rollback is still
    // refused, and both logs' state is there.
    drop(witness);
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        state.contains(ORIGIN_A) && state.contains(ORIGIN_B),
        "{state}"
    );
    let witness = WitnessProcess::start(dir.path(), addr, &logs, 2).await;
    let (status, content_type, body) = add_checkpoint(&client, 0, &first_a).await;
    assert_eq!(status, 409, "{body}\n{}", witness.output());
    assert_eq!(content_type.as_deref(), Some("text/x.tlog.size"));
    assert_eq!(body, format!("{}\n", grown.size));
    // Only POST; a 405 says so (RFC 9110 §15.5.6).
    let (status, headers, _) = plain_exchange(addr, "GET", "/add-checkpoint").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    // An unknown log is 404; a checkpoint of log A with a bad signature 403.
    let (_, note_b) = b.log_get("/checkpoint").await;
    let forged = note_b.replacen(ORIGIN_B, "c.test/residency-log", 1);
    assert_eq!(add_checkpoint(&client, 0, &forged).await.0, 404);
    let (_, note_a) = a.log_get("/checkpoint").await;
    let tampered = note_a.replacen(ORIGIN_A, ORIGIN_B, 1);
    assert_eq!(add_checkpoint(&client, 0, &tampered).await.0, 403);
    // And the proxy keeps getting cosignatures from the restarted witness.
    let (record, id) = upload(&a).await;
    let (_, latest) = cosigned_checkpoint(&a, &wkey, grown.size + 1).await;

    // The log's tlog-proof embeds the cosigned checkpoint: verified
    // offline with the witness key.
    let (status, proof) = a.log_get(&format!("/proof/{id}.tlog-proof")).await;
    assert_eq!(status, 200, "{proof}");
    std::fs::write(dir.path().join("p.tlog-proof"), &proof).unwrap();
    std::fs::write(dir.path().join("record.json"), &record).unwrap();
    let offline = VerifyArgs {
        key: a.log_key(),
        proof_file: Some(dir.path().join("p.tlog-proof")),
        entry: Some(dir.path().join("record.json")),
        witnesses: vec![wvkey.clone()],
        ..VerifyArgs::default()
    };
    let report = verify(&offline).await;
    assert!(report.valid(), "{report}");
    let report = verify(&VerifyArgs {
        witnesses: vec![wvkey.clone(), unknown.clone()],
        ..offline
    })
    .await;
    assert!(!report.valid(), "{report}");

    // A process that starts again (a restart of the proxy, or another
    // replica of a fleet signing) on a checkpoint the witness cosigned
    // already: it does not ask again, and the note keeps one line by the
    // witness however often that happens. (It used to ask again from 0,
    // be told the witness's size by the 409, and add a second line each
    // time, until the note passed the signature limit and the log could
    // not be opened.) The sealed generations' test covers asking from 0.
    let lines_by_witness = |note: &str| {
        note.lines()
            .filter(|l| l.starts_with(&format!("— {WITNESS_NAME} ")))
            .count()
    };
    let before = a.log_get("/checkpoint").await.1;
    assert_eq!(lines_by_witness(&before), 1, "{before}");
    for _ in 0..3 {
        let registry = prometheus::Registry::new();
        let fresh = Witnesses::new(
            a.instance.log.clone().unwrap(),
            &a.instance.snapshot().config.witnesses,
            &registry,
        )
        .unwrap();
        fresh.round().await;
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for result in ["ok", "conflict"] {
            let series = ok.replace("\"ok\"", &format!("\"{result}\""));
            assert_eq!(metric(&text, &series), Some(0.0), "{text}");
        }
    }
    let after = a.log_get("/checkpoint").await.1;
    assert_eq!(after, before, "the same note, not one line more");
    assert!(wkey.verify_note(&after).is_ok());
    assert!(latest.size > grown.size);

    a.stop().await;
    b.stop().await;
}

/// A witness serving HTTPS (`--tls-cert`, `--tls-key`), and a log that
/// trusts its certificate through `ca`: the checkpoint gets cosigned. A log
/// without the CA gets no cosignature (it verifies the witness's
/// certificate), and plain HTTP to the TLS port is not answered.
#[tokio::test]
async fn a_witness_over_https_cosigns_for_a_log_that_trusts_its_certificate() {
    let dir = TempDir::new("witness-tls");
    let (wvkey, wkey) = witness_key(dir.path());
    let (cert, key) = residency_tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let (cert_path, key_path) = (dir.path().join("w.pem"), dir.path().join("w.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("https://127.0.0.1:{}", addr.port());

    let trusting = start_proxy_with(
        ORIGIN_A,
        &url,
        &wvkey,
        &format!("ca = \"{}\"", cert_path.display()),
    )
    .await;
    let untrusting = start_proxy(ORIGIN_B, &url, &wvkey).await;
    let logs = [trusting.log_key(), untrusting.log_key()];
    let tls = [
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ];
    let witness = WitnessProcess::start_with(dir.path(), addr, &logs, 1, &tls).await;
    upload(&trusting).await;
    upload(&untrusting).await;
    let (note, _) = cosigned_checkpoint(&trusting, &wkey, 1).await;
    assert!(wkey.verify_note(&note).is_ok());

    // The other log does not trust the self-signed certificate: no
    // cosignature, and its exchanges are counted as errors.
    let (_, note) = untrusting.log_get("/checkpoint").await;
    assert!(wkey.verify_note(&note).is_err(), "{note}");
    let errors = async || {
        metric_value(
            &untrusting,
            &format!(
        "residency_log_witness_cosignatures_total{{result=\"error\",witness=\"{WITNESS_NAME}\"}}"
    ),
        )
        .await
    };
    eventually("the untrusting log counts errors", async || {
        errors().await >= 1.0
    })
    .await;

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = Fetcher::new(&format!("http://{addr}"), None).unwrap();
    assert!(plain.text("/add-checkpoint").await.is_err());
    drop(witness);
    trusting.stop().await;
    untrusting.stop().await;
}

/// tlog-witness names a witness by its submission prefix: with `--prefix
/// /w1` it answers at `/w1/add-checkpoint` (a log configured with that URL
/// gets its cosignature) and nowhere else.
#[tokio::test]
async fn a_witness_serves_under_its_submission_prefix() {
    let dir = TempDir::new("witness-prefix");
    let (wvkey, wkey) = witness_key(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = start_proxy(ORIGIN_A, &format!("http://{addr}/w1"), &wvkey).await;
    let logs = [proxy.log_key()];
    let witness =
        WitnessProcess::start_with(dir.path(), addr, &logs, 1, &["--prefix", "/w1"]).await;
    upload(&proxy).await;
    let (note, _) = cosigned_checkpoint(&proxy, &wkey, 1).await;
    assert!(wkey.verify_note(&note).is_ok());
    let root = Fetcher::new(&format!("http://{addr}"), None).unwrap();
    let answer = root
        .post(
            "/add-checkpoint",
            "text/plain",
            Bytes::from_static(b"old 0\n\n"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 404);
    drop(witness);
    proxy.stop().await;
}

/// A log that rolls to a new origin at `max_records`, witnessed by a real
/// witness that knows both origins (their keys computed ahead, as
/// `check-config` prints the next one): the sealed generation's last
/// checkpoint gets the witness's cosignature (asked from size 0, the
/// witness answers 409 with its size and cosigns from there), the new
/// origin's checkpoints do too, and `verify --witness` accepts receipts of
/// both generations.
#[tokio::test]
async fn a_rolled_log_gets_its_sealed_and_its_new_origin_cosigned() {
    use residency_log::note::Signer;
    let dir = TempDir::new("witness-roll");
    let (wvkey, wkey) = witness_key(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log_pkcs8 = Signer::generate_pkcs8().unwrap();
    let second = format!("{ORIGIN_A}/2");
    let keys = [ORIGIN_A, second.as_str()]
        .map(|o| Signer::from_pkcs8(o, &log_pkcs8).unwrap().verifier_key());
    let witness = WitnessProcess::start(dir.path(), addr, &keys, 1).await;
    let proxy = Proxy::start(Setup {
        transparency: Some(format!(
            "max_records = 3\n[[transparency.witnesses]]\nurl = \"http://{addr}\"\nkey = \"{wvkey}\"\n"
        )),
        log_origin: ORIGIN_A,
        log_pkcs8: Some(log_pkcs8),
        ..Setup::default()
    })
    .await;
    let mut receipts = Vec::new();
    for i in 0..5 {
        let reply = proxy.client().upload_from(CH, &format!("x={i}")).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        receipts.push(reply.header("residency-receipt").unwrap().to_string());
    }
    assert_eq!(proxy.log_key(), keys[1], "rolled to the second origin");
    for (path, key, size) in [
        ("/generations/1/checkpoint", &keys[0], 3),
        ("/checkpoint", &keys[1], 2),
    ] {
        let (_, cp) = cosigned_at(&proxy, path, key, &wkey, size).await;
        assert_eq!(cp.size, size, "{path}\n{}", witness.output());
    }
    for (receipt, key) in [(&receipts[1], &keys[0]), (&receipts[4], &keys[1])] {
        let report = verify(&VerifyArgs {
            key: key.clone(),
            receipt: Some(receipt.clone()),
            log: Some(proxy.log_url()),
            witnesses: vec![wvkey.clone()],
            ..VerifyArgs::default()
        })
        .await;
        assert!(report.valid(), "{report}");
        assert!(report.to_string().contains("cosigned"), "{report}");
    }
    proxy.stop().await;
}

/// A witness told only of the log's new origin (its operator dropped the
/// sealed one, or it was added after the roll) refuses the sealed
/// generation's checkpoint for good; the current one is still cosigned.
#[tokio::test]
async fn a_witness_refusing_a_sealed_origin_still_cosigns_the_current_one() {
    use residency_log::note::Signer;
    let dir = TempDir::new("witness-roll-new-only");
    let (wvkey, wkey) = witness_key(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log_pkcs8 = Signer::generate_pkcs8().unwrap();
    let second = format!("{ORIGIN_A}/2");
    let keys = [ORIGIN_A, second.as_str()]
        .map(|o| Signer::from_pkcs8(o, &log_pkcs8).unwrap().verifier_key());
    let witness = WitnessProcess::start(dir.path(), addr, &keys[1..], 1).await;
    let proxy = Proxy::start(Setup {
        transparency: Some(format!(
            "max_records = 3\n[[transparency.witnesses]]\nurl = \"http://{addr}\"\nkey = \"{wvkey}\"\n"
        )),
        log_origin: ORIGIN_A,
        log_pkcs8: Some(log_pkcs8),
        ..Setup::default()
    })
    .await;
    for i in 0..5 {
        let reply = proxy.client().upload_from(CH, &format!("x={i}")).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    assert_eq!(proxy.log_key(), keys[1], "rolled to the second origin");
    let (_, cp) = cosigned_at(&proxy, "/checkpoint", &keys[1], &wkey, 2).await;
    assert_eq!(cp.size, 2, "{}", witness.output());
    proxy.stop().await;
}

/// Witnesses are independent: one that takes its time (here, one that
/// never answers: the log waits 10 s for its head) holds back no other's
/// cosignature, which is published as soon as it verifies.
#[tokio::test]
async fn a_silent_witness_holds_back_no_other_s_cosignature() {
    let dir = TempDir::new("witness-silent");
    let (wvkey, wkey) = witness_key(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // Takes each request and answers nothing, for longer than the test.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let silent_vkey = Cosigner::from_pkcs8("silent.test/w2", &Cosigner::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let log_pkcs8 = residency_log::note::Signer::generate_pkcs8().unwrap();
    let log_vkey = residency_log::note::Signer::from_pkcs8(ORIGIN_A, &log_pkcs8)
        .unwrap()
        .verifier_key();
    let witness = WitnessProcess::start(dir.path(), addr, &[log_vkey], 1).await;
    let proxy = Proxy::start(Setup {
        transparency: Some(format!(
            "[[transparency.witnesses]]\nurl = \"http://{silent_addr}\"\nkey = \"{silent_vkey}\"\n\
             [[transparency.witnesses]]\nurl = \"http://{addr}\"\nkey = \"{wvkey}\"\n"
        )),
        log_origin: ORIGIN_A,
        log_pkcs8: Some(log_pkcs8),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    upload(&proxy).await;
    let (_, cp) = cosigned_within(
        &proxy,
        "/checkpoint",
        &proxy.log_key(),
        &wkey,
        1,
        Duration::from_secs(8),
    )
    .await;
    assert_eq!(cp.size, 1, "{}", witness.output());
    // Before the silent witness's request timed out.
    assert!(started.elapsed() < Duration::from_secs(10));
    proxy.stop().await;
    holder.abort();
}

/// The witness is reachable by anyone: one address holding
/// `--max-connections-per-client` connections has one more closed as soon
/// as it is accepted, while another address is served, and a place comes
/// back when one of its connections ends. A value out of range is refused
/// before anything starts (exit 2, naming the flag).
#[tokio::test]
async fn one_client_cannot_hold_the_witness() {
    let dir = TempDir::new("witness-per-client");
    witness_key(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = residency_log::note::Signer::from_seed(ORIGIN_A, &[7; 32]).unwrap();
    let logs = [log.verifier_key()];
    let witness = WitnessProcess::start_with(
        dir.path(),
        addr,
        &logs,
        1,
        &["--max-connections-per-client", "2"],
    )
    .await;
    // Served: an HTTP answer comes back on it (405: not a POST).
    let ask = b"GET /add-checkpoint HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n";
    // The start-up probe's connection may still be counted: wait for it.
    eventually("the witness serving 127.0.0.1", async || {
        served(
            connect_from("127.0.0.1", addr).await.unwrap(),
            ask,
            b"HTTP/1.1 ",
        )
        .await
    })
    .await;
    // The witness lets go of that connection's place once it has closed it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_one_address_is_capped(addr, 2, ask, b"HTTP/1.1 ", async || {}).await;
    drop(witness);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_residency-proxy"))
        .args(["witness", "--name", WITNESS_NAME, "--key", "w.key"])
        .args(["--log", &logs[0], "--listen", "127.0.0.1:0"])
        .args(["--max-connections-per-client", "257"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-connections-per-client"), "{stderr}");
}
