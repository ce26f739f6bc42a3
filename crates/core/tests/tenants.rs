//! Tenant pins: load-time checks, recognition, and the property that a
//! recognised tenant's upload never leaves its pin's `store_in` (nor an
//! unrecognised client's its GeoIP jurisdiction's).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proptest::prelude::*;
use serde::Deserialize;

use residency_core::country::Country;
use residency_core::decision::{decide, decide_pinned, Outcome, Refusal};
use residency_core::geo::Geo;
use residency_core::policy::{Policy, RawDatacenter, RawJurisdiction, RawUnknownOrigin};
use residency_core::report::ConfigReport;
use residency_core::tenant::*;

#[derive(Deserialize)]
struct Sections {
    #[serde(default)]
    jurisdictions: BTreeMap<String, RawJurisdiction>,
    #[serde(default)]
    unknown_origin: RawUnknownOrigin,
    #[serde(default)]
    datacenters: BTreeMap<String, RawDatacenter>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

const POLICY: &str = r#"
[jurisdictions.ch]
countries = ["CH"]
[jurisdictions.eu]
countries = ["DE", "FR"]
[jurisdictions.uk]
countries = ["GB"]
store_in = ["uk", "eu"]
[jurisdictions.us]
countries = ["US"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://127.0.0.1:1001"]
[datacenters.geneva]
jurisdiction = "ch"
priority = 2
upstreams = ["http://127.0.0.1:1002"]
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["http://127.0.0.1:1003"]
[datacenters.london]
jurisdiction = "uk"
upstreams = ["http://127.0.0.1:1004"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["http://127.0.0.1:1005"]
"#;

fn load(tenants: &str) -> (Policy, Result<Tenants, ConfigReport>) {
    let raw: Sections = config::Config::builder()
        .add_source(config::File::from_str(
            &format!("{POLICY}\n{tenants}"),
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("test TOML parses");
    let mut r = ConfigReport::new("test");
    let policy = Policy::from_raw(
        &raw.jurisdictions,
        &raw.unknown_origin,
        &raw.datacenters,
        &mut r,
    )
    .expect("the policy loads");
    let tenants = Tenants::from_raw(
        &raw.tenants,
        |i| format!("tenants[{i}]"),
        Some(&policy),
        &mut r,
    );
    (policy, r.finish(tenants))
}

fn problems(tenants: &str) -> String {
    load(tenants).1.expect_err("a problem").to_string()
}

#[test]
fn recognises_by_server_name_and_certificate() {
    let (_, t) = load(
        r#"
[[tenants]]
name = "acme"
jurisdiction = "ch"
sni = ["ingest.acme.example", "*.acme.test"]
client_cert = ["uri:spiffe://acme.example/*", "dns:*.devices.acme.example", "cn:acme-uploader"]
[[tenants]]
name = "globex"
jurisdiction = "eu"
sni = ["Globex.Example"]
mismatch = "refuse"
[[tenants]]
name = "initech"
jurisdiction = "uk"
mismatch = { allow_countries = ["US"] }
"#,
    );
    let t = t.unwrap();
    let acme = t.by_name("acme").unwrap();
    let globex = t.by_name("globex").unwrap();
    assert_eq!(t.by_sni("ingest.acme.example"), Some(acme));
    assert_eq!(t.by_sni("eu-1.acme.test"), Some(acme));
    assert_eq!(t.by_sni("a.b.acme.test"), None, "a wildcard is one label");
    assert_eq!(t.by_sni(".acme.test"), None, "an empty label is none");
    assert_eq!(t.by_sni("acme.test"), None);
    assert_eq!(
        t.by_sni("globex.example"),
        Some(globex),
        "lowercased at load"
    );
    assert_eq!(t.by_sni("other.example"), None);
    let cert = |uris: &[&str], dns: &[&str], cn: Option<&str>| CertNames {
        uris: uris.iter().map(|s| s.to_string()).collect(),
        dns: dns.iter().map(|s| s.to_string()).collect(),
        cn: cn.map(str::to_string),
        unreadable: false,
    };
    assert_eq!(
        t.by_cert(&cert(&["spiffe://acme.example/uploader/7"], &[], None)),
        Ok(Some(acme))
    );
    assert_eq!(
        t.by_cert(&cert(&[], &["d1.devices.acme.example"], None)),
        Ok(Some(acme))
    );
    assert_eq!(
        t.by_cert(&cert(&[], &[], Some("acme-uploader"))),
        Ok(Some(acme))
    );
    assert_eq!(t.by_cert(&cert(&[], &[], Some("acme-uploader2"))), Ok(None));
    assert_eq!(
        t.by_cert(&cert(&[], &[".devices.acme.example"], None)),
        Ok(None),
        "an empty label is none"
    );
    // Names that could not be read might have named a tenant: refused,
    // whatever was read besides.
    let unreadable = CertNames {
        unreadable: true,
        ..cert(&["spiffe://acme.example/uploader/7"], &[], None)
    };
    assert_eq!(t.by_cert(&unreadable), Err(Conflict));
    assert!(t.by_certificate());
    let initech = t.get(t.by_name("initech").unwrap());
    assert_eq!(initech.mismatch.as_str(), "allow_countries");
    assert!(initech.mismatch.allows(Country::parse("US")));
    assert!(!initech.mismatch.allows(Country::parse("DE")));
    assert!(!initech.mismatch.allows(None));
}

/// RFC 5280 §7.4: certificate URIs are compared with their scheme and host
/// in any case and the rest (userinfo, path) exactly; `uri:` patterns are
/// read the same way, so two that differ only there overlap.
#[test]
fn certificate_uris_match_with_scheme_and_host_in_any_case() {
    let (_, t) = load(
        r#"
[[tenants]]
name = "acme"
jurisdiction = "ch"
client_cert = ["uri:SPIFFE://Acme.Example/devices/*", "uri:https://Up@Files.Acme.Example:8443/Uploader"]
[[tenants]]
name = "globex"
jurisdiction = "eu"
client_cert = ["uri:URN*"]
"#,
    );
    let t = t.unwrap();
    let acme = Ok(Some(t.by_name("acme").unwrap()));
    let globex = Ok(Some(t.by_name("globex").unwrap()));
    let by_uri = |uri: &str| {
        t.by_cert(&CertNames {
            uris: vec![uri.to_string()],
            ..CertNames::default()
        })
    };
    for (uri, want) in [
        ("spiffe://acme.example/devices/7", acme),
        ("SPIFFE://ACME.example/devices/7", acme),
        ("spiffe://acme.example/Devices/7", Ok(None)),
        ("https://Up@files.acme.example:8443/Uploader", acme),
        ("HTTPS://Up@FILES.ACME.EXAMPLE:8443/Uploader", acme),
        ("https://up@files.acme.example:8443/Uploader", Ok(None)),
        ("https://Up@files.acme.example:8443/uploader", Ok(None)),
        ("urn:uuid:7", globex),
        ("Urn:uuid:7", globex),
    ] {
        assert_eq!(by_uri(uri), want, "{uri}");
    }
    let p = problems(
        r#"
[[tenants]]
name = "a"
jurisdiction = "ch"
client_cert = ["uri:spiffe://acme.example/*"]
[[tenants]]
name = "b"
jurisdiction = "eu"
client_cert = ["uri:SPIFFE://Acme.Example/x"]
"#,
    );
    assert!(
        p.contains("tenants[1].client_cert[0]: `spiffe://acme.example/x` is also matched by uri:spiffe://acme.example/*"),
        "{p}"
    );
}

/// Certificate-name prefixes (`cn:`/`uri:` ending in `*`) are kept
/// sorted: among 2,000 of them each name finds its own one, a name between
/// two finds none, and every overlap is still named at load — a prefix
/// that starts another, or that another starts, or an exact name — in
/// either order (scale audit, stop 65: each certificate scanned them all).
#[test]
fn certificate_prefixes_among_many_find_their_own() {
    let mut text = String::new();
    for i in 0..2000 {
        text += &format!(
            "[[tenants]]\nname = \"t{i}\"\njurisdiction = \"ch\"\nclient_cert = [\"cn:dev-{i:05}-*\"]\n"
        );
    }
    let (_, t) = load(&text);
    let t = t.unwrap();
    let by_cn = |cn: &str| {
        t.by_cert(&CertNames {
            cn: Some(cn.to_string()),
            ..CertNames::default()
        })
    };
    for i in [0, 1, 999, 1000, 1999] {
        let want = Ok(Some(t.by_name(&format!("t{i}")).unwrap()));
        assert_eq!(by_cn(&format!("dev-{i:05}-a")), want, "{i}");
        assert_eq!(by_cn(&format!("dev-{i:05}-")), want, "{i}");
        // Sorted right after the prefix, or right before it: none.
        assert_eq!(by_cn(&format!("dev-{i:05}.")), Ok(None), "{i}");
        assert_eq!(by_cn(&format!("dev-{i:05}")), Ok(None), "{i}");
    }
    assert_eq!(by_cn("dev-02000-a"), Ok(None));
    assert_eq!(by_cn("dev"), Ok(None));
    for (first, second, says) in [
        (
            "cn:dev-*",
            "cn:dev-7*",
            "`dev-7*` overlaps cn:dev-* of tenants[0]",
        ),
        (
            "cn:dev-7*",
            "cn:dev-*",
            "`dev-*` overlaps cn:dev-7* of tenants[0]",
        ),
        (
            "cn:dev-7",
            "cn:dev-*",
            "`dev-*` also matches cn:dev-7 of tenants[0]",
        ),
        (
            "cn:dev-*",
            "cn:dev-7",
            "`dev-7` is also matched by cn:dev-* of tenants[0]",
        ),
    ] {
        let p = problems(&format!(
            "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nclient_cert = [\"cn:zzz\", \"{first}\", \"cn:aaa*\"]\n\
             [[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nclient_cert = [\"{second}\"]\n"
        ));
        assert!(
            p.contains(&format!("tenants[1].client_cert[0]: {says}")),
            "{first} {second}: {p}"
        );
    }
}

#[test]
fn two_sources_naming_two_tenants_conflict() {
    let (a, b) = (TenantId(0), TenantId(1));
    let r = |tenant, source| Ok(Some(Recognized { tenant, source }));
    assert_eq!(combine(None, None, None), Ok(None));
    assert_eq!(combine(None, None, Some(a)), r(a, Source::Sni));
    assert_eq!(combine(None, Some(a), Some(a)), r(a, Source::ClientCert));
    assert_eq!(combine(Some(a), Some(a), None), r(a, Source::Token));
    assert_eq!(combine(Some(a), None, Some(b)), Err(Conflict));
    assert_eq!(combine(None, Some(b), Some(a)), Err(Conflict));
}

#[test]
fn load_time_checks_name_the_key() {
    let p = problems("[[tenants]]\nname = \"a\"\njurisdiction = \"mars\"\n");
    assert!(
        p.contains("tenants[0].jurisdiction: no jurisdiction named `mars`"),
        "{p}"
    );
    let p = problems("[[tenants]]\njurisdiction = \"ch\"\n");
    assert!(p.contains("tenants[0].name: required"), "{p}");
    // A bad name hides nothing else of its tenant (README audit, stop 64).
    let p =
        problems("[[tenants]]\nname = \"a b\"\njurisdiction = \"mars\"\nsni = [\"bad name\"]\n");
    for says in [
        "tenants[0].name: required",
        "tenants[0].jurisdiction: no jurisdiction named `mars`",
        "tenants[0].sni[0]: `bad name` is not a host name",
    ] {
        assert!(p.contains(says), "{says}: {p}");
    }
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\n[[tenants]]\nname = \"a\"\njurisdiction = \"eu\"\n",
    );
    assert!(
        p.contains("tenants[1].name: tenant `a` is defined twice"),
        "{p}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"x.acme.example\"]\n\
         [[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nsni = [\"*.acme.example\"]\n",
    );
    assert!(
        p.contains("tenants[1].sni[0]: `*.acme.example` also matches sni `x.acme.example` of tenants[0].sni[0] (tenant `a`)"),
        "{p}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"*.acme.example\"]\n\
         [[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nsni = [\"x.acme.example\"]\n",
    );
    assert!(
        p.contains("tenants[1].sni[0]: `x.acme.example` is also matched by sni `*.acme.example`"),
        "{p}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"x.example\"]\n\
         [[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nsni = [\"X.example\"]\n",
    );
    assert!(
        p.contains("tenants[1].sni[0]: sni `x.example` is also given at tenants[0].sni[0]"),
        "{p}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nclient_cert = [\"uri:spiffe://a/*\"]\n\
         [[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nclient_cert = [\"uri:spiffe://a/b\"]\n",
    );
    assert!(
        p.contains("tenants[1].client_cert[0]: `spiffe://a/b` is also matched by uri:spiffe://a/*"),
        "{p}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nclient_cert = [\"email:a@b\"]\n",
    );
    assert!(
        p.contains("tenants[0].client_cert[0]: `email:a@b` is not `uri:…`, `dns:…` or `cn:…`"),
        "{p}"
    );
    let p = problems("[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nmismatch = \"maybe\"\n");
    assert!(
        p.contains("tenants[0].mismatch: `maybe` is not one of"),
        "{p}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nmismatch = { allow_countries = [\"XX1\"] }\n",
    );
    assert!(
        p.contains("tenants[0].mismatch.allow_countries: `XX1`"),
        "{p}"
    );
    let p = problems("[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"bad name\"]\n");
    assert!(
        p.contains("tenants[0].sni[0]: `bad name` is not a host name"),
        "{p}"
    );
}

/// A GeoIP database placing 10.0.C.0/24 in country C of `COUNTRIES`
/// (10.0.5.0/24 and up: in no database).
fn geo() -> Geo {
    Geo::from_bytes(geo_db(), Vec::new()).unwrap()
}

/// The bytes of [`geo`]'s database.
fn geo_db() -> Vec<u8> {
    let csv: String = COUNTRIES
        .iter()
        .enumerate()
        .map(|(i, c)| format!("10.0.{i}.0/24,{c}\n"))
        .collect();
    let rows = residency_tools::geoip::parse_csv(&csv).unwrap();
    residency_tools::geoip::build_country_db(&rows, 1_750_000_000).unwrap()
}

/// CH, DE, GB and US are in jurisdictions; JP is in none.
const COUNTRIES: [&str; 5] = ["CH", "DE", "GB", "US", "JP"];

/// Three tenants pinned to ch: `mismatch` allow, refuse, and allow from DE.
const CH_PINS: &str = r#"
[[tenants]]
name = "allow"
jurisdiction = "ch"
[[tenants]]
name = "refuse"
jurisdiction = "ch"
mismatch = "refuse"
[[tenants]]
name = "some"
jurisdiction = "ch"
mismatch = { allow_countries = ["DE"] }
"#;

/// The data centre a decision forwards to, or its refusal.
fn where_to(policy: &Policy, d: residency_core::decision::Decision) -> Result<String, Refusal> {
    match d.outcome {
        Outcome::Forward(u) => Ok(policy.datacenter_of(u).name.clone()),
        Outcome::Refuse(r) => Err(r),
    }
}

#[test]
fn a_pin_wins_over_geoip_and_mismatch_policies_apply() {
    let (policy, t) = load(CH_PINS);
    let t = t.unwrap();
    let geo = geo();
    let de = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9));
    let us = IpAddr::V4(Ipv4Addr::new(10, 0, 3, 9));
    let ch = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    let dc = |d| where_to(&policy, d);
    let pinned = |name: &str, addr| {
        let tenant = t.get(t.by_name(name).unwrap());
        decide_pinned(&geo, &policy, addr, tenant, 0, |_| true, |_| Duration::ZERO)
    };
    // GeoIP alone: Germany goes to frankfurt.
    let by_geo = decide(&geo, &policy, de, 0, |_| true, |_| Duration::ZERO);
    assert_eq!(dc(by_geo), Ok("frankfurt".into()));
    // Pinned to ch from Germany: zurich, with GeoIP's eu recorded.
    let d = pinned("allow", de);
    assert_eq!(dc(d), Ok("zurich".into()));
    assert_eq!(
        d.jurisdiction
            .map(|(j, _)| policy.jurisdiction(j).name.as_str()),
        Some("ch")
    );
    assert_eq!(
        d.origin_jurisdiction
            .map(|j| policy.jurisdiction(j).name.as_str()),
        Some("eu")
    );
    assert_eq!(dc(pinned("refuse", de)), Err(Refusal::TenantOriginMismatch));
    assert_eq!(dc(pinned("refuse", ch)), Ok("zurich".into()));
    assert_eq!(dc(pinned("some", de)), Ok("zurich".into()));
    assert_eq!(dc(pinned("some", us)), Err(Refusal::TenantOriginMismatch));
    // Unknown to GeoIP: the pin still decides where, the policy whether.
    let unknown = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(dc(pinned("allow", unknown)), Ok("zurich".into()));
    assert_eq!(
        dc(pinned("refuse", unknown)),
        Err(Refusal::TenantOriginMismatch)
    );
}

/// A record the database holds for an address that does not decode (a
/// damaged file) refuses the database at load; and were one met by a
/// lookup, it would be no unknown origin: the upload is refused with
/// `geoip_error`, never sent to `[unknown_origin]`'s jurisdiction (fuzz
/// audit, stop 64: a Swiss client's upload was stored in virginia). A pin
/// whose `mismatch` takes any origin still decides without the country.
#[test]
fn a_record_that_does_not_decode_is_refused_not_taken_for_an_unknown_origin() {
    use residency_core::geo::LookupResult;
    let (policy, t) = load(&format!(
        "[unknown_origin]\naction = \"jurisdiction\"\njurisdiction = \"us\"\n{CH_PINS}"
    ));
    let t = t.unwrap();
    let mut db = geo_db();
    // CH's record, {country: {iso_code: "CH"}}: its inner map's marker made
    // a 3-byte string, so the record no longer decodes.
    let ch_code = db.windows(3).position(|w| w == b"BCH").unwrap();
    let record = db[..ch_code]
        .windows(9)
        .rposition(|w| w == b"\xe1Gcountry")
        .unwrap();
    // A key whose bytes are not text reads as no key at all: the record
    // would be one without a country (verification, stop 64).
    let mut key_damaged = db.clone();
    key_damaged[record + 5] = 0xff;
    let Err(e) = Geo::from_bytes(key_damaged, Vec::new()) else {
        panic!("a database with a damaged key loaded");
    };
    assert!(
        e.to_string()
            .starts_with("<memory>: the record of 10.0.0.0/24 does not decode ("),
        "{e}"
    );
    db[record + 9] = 0x43;
    // Refused at load, naming the network (check-config, start, reload) …
    let Err(e) = Geo::from_bytes(db.clone(), Vec::new()) else {
        panic!("a damaged database loaded");
    };
    assert!(
        e.to_string()
            .starts_with("<memory>: the record of 10.0.0.0/24 does not decode ("),
        "{e}"
    );
    // … and a lookup that met such a record would be refused.
    let geo = Geo::from_bytes_unverified(db, Vec::new()).unwrap();
    let ch = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    let de = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9));
    assert_eq!(geo.lookup(ch), (None, LookupResult::Error));
    let dc = |d| where_to(&policy, d);
    let d = decide(&geo, &policy, ch, 0, |_| true, |_| Duration::ZERO);
    assert_eq!(d.lookup, LookupResult::Error);
    assert_eq!(dc(d), Err(Refusal::GeoipError));
    let d = decide(&geo, &policy, de, 0, |_| true, |_| Duration::ZERO);
    assert_eq!(dc(d), Ok("frankfurt".into()));
    let pinned = |name: &str| {
        let tenant = t.get(t.by_name(name).unwrap());
        dc(decide_pinned(
            &geo,
            &policy,
            ch,
            tenant,
            0,
            |_| true,
            |_| Duration::ZERO,
        ))
    };
    assert_eq!(pinned("allow"), Ok("zurich".into()));
    assert_eq!(pinned("refuse"), Err(Refusal::GeoipError));
    assert_eq!(pinned("some"), Err(Refusal::GeoipError));
}

