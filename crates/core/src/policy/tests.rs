//! Table tests of the pure residency decision (steps 3–5).

use super::*;

/// The policy's sections of a configuration file.
#[derive(Deserialize)]
struct Sections {
    #[serde(default)]
    jurisdictions: BTreeMap<String, RawJurisdiction>,
    #[serde(default)]
    unknown_origin: RawUnknownOrigin,
    #[serde(default)]
    datacenters: BTreeMap<String, RawDatacenter>,
}

/// Through the `config` crate, as the proxy loads files (it hands every
/// value over as a string).
fn raw(text: &str) -> Sections {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("test TOML parses")
}

fn build(text: &str) -> Result<Policy, ConfigReport> {
    let raw = raw(text);
    let mut r = ConfigReport::new("test");
    let p = Policy::from_raw(
        &raw.jurisdictions,
        &raw.unknown_origin,
        &raw.datacenters,
        &mut r,
    );
    r.finish(p)
}

const POLICY: &str = r#"
[jurisdictions.ch]
countries = ["CH", "LI"]
[jurisdictions.eu]
countries = ["DE", "FR", "AT"]
[jurisdictions.uk]
countries = ["GB"]
store_in = ["uk", "eu"]
[jurisdictions.us]
countries = ["US"]

[datacenters.zurich]
jurisdiction = "ch"
priority = 1
upstreams = ["http://127.0.0.1:1001", "http://127.0.0.1:1002"]
[datacenters.geneva]
jurisdiction = "ch"
priority = 2
upstreams = ["http://127.0.0.1:1003"]
[datacenters.frankfurt]
jurisdiction = "eu"
priority = 1
upstreams = ["http://127.0.0.1:1004"]
[datacenters.paris]
jurisdiction = "eu"
priority = 1
upstreams = ["http://127.0.0.1:1005"]
[datacenters.london]
jurisdiction = "uk"
priority = 2
upstreams = ["https://ingest.lon.example.com"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["http://127.0.0.1:1007"]
"#;

fn policy() -> Policy {
    build(POLICY).unwrap()
}

fn country(code: &str) -> Option<Country> {
    Country::parse(code)
}

fn jname(p: &Policy, c: Option<Country>) -> Result<&str, OriginRefusal> {
    p.jurisdiction_for(c)
        .map(|(j, _)| p.jurisdiction(j).name.as_str())
}

fn dc_names(p: &Policy, j: &str) -> Vec<(u32, Vec<String>)> {
    let id = JurisdictionId(p.jurisdictions.iter().position(|x| x.name == j).unwrap());
    p.permitted(id)
        .iter()
        .map(|g| {
            (
                g.priority,
                g.datacenters
                    .iter()
                    .map(|d| p.datacenter(*d).name.clone())
                    .collect(),
            )
        })
        .collect()
}

fn jid(p: &Policy, name: &str) -> JurisdictionId {
    JurisdictionId(p.jurisdictions.iter().position(|x| x.name == name).unwrap())
}

#[test]
fn country_to_jurisdiction() {
    let p = policy();
    let cases = [
        ("CH", Ok("ch")),
        ("LI", Ok("ch")),
        ("DE", Ok("eu")),
        ("GB", Ok("uk")),
        ("US", Ok("us")),
        ("JP", Err(OriginRefusal::OriginNotPermitted)),
    ];
    for (c, want) in cases {
        assert_eq!(jname(&p, country(c)), want, "{c}");
    }
    assert_eq!(jname(&p, None), Err(OriginRefusal::OriginUnknown));
}

#[test]
fn unknown_origin_can_name_a_jurisdiction() {
    let p = build(&format!(
        "{POLICY}\n[unknown_origin]\naction = \"jurisdiction\"\njurisdiction = \"eu\"\n"
    ))
    .unwrap();
    assert_eq!(jname(&p, None), Ok("eu"));
    assert_eq!(jname(&p, country("JP")), Ok("eu"));
    assert_eq!(
        p.jurisdiction_for(None).map(|x| x.1),
        Ok(Assignment::UnknownOrigin)
    );
    assert_eq!(
        p.jurisdiction_for(country("CH")).map(|x| x.1),
        Ok(Assignment::Listed)
    );
}

#[test]
fn store_in_and_priorities() {
    let p = policy();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        dc_names(&p, "ch"),
        vec![(1, s(&["zurich"])), (2, s(&["geneva"]))]
    );
    assert_eq!(dc_names(&p, "eu"), vec![(1, s(&["frankfurt", "paris"]))]);
    // uk may store in uk or eu; eu's priority 1 beats london's 2
    assert_eq!(
        dc_names(&p, "uk"),
        vec![(1, s(&["frankfurt", "paris"])), (2, s(&["london"]))]
    );
    assert_eq!(dc_names(&p, "us"), vec![(1, s(&["virginia"]))]);
}

