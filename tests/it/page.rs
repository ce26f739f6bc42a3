//! The log's web page in a real headless Chromium (tests/clients/page_check.py,
//! selenium and Debian's chromium-driver), against a running proxy with the
//! log on: a real receipt verified in the browser names the right data
//! centre; every shared vector gets the same verdict in the page as in
//! `residency_log::verdict`; a log restarted with another history is caught
//! on the second visit; no console errors; no request leaves the log's
//! origin. Screenshots are kept under the test target directory.

use std::path::{Path, PathBuf};

use residency_log::note::Signer;
use residency_log::receipt::Receipt;
use residency_log::vectors::Vectors;
use serde_json::{json, Value};

use crate::support::*;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/log/vectors/verify.json"
);

async fn log_proxy(pkcs8: &[u8], port: u16) -> Proxy {
    Proxy::start(Setup {
        transparency: Some(String::new()),
        log_pkcs8: Some(pkcs8.to_vec()),
        log_port: Some(port),
        ..Setup::default()
    })
    .await
}

/// `receipt` altered to claim zurich instead of frankfurt, its signature
/// kept: a forgery.
fn moved_to_zurich(receipt: &str) -> String {
    let r = Receipt::parse(receipt).unwrap();
    let record = String::from_utf8(r.record.clone())
        .unwrap()
        .replace("\"frankfurt\"", "\"zurich\"");
    Receipt {
        record: record.into_bytes(),
        ..r
    }
    .encode()
}

/// Uploads `body` from `origin`; returns the receipt and the request id.
async fn upload(proxy: &Proxy, origin: &str, body: &str) -> (String, String) {
    let reply = proxy.client().upload_from(origin, body).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    (
        reply
            .header("residency-receipt")
            .expect("a receipt")
            .to_string(),
        reply
            .header("x-request-id")
            .expect("a request id")
            .to_string(),
    )
}

/// A log that rolled at `max_records = 3` after 5 uploads: the proxy, the
/// uploads' receipts and request ids, and its `/generations`.
async fn rolled_log() -> (
    Proxy,
    Vec<(String, String)>,
    residency_log::api::Generations,
) {
    rolled_log_signed_by(&Signer::generate_pkcs8().unwrap()).await
}

/// [`rolled_log`], its key `pkcs8`.
async fn rolled_log_signed_by(
    pkcs8: &[u8],
) -> (
    Proxy,
    Vec<(String, String)>,
    residency_log::api::Generations,
) {
    let proxy = Proxy::start(Setup {
        transparency: Some("max_records = 3".into()),
        log_pkcs8: Some(pkcs8.to_vec()),
        log_port: Some(free_port()),
        ..Setup::default()
    })
    .await;
    let mut uploads = Vec::new();
    for i in 0..5 {
        uploads.push(upload(&proxy, DE, &format!("cpu=0.{i}")).await);
    }
    let (_, list) = proxy.log_get("/generations").await;
    let list = serde_json::from_str(&list).unwrap();
    (proxy, uploads, list)
}

/// Runs one phase of page_check.py (on a blocking thread: the proxy
/// serves the browser from this runtime); returns what it saw.
pub(crate) async fn browse(scenario: Value, dir: &Path) -> Value {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || run_page_check(scenario, &dir))
        .await
        .unwrap()
}

fn run_page_check(scenario: Value, dir: &Path) -> Value {
    let path = dir.join(format!("{}.json", scenario["phase"].as_str().unwrap()));
    std::fs::write(&path, scenario.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/page_check.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("run tests/clients/page_check.py");
    assert!(
        out.status.success(),
        "page_check.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every request went to the log's origin, by GET, without a body (the
/// customer's file is hashed in the browser, never sent).
pub(crate) fn same_origin_only(seen: &Value, origin: &str) {
    let requests = seen["requests"].as_array().unwrap();
    assert!(!requests.is_empty(), "{seen}");
    for r in requests {
        let url = r["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{origin}/")),
            "left the origin: {r}"
        );
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["has_body"], false, "{r}");
    }
}

/// No console messages but the one expected 404 (`allowed`).
pub(crate) fn clean_console(seen: &Value, allowed: Option<&str>) {
    for c in seen["console"].as_array().unwrap() {
        let message = c["message"].as_str().unwrap();
        let expected = allowed.is_some_and(|a| message.contains(a) && message.contains("404"));
        assert!(expected, "console: {c}");
    }
}

