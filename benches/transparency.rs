//! Micro-benchmarks of what the transparency log adds to one upload:
//! hashing a 1 KiB body, building and serialising the record, appending it
//! (one `write(2)` to a real file plus the tree update), signing the
//! receipt, and a checkpoint.
//!
//! `cargo bench --bench transparency`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use residency_log::merkle;
use residency_log::note::Signer;
use residency_log::receipt::{signed_message, Receipt};
use residency_log::record::{self, BodyDigest, Client, Database, Outcome, Record};
use residency_log::settings::{ClientAddress, OnWriteError, ReceiptMode, Transparency};
use residency_log::storage::Log;
use residency_proxy::metrics::Metrics;

fn record(i: u64) -> Record<'static> {
    Record {
        v: record::VERSION,
        request_id: format!("{i:032x}").into(),
        time: record::rfc3339(std::time::SystemTime::now()).into(),
        outcome: Outcome::Stored,
        reason: None,
        client: Client {
            source: Some("x_forwarded_for".into()),
            address: record::minimise(
                "192.0.2.77".parse().unwrap(),
                &ClientAddress::Prefix { v4: 24, v6: 48 },
            )
            .map(Into::into),
        },
        country: Some("CH".into()),
        jurisdiction: Some("ch".into()),
        datacenter: Some("zurich".into()),
        also_sent_to: Vec::new(),
        upstream_status: Some(201),
        body: Some(BodyDigest {
            sha256: "ab".repeat(32).into(),
            bytes: 1024,
        }),
        policy_sha256: "cd".repeat(32).into(),
        geoip: Database {
            build_epoch: 1_750_000_000,
            sha256: "ef".repeat(32).into(),
        },
        tenant: None,
        summary: None,
    }
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("rp-bench-tlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pkcs8 = Signer::generate_pkcs8().unwrap();
    std::fs::write(dir.join("log.key"), &pkcs8).unwrap();
    let settings = Transparency {
        directory: dir.join("log"),
        postgres: None,
        origin: "bench.example/log".into(),
        signing_key: dir.join("log.key"),
        receipts: ReceiptMode::Signed,
        checkpoint_interval: Duration::from_secs(1),
        commit_window: residency_log::settings::DEFAULT_COMMIT_WINDOW_DIRECTORY,
        write_timeout: residency_log::settings::DEFAULT_WRITE_TIMEOUT,
        client_address: ClientAddress::Prefix { v4: 24, v6: 48 },
        on_write_error: OnWriteError::Refuse,
        address: None,
        max_records: u64::MAX,
        max_connections: 256,
        max_connections_per_client: 32,
        refusal_records_per_second: 100,
        requests_per_second_per_client: 0,
        requests_burst_per_client: 1,
        refusal_records_burst: 1000,
        tls: Vec::new(),
        secret_files: Vec::new(),
    };
    let log = Log::open(&settings, Metrics::new().unwrap().log).unwrap();
    let signer = Signer::from_pkcs8("bench.example/log", &pkcs8).unwrap();
    let body = vec![7u8; 1024];

    c.bench_function("body_sha256_1k", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(&body)))
    });
    c.bench_function("record_build_and_serialise", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(record(i).to_bytes())
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut i = 0u64;
    c.bench_function("log_append", |b| {
        b.iter(|| {
            i += 1;
            black_box(rt.block_on(log.append(&record(i))).unwrap())
        })
    });
    let leaf = merkle::leaf_hash(&record(1).to_bytes());
    c.bench_function("receipt_sign_ed25519", |b| {
        b.iter(|| black_box(signer.sign(&signed_message("bench.example/log", 42, &leaf))))
    });
    c.bench_function("receipt_encode", |b| {
        let r = Receipt {
            log: "bench.example/log".into(),
            index: 42,
            record: record(1).to_bytes(),
            signature: Some([1; 64]),
        };
        b.iter(|| black_box(r.encode()))
    });
    c.bench_function("checkpoint_after_1k_records", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                i += 1;
                rt.block_on(log.append(&record(i))).unwrap();
            }
            black_box(log.checkpoint().unwrap())
        })
    });
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