#[test]
fn pick_prefers_priority_then_shares_load() {
    let p = policy();
    let ch = jid(&p, "ch");
    let all_up = |_| true;
    let picked: Vec<String> = (0..4)
        .map(|t| p.upstream(p.pick(ch, t, all_up).unwrap()).uri.to_string())
        .collect();
    let (z1, z2) = ("http://127.0.0.1:1001/", "http://127.0.0.1:1002/");
    assert_eq!(
        picked,
        vec![z1, z2, z1, z2],
        "both zurich upstreams share load"
    );

    let zurich_down = |u: UpstreamId| p.datacenter_of(u).name != "zurich";
    assert_eq!(
        p.datacenter_of(p.pick(ch, 0, zurich_down).unwrap()).name,
        "geneva"
    );

    let eu = jid(&p, "eu");
    let names: Vec<String> = (0..2)
        .map(|t| p.datacenter_of(p.pick(eu, t, all_up).unwrap()).name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["frankfurt", "paris"],
        "equal priorities share load"
    );
}

#[test]
fn pick_never_leaves_the_permitted_set() {
    let p = policy();
    for j in 0..p.jurisdictions.len() {
        let j = JurisdictionId(j);
        for mask in 0u32..(1 << p.upstreams.len()) {
            let up = |u: UpstreamId| mask & (1 << u.0) != 0;
            for turn in 0..3 {
                match p.pick(j, turn, up) {
                    Some(u) => assert!(p.is_permitted(j, u) && up(u)),
                    None => {
                        let any =
                            p.upstreams.iter().enumerate().any(|(i, _)| {
                                up(UpstreamId(i)) && p.is_permitted(j, UpstreamId(i))
                            });
                        assert!(!any, "a permitted upstream was up but not picked");
                    }
                }
            }
        }
    }
    let us = jid(&p, "us");
    assert_eq!(
        p.pick(us, 0, |u| p.datacenter_of(u).name != "virginia"),
        None
    );
}

