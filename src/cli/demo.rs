//! `residency-proxy demo`: the whole product on one machine, in one process.
//!
//! Writes a self-signed certificate, a small GeoIP database built from the
//! CSV below, and a config file into a temporary directory; starts the
//! reference sink ([`residency_tools::sink`]) with three data centres (zurich = ch,
//! frankfurt = eu, virginia = us), which logs every upload it stores; then
//! runs the real `serve` path — with the transparency log and signed
//! receipts (a fresh key each run) — and prints curl commands. The demo trusts `X-Forwarded-For` from loopback so
//! curl can play clients from anywhere.
//!
//! The GeoIP fixture uses documentation ranges (RFC 5737 / RFC 3849), not
//! real allocations.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::workdir::{log_key, write_secret, WorkDir};
use crate::config::Config;

/// The demo's GeoIP data: `network,country`.
pub const DEMO_GEOIP_CSV: &str = "network,country
# RFC 5737 / RFC 3849 documentation ranges, assigned for the demo only
192.0.2.0/25,CH
192.0.2.128/25,LI
198.51.100.0/25,DE
198.51.100.128/25,FR
203.0.113.0/25,US
203.0.113.128/25,JP
2001:db8:c0::/48,CH
2001:db8:de::/48,DE
2001:db8:05::/48,US
";

/// The three data centres of the demo: name, jurisdiction.
const SINKS: [(&str, &str); 3] = [("zurich", "ch"), ("frankfurt", "eu"), ("virginia", "us")];

/// The demo log's name (`transparency.origin`).
const LOG_ORIGIN: &str = "demo.residency-proxy.local/log";

pub async fn run(
    port: u16,
    admin_port: u16,
    log_port: u16,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Removed when the demo stops (unless --dir): dropped at the end.
    let work = WorkDir::new(dir.as_deref(), "residency-proxy-demo")
        .context("creating the demo's directory")?;
    let dir = work.path();
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let specs: Vec<(String, SocketAddr)> =
        SINKS.iter().map(|(n, _)| (n.to_string(), any)).collect();
    // Kept alive until the proxy stops: dropping the sink stops it.
    let sink = residency_tools::sink::Sink::start(&specs, any).await?;
    let mut datacenters = Vec::new();
    for (name, jurisdiction) in SINKS {
        datacenters.push(SiteDatacenter {
            name,
            jurisdiction,
            priority: 1,
            addr: sink.datacenter_addr(name).context("sink data centre")?,
        });
    }
    // The transparency log, receipts signed: a fresh key, or with --dir
    // the one a run before made (the log there is tied to it).
    let signer = log_key(&dir.join("demo-log.key"), LOG_ORIGIN)?;
    std::fs::write(
        dir.join("demo-log.pub"),
        format!("{}\n", signer.verifier_key()),
    )?;
    let transparency = format!(
        "\n[transparency]\ndirectory = \"log\"\norigin = \"{LOG_ORIGIN}\"\nsigning_key = \"demo-log.key\"\n\
         address = \"127.0.0.1:{log_port}\"\nreceipts = \"signed\"\n"
    );
    let site = Site {
        generator: "demo",
        port,
        admin_port,
        listener:
            "trusted_proxies = [\"127.0.0.0/8\", \"::1\"]   # the demo lets curl name the client",
        datacenters: &datacenters,
        extra: &transparency,
    };
    let config_path = write_files(dir, &site)?;
    let config = Config::load(&config_path)?;
    // SIGHUP (and any change to the demo's files) reloads, as `serve` does.
    // The instructions once every listener is bound: a port in use ends
    // the demo with its error alone.
    let sink_admin = sink.admin_addr();
    let log_key = signer.verifier_key();
    let banner = || {
        print_banner(
            dir,
            work.kept(),
            port,
            admin_port,
            log_port,
            sink_admin,
            &log_key,
        )
    };
    let served =
        crate::cli::serve_watching(config, config_path, crate::cli::shutdown_signal(), banner)
            .await;
    sink.stop().await;
    served.map_err(|e| {
        let taken = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        });
        if taken {
            e.context("a port the demo listens on is taken: choose others with --port, --admin-port and --log-port")
        } else {
            e
        }
    })
}

/// A data centre of a generated site.
#[derive(Debug, Clone)]
pub struct SiteDatacenter {
    pub name: &'static str,
    pub jurisdiction: &'static str,
    pub priority: u32,
    pub addr: SocketAddr,
}

