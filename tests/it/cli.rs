//! The command line, run as the real binary: `check-config` reports every
//! problem at once and validates the shipped example, `geoip build` writes
//! databases libmaxminddb agrees with, `decide` explains decisions, and
//! environment variables override the file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_residency-proxy");

/// Runs the binary with `args` and extra environment variables.
pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // The tests choose every override themselves.
    for (k, _) in std::env::vars() {
        if k.starts_with("RESIDENCY_PROXY") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run residency-proxy")
}

/// `check-config`'s `warning:` lines but the one of a configuration
/// without a transparency log ([`valid_config`]'s).
fn warnings(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| {
            l.starts_with("warning:") && !l.starts_with("warning: transparency: not configured")
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Writes a self-signed certificate and its key.
fn write_cert(cert: &Path, key: &Path, names: &[&str]) {
    let (c, k) = residency_tls::self_signed(names).unwrap();
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(cert, c).unwrap();
    std::fs::write(key, k).unwrap();
    // Private, as a key is kept (a world-readable one is a warning).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes a GeoIP database built from support's CSV.
fn write_db(path: &Path) {
    let rows = residency_tools::geoip::parse_csv(GEOIP_CSV).unwrap();
    let db = residency_tools::geoip::build_country_db(&rows, 1_750_000_000).unwrap();
    std::fs::write(path, db).unwrap();
}

/// A valid configuration (certificate, database, file) in a temp dir; the
/// upstreams need not be live for `check-config` and `decide`.
pub(crate) fn valid_config(database: Option<&Path>) -> (TempDir, PathBuf) {
    let dir = TempDir::new("cli");
    write_cert(
        &dir.path().join("a.pem"),
        &dir.path().join("a.key"),
        &["localhost"],
    );
    let database = match database {
        Some(db) => db.to_path_buf(),
        None => {
            let db = dir.path().join("geo.mmdb");
            write_db(&db);
            db
        }
    };
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:8443"
[listeners.tls]
certificates = [{{ cert = "a.pem", key = "a.key" }}]

[admin]
address = "127.0.0.1:9900"

[geoip]
database = "{}"
{POLICY}
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://10.1.0.10:8080"]
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["https://ingest.fra.example.com"]
[datacenters.london]
jurisdiction = "uk"
priority = 2
upstreams = ["https://ingest.lon.example.com"]
[datacenters.virginia]
jurisdiction = "us"
upstreams = ["https://ingest.iad.example.com"]
"#,
        path(&database)
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, toml).unwrap();
    (dir, config)
}

/// A client CA or CRL file that reads but does not parse is named by its
/// key and path, as one that cannot be read is, not by the listener's
/// `tls` table alone.
#[test]
fn an_unusable_client_ca_or_crl_is_named_by_its_key() {
    let (dir, config) = valid_config(None);
    let text_of = std::fs::read_to_string(&config).unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    let ca_path = dir.path().join("ca.pem");
    let with_ca = text_of.replace(
        "[listeners.tls]\n",
        "[listeners.tls]\nclient_ca = \"ca.pem\"\n",
    );
    std::fs::write(&config, &with_ca).unwrap();
    let out = run(&["check-config", "--config", path(&config)], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let want = format!(
        "- listeners[0].tls.client_ca: {}: no CA certificates",
        ca_path.display()
    );
    assert!(stderr.contains(&want), "{want:?} missing from:\n{stderr}");
    // `serve` names it as `check-config` does, under the file's name (it
    // said `state: 1 problem`).
    let out = run(&["serve", "--config", path(&config)], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let file = format!("error: {}: 1 problem", config.display());
    assert!(stderr.contains(&file), "{file:?} missing from:\n{stderr}");
    assert!(stderr.contains(&want), "{want:?} missing from:\n{stderr}");

    // A usable CA, and a CRL file without a CRL.
    write_cert(&ca_path, &dir.path().join("ca.key"), &["client-ca.example"]);
    std::fs::write(dir.path().join("crl.pem"), "not a CRL\n").unwrap();
    // With `client_crl` naming `file`: refused, the problem under
    // client_crl with that file's path.
    let crl_refused = |file: &str| {
        let with_crl = with_ca.replace(
            "client_ca = \"ca.pem\"\n",
            &format!("client_ca = \"ca.pem\"\nclient_crl = \"{file}\"\n"),
        );
        std::fs::write(&config, with_crl).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
        let want = format!(
            "- listeners[0].tls.client_crl: {}: no CRL found",
            dir.path().join(file).display()
        );
        assert!(stderr.contains(&want), "{want:?} missing from:\n{stderr}");
    };
    crl_refused("crl.pem");
    // The CA's own file given as the CRLs: client_crl's fault, not
    // client_ca's (config audit, stop 63).
    crl_refused("ca.pem");
}

/// A listener certificate that expired (clients refuse it), or expires
/// within 14 days, is a `warning:` of `check-config` (it said
/// "configuration OK" alone), and `serve` logs it at start.
#[test]
fn check_config_warns_of_a_certificate_that_expired_or_expires_soon() {
    let (dir, config) = valid_config(None);
    let write = |days: i64| {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let now = std::time::SystemTime::now();
        let span = std::time::Duration::from_secs(days.unsigned_abs() * 86_400);
        let end = if days < 0 { now - span } else { now + span };
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = end.into();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("a.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), key.serialize_pem()).unwrap();
    };
    for (days, says) in [(-3, "expired ("), (5, "expires in 5 days (")] {
        write(days);
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.contains("warning: listeners[0].tls.certificates[0].cert: ")
                && stdout.contains(says),
            "{days}: {stdout}"
        );
    }
    write(400);
    let out = run(&["check-config", "--config", path(&config)], &[]);
    assert!(
        warnings(&text(&out.stdout)).is_empty(),
        "{}",
        text(&out.stdout)
    );
}

/// A listener certificate not valid yet, or a CA's (CA:TRUE: what
/// `openssl req -x509` makes, which rustls clients refuse as a server's),
/// and a `client_ca` that expired are warnings too: each loaded with
/// "configuration OK" alone, and clients were refused.
#[test]
fn check_config_warns_of_certificates_clients_refuse() {
    let (dir, config) = valid_config(None);
    let write = |name: &str, later: bool, ca: bool, days: u64| {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let now = std::time::SystemTime::now();
        let span = std::time::Duration::from_secs(days * 86_400);
        if later {
            params.not_before = (now + span).into();
            params.not_after = (now + span * 40).into();
        } else {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = (now - span).into();
        }
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    };
    let check = || {
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        stdout
    };
    write("a", true, false, 10);
    let stdout = check();
    assert!(
        stdout.contains("warning: listeners[0].tls.certificates[0].cert: ")
            && stdout.contains("is not valid before "),
        "{stdout}"
    );
    write("a", true, true, 0);
    let stdout = check();
    assert!(
        stdout.contains("is a CA's certificate (basicConstraints CA:TRUE")
            && !stdout.contains("is not valid before"),
        "{stdout}"
    );
    // A client CA, expired three days ago.
    write_cert(
        &dir.path().join("a.pem"),
        &dir.path().join("a.key"),
        &["localhost"],
    );
    write("clients", false, true, 3);
    let toml = std::fs::read_to_string(&config).unwrap().replacen(
        "certificates = [{ cert = \"a.pem\", key = \"a.key\" }]",
        "certificates = [{ cert = \"a.pem\", key = \"a.key\" }]\nclient_ca = \"clients.pem\"",
        1,
    );
    std::fs::write(&config, toml).unwrap();
    let stdout = check();
    assert!(
        stdout.contains("warning: listeners[0].tls.client_ca: ")
            && stdout.contains("holds 1 expired certificate(s)"),
        "{stdout}"
    );
    assert_eq!(warnings(&stdout).len(), 1, "{stdout}");
}

/// A `trusted_proxies` network that holds much of the Internet is a
/// warning: every client in it may choose its jurisdiction (it loaded
/// without a word). A load balancers' network is not.
#[test]
fn check_config_warns_of_trusted_proxies_that_hold_clients() {
    let (_dir, config) = valid_config(None);
    let with = |nets: &str| {
        let toml = std::fs::read_to_string(&config).unwrap().replacen(
            "address = \"127.0.0.1:8443\"\n",
            &format!("address = \"127.0.0.1:8443\"\ntrusted_proxies = [{nets}]\n"),
            1,
        );
        std::fs::write(&config, toml).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let stdout = with("\"10.0.0.0/8\", \"0.0.0.0/0\", \"::/0\"");
    for want in [
        "warning: listeners[0].trusted_proxies[1]: 0.0.0.0/0 covers much of the Internet",
        "warning: listeners[0].trusted_proxies[2]: ::/0 covers much of the Internet",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    assert_eq!(warnings(&stdout).len(), 2, "{stdout}");
}

/// A private key every user can read, a log directory every user can
/// write, and a fleet database reached in the clear off loopback load with
/// a warning each (config audit, stop 63: without a word).
#[test]
fn check_config_warns_of_exposed_keys_and_a_cleartext_database() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    log_key(dir.path());
    let mode = |name: &str, mode: u32| {
        std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode))
            .unwrap();
    };
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    std::fs::write(dir.path().join("client.key"), [7u8; 32]).unwrap();
    std::fs::copy(dir.path().join("a.key"), dir.path().join("t.key")).unwrap();
    mode("a.key", 0o644);
    mode("log.key", 0o604);
    mode("log", 0o777);
    // The secrets the log's section names but keeps only what it read
    // from, and the log listener's key (privacy audit, stop 68: no word).
    mode("client.key", 0o644);
    mode("t.key", 0o644);
    let log = format!(
        "[transparency]\ndirectory = \"log\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"log.key\"\n\
         address = \"127.0.0.1:1\"\nclient_address = \"hmac\"\nclient_hmac_key = \"client.key\"\n\
         [transparency.tls]\ncertificates = [{{ cert = \"a.pem\", key = \"t.key\" }}]\n"
    );
    std::fs::write(&config, format!("{base}\n{log}")).unwrap();
    let out = run(&["check-config", "--config", path(&config)], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for want in [
        "warning: listeners[0].tls.certificates[0].key: ",
        "a.key is readable by every user on this machine (mode 644): chmod 600",
        "warning: transparency.signing_key: ",
        "warning: transparency.directory: ",
        "is writable by every user on this machine (mode 777)",
        "warning: transparency.client_hmac_key: ",
        "warning: transparency.tls.certificates[0].key: ",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    mode("a.key", 0o600);
    mode("log.key", 0o640);
    mode("log", 0o700);
    mode("client.key", 0o600);
    mode("t.key", 0o600);
    let out = run(&["check-config", "--config", path(&config)], &[]);
    assert!(
        warnings(&text(&out.stdout)).is_empty(),
        "{}",
        text(&out.stdout)
    );
    // The fleet's database in the clear, off loopback (not checked online).
    std::fs::write(&config, format!(
        "{base}\n[transparency]\nstorage = \"postgres\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"log.key\"\n\
         [transparency.postgres]\nurl = \"postgres://u@db.example.com/log?sslmode=disable\"\n"
    ))
    .unwrap();
    let out = run(
        &["check-config", "--offline", "--config", path(&config)],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "warning: transparency.postgres.url: sslmode=disable to a database not on loopback"
        ),
        "{stdout}{}",
        text(&out.stderr)
    );
}

/// A log whose records carry whole client addresses — `client_address =
/// "full"`, or a prefix of every bit — loads with a warning: the log is
/// public (privacy audit, stop 68: without a word). The default does not.
#[test]
fn check_config_warns_of_whole_client_addresses_in_the_log() {
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    log_key(dir.path());
    for (setting, want) in [
        ("client_address = \"full\"", Some("warning: transparency.client_address = \"full\": records carry whole client addresses")),
        ("client_prefix_v4 = 32", Some("warning: transparency.client_prefix_v4 = 32: records carry whole client addresses")),
        ("client_prefix_v6 = 128", Some("warning: transparency.client_prefix_v6 = 128: ")),
        ("client_prefix_v4 = 24", None),
    ] {
        std::fs::write(&config, format!(
            "{base}\n[transparency]\ndirectory = \"log\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"log.key\"\n{setting}\n"
        ))
        .unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{setting}: {stdout}{}", text(&out.stderr));
        match want {
            Some(want) => assert!(stdout.contains(want), "{setting}: {stdout}"),
            None => assert!(warnings(&stdout).is_empty(), "{setting}: {stdout}"),
        }
    }
}

/// Settings that give up the proof of residency, or place most of the
/// Internet in one country, load with a warning (config audit, stop 63:
/// without a word): no transparency log at all; a log that acknowledges
/// uploads it could not record; a GeoIP override of `0.0.0.0/0`. Your own
/// network's override is not one.
#[test]
fn check_config_warns_of_settings_that_give_up_the_proof_or_place_everyone() {
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    let check = |extra: &str| {
        std::fs::write(&config, format!("{base}\n{extra}")).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let stdout = check("");
    assert!(
        stdout
            .contains("warning: transparency: not configured, so no upload or refusal is recorded"),
        "{stdout}"
    );
    log_key(dir.path());
    let log = format!(
        "[transparency]\ndirectory = \"log\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"log.key\"\n"
    );
    let stdout = check(&log);
    assert!(!stdout.contains("warning:"), "{stdout}");
    let stdout = check(&format!("{log}on_write_error = \"continue\"\n"));
    assert!(
        stdout.contains("warning: transparency.on_write_error: \"continue\", so an upload whose record cannot be written is still acknowledged"),
        "{stdout}"
    );
    let overrides = "[[geoip.overrides]]\nnetwork = \"0.0.0.0/0\"\ncountry = \"CH\"\n\
                     [[geoip.overrides]]\nnetwork = \"198.51.100.0/24\"\ncountry = \"CH\"\n";
    let stdout = check(&format!("{log}{overrides}"));
    let said: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(
        said,
        ["warning: geoip.overrides[0]: 0.0.0.0/0 covers much of the Internet: every client in it is placed in CH whatever the GeoIP database says, and its uploads go where CH's may; list your own networks only"],
        "{stdout}"
    );
}

/// `check-config` reads a log directory's checkpoint as `serve` does: one
/// signed by another key (a key rotated, a directory restored from another
/// log) is an error naming `transparency.directory`, where it said
/// "configuration OK" and `serve` then refused to start (README audit,
/// stop 64); one of the log's own key is said to be verified.
#[test]
fn check_config_reads_the_log_directory_s_checkpoint() {
    use residency_log::note::{Checkpoint, Signer};
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    log_key(dir.path());
    let log = format!(
        "[transparency]\ndirectory = \"log\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"log.key\"\n"
    );
    std::fs::write(&config, format!("{base}\n{log}")).unwrap();
    let check = || run(&["check-config", "--config", path(&config)], &[]);
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("log directory: no checkpoint yet (a new log)"),
        "{}",
        text(&out.stdout)
    );

    let empty = Checkpoint {
        origin: LOG_ORIGIN.to_string(),
        size: 0,
        root: residency_log::merkle::empty_root(),
        extensions: Vec::new(),
    };
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    let ours = std::fs::read(dir.path().join("log.key")).unwrap();
    let ours = Signer::from_pkcs8(LOG_ORIGIN, &ours).unwrap();
    let theirs = Signer::from_pkcs8(LOG_ORIGIN, &Signer::generate_pkcs8().unwrap()).unwrap();
    let checkpoint = dir.path().join("log/checkpoint");
    std::fs::write(&checkpoint, empty.sign(&theirs).unwrap()).unwrap();
    let out = check();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("- transparency.directory: ") && stderr.contains("no signature by key"),
        "{stderr}"
    );
    std::fs::write(&checkpoint, empty.sign(&ours).unwrap()).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("log directory: checkpoint at size 0 verified with the key"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_config_lists_every_problem() {
    let dir = TempDir::new("cli-bad");
    write_cert(
        &dir.path().join("a.pem"),
        &dir.path().join("a.key"),
        &["localhost"],
    );
    write_db(&dir.path().join("geo.mmdb"));
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"
[[listeners]]
address = "0.0.0.0:9443"
proxy_protocol = "required"
[listeners.tls]
certificates = [{ cert = "certs/missing.pem", key = "a.key" }]

[[listeners]]
address = "0.0.0.0:8443"
trusted_proxies = ["10.0.0.0/33"]
[listeners.tls]
certificates = [{ cert = "a.pem", key = "a.key" }]

[geoip]
database = "geo.mmdb"

[jurisdictions.ch]
countries = ["CH", "LI"]
[jurisdictions.eu]
countries = ["DE", "FR", "CH"]
[jurisdictions.uk]
countries = ["GB", "UK"]
store_in = ["uk", "europe"]
[jurisdictions.us]
countries = ["US"]

[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://10.1.0.10:8080"]
[datacenters.frankfurt]
jurisdiction = "eu"
upstreams = ["ftp://ingest.fra.example.com"]
[datacenters.london]
jurisdiction = "uk"
upstreams = ["https://ingest.lon.example.com"]
"#,
    )
    .unwrap();
    let out = run(&["check-config", "--config", path(&config)], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "no routing table: {}",
        text(&out.stdout)
    );
    let expected = [
        // a bad country code
        ("jurisdictions.uk.countries", "`UK` is not an ISO 3166-1"),
        // a country in two jurisdictions
        (
            "jurisdictions.eu.countries",
            "CH is already in jurisdiction `ch`",
        ),
        // store_in naming a missing jurisdiction
        (
            "jurisdictions.uk.store_in",
            "no jurisdiction named `europe`",
        ),
        // a jurisdiction with no data centre
        ("jurisdictions.us.store_in", "no data centre is in us"),
        // proxy_protocol = "required" without trusted_proxies
        (
            "listeners[0].trusted_proxies",
            "proxy_protocol = \"required\"",
        ),
        // a bad CIDR
        ("listeners[1].trusted_proxies[0]", "`10.0.0.0/33`"),
        // a bad URL
        (
            "datacenters.frankfurt.upstreams[0]",
            "scheme must be http or https",
        ),
        // a missing certificate file
        ("listeners[0].tls.certificates[0].cert", "missing.pem"),
    ];
    for (key, message) in expected {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("- {key}: ")))
            .unwrap_or_else(|| panic!("no problem reported for {key}:\n{stderr}"));
        assert!(
            line.contains(message),
            "{key}: want {message:?} in {line:?}"
        );
    }
    assert!(
        stderr.contains(&format!("{} problems", expected.len())),
        "exactly the {} problems above:\n{stderr}",
        expected.len()
    );
}

#[test]
fn example_config_validates() {
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"));
    let text_of_example =
        std::fs::read_to_string(example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    // The example names its files relative to itself; provide them.
    let dir = TempDir::new("cli-example");
    let copy = dir.path().join("example.toml");
    std::fs::write(&copy, &text_of_example).unwrap();
    for (stem, names) in [
        ("ingest", &["ingest.example.com"][..]),
        ("eu-ingest", &["eu.ingest.example.com"][..]),
    ] {
        let cert = format!("certs/{stem}.pem");
        let key = format!("certs/{stem}.key");
        assert!(
            text_of_example.contains(&format!("\"{cert}\"")),
            "example.toml references {cert}"
        );
        assert!(
            text_of_example.contains(&format!("\"{key}\"")),
            "example.toml references {key}"
        );
        write_cert(&dir.path().join(&cert), &dir.path().join(&key), names);
    }
    assert!(text_of_example.contains("\"GeoLite2-Country.mmdb\""));
    // Built now, as a database users download is recent: the example's
    // `geoip.max_age` would warn of one from the tests' fixed date.
    let rows = residency_tools::geoip::parse_csv(GEOIP_CSV).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let db = residency_tools::geoip::build_country_db(&rows, now).unwrap();
    std::fs::write(dir.path().join("GeoLite2-Country.mmdb"), db).unwrap();
    assert!(text_of_example.contains("\"keys/residency-log.key\""));
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let out = run(
        &[
            "keygen",
            "--name",
            "ingest.example.com/residency-log",
            "--out",
            path(&dir.path().join("keys/residency-log")),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = run(&["check-config", "--config", path(&copy)], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    // What users copy loads without a warning.
    assert!(!stdout.contains("warning:"), "{stdout}");
    for want in [
        "configuration OK",
        "jurisdiction ch",
        "jurisdiction eu",
        "jurisdiction uk",
        "jurisdiction us",
        "listener 0.0.0.0:8443 (proxy_protocol off, 2 certificate(s), mTLS off)",
        "listener 0.0.0.0:9443 (proxy_protocol required, 1 certificate(s), mTLS off)",
        "admin 127.0.0.1:9900",
        "unknown origin: reject (451)",
        "transparency log ingest.example.com/residency-log in /var/lib/residency-proxy/log (receipts signed, endpoints 0.0.0.0:9444)",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("rolls to"), "{stdout}");

    // The verifier key to give customers, as the log signs; and a warning
    // when the `.pub` beside the key was made with another `--name` than
    // `transparency.origin` (every receipt would fail with it).
    let signer = |name: &str| {
        let pkcs8 = std::fs::read(dir.path().join("keys/residency-log.key")).unwrap();
        residency_log::note::Signer::from_pkcs8(name, &pkcs8).unwrap()
    };
    let key = signer("ingest.example.com/residency-log").verifier_key();
    assert!(
        stdout.contains(&format!("transparency verifier key {key}\n")),
        "{stdout}"
    );
    let public = dir.path().join("keys/residency-log.pub");
    let kept = std::fs::read_to_string(&public).unwrap();
    std::fs::write(&public, signer("other.example/log").verifier_key()).unwrap();
    let out = run(&["check-config", "--config", path(&copy)], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let warning = format!(
        "warning: {}: it names `other.example/log`, transparency.origin is `ingest.example.com/residency-log`, so receipts do not verify with it; the verifier key of transparency.origin is {key}",
        public.display()
    );
    assert!(stdout.contains(&warning), "{stdout}");
    // Something that is not a key at all is said to be that (it said "it
    // names `garbage`").
    std::fs::write(&public, "garbage\n").unwrap();
    let out = run(&["check-config", "--config", path(&copy)], &[]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "warning: {}: it is not a verifier key (`name+keyid+base64`, as keygen writes), so receipts do not verify with it",
            public.display()
        )),
        "{stdout}"
    );
    std::fs::write(&public, kept).unwrap();

    // With a size limit: the origin and key it rolls to, for witnesses.
    let out = run(
        &["check-config", "--config", path(&copy)],
        &[("RESIDENCY_PROXY__TRANSPARENCY__MAX_RECORDS", "1000000")],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let pkcs8 = std::fs::read(dir.path().join("keys/residency-log.key")).unwrap();
    let next =
        residency_log::note::Signer::from_pkcs8("ingest.example.com/residency-log/2", &pkcs8)
            .unwrap()
            .verifier_key();
    let want = format!("generation 1: at 1000000 records it rolls to ingest.example.com/residency-log/2, key {next} ");
    assert!(stdout.contains(&want), "{want:?} missing from:\n{stdout}");
}

/// The `country.iso_code` libmaxminddb finds for `ip`; `None` on a miss.
fn mmdblookup(db: &Path, ip: &str) -> Option<String> {
    let out = Command::new("mmdblookup")
        .args(["--file", path(db), "--ip", ip, "country", "iso_code"])
        .output()
        .expect("mmdblookup must be installed (Debian package mmdb-bin)");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    if !out.status.success() {
        assert!(
            stdout.contains("Could not find an entry")
                || stderr.contains("Could not find an entry"),
            "mmdblookup {ip} failed: {}\n{stdout}{stderr}",
            out.status
        );
        return None;
    }
    let code = stdout
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("mmdblookup {ip}: no string in {stdout:?}"));
    assert!(stdout.contains("<utf8_string>"), "{stdout}");
    Some(code.to_string())
}

/// Runs `decide` for `ips`; one JSON explanation per address, in order.
fn decide(config: &Path, ips: &[&str]) -> Vec<Value> {
    let mut args = vec!["decide", "--config", path(config)];
    args.extend_from_slice(ips);
    let out = run(&args, &[]);
    assert!(
        out.status.success(),
        "decide: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    let values: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("decide prints JSON");
    assert_eq!(values.len(), ips.len(), "{}", text(&out.stdout));
    values
}

#[test]
fn geoip_build_agrees_with_libmaxminddb_and_decide() {
    let dir = TempDir::new("cli-geoip");
    let csv = dir.path().join("networks.csv");
    let db = dir.path().join("networks.mmdb");
    std::fs::write(
        &csv,
        "network,country
# nested networks: the more specific wins
192.0.2.0/24,CH
192.0.2.128/25,LI
198.51.100.0/24,DE
198.51.100.77,FR
203.0.113.0/24,US
10.0.0.0/8,GB
2001:db8::/32,DE
2001:db8:c0::/48,CH
2001:db8:c0:1::/64,LI
2a02:1234::/32,US
",
    )
    .unwrap();
    let out = run(
        &[
            "geoip",
            "build",
            "--csv",
            path(&csv),
            "--out",
            path(&db),
            "--build-epoch",
            "1750000000",
        ],
        &[],
    );
    assert!(out.status.success(), "geoip build: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("build_epoch 1750000000"));
    let (_cfg_dir, config) = valid_config(Some(&db));

    let cases: [(&str, Option<&str>); 21] = [
        ("192.0.2.1", Some("CH")),
        ("192.0.2.127", Some("CH")),
        ("192.0.2.128", Some("LI")),
        ("192.0.2.255", Some("LI")),
        ("198.51.100.76", Some("DE")),
        ("198.51.100.77", Some("FR")),
        ("198.51.100.78", Some("DE")),
        ("203.0.113.30", Some("US")),
        ("10.255.255.255", Some("GB")),
        ("11.0.0.0", None),
        ("192.0.3.0", None),
        ("2001:db8::1", Some("DE")),
        ("2001:db8:c0::5", Some("CH")),
        ("2001:db8:c0:1::5", Some("LI")),
        ("2001:db8:c1::1", Some("DE")),
        ("2a02:1234:ffff::1", Some("US")),
        ("2a02:1235::1", None),
        ("::ffff:192.0.2.10", Some("CH")),
        ("::ffff:198.51.100.77", Some("FR")),
        ("::ffff:100.64.0.1", None),
        // IPv4-compatible (deprecated): IPv4 lives at ::a.b.c.d in the tree.
        ("::192.0.2.10", Some("CH")),
    ];
    let ips: Vec<&str> = cases.iter().map(|(ip, _)| *ip).collect();
    let decided = decide(&config, &ips);
    for ((ip, want), explained) in cases.iter().zip(&decided) {
        let libmaxminddb = mmdblookup(&db, ip);
        let ours = explained["country"].as_str();
        assert_eq!(libmaxminddb.as_deref(), *want, "mmdblookup {ip}");
        assert_eq!(ours, *want, "decide {ip}: {explained}");
        let source = if want.is_some() { "hit" } else { "miss" };
        assert_eq!(explained["country_source"], source, "{ip}");
    }
}

#[test]
fn decide_explains_each_address() {
    let (_dir, config) = valid_config(None);
    let got = decide(&config, &[CH, US, UNKNOWN, JP, GB, "::ffff:192.0.2.10"]);
    let names = |v: &Value| -> Vec<String> {
        v["permitted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["datacenter"].as_str().unwrap().to_string())
            .collect()
    };

    let ch = &got[0];
    assert_eq!(ch["ip"], CH);
    assert_eq!(ch["country"], "CH");
    assert_eq!(ch["jurisdiction"], "ch");
    assert_eq!(ch["store_in"], serde_json::json!(["ch"]));
    assert_eq!(names(ch), ["zurich"]);
    assert_eq!(ch["decision"], "forward");
    assert_eq!(ch["datacenter"], "zurich");
    assert_eq!(ch["upstream"], "http://10.1.0.10:8080/");
    assert_eq!(ch["status"], Value::Null);

    let us = &got[1];
    assert_eq!(us["country"], "US");
    assert_eq!(us["jurisdiction"], "us");
    assert_eq!(names(us), ["virginia"]);
    assert_eq!(us["decision"], "forward");
    assert_eq!(us["datacenter"], "virginia");

    let unknown = &got[2];
    assert_eq!(unknown["country"], Value::Null);
    assert_eq!(unknown["country_source"], "miss");
    assert_eq!(unknown["jurisdiction"], Value::Null);
    assert_eq!(names(unknown), Vec::<String>::new());
    assert_eq!(unknown["decision"], "refuse");
    assert_eq!(unknown["datacenter"], Value::Null);
    assert_eq!(unknown["reason"], "origin_unknown");
    assert_eq!(unknown["status"], 451);

    let jp = &got[3];
    assert_eq!(jp["country"], "JP");
    assert_eq!(jp["jurisdiction"], Value::Null);
    assert_eq!(jp["decision"], "refuse");
    assert_eq!(jp["reason"], "origin_not_permitted");
    assert_eq!(jp["status"], 451);

    // uk may store in uk (priority 2) and eu (priority 1): eu is preferred.
    let gb = &got[4];
    assert_eq!(gb["jurisdiction"], "uk");
    assert_eq!(gb["store_in"], serde_json::json!(["uk", "eu"]));
    assert_eq!(names(gb), ["frankfurt", "london"]);
    assert_eq!(gb["permitted"][0]["priority"], 1);
    assert_eq!(gb["permitted"][1]["priority"], 2);
    assert_eq!(gb["datacenter"], "frankfurt");

    let mapped = &got[5];
    assert_eq!(mapped["ip"], CH, "IPv4-mapped addresses are canonicalised");
    assert_eq!(mapped["datacenter"], "zurich");

    // Not an address: a usage error.
    let out = run(&["decide", "--config", path(&config), "not-an-ip"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["help"],
        &["demo", "--help"],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["decide", "--help"],
        &["geoip", "--help"],
        &["geoip", "build", "--help"],
    ] {
        let out = run(args, &[]);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    // Built from a git checkout: the commit is named (a fleet's replicas
    // told apart; `residency_build_info` has it too).
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    let version = match head {
        Some(head) => format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            text(&head.stdout).trim()
        ),
        None => env!("CARGO_PKG_VERSION").to_string(),
    };
    assert_eq!(text(&out.stdout), format!("residency-proxy {version}\n"));
    let out = run(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn environment_overrides_the_file() {
    let (_dir, config) = valid_config(None);
    let out = run(&["check-config", "--config", path(&config)], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("admin 127.0.0.1:9900\n"));

    let out = run(
        &["check-config", "--config", path(&config)],
        &[("RESIDENCY_PROXY__ADMIN__ADDRESS", "127.0.0.1:1")],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("admin 127.0.0.1:1\n"), "{stdout}");
    assert!(stdout.contains("configuration OK"));

    // An invalid override is reported under its key.
    let out = run(
        &["check-config", "--config", path(&config)],
        &[("RESIDENCY_PROXY__ADMIN__ADDRESS", "nowhere")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("admin.address: `nowhere`"),
        "{}",
        text(&out.stderr)
    );
}

/// A variable named almost as an override — one underscore after the
/// prefix — is not read by the `config` crate, without a word: `check-config`
/// warns of it, with the name it was likely meant to have (config audit,
/// stop 70).
#[test]
fn check_config_warns_of_a_variable_named_almost_as_an_override() {
    let (_dir, config) = valid_config(None);
    let out = run(
        &["check-config", "--config", path(&config)],
        &[("RESIDENCY_PROXY_ADMIN__ADDRESS", "127.0.0.1:1")],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        warnings(&stdout),
        ["warning: environment: RESIDENCY_PROXY_ADMIN__ADDRESS is not read: an override is named RESIDENCY_PROXY__ and then the key's levels joined by __ (RESIDENCY_PROXY__ADMIN__ADDRESS?)"],
        "{stdout}"
    );
}

/// Every unknown key is named in one run, the file's and the
/// environment's together, each where it came from: serde stops at the
/// first, met in a hash map's order, and only the file was read again for
/// more — so one set by a variable either hid the file's (reported alone)
/// or was never named (the file's were, with the variable as "possibly the
/// cause"), whichever came first (config audit).
#[test]
fn check_config_names_the_unknown_keys_of_the_file_and_the_environment() {
    let (_dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    let typos = base.replace("[admin]\naddress", "[admin]\nadress");
    assert_ne!(typos, base);
    std::fs::write(&config, format!("{typos}\n[health]\nintervall = \"1s\"\n")).unwrap();
    let env = [
        ("RESIDENCY_PROXY__LIMITS__MAX_BODY_BYTE", "5"),
        ("RESIDENCY_PROXY__COLOUR", "blue"),
        // Valid: neither named nor suspected.
        ("RESIDENCY_PROXY__TIMEOUTS__UPSTREAM_CONNECT", "2s"),
    ];
    // Which key serde meets first changes from run to run: a few runs.
    for _ in 0..4 {
        let out = run(&["check-config", "--config", path(&config)], &env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let line = |key: &str| {
            stderr
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("- {key}: ")))
                .unwrap_or_else(|| panic!("no problem reported for {key}:\n{stderr}"))
        };
        for (key, said, var) in [
            (
                "admin.adress",
                "unknown key, expected `address` or `hosts`",
                None,
            ),
            ("health.intervall", "unknown key, expected one of", None),
            (
                "limits.max_body_byte",
                "unknown key, expected one of",
                Some("RESIDENCY_PROXY__LIMITS__MAX_BODY_BYTE"),
            ),
            (
                "colour",
                "unknown key, expected one of",
                Some("RESIDENCY_PROXY__COLOUR"),
            ),
        ] {
            let line = line(key);
            assert!(line.contains(said), "{key}: {line}");
            match var {
                Some(var) => assert!(
                    line.ends_with(&format!(" (set by the environment: {var})")),
                    "{key}: {line}"
                ),
                None => assert!(!line.contains("set by the environment"), "{key}: {line}"),
            }
        }
        assert!(stderr.contains(": 4 problems"), "{stderr}");
        assert!(!stderr.contains("possibly the cause"), "{stderr}");
    }
}

/// Every unknown key of the tenants file (`tenancy.file`) is named in one
/// run, under the file and its key as the file's other problems are, with
/// the keys expected there: it said only the first serde met, so three
/// typos took three runs (config audit).
#[test]
fn check_config_names_every_unknown_key_of_the_tenants_file() {
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{base}\n[tenancy]\nfile = \"tenants.toml\"\nrecord = \"name\"\n"),
    )
    .unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        "[[tenants]]\nname = \"acme\"\njurisdictoin = \"ch\"\nclient_cert = [\"cn:acme\"]\n\
         [[tenants]]\nname = \"globex\"\njurisdiction = \"eu\"\nsnis = [\"ingest.globex.example\"]\n\
         [[tenant]]\nname = \"initech\"\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", path(&config)], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = tenants.display();
    for said in [
        format!("- {file}: tenant: unknown key, expected `tenants`"),
        format!("- {file}: tenants[0].jurisdictoin: unknown key, expected one of `name`, `jurisdiction`"),
        format!("- {file}: tenants[1].snis: unknown key, expected one of `name`, `jurisdiction`"),
    ] {
        assert!(stderr.contains(&said), "missing {said:?} in:\n{stderr}");
    }
    assert!(stderr.contains(": 3 problems"), "{stderr}");
}

/// The demo as a new operator runs it: SIGHUP reloads it (it does not
/// die), its keys are 0600 in a 0700 directory, and that directory is gone
/// after Ctrl-C (SIGINT) unless `--dir` was given.
#[test]
fn the_demo_reloads_on_sighup_keeps_its_keys_private_and_cleans_up() {
    use std::os::unix::fs::PermissionsExt as _;
    let (mut child, pid, dir, admin) = start_demo(&[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("demo-log.key")), 0o600);
    assert_eq!(mode(&dir.join("demo.key")), 0o600);

    // SIGHUP: a reload, counted; the demo keeps serving.
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    let reloaded = |text: &str| metric(text, "residency_reloads_total{result=\"success\"}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = raw_get(admin, "/metrics").1;
        if reloaded(&text) == Some(1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload counted:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP killed the demo"
    );
    assert!(ready(admin));

    // Ctrl-C: the demo stops and its directory is gone.
    stop_demo(&mut child, &pid);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Started with an open-files soft limit of 1024 under a hard one of
/// 4096, the proxy raises it to 4096 and says so, and warns that the
/// default `limits.max_connections` (10000) may need more (exhaustion
/// audit, stop 65: past the limit, new connections waited unaccepted).
#[tokio::test]
async fn the_open_files_limit_is_raised_and_a_short_one_named() {
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start_wrapped(
        "nofile",
        &[
            ("zurich", "ch", up.addr),
            ("frankfurt", "eu", up.addr),
            ("virginia", "us", up.addr),
        ],
        "",
        &["prlimit", "--nofile=1024:4096", "--"],
    )
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let open_files = line_with(&limits, "Max open files");
    assert!(open_files.contains(" 4096 "), "{open_files}");
    let log = proxy.log();
    let line = line_with(&log, "open-files limit");
    assert!(line.contains("soft=4096"), "{line}");
    let warning = line_with(
        &log,
        "limits.max_connections (10000) may need 20256 open files",
    );
    assert!(warning.contains("raise the hard limit"), "{warning}");
}

/// An upload whose client leaves mid-body is its `request` line
/// (`client_aborted`) alone: the data centre's request it cut short is no
/// warning blaming the data centre (soak audit, stop 66: one each time,
/// which any client could cause at will).
#[tokio::test]
async fn a_client_leaving_mid_upload_is_no_warning_about_the_data_centre() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start(
        "aborted",
        &[
            ("zurich", "ch", up.addr),
            ("frankfurt", "eu", up.addr),
            ("virginia", "us", up.addr),
        ],
        "",
    )
    .await;
    for _ in 0..3 {
        let mut tls = proxy.client().version(Http::One).connect().await.unwrap();
        let head = format!(
            "POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {CH}\r\nContent-Length: 100000\r\n\r\nhello"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        // Until the data centre has the request's head and first bytes.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(tls);
    }
    let mut log = String::new();
    for _ in 0..50 {
        log = proxy.log();
        if log.matches("client_aborted").count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(log.matches("client_aborted").count() >= 3, "{log}");
    assert!(!log.contains("upstream request failed"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("residency_proxy::proxy")),
        "{log}"
    );
}

/// On one CPU (here: pinned with taskset) and without
/// `runtime.worker_threads`, the proxy picks the current-thread scheduler,
/// and says so at start.
#[tokio::test]
async fn one_pinned_cpu_gets_the_current_thread_scheduler() {
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start_wrapped(
        "one-cpu",
        &[
            ("zurich", "ch", up.addr),
            ("frankfurt", "eu", up.addr),
            ("virginia", "us", up.addr),
        ],
        "",
        &["taskset", "-c", "0"],
    )
    .await;
    let log = proxy.log();
    let line = line_with(&log, "runtime");
    assert!(line.contains("current_thread"), "{line}");
    assert!(line.contains("available_parallelism=1"), "{line}");
    let reply = proxy.client().upload_from(CH, "pinned").await;
    assert_eq!(reply.status, 201);
    // The access line (written at the default level) names the request's
    // path: the handler copies it only when that line is enabled.
    let log = proxy.log();
    let access = line_with(&log, "residency_proxy::access");
    assert!(access.contains("path=/v1/telemetry"), "{access}");
    assert!(access.contains("method=POST"), "{access}");
}

/// An `OPTIONS` the proxy answers itself (`Max-Forwards: 0`) writes the
/// same `request` access line as any request, with its path and duration
/// (observability audit, stop 67: a message of its own, which a pipeline
/// selecting `request` lines missed).
#[tokio::test]
async fn an_options_answered_here_writes_a_request_line() {
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start(
        "options-line",
        &datacenters_at(up.addr),
        "[limits]\nmethods = [\"POST\", \"OPTIONS\"]\n[log]\nformat = \"json\"\n",
    )
    .await;
    let reply = proxy
        .client()
        .send("OPTIONS", "/v1/telemetry", &[("max-forwards", "0")], "")
        .await;
    assert_eq!(reply.status, 200);
    let id = reply.header("x-request-id").unwrap().to_string();
    let log = proxy.log();
    let line = line_with(&log, &id);
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["message"], "request", "{line}");
    assert_eq!(line["method"], "OPTIONS", "{line}");
    assert_eq!(line["path"], "/v1/telemetry", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["jurisdiction"], "none", "{line}");
    assert!(line["duration_ms"].is_number(), "{line}");
}

/// The first line of `log` containing `needle` (the test fails without one).
fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}: {log}"))
}

/// Starts `residency-proxy demo` on free ports with `args`; waits until it
/// is ready. Returns the process, its pid, its directory and admin address.
fn start_demo(args: &[&str]) -> (Killed, String, PathBuf, std::net::SocketAddr) {
    let (port, admin, log) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_residency-proxy"))
        .args(["demo", "--port", &port.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .args(["--log-port", &log.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let (found, dir) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("residency-proxy demo: files in ") {
                let _ = found.send(PathBuf::from(rest.split(" (").next().unwrap()));
            }
        }
    });
    let dir = dir
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the banner names the directory");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ready(admin) {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, pid, dir, admin)
}

/// Ctrl-C, and waits (at most 30 s) for the demo to stop.
fn stop_demo(child: &mut Killed, pid: &str) {
    let status = Command::new("kill").args(["-INT", pid]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `demo --dir DIR` keeps its files, and a second run in the same
/// directory starts on them: the log there is tied to the key the first
/// run made, which the second uses again.
#[test]
fn the_demo_runs_again_in_the_directory_it_kept() {
    let dir = TempDir::new("demo-dir");
    let kept = dir.path().join("demo");
    let arg = kept.display().to_string();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (mut child, pid, _, _) = start_demo(&["--dir", &arg]);
        keys.push(std::fs::read_to_string(kept.join("demo-log.pub")).unwrap());
        stop_demo(&mut child, &pid);
        assert!(kept.join("log/checkpoint").is_file(), "the log is kept");
    }
    assert_eq!(keys[0], keys[1], "the same log key");
}

/// A demo whose port is taken ends with that error alone: it printed its
/// instructions (curl commands for a proxy that never started) first.
#[test]
fn a_demo_on_a_port_in_use_prints_no_instructions() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (admin, log) = (free_port().to_string(), free_port().to_string());
    let out = run(
        &[
            "demo",
            "--port",
            &port,
            "--admin-port",
            &admin,
            "--log-port",
            &log,
        ],
        &[],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}: Address already in use")),
        "{stderr}"
    );
    assert!(!stdout.contains("curl"), "{stdout}");
    drop(taken);
}

/// The witness's arguments that cannot be used are invalid input (exit 2),
/// named by their flag, as a bad configuration is; not a runtime failure.
#[test]
fn a_witness_s_unusable_arguments_exit_2_naming_the_flag() {
    let dir = TempDir::new("cli-witness");
    let prefix = dir.path().join("w");
    let out = run(
        &[
            "keygen",
            "--witness",
            "--name",
            "w.example",
            "--out",
            path(&prefix),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let key = dir.path().join("w.key");
    let missing = dir.path().join("missing.key");
    for (name, key, log, flag) in [
        ("w.example", &key, "garbage", "- --log: garbage: "),
        ("w.example", &missing, "garbage", "- --key: "),
        // A name with a control character is the name's fault, not the
        // key's (verification, stop 62).
        ("w\u{1}x.example", &key, "garbage", "- --name: "),
        // Shown escaped, not printed to the terminal as it is.
        ("w.example", &key, "a\u{1b}b", "- --log: a\\u{1b}b: "),
    ] {
        let out = run(
            &[
                "witness",
                "--name",
                name,
                "--key",
                path(key),
                "--log",
                log,
                "--state",
                path(&dir.path().join("state.json")),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
        assert!(stderr.contains(flag), "{flag:?} missing from:\n{stderr}");
    }
}

/// GeoIP settings that would route by accident are refused at load, each
/// named by its key: an override or trusted proxy written with host bits
/// (`10.20.5.1/8` would take all of 10/8), one network overridden to two
/// countries (which applies would depend on the list's order), a canary
/// that only an override makes pass (canaries test the database), a
/// database built in the future (its age cannot be judged); `geoip build`
/// refuses a country code the proxy does not know and a build time in the
/// future.
#[test]
fn geoip_settings_that_would_route_by_accident_are_refused() {
    let (dir, config) = valid_config(None);
    let text_of = std::fs::read_to_string(&config).unwrap();
    let refused = |extra: &str, listener_extra: &str, want: &[&str]| {
        let toml = text_of
            .replace(
                "[listeners.tls]\n",
                &format!("{listener_extra}[listeners.tls]\n"),
            )
            .replace(
                "[geoip]\n",
                &format!("[[geoip.overrides]]\nnetwork = \"10.0.0.0/8\"\ncountry = \"DE\"\n{extra}[geoip]\n"),
            );
        std::fs::write(&config, toml).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra}{listener_extra}: {stderr}"
        );
        for w in want {
            assert!(stderr.contains(w), "{w:?} missing from:\n{stderr}");
        }
    };
    refused(
        "[[geoip.overrides]]\nnetwork = \"10.20.5.1/8\"\ncountry = \"US\"\n",
        "",
        &["- geoip.overrides[1].network: `10.20.5.1/8` has host bits set (did you mean `10.0.0.0/8`?)"],
    );
    refused(
        "[[geoip.overrides]]\nnetwork = \"::ffff:10.0.0.0/104\"\ncountry = \"US\"\n",
        "",
        &["- geoip.overrides[1].network: `::ffff:10.0.0.0/104` is geoip.overrides[0]'s network, which says DE, not US"],
    );
    refused(
        "",
        "trusted_proxies = [\"10.9.9.9/8\"]\n",
        &["- listeners[0].trusted_proxies[0]: `10.9.9.9/8` has host bits set"],
    );
    refused(
        "[[geoip.canaries]]\naddress = \"10.1.1.1\"\ncountry = \"DE\"\n",
        "",
        &["- geoip.canaries[0]: 10.1.1.1 should be DE, the database says no country"],
    );
    // A 6to4 address is looked up by the IPv4 address it carries, and
    // the message says so.
    refused(
        "[[geoip.canaries]]\naddress = \"2002:a01:101::1\"\ncountry = \"DE\"\n",
        "",
        &["- geoip.canaries[0]: 2002:a01:101::1 should be DE, the database says for 10.1.1.1, the IPv4 address it carries, no country"],
    );

    // geoip build: an unknown code, a build time in the future.
    let csv = dir.path().join("bad.csv");
    let db = dir.path().join("bad.mmdb");
    std::fs::write(&csv, "192.0.2.0/24,UK\n").unwrap();
    let out = run(
        &["geoip", "build", "--csv", path(&csv), "--out", path(&db)],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`UK` is not an ISO 3166-1 alpha-2 code (the United Kingdom is GB)"),
        "{stderr}"
    );
    std::fs::write(&csv, "192.0.2.0/24,CH\n").unwrap();
    let future = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 10 * 86_400)
        .to_string();
    let out = run(
        &[
            "geoip",
            "build",
            "--csv",
            path(&csv),
            "--out",
            path(&db),
            "--build-epoch",
            &future,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // An output that cannot be written is a runtime failure, as keygen's,
    // named once; a CSV that is not there is invalid input.
    let nowhere = dir.path().join("missing").join("x.mmdb");
    let out = run(
        &[
            "geoip",
            "build",
            "--csv",
            path(&csv),
            "--out",
            path(&nowhere),
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}: No such file or directory (os error 2)",
            nowhere.display()
        ),
    );
    let out = run(
        &[
            "geoip",
            "build",
            "--csv",
            path(&nowhere),
            "--out",
            path(&db),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(
        &["keygen", "--name", "a.example/log", "--out", path(&nowhere)],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // A name with a control character would put it into every signed
    // note (C2SP signed-note forbids them): invalid input.
    let out = run(
        &["keygen", "--name", "ctl\u{1f}name/log", "--out", path(&db)],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("control characters"),
        "{}",
        text(&out.stderr)
    );
    // ... and a database built so is refused at load.
    let rows = residency_tools::geoip::parse_csv(GEOIP_CSV).unwrap();
    let bytes = residency_tools::geoip::build_country_db(&rows, future.parse().unwrap()).unwrap();
    std::fs::write(&db, bytes).unwrap();
    let (_dir2, config2) = valid_config(Some(&db));
    let out = run(&["check-config", "--config", path(&config2)], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("more than a day after now"), "{stderr}");
}

/// A `verify` command line no check can run — nothing to verify, a file
/// it names that is not there, `--witness` keys or a `--quorum` that cannot
/// be used — exits 2 with the flag at fault, as clap's own errors do: it
/// printed INVALID and exited 1, which says the proof did not hold (README
/// audit, stop 64). A receipt that is there and wrong is still INVALID.
#[test]
fn verify_usage_errors_exit_2_not_invalid() {
    let dir = TempDir::new("verify-usage");
    let pkcs8 = residency_log::note::Signer::generate_pkcs8().unwrap();
    let key = residency_log::note::Signer::from_pkcs8("log.example/a", &pkcs8)
        .unwrap()
        .verifier_key();
    let witness = residency_log::witness::Cosigner::from_pkcs8(
        "w.example/w1",
        &residency_log::witness::Cosigner::generate_pkcs8().unwrap(),
    )
    .unwrap()
    .verifier_key();
    let missing = dir.path().join("missing");
    let missing = path(&missing);
    let receipt = format!("@{missing}");
    // A directory where a file is meant.
    let dir_path = path(dir.path()).to_string();
    let cases: [(&[&str], &str); 11] = [
        (&[], "nothing to verify"),
        (&["--receipt", &receipt], "--receipt @"),
        (&["--proof-file", missing], "--proof-file "),
        (&["--checkpoint", missing], "--checkpoint "),
        (
            &[
                "--log",
                "http://127.0.0.1:9",
                "--witness",
                &witness,
                "--quorum",
                "2",
            ],
            "--quorum 2 is more than the 1 --witness keys given",
        ),
        (
            &[
                "--log",
                "http://127.0.0.1:9",
                "--witness",
                &witness,
                "--witness",
                &witness,
            ],
            "--witness",
        ),
        (
            &[
                "--log",
                "http://127.0.0.1:9",
                "--witness",
                "w.example/w2+9f8e7d6c+BC…",
            ],
            "--witness w.example/w2+9f8e7d6c+BC…",
        ),
        (
            &["--receipt", "x", "--witness", &witness],
            "--witness needs a checkpoint",
        ),
        (
            &["--receipt", "x", "--file", &dir_path],
            "a directory: give a file",
        ),
        (
            &["--log", "http://127.0.0.1:9", "--request-id", "a/b"],
            "--request-id \"a/b\": a request id is",
        ),
        (
            &[
                "--log",
                "http://127.0.0.1:9",
                "--export-proof",
                "p.tlog-proof",
            ],
            "--export-proof needs a record",
        ),
    ];
    for (args, says) in cases {
        let out = run(&[&["verify", "--key", &key][..], args].concat(), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!text(&out.stdout).contains("INVALID"), "{args:?}");
    }
    // Flags that would be ignored, or a place the result cannot go.
    let file = dir.path().join("some-file");
    std::fs::write(&file, "x").unwrap();
    let file = path(&file);
    for (args, says) in [
        (
            vec!["--receipt", "x", "--checkpoint", file],
            "--checkpoint with a --receipt needs its inclusion proof",
        ),
        (
            vec!["--log", "http://127.0.0.1:9", "--proof", file],
            "--proof is the inclusion proof of a record",
        ),
        (
            vec!["--log", "http://127.0.0.1:9", "--consistency-proof", file],
            "--consistency-proof needs the --previous checkpoint",
        ),
        (
            vec![
                "--log",
                "http://127.0.0.1:9",
                "--save-checkpoint",
                &dir_path,
            ],
            "--save-checkpoint",
        ),
        (
            vec![
                "--receipt",
                "x",
                "--export-proof",
                "/nonexistent-dir/p.tlog-proof",
            ],
            "/nonexistent-dir is not a directory",
        ),
    ] {
        let out = run(&[&["verify", "--key", &key][..], &args[..]].concat(), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // A request id's record takes a saved --proof too: no usage error (the
    // log is not there: NOT CHECKED).
    let out = run(
        &[
            "verify",
            "--key",
            &key,
            "--request-id",
            "abc",
            "--log",
            "http://127.0.0.1:9",
            "--proof",
            file,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // `--previous` that is a file, without a newer checkpoint to compare.
    let previous = dir.path().join("previous");
    std::fs::write(&previous, "x").unwrap();
    let out = run(
        &[
            "verify",
            "--key",
            &key,
            "--receipt",
            "x",
            "--previous",
            path(&previous),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--previous needs a newer checkpoint"));
    // A pipe is a file to read (`--file <(…)`): not refused as a usage
    // error (the receipt then fails to parse: INVALID).
    let out = run(
        &[
            "verify",
            "--key",
            &key,
            "--receipt",
            "x",
            "--file",
            "/dev/stdin",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // There, and not a receipt: the proof did not hold.
    let bad = dir.path().join("receipt.txt");
    std::fs::write(&bad, "not a receipt").unwrap();
    let out = run(
        &[
            "verify",
            "--key",
            &key,
            "--receipt",
            &format!("@{}", path(&bad)),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("INVALID"));
}

/// A `drill --chaos` value that is not an event is invalid input, refused
/// with the other arguments (exit 2, naming it) before anything starts; it
/// was parsed after the sinks and the proxy had started, and exited 1.
#[test]
fn a_drill_s_bad_chaos_event_exits_2_before_starting() {
    let dir = TempDir::new("cli-drill-chaos");
    let stderr = drill_refused(&dir, &["--chaos", "4s:zurich=explode"]);
    assert!(stderr.contains("--chaos"), "{stderr}");
}

/// `drill` with `args` and `--dir` in `dir`, which must be refused as
/// invalid input (exit 2) before anything is set up; its stderr.
fn drill_refused(dir: &TempDir, args: &[&str]) -> String {
    let run_dir = dir.path().join("run");
    let all = [&["drill"], args, &["--dir", path(&run_dir)]].concat();
    let out = run(&all, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!run_dir.exists(), "nothing was set up");
    stderr
}

/// `drill --slo` with a file that cannot be read or holds an unknown key
/// exits 2 (invalid input) naming the file and what is wrong, before
/// anything starts; it exited 1.
#[test]
fn a_drill_s_bad_slo_file_exits_2_before_starting() {
    let dir = TempDir::new("cli-drill-slo");
    let bad = dir.path().join("slo.toml");
    std::fs::write(&bad, "max_p99_ms = 3000\nmax_p99 = 1\n").unwrap();
    let missing = dir.path().join("missing.toml");
    let read_error = std::fs::read(&missing).unwrap_err().to_string();
    for (file, says) in [
        (&bad, "line 2: unknown field `max_p99`"),
        (&missing, read_error.as_str()),
    ] {
        let stderr = drill_refused(&dir, &["--slo", path(file)]);
        assert!(
            stderr.contains("--slo") && stderr.contains(says),
            "{stderr}"
        );
    }
}

/// A drill whose load cannot run (a rate of 0, a body too small, a chaos
/// event after the end or for a data centre it does not have) exits 2 naming each problem, before it has set
/// anything up, under the drill's own name.
#[test]
fn a_drill_s_bad_load_exits_2_before_starting() {
    let dir = TempDir::new("cli-drill-load");
    let stderr = drill_refused(
        &dir,
        &[
            "--rate",
            "0",
            "--body-size",
            "1",
            "--duration",
            "5s",
            "--chaos",
            "9s:zurich=refuse",
            "--chaos",
            "1s:nowhere=refuse",
        ],
    );
    for says in [
        "drill",
        "rate 0",
        "body-size 1",
        "chaos 9s:zurich=refuse",
        "no data centre `nowhere`",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    assert!(!stderr.contains("loadtest"), "{stderr}");

    // The default schedule in a run too short for it: it failed every
    // time, blaming the proxy (drill audit).
    let stderr = drill_refused(&dir, &["--duration", "5s"]);
    assert!(
        stderr.contains("--duration 5s: the default schedule needs at least 15s"),
        "{stderr}"
    );
    // A rate so low that no upload falls due: refused, not a run that
    // fails for having nothing acknowledged (drill audit F10: exit 1).
    let stderr = drill_refused(
        &dir,
        &[
            "--rate",
            "0.000000001",
            "--duration",
            "1s",
            "--chaos",
            "500ms:zurich=refuse",
        ],
    );
    assert!(stderr.contains("no upload due"), "{stderr}");
}

/// `drill --slo` with a limit that is no limit — NaN, negative — exits 2
/// naming each key and its line, before anything starts; the drill ran,
/// and held the run to "≤ NaN ms".
#[test]
fn a_drill_s_slo_limit_out_of_range_exits_2_before_starting() {
    let dir = TempDir::new("cli-drill-slo-range");
    let slo = dir.path().join("slo.toml");
    std::fs::write(&slo, "max_time_to_detect_ms = nan\nmax_p99_ms = -5\n").unwrap();
    let stderr = drill_refused(&dir, &["--duration", "2s", "--slo", path(&slo)]);
    for says in [
        "line 1: max_time_to_detect_ms = nan",
        "line 2: max_p99_ms = -5",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
}

/// A report file that could not be written at the end (`--json` in a
/// directory that does not exist) exits 2 naming its flag before the
/// drill starts; it was found after the whole run, and kept the `--junit`
/// report from being written.
#[test]
fn a_drill_s_unwritable_report_exits_2_before_starting() {
    let dir = TempDir::new("cli-drill-outputs");
    let json = dir.path().join("missing").join("r.json");
    let junit = dir.path().join("j.xml");
    let stderr = drill_refused(
        &dir,
        &[
            "--duration",
            "2s",
            "--json",
            path(&json),
            "--junit",
            path(&junit),
        ],
    );
    assert!(
        stderr.contains(&format!("--json {}: cannot be written", json.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("--junit"), "{stderr}");
    assert!(!junit.exists(), "the check leaves no file behind");
}

/// Without `--dir`, the proxy's log is in a temporary directory removed
/// when the drill ends: the summary of its warnings does not point there
/// (it named the removed file), says how to keep it, and counts warnings
/// logged as JSON (`--log-format json`: it found none, and said nothing).
/// A 2 s drill: zurich refused for a second is logged by the health checks.
#[test]
fn a_drill_s_warning_summary_counts_json_logs_and_names_no_removed_file() {
    let out = run(
        &[
            "--log-format",
            "json",
            "drill",
            "--duration",
            "2s",
            "--rate",
            "50",
            "--no-progress",
            "--no-log",
            "--chaos",
            "500ms:zurich=refuse",
            "--chaos",
            "1500ms:zurich=normal",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("WARNING: the proxy logged"))
        .unwrap_or_else(|| panic!("no summary of the proxy's warnings: {stdout}"));
    assert!(
        summary.contains("upstream down: active checks failing"),
        "{summary}"
    );
    assert!(summary.contains("give --dir DIR to keep it"), "{summary}");
    assert!(!summary.contains("residency-proxy-drill-"), "{summary}");
}

/// `check-config` warns of a tenant any client can claim: recognised by a
/// server name (which anyone can send) with `mismatch = "allow"` routes
/// whoever names it by its pin. Not of one that refuses a mismatch, nor of
/// one recognised by certificate only.
#[test]
fn check_config_warns_of_a_tenant_any_client_can_claim() {
    let (_dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    let tenants = r#"
[[tenants]]
name = "acme"
jurisdiction = "ch"
sni = ["acme.ingest.example", "*.acme.example"]

[[tenants]]
name = "globex"
jurisdiction = "eu"
sni = ["globex.ingest.example"]
mismatch = "refuse"

[[tenants]]
name = "initech"
jurisdiction = "eu"
client_cert = ["cn:initech-uploader"]
"#;
    std::fs::write(&config, format!("{base}{tenants}")).unwrap();
    let out = run(&["check-config", "--config", path(&config)], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let warnings = warnings(&stdout);
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings.iter().any(|w| w.contains("tenant `acme`")
            && w.contains("sni *.acme.example, acme.ingest.example")),
        "{stdout}"
    );
    // And initech's rule can never match: no listener asks for a
    // certificate (config audit, stop 63).
    assert!(
        warnings.iter().any(|w| w.starts_with("warning: tenants: some are recognised by client certificate (client_cert), but no listener asks clients for one")),
        "{stdout}"
    );
}

/// `serve` logs the warning of a tenant any client can claim when it
/// starts, once its log is set up (the configuration is read before).
#[tokio::test]
async fn serve_logs_a_tenant_any_client_can_claim() {
    let up = Upstream::start("zurich").await;
    let tenant =
        "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"acme.ingest.example\"]\n";
    let proxy = Binary::start("claimable", &datacenters_at(up.addr), tenant).await;
    let log = proxy.log();
    let line = line_with(&log, "is recognised by a server name");
    assert!(
        line.contains("WARN")
            && line.contains("tenant `acme`")
            && line.contains("acme.ingest.example"),
        "{log}"
    );
}

/// A reader of the proxy's stderr that stops reading (a hung log shipper or
/// pipe) does not stop the proxy: its log is written by a thread of its
/// own, lines it cannot take dropped and counted. The pipe holds 64 KiB,
/// about 200 request lines: every request stopped at its log line before
/// (static audit, stop 63: with the process's stderr lock held, every
/// listener stopped answering, timeouts too).
#[tokio::test]
async fn a_log_reader_that_stops_reading_does_not_stop_the_proxy() {
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start_with_stderr(
        "stalled-log",
        &datacenters_at(up.addr),
        "",
        StderrTo::Unread,
    )
    .await;
    let uploads = (0..8).map(|task| {
        let client = proxy.client();
        tokio::spawn(async move {
            for i in 0..80 {
                let reply = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.upload_from(CH, "x"),
                )
                .await
                .unwrap_or_else(|_| panic!("upload {i} of task {task} got no answer"));
                assert_eq!(reply.status, 201, "{:?}", reply.body);
            }
        })
    });
    for task in uploads.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    let (status, _) = raw_get(proxy.admin, "/healthz");
    assert!(status.contains("200"), "{status}");
}

/// A reload that swaps in a certificate which expired is logged with the
/// same warning as at start: it loads, and every handshake then fails —
/// the log said only "reloaded" (TLS audit, stop 64).
#[tokio::test]
async fn a_reloaded_certificate_that_expired_is_warned_of() {
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start("expired-reload", &datacenters_at(up.addr), "").await;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(proxy.dir.path().join("a.key"), key.serialize_pem()).unwrap();
    std::fs::write(proxy.dir.path().join("a.pem"), cert.pem()).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the reload is logged", async || {
        proxy.log().contains("\"reloaded\"") || proxy.log().contains(" reloaded")
    })
    .await;
    let log = proxy.log();
    let line = line_with(&log, "a.pem expired (");
    assert!(
        line.contains("WARN") && line.contains("listeners[0].tls.certificates[0].cert"),
        "{log}"
    );
}

/// A log line stderr refuses — a log file on a full disk (`/dev/full`,
/// written directly), a pipe whose reader has gone (written by the log's
/// thread) — is counted in `residency_log_lines_dropped_total`, and the
/// uploads are answered: such lines were lost unsaid.
#[tokio::test]
async fn log_lines_stderr_refuses_are_counted() {
    for to in [StderrTo::Full, StderrTo::Closed] {
        let up = Upstream::start("zurich").await;
        let proxy =
            Binary::start_with_stderr("refused-log", &datacenters_at(up.addr), "", to).await;
        for _ in 0..3 {
            let reply = proxy.client().upload_from(CH, "x").await;
            assert_eq!(reply.status, 201, "{to:?}: {:?}", reply.body);
        }
        // Three request lines at least (the start's lines come before the
        // metrics exist).
        eventually("three lines counted", async || {
            let (_, metrics) = raw_get(proxy.admin, "/metrics");
            metric(&metrics, "residency_log_lines_dropped_total").is_some_and(|n| n >= 3.0)
        })
        .await;
    }
}

/// The 421 for a host of no tenant on a connection whose server name alone
/// recognised one says, in the log, both names and the fix: a front that
/// connects with the tenant's name and passes its public one would get it
/// for every upload (review, stop 63).
#[tokio::test]
async fn a_host_of_no_tenant_on_a_tenant_s_connection_is_explained_in_the_log() {
    let up = Upstream::start("zurich").await;
    let tenant = "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"localhost\"]\nmismatch = \"refuse\"\n";
    let proxy = Binary::start("not-the-host", &datacenters_at(up.addr), tenant).await;
    let reply = proxy
        .client()
        .send(
            "POST",
            "https://uploads.example/v1/telemetry",
            &[("x-forwarded-for", CH)],
            "cpu=0.5",
        )
        .await;
    assert_eq!(reply.status, 421, "{reply:?}");
    let log = proxy.log();
    let line = line_with(&log, "add it to the tenant's sni");
    assert!(
        line.contains("WARN") && line.contains("localhost") && line.contains("uploads.example"),
        "{log}"
    );
}

/// A load test whose `--origin` address the proxy would place in another
/// jurisdiction (by `--config`'s GeoIP database) exits 2 before it starts,
/// naming the address and where it goes: it ran, and counted every upload
/// from it a residency violation though the proxy routed it right (drill
/// audit F7). Addresses placed where they are given for pass the check.
#[test]
fn a_loadtest_origin_placed_elsewhere_exits_2_before_starting() {
    let (_dir, config) = valid_config(None);
    let base = [
        "loadtest",
        "--config",
        path(&config),
        "--target",
        "https://127.0.0.1:9/v1/telemetry",
        "--mix",
        "ch=1,eu=1",
        "--duration",
        "1s",
        "--rate",
        "1",
        "--sink-admin",
        "http://127.0.0.1:9",
        "--no-progress",
    ];
    let origins = [
        "--origin",
        "ch=198.51.100.20",
        "--origin",
        "eu=198.51.100.20",
    ];
    let out = run(&[&base[..], &origins[..]].concat(), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--origin")
            && stderr.contains(
                "ch=198.51.100.20: the proxy places 198.51.100.20 in jurisdiction eu (country DE"
            ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("eu=198.51.100.20"),
        "placed right: {stderr}"
    );

    // A tenant pinned by the target's server name places every address in
    // its jurisdiction, as decide --sni explains (drill re-audit N3: the
    // check asked without the server name, and the run counted 58
    // violations for correct routing).
    let base_toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{base_toml}\n[[tenants]]\nname = \"globex\"\njurisdiction = \"eu\"\nsni = [\"globex.ingest.example\"]\nmismatch = \"allow\"\n"),
    )
    .unwrap();
    let mut pinned = base.to_vec();
    pinned[4] = "https://globex.ingest.example:9/v1/telemetry";
    let origins = ["--origin", "ch=192.0.2.10", "--origin", "eu=198.51.100.20"];
    let out = run(
        &[&pinned[..], &origins[..], &["--allow-remote"]].concat(),
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ch=192.0.2.10: the proxy places 192.0.2.10 in jurisdiction eu (country CH, by the pin of tenant globex"),
        "{stderr}"
    );
}

/// With tenants and a transparency log, `check-config` warns when
/// `tenancy.record` is not set: the public log then names every tenant in
/// clear (page audit, stop 62). Not once the operator chose either way.
#[test]
fn check_config_warns_that_the_log_names_tenants_by_default() {
    let (dir, config) = valid_config(None);
    log_key(dir.path());
    let base = std::fs::read_to_string(&config).unwrap();
    let with = |tenancy: &str| {
        let toml = format!(
            "{base}\n[transparency]\ndirectory = \"log\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"log.key\"\n\
             {tenancy}\n[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"acme.ingest.example\"]\nmismatch = \"refuse\"\n"
        );
        std::fs::write(&config, toml).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        stdout
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let warnings = with("");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "warning: tenancy.record: not set, so every record names its tenant in clear"
        ),
        "{warnings:?}"
    );
    assert!(with("[tenancy]\nrecord = \"name\"\n").is_empty());
}

/// What the token key set leaves out is said by `check-config` and when
/// `serve` starts, not only on a reload: an issuer's RSA-only set, or an
/// empty one, was "configuration OK" and a quiet start, every token then
/// refused (config audit, stop 63).
#[tokio::test]
async fn keys_the_token_key_set_leaves_out_are_said_at_start() {
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    let rsa = r#"{"keys": [{"kty": "RSA", "kid": "rsa1", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}]}"#;
    let section = "[tenancy.token]\njwks = \"jwks.json\"\nissuer = \"https://issuer.example\"\naudience = \"ingest\"\n\
                   [[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n";
    std::fs::write(&config, format!("{base}\n{section}")).unwrap();
    for (set, said) in [
        (rsa, "key 0: only Ed25519 (OKP, EdDSA) and P-256 (EC, ES256) keys are accepted: the key is not used"),
        (rsa, "no key in the set is usable: every token is refused"),
        (r#"{"keys": []}"#, "the key set is empty: every token is refused"),
        // The issuer's private key, or a shared secret, in the set: said
        // (privacy audit, stop 68: taken or left out without a word).
        (
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}"#,
            "key 0 holds private or secret key material (`d`): anyone who can read this file can sign tokens for every tenant; give the proxy the public keys only",
        ),
        (
            r#"{"keys": [{"kty": "oct", "kid": "s1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}"#,
            "key 0 holds private or secret key material (`k`): anyone who can read this file can sign tokens for every tenant; give the proxy the public keys only",
        ),
        // The identity point: a forged signature verifies under it (JOSE
        // audit, stop 69: a token for any tenant was taken).
        (
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
            "key 0: its `x` is a small-order point, under which a forged signature verifies: anyone could sign a token for any tenant: the key is not used",
        ),
        (
            r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE", "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAI"}]}"#,
            "key 0: its point is not on the P-256 curve: no token verifies under it: the key is not used",
        ),
    ] {
        std::fs::write(dir.path().join("jwks.json"), set).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.lines().any(|l| l.starts_with("warning: tenancy.token.jwks: ") && l.ends_with(said)),
            "{said}: {stdout}"
        );
    }
    let up = Upstream::start("zurich").await;
    let keys = TempDir::new("jwks-at-start");
    std::fs::write(keys.path().join("jwks.json"), rsa).unwrap();
    let section = format!(
        "[tenancy.token]\njwks = \"{}\"\nissuer = \"https://issuer.example\"\naudience = \"ingest\"\n\
         [[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n",
        keys.path().join("jwks.json").display()
    );
    let proxy = Binary::start("jwks-at-start", &datacenters_at(up.addr), &section).await;
    let log = proxy.log();
    let line = line_with(&log, "only Ed25519");
    assert!(
        line.contains("WARN") && line.contains("the key is not used"),
        "{log}"
    );
}

/// A `--log-level` the log cannot use is a usage error (exit 2, naming
/// the flag), as a bad `--log-format` is: one that does not parse was
/// ignored for `info`, and a misspelt level (`debugg`, a target to the
/// filter) silenced every line (config audit, stop 63).
#[test]
fn a_log_level_the_log_cannot_use_exits_2() {
    let (_dir, config) = valid_config(None);
    for bad in ["nonsense[[[", "debugg", "warn,foo=bar=baz"] {
        let out = run(
            &[
                "--log-level",
                bad,
                "check-config",
                "--config",
                path(&config),
            ],
            &[],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--log-level"), "{bad}: {stderr}");
    }
    for good in ["warn", "DEBUG", "residency_proxy=debug,info", "off"] {
        let out = run(
            &[
                "--log-level",
                good,
                "check-config",
                "--config",
                path(&config),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{good}: {}", text(&out.stderr));
    }
}

/// A `--ca` that holds no certificate, a `--ca` that cannot be read and a
/// `--target` that is not a URL are invalid input, listed together (exit
/// 2, each under its flag): they exited 1, `--ca` unnamed ("upstream CA
/// bundle: no CA certificates"; drill audit, stop 62).
#[test]
fn loadtest_input_that_cannot_be_read_exits_2_naming_its_flag() {
    let (dir, config) = valid_config(None);
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let load = |ca: &Path, target: &str| {
        run(
            &[
                "loadtest",
                "--config",
                path(&config),
                "--target",
                target,
                "--ca",
                path(ca),
                "--mix",
                "ch=1",
                "--origin",
                "ch=192.0.2.10",
                "--duration",
                "1s",
                "--rate",
                "1",
                "--sink-admin",
                "http://127.0.0.1:9",
                "--no-progress",
            ],
            &[],
        )
    };
    let out = load(&not_pem, "not a url");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--ca {}: CA bundle: no CA certificates",
            not_pem.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--target not a url"), "{stderr}");
    // A sink admin URL that does not parse is the one problem said.
    let out = run(
        &[
            "loadtest",
            "--config",
            path(&config),
            "--target",
            "https://127.0.0.1:9/v1/telemetry",
            "--mix",
            "ch=1",
            "--origin",
            "ch=192.0.2.10",
            "--sink-admin",
            "ht tp://y",
            "--no-progress",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("1 problem") && stderr.contains("--sink-admin ht tp://y"),
        "{stderr}"
    );
    let missing = dir.path().join("missing.pem");
    let out = load(&missing, "https://127.0.0.1:9/v1/telemetry");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--ca {}: ", missing.display())),
        "{stderr}"
    );
}

/// A reload that leaves `tenancy.record` unset — the tenants' names then go
/// into the public log in clear from the next record — is warned of as the
/// start is (privacy audit, stop 68: it logged only "reloaded"); and a
/// `record_hmac_key` every user can read is warned of (undoing the
/// pseudonyms takes only that file).
#[tokio::test]
async fn a_reload_that_publishes_tenant_names_is_warned_of() {
    use std::os::unix::fs::PermissionsExt as _;
    let up = Upstream::start("zurich").await;
    let keys = TempDir::new("record-reload");
    log_key(keys.path());
    let hmac = keys.path().join("record.key");
    std::fs::write(&hmac, [7u8; 32]).unwrap();
    std::fs::set_permissions(&hmac, std::fs::Permissions::from_mode(0o644)).unwrap();
    let record = format!("record = \"hmac\"\nrecord_hmac_key = \"{}\"\n", path(&hmac));
    let extra = format!(
        "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"acme.test\"]\n\
         [tenancy]\n{record}\
         [transparency]\ndirectory = \"{}\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"{}\"\n",
        path(&keys.path().join("log")),
        path(&keys.path().join("log.key")),
    );
    let mut proxy = Binary::start("record-reload", &datacenters_at(up.addr), &extra).await;
    let log = proxy.log();
    let line = line_with(&log, "tenancy.record_hmac_key: ");
    assert!(
        line.contains("WARN") && line.contains("readable by every user"),
        "{log}"
    );
    assert!(!log.contains("tenancy.record: not set"), "{log}");
    let config = proxy.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(text.matches(&record).count(), 1);
    std::fs::write(&config, text.replace(&record, "")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the reload is logged", async || {
        proxy.log().contains(" reloaded")
    })
    .await;
    let log = proxy.log();
    let line = line_with(&log, "tenancy.record: not set");
    assert!(line.contains("WARN"), "{log}");
    let _ = proxy
        .terminate(std::time::Duration::from_secs(10), "stops")
        .await;
}

/// A `tenancy.file` that holds no tenant loads — emptying it is how every
/// tenant is removed — but with a warning, at `check-config`, at start and
/// at each reload: a file emptied by mistake, or read while written in
/// place, removed every pin without a word (reload audit, stop 68).
#[test]
fn an_empty_tenants_file_is_warned_of() {
    let (dir, config) = valid_config(None);
    let base = std::fs::read_to_string(&config).unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &config,
        format!("{base}\n[tenancy]\nfile = \"tenants.toml\"\nrecord = \"name\"\n"),
    )
    .unwrap();
    for (file, warned) in [
        ("", true),
        ("# none yet\n", true),
        (
            "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nclient_cert = [\"cn:acme\"]\n",
            false,
        ),
    ] {
        std::fs::write(&tenants, file).unwrap();
        let out = run(&["check-config", "--config", path(&config)], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        let said = stdout
            .lines()
            .any(|l| l.starts_with("warning: tenancy.file: ") && l.contains("holds no tenant"));
        assert_eq!(said, warned, "{file:?}: {stdout}");
    }
}
