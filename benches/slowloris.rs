//! Upload latency under a slowloris attack against the same uploads
//! without it, in one process: the proxy (in-process, as the integration
//! tests run it, on 2 runtime workers), the attackers and the uploading
//! client share the machine.
//!
//! ```text
//! cargo bench --bench slowloris                       # 3 rounds, 2,000 attackers, 400 uploads
//! BENCH_ROUNDS=5 BENCH_ATTACKERS=4000 cargo bench --bench slowloris
//! ```
//!
//! Each round measures `BENCH_UPLOADS` uploads (1 KiB, a fresh TLS
//! connection each, 201 expected) without an attack, then opens
//! `BENCH_ATTACKERS` slowloris connections (TLS finished, part of a
//! request head sent, then a byte every 10 s, spread evenly), measures the
//! same uploads again and ends the attack. It reports each round's median
//! and p99 with and without, and the ratios of the medians over the
//! rounds. `tests/hardening.rs` counts what the attack costs the process
//! (wake-ups); this reports what a legitimate client sees.

#[path = "../tests/it/support.rs"]
mod support;

use std::time::Duration;

use support::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a count: {v}"))
        })
        .unwrap_or(default)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run
    // builds this too and must not spend minutes in it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("slowloris: run with `cargo bench --bench slowloris`");
        return;
    }
    let rounds = env("BENCH_ROUNDS", 3);
    let attackers = env("BENCH_ATTACKERS", 2_000);
    let uploads = env("BENCH_UPLOADS", 400);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            rlimit::increase_nofile_limit(4 * attackers as u64 + 1024).unwrap();
            let proxy = Proxy::start(Setup {
                extra: "[timeouts]\nrequest_head = \"90s\"\n".into(),
                ..Setup::default()
            })
            .await;
            upload_latencies(&proxy, 50).await;
            let (mut p50, mut p99s) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
            for round in 1..=rounds {
                let without = upload_latencies(&proxy, uploads).await;
                let attack = Slowloris::open(&proxy, attackers).await;
                attack.trickle();
                let with = upload_latencies(&proxy, uploads).await;
                let alive = attack.end().await;
                assert_eq!(alive, attackers, "every attacker held to the end");
                println!(
                    "round {round}: without median {:?} p99 {:?}; with {attackers} attackers median {:?} p99 {:?}",
                    without[uploads / 2],
                    p99(&without),
                    with[uploads / 2],
                    p99(&with),
                );
                p50.0.push(without[uploads / 2]);
                p50.1.push(with[uploads / 2]);
                p99s.0.push(p99(&without));
                p99s.1.push(p99(&with));
            }
            let ratio = |(without, with): (Vec<Duration>, Vec<Duration>)| {
                let (a, b) = (median(without), median(with));
                (a, b, b.as_secs_f64() / a.as_secs_f64())
            };
            let (a, b, r) = ratio(p50);
            println!("median of round medians: without {a:?}, with {b:?}: {r:.2}x");
            let (a, b, r) = ratio(p99s);
            println!("median of round p99s: without {a:?}, with {b:?}: {r:.2}x");
            proxy.stop().await;
        });
}