/// `[unknown_origin]` sending the unplaced to the pin's own jurisdiction
/// places no one there: a client GeoIP does not know, or whose country no
/// jurisdiction lists, is still outside the pin for `mismatch`.
#[test]
fn unknown_origin_does_not_place_a_client_inside_a_pin() {
    let (policy, t) = load(&format!(
        "[unknown_origin]\naction = \"jurisdiction\"\njurisdiction = \"ch\"\n{CH_PINS}"
    ));
    let t = t.unwrap();
    let geo = geo();
    let dc = |d| where_to(&policy, d);
    let pinned = |name: &str, addr| {
        let tenant = t.get(t.by_name(name).unwrap());
        decide_pinned(&geo, &policy, addr, tenant, 0, |_| true, |_| Duration::ZERO)
    };
    let unknown = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let jp = IpAddr::V4(Ipv4Addr::new(10, 0, 4, 9));
    let de = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9));
    let ch = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    // Unpinned, both go where [unknown_origin] says.
    for addr in [unknown, jp] {
        let d = decide(&geo, &policy, addr, 0, |_| true, |_| Duration::ZERO);
        assert_eq!(dc(d), Ok("zurich".into()), "{addr}");
    }
    for addr in [unknown, jp] {
        assert_eq!(dc(pinned("allow", addr)), Ok("zurich".into()), "{addr}");
        assert_eq!(
            dc(pinned("refuse", addr)),
            Err(Refusal::TenantOriginMismatch),
            "{addr}"
        );
        assert_eq!(
            dc(pinned("some", addr)),
            Err(Refusal::TenantOriginMismatch),
            "{addr}"
        );
    }
    assert_eq!(dc(pinned("some", de)), Ok("zurich".into()));
    assert_eq!(dc(pinned("refuse", ch)), Ok("zurich".into()));
    // Recorded (and counted as a mismatch) as placed nowhere.
    assert_eq!(pinned("allow", jp).origin_jurisdiction, None);
}

