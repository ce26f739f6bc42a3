//! Micro-benchmarks of the per-request hot path that involves no I/O:
//! client-address resolution, GeoIP lookup, and the whole residency decision
//! — without tenants, and with 10,000 tenants recognised by SNI (half by
//! exact name, half by `*.suffix`).
//!
//! `cargo bench --bench decision`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderValue;
use residency_core::country::Country;
use residency_core::decision::{decide, decide_pinned};
use residency_core::geo::Geo;
use residency_core::origin::{self, TrustedProxies};
use residency_core::report::ConfigReport;
use residency_core::tenant::{RawTenant, Tenants};
use residency_proxy::config::Config;
use residency_tools::geoip::{build_country_db, Row};

/// A database shaped like a real one: thousands of networks in both families.
fn geo() -> Geo {
    let codes = ["CH", "DE", "FR", "US", "GB", "JP", "AT", "NL"];
    let mut rows = Vec::new();
    for i in 0..4096u32 {
        let v4 = IpAddr::from(((i + 1) << 20).to_be_bytes());
        rows.push(Row {
            network: ipnet::IpNet::new(v4, 12).unwrap().trunc(),
            country: codes[i as usize % codes.len()].into(),
        });
        let v6: IpAddr = format!("2001:{:x}::", 0x1000 + i).parse().unwrap();
        rows.push(Row {
            network: ipnet::IpNet::new(v6, 32).unwrap(),
            country: codes[(i as usize + 3) % codes.len()].into(),
        });
    }
    let db = build_country_db(&rows, 1).unwrap();
    let overrides = vec![(
        "10.20.0.0/16".parse().unwrap(),
        Country::parse("CH").unwrap(),
    )];
    Geo::from_bytes(db, overrides).unwrap()
}

fn config() -> Config {
    let dir = std::env::temp_dir().join(format!("rp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["c.pem", "c.key", "g.mmdb"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
        .unwrap();
    // Keep the example's policy; point its files at placeholders (the
    // benchmark never opens them).
    let text = text
        .replace("certs/ingest.pem", "c.pem")
        .replace("certs/ingest.key", "c.key")
        .replace("certs/eu-ingest.pem", "c.pem")
        .replace("certs/eu-ingest.key", "c.key")
        .replace("GeoLite2-Country.mmdb", "g.mmdb")
        .replace("keys/residency-log.key", "c.key");
    let config = Config::from_toml(&text, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    config
}

fn bench(c: &mut Criterion) {
    let geo = geo();
    let config = config();
    let policy = &config.policy;
    let ch: IpAddr = "0.16.0.1".parse().unwrap(); // first row: CH
    let v6: IpAddr = "2001:1003::1".parse().unwrap();

    c.bench_function("geo_lookup_v4", |b| b.iter(|| geo.lookup(black_box(ch))));
    c.bench_function("geo_lookup_v6", |b| b.iter(|| geo.lookup(black_box(v6))));
    let mut turn = 0usize;
    c.bench_function("decide", |b| {
        b.iter(|| {
            turn = turn.wrapping_add(1);
            decide(
                &geo,
                policy,
                black_box(ch),
                turn,
                |_| true,
                |_| Default::default(),
            )
        })
    });

    // 10,000 tenants: even ones by exact name, odd ones by `*.suffix`,
    // pinned round-robin to the example's jurisdictions.
    let names: Vec<String> = policy
        .jurisdictions
        .iter()
        .map(|j| j.name.clone())
        .collect();
    let raw: Vec<RawTenant> = (0..10_000)
        .map(|i| RawTenant {
            name: Some(format!("tenant-{i}")),
            jurisdiction: Some(names[i % names.len()].clone()),
            sni: vec![if i % 2 == 0 {
                format!("ingest.tenant-{i}.example")
            } else {
                format!("*.tenant-{i}.example")
            }],
            ..RawTenant::default()
        })
        .collect();
    let mut report = ConfigReport::new("bench");
    let tenants = Tenants::from_raw(&raw, |i| format!("tenants[{i}]"), Some(policy), &mut report)
        .expect("tenants load");
    let exact = "ingest.tenant-4242.example";
    let wildcard = "eu-3.tenant-4243.example";
    let stranger = "ingest.unknown.example";
    for (label, host) in [
        ("decide_10k_tenants_sni_exact", exact),
        ("decide_10k_tenants_sni_wildcard", wildcard),
        ("decide_10k_tenants_sni_unrecognised", stranger),
    ] {
        c.bench_function(label, |b| {
            b.iter(|| {
                turn = turn.wrapping_add(1);
                match tenants.by_sni(black_box(host)) {
                    Some(id) => decide_pinned(
                        &geo,
                        policy,
                        black_box(ch),
                        tenants.get(id),
                        turn,
                        |_| true,
                        |_| Default::default(),
                    ),
                    None => decide(
                        &geo,
                        policy,
                        black_box(ch),
                        turn,
                        |_| true,
                        |_| Default::default(),
                    ),
                }
            })
        });
    }

    let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
    let xff = [HeaderValue::from_static(
        "198.51.100.7, 192.0.2.1, 10.1.2.3",
    )];
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    c.bench_function("origin_resolve_xff", |b| {
        b.iter(|| origin::resolve(black_box(peer), None, xff.iter(), &trusted))
    });

    // A request's count against limits.max_requests_per_client, taken and
    // given back, with 1,000 other clients in flight.
    let in_flight = std::sync::Arc::new(residency_proxy::client_limit::InFlight::default());
    let others: Vec<_> = (0..1000u32)
        .map(|i| {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            in_flight.enter(addr, 256).unwrap()
        })
        .collect();
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    c.bench_function("client_limit_enter_and_leave", |b| {
        b.iter(|| drop(in_flight.enter(black_box(client), 256)))
    });
    drop(others);
}

criterion_group!(benches, bench);
criterion_main!(benches);
