//! The log as C2SP tlog-tiles, read by a tile client written here from the
//! spec alone (SHA-256 from `sha2`, RFC 6962 hashing by hand): 70,000
//! records — the spec's example — fetched as hash tiles and entry bundles
//! over the log listener, every entry hashed into its level-0 tile, every
//! upper tile recomputed from the one below, and the root recomputed from
//! the leaves against the signed checkpoint. And by Go's own checksum
//! database packages (`tests/clients/tlogcheck.go`: golang.org/x/mod's
//! sumdb/note and sumdb/tlog), an implementation this project did not write.

use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use residency_log::note::{Checkpoint, Verifier};
use residency_log::record::{Client, Database, Outcome, Record};
use sha2::{Digest, Sha256};

use crate::support::*;

type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// RFC 6962 §2.1 MTH, recursively, from the leaf hashes.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            sha256(&[&[1], &mth(&leaves[..k]), &mth(&leaves[k..])])
        }
    }
}

fn hashes(tile: &[u8]) -> Vec<Hash> {
    assert_eq!(tile.len() % 32, 0);
    tile.chunks(32).map(|c| c.try_into().unwrap()).collect()
}

/// The spec's tile path: `tile/<L>/<N>[.p/<W>]`, N in x-prefixed groups.
fn path(level: &str, index: u64, width: u64) -> String {
    let digits = format!("{index:03}");
    let pad = (3 - digits.len() % 3) % 3;
    let padded = format!("{}{digits}", "0".repeat(pad));
    let groups: Vec<String> = padded
        .as_bytes()
        .chunks(3)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let n = groups.len();
    let mut p = format!("/tile/{level}");
    for (i, g) in groups.iter().enumerate() {
        p.push('/');
        if i + 1 < n {
            p.push('x');
        }
        p.push_str(g);
    }
    if width < 256 {
        p.push_str(&format!(".p/{width}"));
    }
    p
}

/// One keep-alive HTTP/1.1 connection to the log listener.
struct TileClient {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl TileClient {
    async fn connect(addr: std::net::SocketAddr) -> TileClient {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        TileClient { send }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.send.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", "log")
            .body(Empty::new())
            .unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, bytes)
    }