proptest! {
    /// For random tenants, pins, mismatch policies, addresses and health:
    /// a recognised tenant's upload is only ever forwarded into its pin's
    /// `store_in`, an unrecognised client's into its GeoIP jurisdiction's.
    #[test]
    fn no_upload_leaves_its_pin_or_its_origin(
        pins in proptest::collection::vec((0usize..4, 0usize..3), 1..12),
        requests in proptest::collection::vec((0u8..8, proptest::option::of(0usize..12), 0usize..64, any::<u8>()), 1..64),
    ) {
        let jurisdictions = ["ch", "eu", "uk", "us"];
        let mismatches = ["\"allow\"", "\"refuse\"", "{ allow_countries = [\"DE\", \"US\"] }"];
        let text: String = pins
            .iter()
            .enumerate()
            .map(|(i, (j, m))| format!(
                "[[tenants]]\nname = \"t{i}\"\njurisdiction = \"{}\"\nsni = [\"t{i}.example\"]\nmismatch = {}\n",
                jurisdictions[*j], mismatches[*m]
            ))
            .collect();
        let (policy, tenants) = load(&text);
        let tenants = tenants.unwrap();
        let geo = geo();
        for (octet, tenant, turn, health) in requests {
            let addr = IpAddr::V4(Ipv4Addr::new(10, 0, octet, 7));
            let is_up = |u: residency_core::policy::UpstreamId| health & (1 << (u.0 % 8)) != 0;
            let recognised = tenant
                .filter(|i| *i < pins.len())
                .and_then(|i| tenants.by_sni(&format!("t{i}.example")));
            let (decision, bound) = match recognised {
                Some(id) => {
                    let t = tenants.get(id);
                    let d = decide_pinned(&geo, &policy, addr, t, turn, is_up, |_| Duration::ZERO);
                    (d, Some(t.jurisdiction))
                }
                None => {
                    let d = decide(&geo, &policy, addr, turn, is_up, |_| Duration::ZERO);
                    let origin = policy.jurisdiction_for(d.country).ok().map(|(j, _)| j);
                    (d, origin)
                }
            };
            if let Outcome::Forward(u) = decision.outcome {
                let bound = bound.expect("forwarded only with a jurisdiction");
                prop_assert!(policy.is_permitted(bound, u), "forwarded outside {bound:?}");
                prop_assert!(is_up(u));
            }
        }
    }
}

