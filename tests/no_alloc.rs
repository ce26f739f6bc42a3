//! The per-request GeoIP lookup and the whole residency decision do not
//! allocate, nor does recognising a tenant by SNI or client certificate. Its own test binary: `allocation-counter` replaces the global
//! allocator with a counting one.

use residency_core::decision::{decide, Outcome};
use residency_core::geo::{Geo, LookupResult};
use residency_proxy::config::Config;
use residency_tools::geoip::{build_country_db, Row};

fn geo() -> Geo {
    let rows: Vec<Row> = [
        ("192.0.2.0/24", "CH"),
        ("198.51.100.0/24", "DE"),
        ("2001:db8::/32", "US"),
    ]
    .iter()
    .map(|(n, c)| Row {
        network: n.parse().unwrap(),
        country: c.to_string(),
    })
    .collect();
    let db = build_country_db(&rows, 1).unwrap();
    Geo::from_bytes(
        db,
        vec![(
            "10.20.0.0/16".parse().unwrap(),
            residency_core::country::Country::parse("CH").unwrap(),
        )],
    )
    .unwrap()
}

#[test]
fn lookup_and_decision_do_not_allocate() {
    let geo = geo();
    let dir = std::env::temp_dir().join(format!("rp-noalloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["c.pem", "c.key", "g.mmdb"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    let toml = r#"
[[listeners]]
address = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "c.pem", key = "c.key" }]
[geoip]
database = "g.mmdb"
[jurisdictions.ch]
countries = ["CH"]
[jurisdictions.eu]
countries = ["DE"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["http://127.0.0.1:3"]
[[tenants]]
name = "acme"
jurisdiction = "ch"
sni = ["acme.ingest.test", "*.acme.test"]
client_cert = ["uri:spiffe://acme.test/*", "dns:*.devices.acme.test", "cn:acme-uploader"]
"#;
    let config = Config::from_toml(toml, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let policy = &config.policy;
    let addrs: Vec<std::net::IpAddr> = [
        "192.0.2.7",
        "::ffff:198.51.100.1",
        "2001:db8::1",
        "10.20.3.4",
        "203.0.113.1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();

    // Warm up lazily initialised state, then count.
    for a in &addrs {
        let _ = decide(&geo, policy, *a, 0, |_| true, |_| Default::default());
    }
    let mut outcomes = Vec::with_capacity(addrs.len() * 2);
    let info = allocation_counter::measure(|| {
        for (turn, a) in addrs.iter().enumerate() {
            let (_, result) = geo.lookup(*a);
            let d = decide(&geo, policy, *a, turn, |u| u.0 != 0, |_| Default::default());
            outcomes.push((result, d.outcome));
        }
    });
    assert_eq!(info.count_total, 0, "the decision path allocated: {info:?}");

    // Tenants: recognised by server name and by certificate names (read
    // once per connection, outside the request), then the pinned decision.
    let tenancy = &config.tenancy;
    let cert = residency_core::tenant::CertNames {
        uris: vec!["spiffe://acme.test/devices/7".into()],
        dns: vec!["d7.devices.acme.test".into()],
        cn: Some("acme-uploader".into()),
        unreadable: false,
    };
    let headers = http::HeaderMap::new();
    let de: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let _ = tenancy.recognize(
        Some("eu-1.acme.test"),
        Some("eu-1.acme.test"),
        Some(&cert),
        &headers,
    );
    let mut pinned = Vec::with_capacity(8);
    let info = allocation_counter::measure(|| {
        for sni in ["acme.ingest.test", "eu-1.acme.test", "other.test"] {
            let r = tenancy
                .recognize(Some(sni), Some(sni), Some(&cert), &headers)
                .unwrap();
            let r = r.expect("the certificate recognises acme");
            let tenant = tenancy.tenants.get(r.tenant);
            let d = residency_core::decision::decide_pinned(
                &geo,
                policy,
                de,
                tenant,
                0,
                |_| true,
                |_| Default::default(),
            );
            pinned.push((r.source, d.outcome));
        }
    });
    assert_eq!(
        info.count_total, 0,
        "tenant recognition allocated: {info:?}"
    );
    for (source, outcome) in &pinned {
        assert_eq!(source.as_str(), "client_cert");
        let Outcome::Forward(u) = outcome else {
            panic!("pinned upload refused: {pinned:?}")
        };
        assert_eq!(
            policy.datacenter_of(*u).name,
            "zurich",
            "the pin, not GeoIP's eu"
        );
    }
    // And it decided something real.
    assert_eq!(outcomes[0].0, LookupResult::Hit);
    assert!(matches!(outcomes[0].1, Outcome::Forward(_)));
    assert_eq!(outcomes[3].0, LookupResult::Override);
    assert_eq!(outcomes[4].0, LookupResult::Miss);
    assert!(matches!(outcomes[4].1, Outcome::Refuse(_)));
}