pub(crate) fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_customer_checks_a_receipt_in_a_real_browser() {
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    let key = Signer::from_pkcs8(LOG_ORIGIN, &pkcs8)
        .unwrap()
        .verifier_key();
    let other_key = Signer::from_pkcs8(LOG_ORIGIN, &Signer::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let port = free_port();
    let work = TempDir::new("page");
    let profile = work.path().join("profile");
    let shots = shots_dir();

    // First life of the log: three uploads.
    let proxy = log_proxy(&pkcs8, port).await;
    let base = proxy.log_url();
    let body = "cpu=0.93\nmem=0.41\n".repeat(40);
    let (receipt, _) = upload(&proxy, DE, &body).await;
    let (_, ch_request) = upload(&proxy, CH, "cpu=0.12").await;
    upload(&proxy, US, "cpu=0.50").await;
    std::fs::write(work.path().join("upload.txt"), &body).unwrap();
    std::fs::write(work.path().join("other.txt"), format!("{body}x")).unwrap();
    // The receipt altered to claim another data centre, its signature
    // kept.
    let tampered = moved_to_zurich(&receipt);

    let seen = browse(
        json!({
            "phase": "first",
            "base": format!("{base}/"),
            "key": key,
            "other_key": other_key,
            "receipt": receipt,
            "request_id": ch_request,
            "tampered_receipt": tampered,
            "file": work.path().join("upload.txt"),
            "wrong_file": work.path().join("other.txt"),
            "vectors": VECTORS,
            "profile": profile,
            "shots": shots,
        }),
        work.path(),
    )
    .await;

    // The log as the page shows it.
    assert_eq!(seen["log"]["name"], LOG_ORIGIN, "{seen}");
    assert_eq!(seen["log"]["key"], key.as_str(), "{seen}");
    assert!(
        seen["log"]["key_source"]
            .as_str()
            .unwrap()
            .starts_with("Pinned in this link"),
        "{seen}"
    );
    assert!(
        seen["log"]["checkpoint"]
            .as_str()
            .unwrap()
            .contains("signed by the log's key"),
        "{seen}"
    );
    assert!(
        seen["log"]["history"]
            .as_str()
            .unwrap()
            .contains("had not seen this log before"),
        "{seen}"
    );

    // A real receipt, pasted and verified with the keyboard alone.
    let keyboard = &seen["keyboard"];
    let text = keyboard["text"].as_str().unwrap();
    assert!(
        text.starts_with("Stored in data centre frankfurt (jurisdiction eu) on ")
            && text.ends_with(" UTC — verified"),
        "{seen}"
    );
    assert_eq!(keyboard["class"], "ok", "{seen}");
    assert_eq!(
        keyboard["focus_after"], "verdict",
        "focus moves to the verdict: {seen}"
    );
    let reached = keyboard["reached"].as_array().unwrap();
    assert_eq!(reached.last().unwrap(), "verify", "{seen}");

    // The skip link keeps the pinned key; another key pasted into the
    // link (only the fragment changed) loads the page again with it.
    let skipped = &seen["after_skip"];
    assert_eq!(skipped["hash"], "#check", "{seen}");
    assert_eq!(skipped["key"], seen["log"]["key"], "{seen}");
    assert!(
        skipped["key_source"]
            .as_str()
            .unwrap()
            .starts_with("Pinned in this link"),
        "{seen}"
    );
    assert!(seen["hash_changed_key"].is_string(), "{seen}");

    // The customer's file, hashed in the browser; then another file.
    assert_eq!(seen["with_file"]["class"], "ok", "{seen}");
    assert!(
        seen["with_file"]["details"]
            .as_str()
            .unwrap()
            .contains("is the upload the record describes"),
        "{seen}"
    );
    assert_eq!(seen["wrong_file"]["step"], "file", "{seen}");
    assert!(
        seen["wrong_file"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Not verified: your file failed."),
        "{seen}"
    );
    // A request id: the record, proven by inclusion.
    assert!(
        seen["request_id"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Stored in data centre zurich (jurisdiction ch) on "),
        "{seen}"
    );
    assert!(
        seen["unknown_request_id"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Not found:"),
        "{seen}"
    );
    for dots in seen["dot_request_ids"].as_array().unwrap() {
        assert!(
            dots["text"].as_str().unwrap().starts_with("Not found:"),
            "{seen}"
        );
    }
    assert_eq!(seen["tampered"]["step"], "receipt_signature", "{seen}");

    // Every shared vector: the page's verdict is the Rust verdict.
    let vectors: Vectors =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    for v in &vectors.vectors {
        let got = &seen["vectors"][&v.name];
        let rust = residency_log::verdict::check(&v.inputs);
        assert_eq!(got["valid"], v.expect.valid, "{}: {got}", v.name);
        assert_eq!(
            got["not_checked"], v.expect.not_checked,
            "{}: NOT CHECKED (true) or not (false): {got}",
            v.name
        );
        assert_eq!(
            got["step"],
            json!(v.expect.step.map(|s| s.as_str())),
            "{}: {got}",
            v.name
        );
        assert_eq!(
            got["sentence"],
            json!(v.expect.sentence),
            "{}: {got}",
            v.name
        );
        match rust {
            Ok(_) => assert!(v.expect.valid, "{}", v.name),
            Err(f) => assert_eq!(
                got["message"].as_str(),
                Some(f.message.as_str()),
                "{}: the page and verify say why in the same words",
                v.name
            ),
        }
    }

    // 360 px wide: nothing wider than the screen.
    assert_eq!(
        seen["overflow_360"], false,
        "wider than 360 px: {}",
        seen["wider_than_360"]
    );

    // Another key pinned in the link: the server's key is not taken.
    let other = &seen["other_key"];
    assert!(
        other["key_source"]
            .as_str()
            .unwrap()
            .contains("not the key this server presents now"),
        "{seen}"
    );
    assert!(
        other["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("Does not verify"),
        "{seen}"
    );
    assert_eq!(other["verdict"]["step"], "receipt_signature", "{seen}");

    same_origin_only(&seen, &base);
    clean_console(&seen, Some("/records/00000000000000000000000000000000"));
    proxy.stop().await;

    // Second life: the same key and address, another history (a fresh log
    // with more, other records). The same browser visits again.
    let proxy = log_proxy(&pkcs8, port).await;
    let mut receipt = String::new();
    for i in 0..6 {
        receipt = upload(&proxy, CH, &format!("cpu=0.{i}")).await.0;
    }
    let seen = browse(
        json!({
            "phase": "second",
            "base": format!("{base}/"),
            "key": key,
            "receipt": receipt,
            "profile": profile,
            "shots": shots,
        }),
        work.path(),
    )
    .await;
    let history = seen["history"]["text"].as_str().unwrap();
    assert_eq!(seen["history"]["class"], "bad", "{seen}");
    assert!(
        history.starts_with("This log's history changed since this browser last saw it"),
        "{seen}"
    );
    assert!(history.contains("rewrote history"), "{seen}");
    assert_eq!(seen["verdict"]["step"], "consistency", "{seen}");
    same_origin_only(&seen, &base);
    clean_console(&seen, None);
    proxy.stop().await;
    eprintln!("screenshots of the page: {}", shots.display());
}

/// The page's files: a strict CSP, nothing inline for it to block, and no
/// reference to another origin.
/// A log that rolled to a new origin at `max_records`: with the sealed
/// generation's key pinned, the page says so and checks that generation's
/// receipts and request ids under its prefix; with the current key, the
/// current one's.
#[tokio::test]
async fn the_page_checks_a_sealed_generation_with_its_key_pinned() {
    let work = TempDir::new("page-generations");
    let (proxy, uploads, list) = rolled_log().await;
    let sealed_key = list.generations[0].key.clone();
    let key = list.generations[1].key.clone();
    // The list of generations is not signed: through a front that says
    // every generation holds 99 records, the page still says 3, from the
    // sealed generation's checkpoint.
    let lying = std::sync::Arc::new(std::sync::Mutex::new(vec!["sizes:/generations"]));
    let front = front_failing(proxy.log_addr.unwrap(), lying).await;
    let seen = browse(
        serde_json::json!({
            "phase": "generations",
            "base": format!("http://{front}/"),
            "sealed_key": sealed_key,
            "sealed_receipt": uploads[1].0,
            "sealed_request_id": uploads[2].1,
            "key": key,
            "receipt": uploads[4].0,
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let sealed = &seen["sealed"];
    assert_eq!(sealed["name"], LOG_ORIGIN, "{seen}");
    assert!(
        sealed["key_source"].as_str().unwrap().starts_with(
            "Pinned in this link: generation 1 of this log, sealed (its last checkpoint is below)."
        ),
        "{seen}"
    );
    // (The current key, which the text names, may hold "99" by chance.)
    assert!(
        !sealed["key_source"]
            .as_str()
            .unwrap()
            .replace(key.as_str(), "")
            .contains("99"),
        "{seen}"
    );
    assert!(
        sealed["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("3 records"),
        "{seen}"
    );
    for v in [
        &sealed["verdict"],
        &sealed["request_id"],
        &seen["current"]["verdict"],
    ] {
        assert_eq!(v["class"], "ok", "{seen}");
        assert!(v["text"].as_str().unwrap().contains("frankfurt"), "{seen}");
    }
    assert_eq!(seen["current"]["name"], format!("{LOG_ORIGIN}/2"), "{seen}");
    same_origin_only(&seen, &format!("http://{front}"));
    clean_console(&seen, None);
    proxy.stop().await;
}

/// A record the pinned key's generation does not hold is looked for in
/// the log's other generations: with the current generation's key pinned,
/// a request id and a receipt of the sealed generation 1 verify against
/// generation 1, and the verdict names it; with generation 1's key pinned,
/// those of the current generation verify against it. A request id in none
/// of them is not found in any.
#[tokio::test]
async fn the_page_finds_a_record_in_another_generation_of_the_pinned_key() {
    let work = TempDir::new("page-other-generation");
    let (proxy, uploads, list) = rolled_log().await;
    let sealed_key = list.generations[0].key.clone();
    let key = list.generations[1].key.clone();
    let base = format!("http://{}", proxy.log_addr.unwrap());
    let seen = browse(
        json!({
            "phase": "checks",
            "base": format!("{base}/"),
            "checks": [
                {"pin": key, "texts": [
                    uploads[1].1, uploads[2].1, uploads[0].0, uploads[4].1, "0".repeat(32),
                ]},
                {"pin": sealed_key, "texts": [uploads[4].1, uploads[3].0]},
            ],
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let verdicts = |pin: usize| seen["pins"][pin]["verdicts"].as_array().unwrap().clone();
    let in_generation = |n: u32, origin: &str| {
        format!("— verified. The record is in generation {n} of this log (origin {origin}), not in generation ")
    };
    let current = verdicts(0);
    for v in &current[..3] {
        assert_eq!(v["class"], "ok", "{seen}");
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("Stored in data centre frankfurt (jurisdiction eu) on "),
            "{seen}"
        );
        assert!(text.contains(&in_generation(1, LOG_ORIGIN)), "{seen}");
        assert!(
            text.contains(&format!(
                "(origin {LOG_ORIGIN}/2), whose key is pinned in this link"
            )),
            "{seen}"
        );
    }
    // The current generation's own record: as before, no other generation.
    assert_eq!(current[3]["class"], "ok", "{seen}");
    assert!(
        current[3]["text"]
            .as_str()
            .unwrap()
            .ends_with(" UTC — verified"),
        "{seen}"
    );
    let unknown = current[4]["text"].as_str().unwrap();
    assert!(
        unknown.starts_with(&format!(
            "Not found: this log has no record for request id {} (yet): not in the pinned key's generation, nor in the 1 other generation this page looked in.",
            "0".repeat(32)
        )),
        "{seen}"
    );
    let sealed = verdicts(1);
    for v in &sealed {
        assert_eq!(v["class"], "ok", "{seen}");
        assert!(
            v["text"]
                .as_str()
                .unwrap()
                .contains(&in_generation(2, &format!("{LOG_ORIGIN}/2"))),
            "{seen}"
        );
    }
    same_origin_only(&seen, &base);
    clean_console(&seen, Some("/records/"));
    proxy.stop().await;
}

/// The list of generations is not signed: a generation whose listed key is
/// not the log's key under that generation's origin (another public key, a
/// key ID that its name and key do not give, or an origin the log does not
/// give that generation) is not looked in, and a receipt naming its origin
/// is not verified; the page says why. A request id is looked for in at
/// most 64 other generations (and the page says so when it stopped there);
/// a receipt names its generation, and is checked there however many the
/// log lists.
#[tokio::test]
async fn the_page_takes_no_generation_key_it_cannot_check_and_bounds_its_search() {
    let work = TempDir::new("page-forged-generations");
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    let (proxy, uploads, list) = rolled_log_signed_by(&pkcs8).await;
    let log = proxy.log_addr.unwrap();
    let key = list.generations[1].key.clone();
    let first = list.generations[0].key.clone();
    let other = Signer::from_pkcs8(LOG_ORIGIN, &Signer::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let elsewhere = Signer::from_pkcs8("elsewhere.example/log", &pkcs8)
        .unwrap()
        .verifier_key();
    // The first key with another key ID (the same name and public key).
    let misnumbered = {
        let mut parts: Vec<String> = first.split('+').map(str::to_string).collect();
        let flipped = u32::from_str_radix(&parts[1], 16).unwrap() ^ 1;
        parts[1] = format!("{flipped:08x}");
        parts.join("+")
    };
    let entry = |n: u32, origin: &str, key: &str, sealed: bool| {
        json!({"generation": n, "origin": origin, "key": key, "size": 3,
               "sealed": sealed, "prefix": format!("/generations/{n}/")})
    };
    let answer = |list: Value| -> &'static str {
        Box::leak(format!("answer:/generations {list}").into_boxed_str())
    };
    let forged = json!({"generations": [
        entry(1, LOG_ORIGIN, &other, true),
        entry(2, &format!("{LOG_ORIGIN}/2"), &key, false),
        entry(3, "elsewhere.example/log", &elsewhere, false),
    ]});
    let front = front_failing(
        log,
        std::sync::Arc::new(std::sync::Mutex::new(vec![answer(forged)])),
    )
    .await;
    let seen = browse(
        json!({
            "phase": "checks",
            "base": format!("http://{front}/"),
            "checks": [{"pin": key, "texts": [uploads[1].1, uploads[0].0]}],
            "key_checks": [
                {"key": key, "listed": first, "origin": LOG_ORIGIN},
                {"key": key, "listed": other, "origin": LOG_ORIGIN},
                {"key": key, "listed": misnumbered, "origin": LOG_ORIGIN},
                {"key": key, "listed": first, "origin": format!("{LOG_ORIGIN}/1")},
            ],
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let verdicts = seen["pins"][0]["verdicts"].as_array().unwrap();
    let by_id = verdicts[0]["text"].as_str().unwrap();
    assert_eq!(verdicts[0]["class"], "bad", "{seen}");
    assert!(by_id.starts_with("Not found: "), "{seen}");
    assert!(
        by_id.contains("The log lists generation 3, which this page does not look in: its origin is not the name this log gives generation 3"),
        "{seen}"
    );
    assert!(
        by_id.contains("generation 1, which this page does not look in: its listed key has another public key than"),
        "{seen}"
    );
    let receipt = &verdicts[1];
    assert_eq!(receipt["class"], "bad", "{seen}");
    assert_eq!(receipt["step"], "receipt", "{seen}");
    assert!(
        receipt["text"].as_str().unwrap().contains(&format!(
            "The log lists {LOG_ORIGIN} as its generation 1, but its listed key has another public key than"
        )),
        "{seen}"
    );
    // verify.js's own check of a listed key.
    let checks = seen["key_checks"].as_array().unwrap();
    assert_eq!(checks[0]["taken"], first.as_str(), "{seen}");
    assert!(
        checks[1]["refused"]
            .as_str()
            .unwrap()
            .contains("another public key"),
        "{seen}"
    );
    assert!(
        checks[2]["refused"]
            .as_str()
            .unwrap()
            .contains("claims key id"),
        "{seen}"
    );
    assert!(
        checks[3]["refused"]
            .as_str()
            .unwrap()
            .contains(&format!("named `{LOG_ORIGIN}`, not `{LOG_ORIGIN}/1`")),
        "{seen}"
    );
    same_origin_only(&seen, &format!("http://{front}"));
    clean_console(&seen, Some("/records/"));

    // 70 generations listed, each with the log's key under its origin: a
    // request id of generation 1 is past the 64 looked in, newest first;
    // its receipt is checked in generation 1 all the same.
    let many: Vec<Value> = (1..=70)
        .map(|n| {
            let origin = match n {
                1 => LOG_ORIGIN.to_string(),
                n => format!("{LOG_ORIGIN}/{n}"),
            };
            let key = Signer::from_pkcs8(&origin, &pkcs8).unwrap().verifier_key();
            entry(n, &origin, &key, n != 70)
        })
        .collect();
    let front = front_failing(
        log,
        std::sync::Arc::new(std::sync::Mutex::new(vec![answer(
            json!({"generations": many}),
        )])),
    )
    .await;
    let seen = browse(
        json!({
            "phase": "checks",
            "base": format!("http://{front}/"),
            "checks": [{"pin": key, "texts": [uploads[1].1, uploads[0].0]}],
            "profile": work.path().join("profile-many"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let verdicts = seen["pins"][0]["verdicts"].as_array().unwrap();
    let by_id = verdicts[0]["text"].as_str().unwrap();
    assert!(by_id.starts_with("Not found: "), "{seen}");
    assert!(
        by_id.contains("This page looks in at most 64 other generations, newest first; this log lists 69 others."),
        "{seen}"
    );
    let lookups = seen["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["url"].as_str().unwrap().contains("/records/"))
        .count();
    assert_eq!(lookups, 1 + 64, "the pinned generation's, then 64: {seen}");
    assert_eq!(verdicts[1]["class"], "ok", "{seen}");
    assert!(
        verdicts[1]["text"].as_str().unwrap().contains(&format!(
            "The record is in generation 1 of this log (origin {LOG_ORIGIN})"
        )),
        "{seen}"
    );
    same_origin_only(&seen, &format!("http://{front}"));
    clean_console(&seen, Some("/records/"));
    proxy.stop().await;
}

/// A front for the log listener at `log` that answers `/generations` with
/// 503 and passes every other request on, byte for byte.
async fn front_failing_generations(log: std::net::SocketAddr) -> std::net::SocketAddr {
    let failing = std::sync::Arc::new(std::sync::Mutex::new(vec!["/generations"]));
    front_failing(log, failing).await
}

/// A front for the log listener at `log` that answers the paths in
/// `failing` (as it is at each request) with 503, those given as
/// `huge:<path>` with 64 MiB, those given as `404:<path>` with 404, passes those given as `sizes:<path>` on with
/// every `size` in the answer's `generations` made 99, and every other
/// request byte for byte.
async fn front_failing(
    log: std::net::SocketAddr,
    failing: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
) -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Either, Empty, Full};
    use hyper_util::rt::TokioIo;
    use std::time::Duration;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let failing = failing.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let faults = failing.lock().unwrap().clone();
                    let path = req.uri().path().to_string();
                    let fails = faults.contains(&path.as_str());
                    let huge = faults
                        .iter()
                        .any(|f| f.strip_prefix("huge:") == Some(&path));
                    let lie = faults
                        .iter()
                        .any(|f| f.strip_prefix("sizes:") == Some(&path));
                    let trickle = faults
                        .iter()
                        .any(|f| f.strip_prefix("trickle:") == Some(&path));
                    let bom = faults.iter().any(|f| f.strip_prefix("bom:") == Some(&path));
                    let gone = faults.iter().any(|f| f.strip_prefix("404:") == Some(&path));
                    // `answer:<path> <body>`: 200 with that JSON body.
                    let canned = faults.iter().copied().find_map(|f: &'static str| {
                        let (at, body) = f.strip_prefix("answer:")?.split_once(' ')?;
                        (at == path).then_some(body)
                    });
                    async move {
                        if let Some(body) = canned {
                            return Ok(http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(Either::Left(Full::new(bytes::Bytes::from_static(
                                    body.as_bytes(),
                                ))))
                                .unwrap());
                        }
                        if huge {
                            let body = Full::new(bytes::Bytes::from(vec![b'a'; 64 << 20]));
                            return Ok(http::Response::builder()
                                .status(200)
                                .body(Either::Left(body))
                                .unwrap());
                        }
                        if trickle {
                            // One byte every 2 s, for at most a minute.
                            let bytes = futures_util::stream::unfold(0, |n| async move {
                                (n < 30).then_some(())?;
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                let frame = http_body::Frame::data(bytes::Bytes::from_static(b"a"));
                                Some((Ok::<_, hyper::Error>(frame), n + 1))
                            });
                            let body = http_body_util::StreamBody::new(bytes);
                            return Ok(http::Response::builder()
                                .status(200)
                                .body(Either::Right(body.boxed()))
                                .unwrap());
                        }
                        if gone {
                            let body =
                                Full::new(bytes::Bytes::from_static(b"{\"error\":\"not found\"}"));
                            return Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .status(404)
                                    .body(Either::Left(body))
                                    .unwrap(),
                            );
                        }
                        if fails {
                            let body = Full::new(bytes::Bytes::from_static(
                                b"{\"error\":\"unavailable\"}",
                            ));
                            return Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .status(503)
                                    .body(Either::Left(body))
                                    .unwrap(),
                            );
                        }
                        let stream = tokio::net::TcpStream::connect(log).await.unwrap();
                        let (mut send, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                                .await
                                .unwrap();
                        tokio::spawn(conn);
                        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let mut forward = http::Request::get(target)
                            .body(Empty::<bytes::Bytes>::new())
                            .unwrap();
                        *forward.headers_mut() = req.headers().clone();
                        let (mut parts, body) = send.send_request(forward).await?.into_parts();
                        let mut body = body.collect().await?.to_bytes();
                        if lie {
                            let mut list: serde_json::Value =
                                serde_json::from_slice(&body).unwrap();
                            for g in list["generations"].as_array_mut().unwrap() {
                                g["size"] = serde_json::json!(99);
                            }
                            body = serde_json::to_vec(&list).unwrap().into();
                            parts.headers.remove(http::header::CONTENT_LENGTH);
                        }
                        if bom {
                            body = [&b"\xEF\xBB\xBF"[..], &body].concat().into();
                            parts.headers.remove(http::header::CONTENT_LENGTH);
                        }
                        Ok(http::Response::from_parts(
                            parts,
                            Either::Left(Full::new(body)),
                        ))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// With a sealed generation's key pinned and the log unable to list its
/// generations, the page cannot tell which tree the key is of: it says it
/// could not read the log, and a receipt's check says it could not check —
/// never "Not verified" from checking it against the current checkpoint.
#[tokio::test]
async fn the_page_cannot_check_a_sealed_generation_it_cannot_find() {
    let work = TempDir::new("page-generations-unavailable");
    let (proxy, uploads, list) = rolled_log().await;
    let log = proxy.log_addr.unwrap();
    let front = front_failing_generations(log).await;
    let seen = browse(
        serde_json::json!({
            "phase": "generations_unavailable",
            "base": format!("http://{front}/"),
            "sealed_key": list.generations[0].key,
            "sealed_receipt": uploads[1].0,
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    assert!(
        seen["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("Could not read the log:"),
        "{seen}"
    );
    let verdict = seen["verdict"]["text"].as_str().unwrap();
    assert!(verdict.starts_with("Could not check:"), "{seen}");
    assert_eq!(seen["verdict"]["class"], "bad", "{seen}");
    same_origin_only(&seen, &format!("http://{front}"));
    proxy.stop().await;
}

/// With the log unable to answer and its key pinned, the page judges what
/// needs no log as `verify` does: a receipt whose signature fails is "Not
/// verified", not "Could not check" (which a forger could get by blocking
/// the log); a genuine receipt, an unsigned one and a request id could not
/// be checked, nothing found wrong. A request id answered with another
/// request's record is not called a receipt, and a refused upload is named
/// with its reason.
#[tokio::test]
async fn the_page_judges_what_needs_no_log_when_the_log_is_down() {
    let work = TempDir::new("page-log-down");
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    let key = Signer::from_pkcs8(LOG_ORIGIN, &pkcs8)
        .unwrap()
        .verifier_key();
    let proxy = log_proxy(&pkcs8, free_port()).await;
    let (receipt, request_id) = upload(&proxy, DE, "cpu=0.93").await;
    let refused = proxy.client().upload_from(UNKNOWN, "cpu=0.1").await;
    assert_eq!(refused.status, 451, "{refused:?}");
    let refused_id = refused.header("x-request-id").unwrap().to_string();
    let forged = moved_to_zurich(&receipt);
    let unsigned = Receipt {
        signature: None,
        ..Receipt::parse(&receipt).unwrap()
    }
    .encode();
    let log = proxy.log_addr.unwrap();
    // The page with `key` pinned, through a front to the log with
    // `faults`, and its verdicts on `texts` (a fresh profile each).
    let log_down = async |faults: Vec<&'static str>, texts: Value, profile: &str| {
        let front = front_failing(log, std::sync::Arc::new(std::sync::Mutex::new(faults))).await;
        browse(
            json!({
                "phase": "log_down",
                "base": format!("http://{front}/"),
                "key": key,
                "texts": texts,
                "profile": work.path().join(profile),
                "shots": shots_dir(),
            }),
            work.path(),
        )
        .await
    };
    let api = vec!["/key", "/checkpoint", "/generations", "/proof/inclusion"];
    let seen = log_down(
        api,
        json!([forged, receipt, unsigned, request_id]),
        "profile",
    )
    .await;
    let verdicts = seen["verdicts"].as_array().unwrap();
    let text = |i: usize| verdicts[i]["text"].as_str().unwrap();
    assert!(
        text(0).starts_with("Not verified: the receipt's signature failed."),
        "{seen}"
    );
    assert_eq!(verdicts[0]["step"], "receipt_signature", "{seen}");
    for (i, v) in verdicts.iter().enumerate().skip(1) {
        assert!(text(i).starts_with("Could not check: "), "{i}: {seen}");
        assert!(
            text(i).ends_with("(nothing was found wrong)"),
            "{i}: {seen}"
        );
        assert_eq!(v["class"], "bad", "{seen}");
    }

    // A log that answers, but not as a log does (its checkpoint gone):
    // not verified, as `verify` says INVALID — not "could not check".
    let seen = log_down(vec!["404:/checkpoint"], json!([receipt]), "profile-404").await;
    let gone = seen["verdicts"][0]["text"].as_str().unwrap();
    assert!(
        gone.starts_with("Not verified: the log's answer: checkpoint: not found"),
        "{seen}"
    );

    // The log back: another request's record for a request id, and a
    // refusal's record.
    let (status, other) = plain_request(log, "GET", &format!("/records/{refused_id}")).await;
    assert_eq!(status, 200, "{other}");
    let swapped: &'static str =
        Box::leak(format!("answer:/records/{request_id} {other}").into_boxed_str());
    let front = front_failing(
        log,
        std::sync::Arc::new(std::sync::Mutex::new(vec![swapped])),
    )
    .await;
    let seen = browse(
        json!({
            "phase": "checks",
            "base": format!("http://{front}/"),
            "checks": [{"pin": key, "texts": [request_id, refused_id]}],
            "profile": work.path().join("profile-2"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let verdicts = seen["pins"][0]["verdicts"].as_array().unwrap();
    let text = |i: usize| verdicts[i]["text"].as_str().unwrap();
    assert!(
        text(0).starts_with(
            "Not verified: the log's record of that request failed. the log answered request id"
        ),
        "{seen}"
    );
    assert!(
        text(1).contains("the record says the upload was refused (origin_unknown), not stored"),
        "{seen}"
    );
    proxy.stop().await;
}

/// An honest log that has not signed a checkpoint since the upload (its
/// `checkpoint_interval` an hour, as a log whose disk was out for a
/// while): once the page has waited its 10 s for a covering checkpoint,
/// it could not check — nothing was found wrong — and says to retry; not
/// "Not verified", as `verify` exits 3 with NOT CHECKED.
#[tokio::test]
async fn the_page_could_not_check_a_receipt_no_checkpoint_covers_yet() {
    let work = TempDir::new("page-not-covered");
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    let key = Signer::from_pkcs8(LOG_ORIGIN, &pkcs8)
        .unwrap()
        .verifier_key();
    let proxy = Proxy::start(Setup {
        transparency: Some("checkpoint_interval = \"1h\"".into()),
        log_pkcs8: Some(pkcs8.to_vec()),
        log_port: Some(free_port()),
        ..Setup::default()
    })
    .await;
    let (receipt, _) = upload(&proxy, DE, "cpu=0.93").await;
    let index = Receipt::parse(&receipt).unwrap().index;
    let seen = browse(
        json!({
            "phase": "log_down",
            "base": format!("{}/", proxy.log_url()),
            "key": key,
            "texts": [receipt],
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let verdict = &seen["verdicts"][0];
    let text = verdict["text"].as_str().unwrap();
    assert!(
        text.starts_with("Could not check: the checkpoint (tree size ")
            && text.contains(&format!(
                "does not cover the receipt's index {index} yet: retry after the log's next checkpoint; if none covers it after the log's checkpoint interval, the log has not included the record"
            ))
            && text.ends_with("(nothing was found wrong)"),
        "{seen}"
    );
    assert_eq!(verdict["step"], "coverage", "{seen}");
    same_origin_only(&seen, &proxy.log_url());
    clean_console(&seen, None);
    proxy.stop().await;
}

/// The history this browser keeps is the key's, however the link spells
/// it (a key id in upper case is the same key), and a log that does not
/// prove it only grew since the checkpoint kept is warned about, the one
/// kept kept: never "had not seen this log", never nothing.
#[tokio::test]
async fn the_page_keeps_history_by_key_and_warns_when_growth_is_not_proven() {
    let work = TempDir::new("page-history");
    // A key whose id has a letter, so that upper case spells it otherwise
    // (one in about 43 ids is digits only).
    let pkcs8 = loop {
        let pkcs8 = Signer::generate_pkcs8().unwrap();
        let key = Signer::from_pkcs8(LOG_ORIGIN, &pkcs8)
            .unwrap()
            .verifier_key();
        if key
            .split('+')
            .nth(1)
            .unwrap()
            .bytes()
            .any(|b| b.is_ascii_alphabetic())
        {
            break pkcs8;
        }
    };
    let proxy = log_proxy(&pkcs8, free_port()).await;
    let log = proxy.log_addr.unwrap();
    let failing = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let front = front_failing(log, failing.clone()).await;
    let (_, key) = proxy.log_get("/key").await;
    let key = key.trim().to_string();
    let upper = {
        let mut parts: Vec<String> = key.split('+').map(str::to_string).collect();
        parts[1] = parts[1].to_uppercase();
        parts.join("+")
    };
    assert_ne!(upper, key);
    let grown = async |n: u64| {
        for i in 0..2 {
            upload(&proxy, CH, &format!("cpu=0.{n}{i}")).await;
        }
        eventually("a checkpoint of the new records", async || {
            let (_, note) = proxy.log_get("/checkpoint").await;
            note.lines().nth(1) == Some(&(n + 2).to_string())
        })
        .await;
    };
    let visit_with = async |key: &str, receipt: Option<&str>| {
        let mut scenario = json!({
            "phase": "visit",
            "base": format!("http://{front}/"),
            "key": key,
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        });
        if let Some(receipt) = receipt {
            scenario["receipt"] = json!(receipt);
        }
        browse(scenario, work.path()).await
    };
    let visit = async |key: &str| visit_with(key, None).await;
    // What the history line says: its class and its text.
    let history = |seen: &Value| {
        let line = &seen["history"];
        (
            line["class"].as_str().unwrap().to_string(),
            line["text"].as_str().unwrap().to_string(),
        )
    };
    grown(0).await;
    let seen = visit(&key).await;
    let (_, text) = history(&seen);
    assert!(
        text.starts_with("This browser had not seen this log before"),
        "{seen}"
    );
    grown(2).await;
    let seen = visit(&upper).await;
    let (class, text) = history(&seen);
    assert_eq!(class, "ok-text", "{seen}");
    assert!(
        text.starts_with("The log only grew since this browser last saw it"),
        "{seen}"
    );
    grown(4).await;
    failing.lock().unwrap().push("/proof/consistency");
    let (receipt, _) = upload(&proxy, CH, "cpu=0.9").await;
    eventually("a checkpoint of the new record", async || {
        let (_, note) = proxy.log_get("/checkpoint").await;
        note.lines().nth(1) == Some("7")
    })
    .await;
    let seen = visit_with(&key, Some(&receipt)).await;
    let (class, text) = history(&seen);
    assert_eq!(class, "bad", "{seen}");
    assert!(
        text.starts_with("Could not check that this log only grew"),
        "{seen}"
    );
    // A receipt checked meanwhile is proven against a checkpoint the log
    // would not prove extends the one kept: not "verified" (perhaps a
    // fork), as `verify --previous` has it.
    let verdict = &seen["verdict"];
    assert_eq!(verdict["class"], "bad", "{seen}");
    assert_eq!(verdict["step"], "consistency", "{seen}");
    assert!(
        verdict["text"]
            .as_str()
            .unwrap()
            .contains("did not prove that it only grew"),
        "{seen}"
    );
    assert_eq!(seen["history_after"]["class"], "bad", "{seen}");
    // The checkpoint kept is still the one proven: once the log proves
    // again, it proves from there.
    failing.lock().unwrap().clear();
    let seen = visit(&key).await;
    let (class, text) = history(&seen);
    assert_eq!(class, "ok-text", "{seen}");
    assert!(text.contains("(4 records)"), "{seen}");
    same_origin_only(&seen, &format!("http://{front}"));
    clean_console(&seen, None);
    proxy.stop().await;
}

/// The page's log section (`log_section`), with `key` pinned, seen through
/// a front to `log` with `faults` (see [`front_failing`]).
async fn log_section_through(
    log: std::net::SocketAddr,
    key: &str,
    faults: Vec<&'static str>,
) -> Value {
    let work = TempDir::new("page-log-section");
    let front = front_failing(log, std::sync::Arc::new(std::sync::Mutex::new(faults))).await;
    browse(
        json!({
            "phase": "log_section",
            "base": format!("http://{front}/"),
            "key": key,
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await
}

/// A log that lists the pinned key as a sealed generation while it presents
/// another key under the same name (a key swapped, not a roll to a new
/// origin): the page warns that the server presents another key, and does
/// not explain it away as a roll from the unsigned list.
#[tokio::test]
async fn a_key_swapped_under_the_same_name_is_not_taken_for_a_roll() {
    let proxy = log_proxy(&Signer::generate_pkcs8().unwrap(), free_port()).await;
    upload(&proxy, CH, "cpu=0.1").await;
    let other = Signer::from_pkcs8(LOG_ORIGIN, &Signer::generate_pkcs8().unwrap())
        .unwrap()
        .verifier_key();
    let (_, served) = proxy.log_get("/key").await;
    let list = json!({"generations": [
        {"generation": 1, "origin": LOG_ORIGIN, "key": other, "sealed": true, "prefix": "/generations/1/", "size": 1},
        {"generation": 2, "origin": LOG_ORIGIN, "key": served.trim(), "sealed": false, "prefix": "/", "size": 1},
    ]});
    let fault: &'static str = Box::leak(format!("answer:/generations {list}").into_boxed_str());
    let seen = log_section_through(proxy.log_addr.unwrap(), &other, vec![fault]).await;
    let source = seen["key_source"].as_str().unwrap();
    assert!(
        source.contains("not the key this server presents now"),
        "{seen}"
    );
    proxy.stop().await;
}

/// A browser whose storage for the page takes nothing more: the page says
/// it did not keep the checkpoint, not that it keeps it.
#[tokio::test]
async fn the_page_says_when_it_could_not_keep_the_checkpoint() {
    let work = TempDir::new("page-full-storage");
    let proxy = log_proxy(&Signer::generate_pkcs8().unwrap(), free_port()).await;
    upload(&proxy, CH, "cpu=0.1").await;
    let (_, key) = proxy.log_get("/key").await;
    let seen = browse(
        json!({
            "phase": "visit",
            "base": format!("http://{}/", proxy.log_addr.unwrap()),
            "key": key.trim(),
            "fill_storage": true,
            "profile": work.path().join("profile"),
            "shots": shots_dir(),
        }),
        work.path(),
    )
    .await;
    let line = &seen["history"];
    assert_eq!(line["class"], "bad", "{seen}");
    assert!(
        line["text"]
            .as_str()
            .unwrap()
            .contains("did not keep this checkpoint"),
        "{seen}"
    );
    proxy.stop().await;
}

/// A log (or what poses as one) that answers with more than any answer of
/// a log holds is not read to its end: the page says so, its tab's memory
/// stays its own.
#[tokio::test]
async fn the_page_reads_no_more_than_a_log_answer_may_hold() {
    let proxy = Proxy::start(Setup {
        transparency: Some(String::new()),
        log_port: Some(free_port()),
        ..Setup::default()
    })
    .await;
    let (_, key) = proxy.log_get("/key").await;
    let seen = log_section_through(
        proxy.log_addr.unwrap(),
        key.trim(),
        vec!["huge:/checkpoint"],
    )
    .await;
    let text = seen["checkpoint"].as_str().unwrap();
    assert!(
        text.starts_with("Could not read the log:")
            && text.contains("larger than the 2097152 bytes this page reads"),
        "{seen}"
    );
    proxy.stop().await;
}

/// A log (or what poses as one) that trickles its answer does not hold
/// the page: after 10 s it says the log did not answer, as `verify` does.
/// One whose note comes with a byte-order mark in front is read as sent,
/// as `verify` reads it: the mark is part of the text, and the note does
/// not verify.
#[tokio::test]
async fn the_page_waits_10_s_for_an_answer_and_reads_it_as_sent() {
    let proxy = Proxy::start(Setup {
        transparency: Some(String::new()),
        log_port: Some(free_port()),
        ..Setup::default()
    })
    .await;
    let (_, key) = proxy.log_get("/key").await;
    for (fault, said) in [
        ("trickle:/checkpoint", "did not answer within 10 s"),
        ("bom:/checkpoint", "Does not verify"),
    ] {
        let seen = log_section_through(proxy.log_addr.unwrap(), key.trim(), vec![fault]).await;
        let text = seen["checkpoint"].as_str().unwrap();
        assert!(text.contains(said), "{fault}: {seen}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn the_page_is_self_contained_under_a_strict_policy() {
    let proxy = Proxy::start(Setup {
        transparency: Some(String::new()),
        ..Setup::default()
    })
    .await;
    let addr = proxy.log_addr.unwrap();
    let files = tokio::task::spawn_blocking(move || {
        ["/", "/page.js", "/verify.js", "/page.css", "/favicon.svg"].map(|p| (p, raw_get(addr, p)))
    })
    .await
    .unwrap();
    for (path, (head, body)) in &files {
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains(
                "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{path}");
        for other in ["http://", "https://", "//cdn", "@import"] {
            let hits: Vec<&str> = body.lines().filter(|l| l.contains(other)).collect();
            // The SVG's XML namespace is a name, not a request.
            let hits: Vec<&&str> = hits
                .iter()
                .filter(|l| !l.contains("xmlns=\"http://www.w3.org/2000/svg\""))
                .collect();
            assert!(hits.is_empty(), "{path} names another origin: {hits:?}");
        }
    }
    let (head, html) = &files[0].1;
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(!html.contains(" style="), "inline style");
    assert!(!html.contains("<style"), "inline style");
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script type=\"module\" src=").count(),
        "inline script"
    );
    assert!(files[1].1 .0.contains("content-type: text/javascript"));
    proxy.stop().await;
}

/// The demo prints the page's link with the log's key pinned, and that
/// key is the one the log serves.
#[tokio::test]
async fn the_demo_prints_the_page_link_with_the_key_pinned() {
    use std::io::{BufRead, BufReader};
    let (port, admin, log) = (free_port(), free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_residency-proxy"))
        .args(["demo", "--port", &port.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .args(["--log-port", &log.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = Killed(child);
    let prefix = format!("http://127.0.0.1:{log}/#key=");
    // Reads the whole banner (the demo must not meet a closed pipe).
    let (found, link) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(key) = line.trim().strip_prefix(&prefix) {
                let _ = found.send(key.to_string());
            }
        }
    });
    let link = tokio::task::spawn_blocking(move || {
        link.recv_timeout(std::time::Duration::from_secs(20))
            .expect("the banner names the page with #key=")
    })
    .await
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{log}").parse().unwrap();
    let served = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return raw_get(addr, "/key").1;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the demo's log listener never came up");
    })
    .await
    .unwrap();
    let decoded = link
        .replace("%2F", "/")
        .replace("%2B", "+")
        .replace("%3D", "=");
    assert_eq!(decoded, served.trim());
}