#[test]
fn the_routing_hash_commits_to_every_pin() {
    let one = "[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"a.example\", \"*.a.test\"]\n\
               [[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nclient_cert = [\"uri:spiffe://b/*\"]\nmismatch = \"refuse\"\n";
    let (policy, t) = load(one);
    let base = routing_hash(&policy, &t.unwrap());
    let (_, none) = load("");
    assert_eq!(
        routing_hash(&policy, &none.unwrap()),
        policy.hash(),
        "unchanged without tenants"
    );
    assert_ne!(base, policy.hash());
    // The same tenants written in another order: the same hash.
    let swapped = "[[tenants]]\nname = \"b\"\njurisdiction = \"eu\"\nclient_cert = [\"uri:spiffe://b/*\"]\nmismatch = \"refuse\"\n\
                   [[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"*.a.test\", \"a.example\"]\n";
    assert_eq!(routing_hash(&policy, &load(swapped).1.unwrap()), base);
    // Any change to a pin, a pattern or a mismatch policy: another hash.
    for changed in [
        one.replace("jurisdiction = \"ch\"", "jurisdiction = \"uk\""),
        one.replace("*.a.test", "*.b.test"),
        one.replace("mismatch = \"refuse\"", "mismatch = \"allow\""),
        one.replace("spiffe://b/*", "spiffe://b/x"),
    ] {
        assert_ne!(
            routing_hash(&policy, &load(&changed).1.unwrap()),
            base,
            "{changed}"
        );
    }
}