    /// A tile's bytes, checking the spec's content type and caching.
    async fn tile(&mut self, path: &str) -> Bytes {
        let (status, headers, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable"));
        body
    }
}

fn record(i: u64) -> Record<'static> {
    Record {
        v: 1,
        request_id: format!("{i:032x}").into(),
        time: "2026-12-02T10:00:00.000Z".into(),
        outcome: Outcome::Stored,
        reason: None,
        client: Client {
            source: Some("peer".into()),
            address: Some("203.0.113.0/24".into()),
        },
        country: Some("CH".into()),
        jurisdiction: Some("ch".into()),
        datacenter: Some("zurich".into()),
        also_sent_to: Vec::new(),
        upstream_status: Some(201),
        body: None,
        policy_sha256: "00".repeat(32).into(),
        geoip: Database {
            build_epoch: 1,
            sha256: "11".repeat(32).into(),
        },
        tenant: None,
        summary: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seventy_thousand_records_served_as_tiles_recompute_the_signed_root() {
    const SIZE: u64 = 70_000;
    let proxy = Proxy::start(Setup {
        // Checkpoints only when asked, so the tree is signed at exactly SIZE;
        // no rate per client: Go's client reads hundreds of tiles and proofs
        // at once (a mirror's reads, over the default burst).
        transparency: Some(
            "checkpoint_interval = \"1h\"\nrequests_per_second_per_client = 0".into(),
        ),
        ..Setup::default()
    })
    .await;
    let log = proxy.instance.log.clone().expect("log configured");
    // Appended concurrently, 1,000 at a time (few group commits); which
    // record lands at which index is whatever order they joined in.
    let mut id_at = vec![u64::MAX; SIZE as usize];
    for chunk in 0..SIZE / 1000 {
        let mut appends = tokio::task::JoinSet::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let log = log.clone();
            appends.spawn(async move { (i, log.append(&record(i)).await.unwrap().index) });
        }
        for (i, index) in appends.join_all().await {
            id_at[index as usize] = i;
        }
    }
    let signing = log.clone();
    tokio::task::spawn_blocking(move || signing.checkpoint().unwrap())
        .await
        .unwrap();

    let mut client = TileClient::connect(proxy.log_addr.unwrap()).await;
    let (status, headers, note) = client.get("/checkpoint").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (status, headers, _) = client.get("/generations").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let verifier = Verifier::parse(&log.current().signer().verifier_key()).unwrap();
    let checkpoint = Checkpoint::open(std::str::from_utf8(&note).unwrap(), &verifier).unwrap();
    assert_eq!(checkpoint.size, SIZE);

    // Level 0 and the entry bundles: 273 full, one partial of width 112.
    let (full, partial) = (SIZE / 256, SIZE % 256);
    assert_eq!((full, partial), (273, 112));
    let mut leaves: Vec<Hash> = Vec::with_capacity(SIZE as usize);
    let mut level0_full: Vec<Hash> = Vec::new();
    for n in 0..=full {
        let width = if n < full { 256 } else { partial };
        let tile = hashes(&client.tile(&path("0", n, width)).await);
        assert_eq!(tile.len() as u64, width);
        let (status, headers, gz) = client.get(&path("entries", n, width)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-encoding"], "gzip");
        let mut bundle = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut bundle)
            .unwrap();
        // Big-endian u16 length, then the entry; each hashes to its leaf.
        let mut rest = &bundle[..];
        for (i, leaf) in tile.iter().enumerate() {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let entry = &rest[2..2 + len];
            rest = &rest[2 + len..];
            assert_eq!(
                &sha256(&[&[0], entry]),
                leaf,
                "entry {}",
                n * 256 + i as u64
            );
            let parsed = Record::from_bytes(entry).unwrap();
            let id = id_at[(n * 256) as usize + i];
            assert_eq!(parsed.request_id, format!("{id:032x}"));
        }
        assert!(rest.is_empty(), "bundle {n} has bytes after its entries");
        if width == 256 {
            level0_full.push(mth(&tile));
        }
        leaves.extend(tile);
    }
    assert_eq!(mth(&leaves), checkpoint.root, "root from the leaves");

    // Level 1: one full tile and a partial of width 17, each hash the MTH of
    // a full level-0 tile; level 2: a partial of width 1.
    let l1_full = hashes(&client.tile(&path("1", 0, 256)).await);
    let l1_partial = hashes(&client.tile(&path("1", 1, 17)).await);
    let level1: Vec<Hash> = l1_full.iter().chain(&l1_partial).copied().collect();
    assert_eq!(level1, level0_full);
    let l2 = hashes(&client.tile(&path("2", 0, 1)).await);
    assert_eq!(l2, vec![mth(&l1_full)]);

    // `verify --log` proves inclusion from these tiles alone (unsigned
    // receipts: the proof is the only evidence), at both edges of the tree.
    for index in [0u64, 12_345, SIZE - 1] {
        let id = id_at[index as usize];
        let receipt = residency_log::receipt::Receipt {
            log: LOG_ORIGIN.to_string(),
            index,
            record: record(id).to_bytes(),
            signature: None,
        };
        let args = residency_tools::verify::VerifyArgs {
            key: log.current().signer().verifier_key(),
            receipt: Some(receipt.encode()),
            log: Some(proxy.log_url()),
            ..Default::default()
        };
        let report = residency_tools::verify::verify(&args).await;
        assert!(report.valid(), "{index}: {report}");
        assert!(report.to_string().contains("inclusion proof"), "{report}");
    }

    // Go's checksum-database client reads the same log the same way.
    let ok = go_tlog_check(
        &proxy.log_url(),
        &log.current().signer().verifier_key(),
        LOG_ORIGIN,
        None,
    )
    .await;
    assert!(
        ok.starts_with(&format!("ok size={SIZE} entries={SIZE} ")),
        "{ok}"
    );

    // What no checkpoint covers, and names the spec does not allow: 404.
    for missing in [
        path("0", 273, 113),
        path("0", 274, 1),
        path("1", 1, 256),
        path("entries", 274, 1),
        path("3", 0, 1),
        "/tile/0/273.p/0112".to_string(),
        "/tile/0/0273".to_string(),
    ] {
        let (status, _, _) = client.get(&missing).await;
        assert_eq!(status, 404, "{missing}");
    }
    proxy.stop().await;
}

/// Go's own tlog client (`tests/clients/tlogcheck.go`, on
/// golang.org/x/mod/sumdb/note and sumdb/tlog) follows the log as it grows
/// through the tile shapes: one entry; 600 (two full level-0 tiles, a
/// partial of 88 and a level-1 partial of 2); 65,793 (a full level-1 tile,
/// level-0, level-1 and level-2 partials of width 1). At each size it opens
/// the checkpoint, recomputes the root from tiles it authenticates, hashes
/// every entry into its tile, checks inclusion (its proofs and the log's
/// `/proof/inclusion`) and consistency with the size before (its proof and
/// the log's `/proof/consistency`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_s_tlog_client_follows_the_log_through_every_tile_shape() {
    // (Every tile and entry of 65,793 records, read as fast as the client
    // can: a mirror's reads, over the default rate per client.)
    let proxy = Proxy::start(Setup {
        transparency: Some(
            "checkpoint_interval = \"1h\"\nrequests_per_second_per_client = 0".into(),
        ),
        ..Setup::default()
    })
    .await;
    let log = proxy.instance.log.clone().expect("log configured");
    let key = log.current().signer().verifier_key();
    let mut older: Option<(u64, Hash)> = None;
    let mut roots = Vec::new();
    let mut appended = 0u64;
    for size in [1u64, 600, 65_793] {
        while appended < size {
            let mut appends = tokio::task::JoinSet::new();
            for i in appended..size.min(appended + 1000) {
                let log = log.clone();
                appends.spawn(async move { log.append(&record(i)).await.unwrap() });
            }
            appended += appends.join_all().await.len() as u64;
        }
        let signing = log.clone();
        let checkpoint = tokio::task::spawn_blocking(move || signing.checkpoint().unwrap())
            .await
            .unwrap();
        assert_eq!(checkpoint.size, size);
        let ok = go_tlog_check(&proxy.log_url(), &key, LOG_ORIGIN, older).await;
        assert!(
            ok.starts_with(&format!("ok size={size} entries={size} ")),
            "{ok}"
        );
        older = Some((size, checkpoint.root));
        roots.push(checkpoint.root);
    }