/// A complete local setup: one TLS listener on 127.0.0.1, the admin
/// listener, the bundled GeoIP database, the ch / eu / us policy and the
/// given data centres. Used by `demo` and `drill`.
#[derive(Debug)]
pub struct Site<'a> {
    /// Names the generated files and the config's header comment.
    pub generator: &'static str,
    pub port: u16,
    pub admin_port: u16,
    /// Extra lines inside `[[listeners]]` (trusted proxies, PROXY protocol).
    pub listener: &'a str,
    pub datacenters: &'a [SiteDatacenter],
    /// Appended to the config (timeouts, health, …).
    pub extra: &'a str,
}

/// Writes certificate, GeoIP database and config into `dir`; returns the
/// config path.
pub fn write_files(dir: &Path, site: &Site<'_>) -> anyhow::Result<PathBuf> {
    let g = site.generator;
    let (cert, key) = residency_tls::self_signed(&["localhost", "127.0.0.1", "::1"])?;
    std::fs::write(dir.join(format!("{g}.pem")), cert)?;
    write_secret(&dir.join(format!("{g}.key")), key.as_bytes())?;
    let rows = residency_tools::geoip::parse_csv(DEMO_GEOIP_CSV)?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::fs::write(
        dir.join(format!("{g}.mmdb")),
        residency_tools::geoip::build_country_db(&rows, epoch)?,
    )?;
    let (port, admin_port, listener) = (site.port, site.admin_port, site.listener);
    let mut toml = format!(
        r#"# Generated by `residency-proxy {g}`.
[[listeners]]
address = "127.0.0.1:{port}"
{listener}
[listeners.tls]
certificates = [{{ cert = "{g}.pem", key = "{g}.key" }}]

[admin]
address = "127.0.0.1:{admin_port}"

[geoip]
database = "{g}.mmdb"

[jurisdictions.ch]
countries = ["CH", "LI"]
[jurisdictions.eu]
countries = ["AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"]
[jurisdictions.us]
countries = ["US"]

[unknown_origin]
action = "reject"
"#
    );
    for dc in site.datacenters {
        toml.push_str(&format!(
            "\n[datacenters.{}]\njurisdiction = \"{}\"\npriority = {}\nupstreams = [\"http://{}\"]\n",
            dc.name, dc.jurisdiction, dc.priority, dc.addr
        ));
    }
    toml.push_str(site.extra);
    let path = dir.join(format!("{g}.toml"));
    std::fs::write(&path, toml)?;
    Ok(path)
}

#[allow(clippy::too_many_arguments)]
fn print_banner(
    dir: &Path,
    kept: bool,
    port: u16,
    admin_port: u16,
    log_port: u16,
    sink_admin: SocketAddr,
    log_key: &str,
) {
    let dir = dir.display();
    let kept = if kept {
        "kept after the demo stops"
    } else {
        "removed when the demo stops; --dir DIR keeps them"
    };
    // The binary as it was started: `residency-proxy` is on PATH only after
    // `cargo install --path .`.
    let bin = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "residency-proxy".into());
    let page = crate::page::pinned_url(&format!("http://127.0.0.1:{log_port}/"), log_key);
    let url = format!("https://127.0.0.1:{port}/v1/telemetry");
    let curl = |ip: &str, what: &str| {
        format!(
            "  # {what}\n  curl -sk {url} -H 'X-Forwarded-For: {ip}' --data-binary 'cpu=0.93' -i\n"
        )
    };
    println!(
        "\nresidency-proxy demo: files in {dir} ({kept}; SIGHUP or an edit of demo.toml reloads)\n\nWhere was an upload stored? Check a receipt in your browser:\n  {page}\n\nTry these (the demo trusts X-Forwarded-For from loopback):\n\n{}{}{}{}{}\n  # explain a decision, and watch the counters\n  curl -s 'http://127.0.0.1:{admin_port}/decide?ip=192.0.2.10'\n  curl -s http://127.0.0.1:{admin_port}/metrics | grep ^residency_\n  # what each data centre stored\n  curl -s http://{sink_admin}/records\n\n  # proof of residency: keep the receipt, verify it with the log's public key\n  curl -sk {url} -H 'X-Forwarded-For: 192.0.2.10' --data-binary 'cpu=0.93' -D - -o /dev/null | grep -i '^residency-receipt' > receipt.txt\n  {bin} verify --key {dir}/demo-log.pub --receipt @receipt.txt --log http://127.0.0.1:{log_port}\n\n  # or in a browser, with the log's key pinned in the link: paste the receipt there\n  {page}\n\nCtrl-C stops the demo.\n",
        curl("192.0.2.10", "Switzerland → stored in zurich (ch)"),
        curl("198.51.100.20", "Germany → stored in frankfurt (eu)"),
        curl("203.0.113.30", "United States → stored in virginia (us)"),
        curl("203.0.113.200", "Japan: in no jurisdiction → 451 origin_not_permitted"),
        curl("100.64.0.1", "not in the GeoIP database → 451 origin_unknown"),
    );
}