/// Health may change between `pick`'s count of the upstreams up and its
/// choice among them: an upstream that went down meanwhile leaves the
/// choice to those still up, or to the next group (it was `None`: a 503
/// with geneva up).
#[test]
fn pick_survives_an_upstream_going_down_while_it_picks() {
    let p = policy();
    let ch = jid(&p, "ch");
    let z2 = "http://127.0.0.1:1002/";
    let asked = std::cell::Cell::new(0);
    // zurich's first upstream down, its second up only when first asked.
    let flaky = |u: UpstreamId| match p.upstream(u).uri.to_string() {
        uri if uri == z2 => {
            asked.set(asked.get() + 1);
            asked.get() == 1
        }
        _ => p.datacenter_of(u).name != "zurich",
    };
    assert_eq!(
        p.datacenter_of(p.pick(ch, 0, flaky).unwrap()).name,
        "geneva"
    );
    assert!(asked.get() > 1, "asked again while choosing");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[jurisdictions.ch]
countries = ["CH", "XX", "DE", "UK"]
store_in = ["ch", "mars"]
[jurisdictions.eu]
countries = ["DE"]
[jurisdictions.nowhere]
countries = ["JP"]
[unknown_origin]
action = "maybe"
[datacenters.zurich]
jurisdiction = "ch"
priority = "high"
upstreams = ["ftp://x", "http://ok:80", "not a url", "http://127.0.0.1:99999", "http://h:0"]
[datacenters.moon]
jurisdiction = "luna"
upstreams = []
"#;
    let report = build(text).unwrap_err();
    let text = report.to_string();
    for needle in [
        "jurisdictions.ch.countries: `XX` is not an ISO 3166-1 alpha-2 code",
        "jurisdictions.ch.countries: `UK` is not an ISO 3166-1 alpha-2 code (the United Kingdom is GB)",
        "DE is already in jurisdiction `ch`",
        "jurisdictions.ch.store_in: no jurisdiction named `mars`",
        "jurisdictions.nowhere.store_in: no data centre is in nowhere",
        "jurisdictions.eu.store_in: no data centre is in eu: uploads from here could never be stored (store_in is [\"eu\"] when not set): add a [datacenters.<name>] with jurisdiction = \"eu\", or set store_in",
        "unknown_origin.action",
        "datacenters.zurich.priority",
        "datacenters.zurich.upstreams[0]",
        "datacenters.zurich.upstreams[2]",
        // A port nothing can be reached on (config audit, stop 63).
        "datacenters.zurich.upstreams[3]: `http://127.0.0.1:99999`: the port must be 1 to 65535",
        "datacenters.zurich.upstreams[4]: `http://h:0`: the port must be 1 to 65535",
        "datacenters.moon.jurisdiction: no jurisdiction named `luna`",
        "datacenters.moon.upstreams: at least one upstream URL",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(report.problems.len() >= 11, "{text}");
}

/// One server named as two data centres' upstream — a copy-paste from
/// frankfurt into virginia — is refused: the proxy would store US uploads
/// in the EU and name, answer and record them as virginia's. So is one
/// listed twice in a data centre. Spelt differently (case, default port,
/// a trailing `/`), it is still the same server; another path prefix on
/// it is another place.
#[test]
fn one_server_is_not_two_upstreams() {
    const JURISDICTIONS: &str = "[jurisdictions.eu]\ncountries = [\"DE\"]\n\
                                 [jurisdictions.us]\ncountries = [\"US\"]\n";
    let text = JURISDICTIONS.to_string()
        + r#"
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["http://ingest.fra.example:80/v1", "https://Ingest.FRA.example/", "http://INGEST.fra.example/v1/"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["http://ingest.fra.example/v1", "https://ingest.fra.example:443", "https://ingest.fra.example/v2"]
[datacenters.geneva]
jurisdiction = "eu"
upstreams = ["https://ingest.fra.example./v2", "http://[::1]:9000", "http://[0:0:0:0:0:0:0:1]:9000"]
"#;
    let report = build(&text).unwrap_err();
    let text = report.to_string();
    for needle in [
        "datacenters.frankfurt.upstreams[2]: `http://INGEST.fra.example/v1/` is datacenters.frankfurt.upstreams[0] again: list each server once",
        "datacenters.virginia.upstreams[0]: `http://ingest.fra.example/v1` is also datacenters.frankfurt.upstreams[0]: two data centres cannot be one server",
        "datacenters.virginia.upstreams[1]: `https://ingest.fra.example:443/` is also datacenters.frankfurt.upstreams[1]",
        "datacenters.virginia.upstreams[2]: `https://ingest.fra.example/v2` is also datacenters.geneva.upstreams[0]",
        "datacenters.geneva.upstreams[2]: `http://[0:0:0:0:0:0:0:1]:9000/` is datacenters.geneva.upstreams[1] again",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(report.problems.len(), 5, "{text}");
    // Each on its own server, or another path prefix on one: accepted.
    let fixed = JURISDICTIONS.to_string()
        + r#"
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["http://ingest.fra.example/v1", "http://ingest.fra.example/v2"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["http://ingest.iad.example/v1"]
"#;
    assert!(build(&fixed).is_ok());
}

/// An upstream at an unspecified address, in any of its forms, is refused:
/// a connection to `0.0.0.0:P` or `[::]:P` reaches this host's `P`, which
/// another data centre may be at as `127.0.0.1:P` (IPv6 audit, stop 66: a
/// US upload was stored in the Swiss data centre's server).
#[test]
fn an_unspecified_address_is_no_upstream() {
    let text = r#"
[jurisdictions.ch]
countries = ["CH"]
[jurisdictions.us]
countries = ["US"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://127.0.0.1:9000"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["http://0.0.0.0:9000", "http://[::]:9000", "http://[::ffff:0.0.0.0]:9000", "http://0:9000", "https://[0:0:0:0:0:0:0:0]/v1"]
"#;
    let report = build(text).unwrap_err();
    let text = report.to_string();
    for i in 0..5 {
        let needle = format!("datacenters.virginia.upstreams[{i}]: ");
        let line = text
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("missing {needle} in:\n{text}"));
        assert!(
            line.contains(
                "an unspecified address (0.0.0.0, [::]) is one to listen on, not to connect to"
            ),
            "{line}"
        );
    }
    assert_eq!(report.problems.len(), 5, "{text}");
}

/// An upstream URL with user info is refused without repeating it: the
/// password went into `check-config`'s output and a failed reload's error
/// line (privacy audit, stop 68).
#[test]
fn an_upstream_with_a_password_is_refused_without_repeating_it() {
    let text = r#"
[jurisdictions.ch]
countries = ["CH"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://admin:S3CRET@127.0.0.1:9000/v1", "http://bob:pa/S3CRET@127.0.0.1:9000", "http://bob:9000/S3CRET@127.0.0.1:9000", "http://bob:pa?S3CRET@127.0.0.1:9000"]
"#;
    let report = build(text).unwrap_err();
    let text = report.to_string();
    assert!(
        text.contains("datacenters.zurich.upstreams[0]: `http://…@127.0.0.1:9000/v1`: user info (or any `@`) is not allowed"),
        "{text}"
    );
    assert!(
        !text.contains("S3CRET") && !text.contains("admin"),
        "{text}"
    );
    // A password holding `/` or `?` ends the authority where a parser
    // looks: refused and hidden all the same (verification, stop 68).
    for i in 1..4 {
        let needle = format!("datacenters.zurich.upstreams[{i}]: `http://…@127.0.0.1:9000`");
        assert!(text.contains(&needle), "{needle}: {text}");
    }
    use super::shown_url;
    for (url, shown) in [
        ("https://u:p@h.example/a", "https://…@h.example/a"),
        ("https://u:p/w@h.example/", "https://…@h.example/"),
        ("https://h.example/x?u=a@b", "https://…@b"),
        ("https://u@[::1]:8/", "https://…@[::1]:8/"),
        ("h.example", "h.example"),
    ] {
        assert_eq!(shown_url(url), shown, "{url}");
    }
}

/// A URL's host as an address, in the forms the system's resolver takes
/// without DNS.
#[test]
fn host_addresses_in_every_form() {
    use super::host_address;
    for (host, want) in [
        ("127.0.0.1", Some("127.0.0.1")),
        ("127.1", Some("127.0.0.1")),
        ("127.0.1", Some("127.0.0.1")),
        ("2130706433", Some("127.0.0.1")),
        ("0x7f.1", Some("127.0.0.1")),
        ("0177.0.0.1", Some("127.0.0.1")),
        ("0", Some("0.0.0.0")),
        ("127.0.0.1.", Some("127.0.0.1")),
        ("[::ffff:127.0.0.1]", Some("127.0.0.1")),
        ("[0:0:0:0:0:0:0:1]", Some("::1")),
        ("256.0.0.1", None),
        ("127.0.0.256", None),
        ("4294967296", None),
        ("1.2.3.4.5", None),
        ("ingest.example", None),
        ("09.1", None),
        ("", None),
    ] {
        assert_eq!(
            host_address(host).map(|ip| ip.to_string()).as_deref(),
            want,
            "{host}"
        );
    }
}

#[test]
fn routing_table_lists_everything() {
    let table = policy().routing_table();
    assert!(table.contains("jurisdiction uk"));
    assert!(table.contains("  priority 1: frankfurt (eu), paris (eu)"));
    assert!(table.contains("  priority 2: london (uk)"));
    assert!(table.contains("unknown origin: reject (451)"));
    let upstreams = policy().upstream_table();
    assert!(
        upstreams.contains(
            "datacenter zurich (ch, priority 1): http://127.0.0.1:1001/ http://127.0.0.1:1002/\n"
        ),
        "{upstreams}"
    );
    assert!(
        upstreams.contains("datacenter london (uk, priority 2): https://ingest.lon.example.com/\n")
    );
}