    // Go's client is no pushover: an older root the log did not have, or
    // another key, is refused.
    let mut root = roots[1];
    root[0] ^= 1;
    let (ok, _, said) = go_tlog_run(&proxy.log_url(), &key, LOG_ORIGIN, Some((600, root))).await;
    assert!(
        !ok && said.contains("consistency 600 -> 65793"),
        "the root of size 600 flipped: {said}"
    );
    let other = residency_log::note::Signer::from_seed(LOG_ORIGIN, &[7; 32]).unwrap();
    let (ok, _, said) =
        go_tlog_run(&proxy.log_url(), &other.verifier_key(), LOG_ORIGIN, None).await;
    assert!(
        !ok && said.contains("does not open with the log's key"),
        "another key: {said}"
    );
    proxy.stop().await;
}

/// The log directory as a static file server serves it (Python's
/// `http.server`, which knows nothing of the log): the log deleted the
/// partial tiles of tiles that filled, as tlog-tiles allows, so a receipt
/// checked against an older saved checkpoint gets its partial tile from the
/// full tile's prefix, as the spec has clients do.
#[tokio::test]
async fn an_older_checkpoint_verifies_from_a_static_copy_whose_partials_are_gone() {
    let proxy = Proxy::start(Setup {
        transparency: Some("checkpoint_interval = \"1h\"".into()),
        ..Setup::default()
    })
    .await;
    let log = proxy.instance.log.clone().expect("log configured");
    let checkpoint = |log: std::sync::Arc<residency_log::storage::Log>| async move {
        tokio::task::spawn_blocking(move || log.checkpoint().unwrap())
            .await
            .unwrap()
    };
    for i in 0..100 {
        assert_eq!(log.append(&record(i)).await.unwrap().index, i);
    }
    let saved = checkpoint(log.clone()).await;
    assert_eq!(saved.size, 100);
    let dir = proxy.dir.path().join("log");
    assert!(dir.join("tile/0/000.p/100").is_file());
    for i in 100..400 {
        log.append(&record(i)).await.unwrap();
    }
    assert_eq!(checkpoint(log.clone()).await.size, 400);
    assert!(!dir.join("tile/0/000.p").exists(), "tile 0 is full");
    assert!(dir.join("tile/0/001.p/144").is_file());

    let port = free_port();
    let _server = Killed(
        std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "http.server not up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let files = TempDir::new("static-log");
    let saved_path = files.path().join("old.checkpoint");
    std::fs::write(&saved_path, &saved.note).unwrap();
    let key = log.current().signer().verifier_key();
    for (index, checkpoint) in [(7u64, Some(saved_path.clone())), (7, None), (399, None)] {
        let receipt = residency_log::receipt::Receipt {
            log: LOG_ORIGIN.to_string(),
            index,
            record: record(index).to_bytes(),
            signature: None,
        };
        let args = residency_tools::verify::VerifyArgs {
            key: key.clone(),
            receipt: Some(receipt.encode()),
            log: Some(base.clone()),
            checkpoint,
            ..Default::default()
        };
        let report = residency_tools::verify::verify(&args).await;
        assert!(report.valid(), "{index}: {report}");
        assert!(report.to_string().contains("inclusion proof"), "{report}");
    }
    proxy.stop().await;
}
