//! The log at scale: RSS after appending N records (10 million by default)
//! against RSS at 0 records, and the time to open a log of N records.
//!
//! ```text
//! cargo bench --bench log_scale                          # 10,000,000 records
//! LOG_SCALE_RECORDS=1000000 cargo bench --bench log_scale
//! LOG_SCALE_DIR=/var/tmp/scale cargo bench --bench log_scale   # keep the log
//! LOG_SCALE_DIR=/var/tmp/scale LOG_SCALE_OPEN_ONLY=1 cargo bench --bench log_scale
//! ```
//!
//! The last one only opens the kept log, in a fresh process.
//!
//! Records are appended by 512 concurrent tasks (group commit, as under
//! load), a checkpoint is signed every second, as the proxy does. Needs
//! about 450 bytes of disk per record (4.5 GB for 10 million).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use residency_log::note::Signer;
use residency_log::settings::{ClientAddress, OnWriteError, ReceiptMode, Transparency};
use residency_log::storage::Log;
use residency_proxy::metrics::Metrics;

mod common;
use common::{id, record};

/// The allocator the proxy runs with (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from argv.
    let records: u64 = std::env::var("LOG_SCALE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let keep = std::env::var_os("LOG_SCALE_DIR");
    let dir = keep
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rp-log-scale-{}", std::process::id()))
        });
    // With LOG_SCALE_OPEN_ONLY=1, a kept log is only opened: what a
    // process that restarts on a big log holds.
    let open_only = std::env::var_os("LOG_SCALE_OPEN_ONLY").is_some() && keep.is_some();
    if !open_only {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("log.key"), Signer::generate_pkcs8().unwrap()).unwrap();
    }
    let settings = Transparency {
        directory: dir.join("log"),
        postgres: None,
        origin: "scale.example/log".into(),
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
    if open_only {
        let before = rss_kib();
        let started = Instant::now();
        let log = Log::open(&settings, Metrics::new().unwrap().log).unwrap();
        let open_time = started.elapsed();
        let last = format!("{:032x}", id(log.size() - 1));
        assert_eq!(log.current().index_of(&last).unwrap(), Some(log.size() - 1));
        println!("records            {}", log.size());
        println!("open               {open_time:?}");
        println!(
            "RSS before open {before} KiB, after {} KiB (+{} KiB)",
            rss_kib(),
            rss_kib().saturating_sub(before)
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rss_empty, rss_full, appended) = runtime.block_on(async {
        let log = Log::open(&settings, Metrics::new().unwrap().log).unwrap();
        let rss_empty = rss_kib();
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let checkpoints = {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let l = log.clone();
                    let _ = tokio::task::spawn_blocking(move || l.checkpoint()).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..512 {
            let (log, next) = (log.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= records {
                        return;
                    }
                    log.append(&record(i)).await.unwrap();
                    if i % 1_000_000 == 0 && i > 0 {
                        eprintln!(
                            "{i} records, RSS {} KiB, log memory {} KiB, {:?}",
                            rss_kib(),
                            log.memory_bytes() / 1024,
                            started.elapsed()
                        );
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        checkpoints.abort();
        let l = log.clone();
        tokio::task::spawn_blocking(move || l.checkpoint().unwrap())
            .await
            .unwrap();
        let elapsed = started.elapsed();
        eprintln!(
            "appended {records} records in {elapsed:?} ({:.0}/s)",
            records as f64 / elapsed.as_secs_f64()
        );
        (rss_empty, rss_kib(), log.size())
    });
    drop(runtime);
    let started = Instant::now();
    let reopened = Log::open(&settings, Metrics::new().unwrap().log).unwrap();
    let open_time = started.elapsed();
    let last = format!("{:032x}", id(records - 1));
    assert_eq!(reopened.size(), appended);
    assert_eq!(
        reopened.current().index_of(&last).unwrap(),
        Some(records - 1)
    );
    println!("records            {appended}");
    println!("RSS at 0 records   {rss_empty} KiB");
    println!(
        "RSS at {appended} {rss_full} KiB (+{} KiB)",
        rss_full.saturating_sub(rss_empty)
    );
    println!("open at {appended} {open_time:?}");
    println!(
        "RSS after reopening {} KiB (+{} KiB over the empty log)",
        rss_kib(),
        rss_kib().saturating_sub(rss_empty)
    );
    drop(reopened);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
