//! Configuration: the serde shape an operator writes, and the typed shape the
//! proxy runs on.
//!
//! Loading happens in two steps. The `config` crate merges the TOML file with
//! `RESIDENCY_PROXY__SECTION__KEY` environment overrides into [`RawConfig`]:
//! typed serde structures whose numbers, durations (humantime's syntax) and
//! enumerations are [`Setting`]s, which keep a value that does not convert
//! instead of failing, and whose addresses, networks, URLs and paths are
//! strings. [`Config::from_raw`] then checks and converts every field to its
//! real type (`SocketAddr`, `IpNet`, files that exist, policy ids), applies
//! defaults and ranges, and collects *every* problem into one
//! [`ConfigReport`], each naming its key, so an operator fixes a broken file
//! in one pass. Only an unknown key or a section of the wrong shape stops
//! deserialization; that problem is reported under its key too (and with an
//! unknown key, every other unknown key in the file and the environment:
//! [`crate::config_source::deserialize_failed`]).
//! After loading, invalid states cannot be represented.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use residency_core::country::Country;
use residency_core::origin::TrustedProxies;
use residency_core::policy::{Policy, RawDatacenter, RawJurisdiction, RawUnknownOrigin};
use residency_core::report::{
    parse_addr, parse_net, ConfigReport, FromSetting, OptionalSetting, Setting,
};
use residency_log::settings::{RawTransparency, Transparency, WitnessSettings};

pub use crate::config_source::ENV_PREFIX;
use crate::config_source::{deserialize_failed, override_key, override_of};

// ---------------------------------------------------------------------------
// Typed configuration
// ---------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub geoip: Geoip,
    pub policy: Policy,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// The request methods forwarded (`limits.methods`); others get 405,
    /// or 501 when no RFC the proxy knows defines them.
    pub methods: Methods,
    pub upstream: UpstreamSettings,
    pub health: HealthSettings,
    pub log_format: LogFormat,
    /// The transparency log and receipts; `None` when not configured.
    pub transparency: Option<Transparency>,
    /// `[[transparency.witnesses]]`, asked to cosign each new checkpoint
    /// (empty without them or without the log).
    pub witnesses: Vec<WitnessSettings>,
    /// Tokio worker threads (`runtime.worker_threads`); default one per core.
    pub worker_threads: Option<usize>,
    /// `[[tenants]]`, `[tenancy]`: customers whose pin decides, not GeoIP.
    pub tenancy: crate::tenancy::Tenancy,
    /// The file this was loaded from (watched for hot reload).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    /// `proxy_protocol = "required"`: a PROXY v1/v2 header must open every connection.
    pub proxy_protocol: bool,
    pub trusted_proxies: TrustedProxies,
    pub certificates: Vec<CertPaths>,
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs of `client_ca`'s issuers: revoked client certificates are
    /// refused at the handshake.
    pub client_crl: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    /// Names (lower case) the admin listener answers for besides IP
    /// literals and `localhost`: a request naming another `Host` is
    /// refused (a web page's, through DNS rebinding).
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Geoip {
    pub database: PathBuf,
    pub overrides: Vec<(IpNet, Country)>,
    /// Addresses whose country a new database must confirm before a reload
    /// is accepted (checked after overrides, like real requests).
    pub canaries: Vec<(std::net::IpAddr, Country)>,
    /// Older databases make the proxy not ready.
    pub max_age: Option<Duration>,
}

/// Every phase of a connection and an upload has a named deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub request_head: Duration,
    pub request_body_idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub keepalive_idle: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, readiness is false this long before accepting stops.
    pub shutdown_delay: Duration,
    /// How often watched files are checked for changes (0 = off).
    pub reload_poll: Duration,
    /// How long a refused request's unread body is read and discarded so
    /// that the client gets the answer (0 = not at all).
    pub discard_body: Duration,
    /// While a body is being sent upstream, the longest a blocked write may
    /// make no progress (the data centre stopped reading).
    pub upstream_send_idle: Duration,
    /// The longest an upstream response body may send nothing.
    pub upstream_response_idle: Duration,
    /// The longest a write to the client may stay blocked (the client
    /// stopped reading); then the connection is dropped.
    pub client_send_idle: Duration,
    /// A connection this old takes no new request: it ends after the ones
    /// in flight (HTTP/1 answers with `Connection: close`, HTTP/2 sends
    /// GOAWAY), as nginx's `keepalive_time`.
    pub connection_max_age: Duration,
}

impl Timeouts {
    /// How long after a request's body of `body_bytes` ended the proxy may
    /// still deliver it to a data centre: two attempts (a request is
    /// retried once), each up to `upstream_connect` waiting for a
    /// connection, as long again connecting, then — for a body over 16 KiB,
    /// which a data centre that does not read may leave unsent —
    /// `upstream_send_idle` sending it, and `upstream_response` for the
    /// answer's head; and a second to spare. A client that gave up sooner
    /// may still have its upload stored until then (over HTTP/1.1 the proxy
    /// cannot tell its close from a half close): the load test waits this
    /// long before it reconciles such uploads.
    pub fn late_delivery(&self, body_bytes: usize) -> Duration {
        let sending = if body_bytes > 16 * 1024 {
            self.upstream_send_idle
        } else {
            Duration::ZERO
        };
        self.upstream_connect
            .saturating_mul(2)
            .saturating_add(sending)
            .saturating_add(self.upstream_response)
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1))
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tls_handshake: Duration::from_secs(10),
            request_head: Duration::from_secs(10),
            request_body_idle: Duration::from_secs(30),
            upstream_connect: Duration::from_secs(3),
            upstream_response: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            reload_poll: Duration::from_secs(2),
            discard_body: Duration::from_secs(30),
            upstream_send_idle: Duration::from_secs(30),
            upstream_response_idle: Duration::from_secs(30),
            client_send_idle: Duration::from_secs(60),
            connection_max_age: Duration::from_secs(3600),
        }
    }
}

/// Size and count limits; everything a peer can grow is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_head_bytes: usize,
    /// How far an HTTP/1 connection's read buffer may grow while a request
    /// body streams: each read becomes one body chunk and one write to the
    /// data centre (a TLS record carries at most 16 KiB of it). At least
    /// `max_request_head_bytes`, whatever this says.
    pub request_body_buffer_bytes: usize,
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    pub max_connections: usize,
    /// At most this much of a refused request's unread body is read and
    /// discarded so that the client gets the answer.
    pub discard_body_bytes: u64,
    /// At most this many requests whose client left run on to deliver
    /// their upload (per connection: `h2_max_concurrent_streams`).
    pub max_detached_requests: usize,
    /// Past its first `timeouts.request_body_idle`, a request body must
    /// have averaged at least this many bytes per second since its
    /// request's head was taken (0 = no minimum).
    pub min_request_body_rate: u64,
    /// Requests one client (an address; an IPv6 /64) may have in flight,
    /// from the decision to forward until the response head, or after an
    /// early answer the body's end (0 = no limit).
    pub max_requests_per_client: u32,
    /// Connections one client (an address; an IPv6 /64) may hold open at
    /// once, on all ingest listeners together; a trusted proxy's own
    /// connections are not counted (0 = no limit).
    pub max_connections_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_head_bytes: 16 * 1024,
            request_body_buffer_bytes: 32 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            h2_max_concurrent_streams: 100,
            max_connections: 10_000,
            discard_body_bytes: 16 * 1024 * 1024,
            max_detached_requests: 1024,
            min_request_body_rate: 240,
            max_requests_per_client: 256,
            max_connections_per_client: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// PEM bundle used instead of the system roots for `https` upstreams.
    pub ca: Option<PathBuf>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Connections open to one upstream at most, busy and idle.
    pub max_connections_per_upstream: usize,
    /// Bodies up to this size with an `Idempotency-Key` are kept for replay.
    pub replay_limit_bytes: usize,
    /// All replayable bodies held at once, in bytes; beyond it a request
    /// streams without a replay copy.
    pub replay_budget_bytes: usize,
}

/// Active checks and passive ejection (see `upstream::health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Path probed with GET on every upstream; `None` disables active checks.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Consecutive failed requests that eject an upstream.
    pub passive_failures: u32,
    /// How long an ejected upstream is skipped.
    pub down_for: Duration,
    /// How often upstreams that are down or ejected are probed.
    pub recovery_interval: Duration,
    /// A request whose body was sent and that waited this long while its
    /// upstream answered nothing ejects the upstream as hung (`None`: off;
    /// default: a quarter of `timeouts.upstream_response`).
    pub hung_after: Option<Duration>,
}

impl HealthSettings {
    /// The longest a repaired upstream may still be skipped: an ejection's
    /// `down_for`, then the passing probes that bring it back.
    pub fn recovery(&self) -> Duration {
        self.recovery_interval
            .checked_mul(self.healthy_threshold)
            .and_then(|probes| self.down_for.checked_add(probes))
            .unwrap_or(Duration::MAX)
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: Some("/healthz".into()),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            passive_failures: 3,
            down_for: Duration::from_secs(10),
            recovery_interval: Duration::from_millis(250),
            hung_after: Some(Duration::from_secs(15)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromSetting for LogFormat {
    const EXPECTED: &'static str = "one of \"text\", \"json\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// `listeners.proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// Connections open with the TLS handshake.
    #[default]
    Off,
    /// A PROXY v1/v2 header must open every connection.
    Required,
}

impl FromSetting for ProxyProtocol {
    const EXPECTED: &'static str = "one of \"off\", \"required\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "off" => Some(ProxyProtocol::Off),
            "required" => Some(ProxyProtocol::Required),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Raw (serde) configuration
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: RawAdmin,
    pub geoip: Option<RawGeoip>,
    #[serde(default)]
    pub jurisdictions: BTreeMap<String, RawJurisdiction>,
    #[serde(default)]
    pub unknown_origin: RawUnknownOrigin,
    #[serde(default)]
    pub datacenters: BTreeMap<String, RawDatacenter>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub log: RawLog,
    pub transparency: Option<RawTransparency>,
    #[serde(default)]
    pub runtime: RawRuntime,
    /// Customers pinned to a jurisdiction (`residency_core::tenant`).
    #[serde(default)]
    pub tenants: Vec<residency_core::tenant::RawTenant>,
    pub tenancy: Option<crate::tenancy::RawTenancy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<Setting<usize>>,
}

/// `[timeouts]`; see [`Timeouts`] for the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub tls_handshake: Option<Setting<Duration>>,
    pub request_head: Option<Setting<Duration>>,
    pub request_body_idle: Option<Setting<Duration>>,
    pub upstream_connect: Option<Setting<Duration>>,
    pub upstream_response: Option<Setting<Duration>>,
    pub keepalive_idle: Option<Setting<Duration>>,
    pub shutdown_grace: Option<Setting<Duration>>,
    pub shutdown_delay: Option<Setting<Duration>>,
    pub reload_poll: Option<Setting<Duration>>,
    pub discard_body: Option<Setting<Duration>>,
    pub upstream_send_idle: Option<Setting<Duration>>,
    pub upstream_response_idle: Option<Setting<Duration>>,
    pub client_send_idle: Option<Setting<Duration>>,
    pub connection_max_age: Option<Setting<Duration>>,
}

/// `[limits]`; see [`Limits`] for the defaults. Read as `u64` so that a
/// value out of range is reported as such.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_head_bytes: Option<Setting<u64>>,
    pub request_body_buffer_bytes: Option<Setting<u64>>,
    pub max_body_bytes: Option<Setting<u64>>,
    pub h2_max_concurrent_streams: Option<Setting<u64>>,
    pub max_connections: Option<Setting<u64>>,
    pub discard_body_bytes: Option<Setting<u64>>,
    pub max_detached_requests: Option<Setting<u64>>,
    pub min_request_body_rate: Option<Setting<u64>>,
    pub max_requests_per_client: Option<Setting<u64>>,
    pub max_connections_per_client: Option<Setting<u64>>,
    /// Request methods forwarded; default `["POST", "PUT"]`.
    pub methods: Option<Vec<String>>,
}

/// `[health]`; see [`HealthSettings`] for the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<Setting<Duration>>,
    pub timeout: Option<Setting<Duration>>,
    pub healthy_threshold: Option<Setting<u32>>,
    pub unhealthy_threshold: Option<Setting<u32>>,
    pub passive_failures: Option<Setting<u32>>,
    pub down_for: Option<Setting<Duration>>,
    pub recovery_interval: Option<Setting<Duration>>,
    /// A duration, or "off".
    pub hung_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Option<String>,
    pub proxy_protocol: Option<Setting<ProxyProtocol>>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCert>,
    pub client_ca: Option<String>,
    pub client_crl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoip {
    pub database: Option<String>,
    #[serde(default)]
    pub overrides: Vec<RawOverride>,
    #[serde(default)]
    pub canaries: Vec<RawCanary>,
    pub max_age: Option<Setting<Duration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub address: String,
    pub country: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub network: String,
    pub country: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub ca: Option<String>,
    pub pool_idle_timeout: Option<Setting<Duration>>,
    pub pool_max_idle_per_host: Option<Setting<usize>>,
    pub max_connections_per_upstream: Option<Setting<usize>>,
    pub replay_limit_bytes: Option<Setting<usize>>,
    pub replay_budget_bytes: Option<Setting<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Setting<LogFormat>>,
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Loads a TOML file, applies environment overrides, validates everything.
    /// Relative paths in the file are relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigReport> {
        Self::load_with_env(path, None)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<config::Map<String, String>>,
    ) -> Result<Config, ConfigReport> {
        let source = path.display().to_string();
        // The `config` crate would say "not found" (also of `/dev/null`).
        if let Some(problem) = residency_core::report::not_a_file(path) {
            let mut report = ConfigReport::new(&source);
            report.push("--config", problem);
            return Err(report);
        }
        // The overrides: their names, to say when a problem is one of
        // theirs; the variables, to deserialize again without an unknown key
        // one of them sets.
        let vars = env
            .clone()
            .unwrap_or_else(crate::config_source::process_overrides);
        let overrides: Vec<String> = vars.keys().cloned().collect();
        let merged = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(crate::config_source::environment(env))
            .build()
            .and_then(|c| c.try_deserialize::<RawConfig>());
        let overridden = |mut report: ConfigReport| {
            let mut named = Vec::new();
            let mut unexplained = false;
            for problem in &mut report.problems {
                let var = override_of(&problem.key, &overrides);
                // A variable makes an unknown key under its own name: one
                // no variable names is the file's alone.
                unexplained |= var.is_none() && !problem.message.starts_with("unknown key");
                if let Some(var) = var {
                    named.push(var);
                    // A variable under an array (`…__LISTENERS__0__…`)
                    // makes it a table.
                    if problem.message.contains("expected a sequence") {
                        problem.message.push_str(
                            ": an array, or a key in an array of tables, cannot be set from the environment; set it in the file",
                        );
                    }
                    problem
                        .message
                        .push_str(&format!(" (set by the environment: {var})"));
                }
            }
            // A variable may be at fault under another key's name (a data
            // centre's jurisdiction reported where a jurisdiction lists it).
            let mut others: Vec<&str> = overrides
                .iter()
                .map(String::as_str)
                .filter(|var| override_key(var).is_some() && !named.contains(var))
                .collect();
            others.sort_unstable();
            if unexplained && !others.is_empty() {
                report.notes.push(format!(
                    "set by the environment, and possibly the cause of a problem above: {}",
                    others.join(", ")
                ));
            }
            report
        };
        let raw = merged.map_err(|e| {
            let text = std::fs::read_to_string(path).ok();
            overridden(deserialize_failed::<RawConfig>(
                &source,
                "config",
                text.as_deref(),
                Some(&vars),
                &e,
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::from_raw(raw, base, &source).map_err(overridden)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses TOML text (no environment overrides); paths relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigReport> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<RawConfig>())
            .map_err(|e| {
                deserialize_failed::<RawConfig>("config", "config", Some(text), None, &e)
            })?;
        Self::from_raw(raw, base, "config")
    }

    /// Converts the raw shape, reporting every problem at once.
    pub fn from_raw(raw: RawConfig, base: &Path, source: &str) -> Result<Config, ConfigReport> {
        let mut report = ConfigReport::new(source);
        let r = &mut report;

        if raw.listeners.is_empty() {
            r.push("listeners", "at least one [[listeners]] is required");
        }
        let mut sockets: Vec<(String, SocketAddr)> = Vec::new();
        let listeners: Vec<Listener> = raw
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let key = format!("listeners[{i}]");
                let l = listener(l, &key, base, r)?;
                sockets.push((format!("{key}.address"), l.address));
                Some(l)
            })
            .collect();

        let admin_address = raw.admin.address.as_deref().unwrap_or("127.0.0.1:9900");
        let mut hosts = Vec::new();
        for (i, host) in raw.admin.hosts.iter().enumerate() {
            let name = host.trim().to_ascii_lowercase();
            if residency_core::tenant::valid_dns_name(&name) {
                hosts.push(name);
            } else {
                r.push(
                    format!("admin.hosts[{i}]"),
                    format!("`{host}` is not a DNS name (no port, no address: IP literals and localhost are always answered)"),
                );
            }
        }
        let admin =
            parse_addr(admin_address, "admin.address", r).map(|address| Admin { address, hosts });
        sockets.extend(
            admin
                .as_ref()
                .map(|a| ("admin.address".to_string(), a.address)),
        );

        let geoip = geoip(raw.geoip.as_ref(), base, r);
        let policy = Policy::from_raw(&raw.jurisdictions, &raw.unknown_origin, &raw.datacenters, r);
        let timeouts = timeouts(&raw.timeouts, r);
        let limits = limits(&raw.limits, r);
        let methods = methods(raw.limits.methods.as_deref(), r);
        let upstream = upstream(&raw.upstream, base, r);
        let mut health = health(&raw.health, r);
        if raw.health.hung_after.is_none() {
            // Default: a quarter of the response deadline, so an upstream
            // that is merely slow is not taken for a hung one.
            health.hung_after = Some(timeouts.upstream_response / 4);
        }
        let transparency = raw
            .transparency
            .as_ref()
            .map(|t| residency_log::settings::transparency(t, base, r));
        let witnesses = raw
            .transparency
            .as_ref()
            .map(|t| residency_log::settings::witnesses(t, base, r));
        // A witness whose key is the log's own: its "cosignature" is the
        // log vouching for itself (crypto audit, stop 66: accepted).
        if let (Some(Some(t)), Some(Some(list))) = (&transparency, &witnesses) {
            let log_key = t
                .verifier_key()
                .and_then(|v| residency_log::note::Verifier::parse(&v).ok())
                .map(|v| v.public_key());
            for (i, w) in list.iter().enumerate() {
                let own = log_key.is_some_and(|log| {
                    residency_log::witness::CosignatureVerifier::check_not_the_log(
                        std::slice::from_ref(&w.key),
                        &log,
                    )
                    .is_err()
                });
                if own {
                    r.push(
                        format!("transparency.witnesses[{i}].key"),
                        "is the log's own public key (transparency.signing_key's): a witness must sign with a key of its own, or its cosignature vouches for nothing",
                    );
                }
            }
        }
        if let Some(Some(address)) = transparency
            .as_ref()
            .map(|t| t.as_ref().and_then(|t| t.address))
        {
            sockets.push(("transparency.address".to_string(), address));
        }
        sockets_apart(&sockets, r);
        if let Some(policy) = &policy {
            upstreams_not_ours(policy, &sockets, r);
        }
        let worker_threads = raw.runtime.worker_threads.as_ref().and_then(|n| {
            n.check_is(
                "runtime.worker_threads",
                r,
                "an integer from 1 to 1024",
                |n| (1..=1024).contains(n),
            )
        });
        let log_format = raw.log.format.check_or(LogFormat::Text, "log.format", r);
        // Checked with an invalid policy too (every problem at once); a
        // tenant's jurisdiction is then not looked up.
        let tenancy = crate::tenancy::Tenancy::from_raw(
            raw.tenancy.as_ref(),
            &raw.tenants,
            base,
            policy.as_ref(),
            r,
        );
        // One key for both HMACs: a tenant's name and a client's address
        // that are the same bytes (`acme` is 97.99.109.101) would get one
        // pseudonym (crypto audit, stop 66).
        if let (Some(Some(t)), Some(path)) = (
            &transparency,
            raw.tenancy
                .as_ref()
                .filter(|t| t.record.as_deref() == Some("hmac"))
                .and_then(|t| t.record_hmac_key.as_deref()),
        ) {
            let same = match &t.client_address {
                residency_log::settings::ClientAddress::Hmac { key } => {
                    std::fs::read(base.join(path)).is_ok_and(|record_key| &record_key == key)
                }
                _ => false,
            };
            if same {
                r.push(
                    "tenancy.record_hmac_key",
                    "the same key as transparency.client_hmac_key: a tenant's name and a client's address that are the same bytes would get one pseudonym in the log; give each its own key",
                );
            }
        }

        let config = (|| {
            Some(Config {
                listeners,
                admin: admin?,
                geoip: geoip?,
                policy: policy?,
                timeouts,
                limits,
                methods,
                upstream: upstream?,
                health,
                log_format,
                transparency: match transparency {
                    Some(t) => Some(t?),
                    None => None,
                },
                witnesses: match witnesses {
                    Some(w) => w?,
                    None => Vec::new(),
                },
                worker_threads,
                tenancy: tenancy?,
                source: None,
            })
        })();
        report.finish(config)
    }
}

/// Every listening socket on an address of its own: two on one address, or
/// one on the unspecified address and another on the same port that it
/// covers (`0.0.0.0` every IPv4 address; `[::]`, dual-stack, every
/// address), cannot both bind. Named by key here rather than as a bind
/// error at start, which `check-config` would not have seen. Port 0 (any
/// free port) never collides.
fn sockets_apart(sockets: &[(String, SocketAddr)], r: &mut ConfigReport) {
    let covers =
        |u: SocketAddr, x: SocketAddr| u.ip().is_unspecified() && (u.is_ipv6() || x.is_ipv4());
    // `[::ffff:127.0.0.1]:P` binds 127.0.0.1's P, and `[::ffff:0.0.0.0]:P`
    // every IPv4 address's (IPv6 audit, stop 66: passed here, refused by
    // the kernel at start).
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    for (j, (key, b)) in sockets.iter().enumerate() {
        let b_seen = canonical(*b);
        let clash = sockets[..j].iter().find(|(_, a)| {
            let a = canonical(*a);
            a.port() == b_seen.port()
                && a.port() != 0
                && (a.ip() == b_seen.ip() || covers(a, b_seen) || covers(b_seen, a))
        });
        if let Some((other, a)) = clash {
            r.push(
                key.clone(),
                format!("{b} overlaps {other} ({a}): two sockets cannot listen there"),
            );
        }
    }
}

/// No upstream on one of this proxy's own sockets (an address copied from
/// the listener): uploads would come back to the proxy, now from itself,
/// or go to its admin or log endpoints. Those given by IP address or as
/// `localhost` are compared: the same address and port, or a loopback one
/// on the port of a socket listening on every address.
fn upstreams_not_ours(policy: &Policy, sockets: &[(String, SocketAddr)], r: &mut ConfigReport) {
    let mut index = HashMap::new();
    for u in &policy.upstreams {
        let dc = policy.datacenter(u.datacenter);
        let i = index.entry(u.datacenter).or_insert(0usize);
        let key = format!("datacenters.{}.upstreams[{i}]", dc.name);
        *i += 1;
        let host = u.uri.host().unwrap_or_default();
        let ips: Vec<IpAddr> = match host.trim_end_matches('.') {
            h if h.eq_ignore_ascii_case("localhost") => {
                vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
            }
            // `::ffff:127.0.0.1` and `127.1` reach 127.0.0.1.
            h => residency_core::policy::host_address(h)
                .into_iter()
                .collect(),
        };
        let port = u
            .uri
            .port_u16()
            .unwrap_or(if u.uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        // A connection to the unspecified address reaches a local socket
        // (Linux); one to a loopback address, a socket on every address.
        let ours = sockets.iter().find(|(_, s)| {
            let ours = s.ip().to_canonical();
            s.port() == port
                && ips.iter().any(|ip| {
                    *ip == ours
                        || ip.is_unspecified()
                        || (ours.is_unspecified()
                            && ip.is_loopback()
                            && (s.is_ipv6() || ip.is_ipv4()))
                })
        });
        if let Some((socket, addr)) = ours {
            r.push(
                key,
                format!(
                    "`{}` is this proxy's own {socket} ({addr}): an upstream is a data centre's ingestion server",
                    u.uri
                ),
            );
        }
    }
}

/// Whether a CIDR network is written with bits set past its prefix
/// (`10.20.5.1/8`): `parse_net` would take the network it lies in.
fn has_host_bits(text: &str) -> bool {
    text.trim()
        .parse::<ipnet::IpNet>()
        .is_ok_and(|net| net != net.trunc())
}

fn host_bits_message(text: &str, net: ipnet::IpNet) -> String {
    format!(
        "`{}` has host bits set (did you mean `{net}`?)",
        text.trim()
    )
}

fn listener(raw: &RawListener, key: &str, base: &Path, r: &mut ConfigReport) -> Option<Listener> {
    let address = match &raw.address {
        Some(a) => parse_addr(a, &format!("{key}.address"), r),
        None => {
            r.push(format!("{key}.address"), "missing");
            None
        }
    };
    let proxy_protocol =
        raw.proxy_protocol
            .check_or(ProxyProtocol::Off, &format!("{key}.proxy_protocol"), r)
            == ProxyProtocol::Required;
    let mut nets = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().enumerate() {
        let key = format!("{key}.trusted_proxies[{i}]");
        match parse_net(text) {
            // Widened silently, a typo would trust a whole network to name
            // its clients.
            Some(net) if has_host_bits(text) => r.push(key, host_bits_message(text, net)),
            Some(net) => nets.push(net),
            None => r.push(
                key,
                format!("`{text}` is not an IP address or CIDR network"),
            ),
        }
    }
    if proxy_protocol && raw.trusted_proxies.is_empty() {
        r.push(
            format!("{key}.trusted_proxies"),
            "proxy_protocol = \"required\" needs the load balancers' addresses in trusted_proxies",
        );
    }
    let mut certificates = Vec::new();
    let mut client_ca = None;
    let mut client_crl = None;
    match &raw.tls {
        None => r.push(
            format!("{key}.tls"),
            "missing: every listener terminates TLS",
        ),
        Some(tls) => {
            if tls.certificates.is_empty() {
                r.push(
                    format!("{key}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            for (i, c) in tls.certificates.iter().enumerate() {
                let k = format!("{key}.tls.certificates[{i}]");
                let cert = file(&c.cert, &format!("{k}.cert"), base, r);
                let key_path = file(&c.key, &format!("{k}.key"), base, r);
                if let (Some(cert), Some(key)) = (cert, key_path) {
                    certificates.push(CertPaths { cert, key });
                }
            }
            if let Some(ca) = &tls.client_ca {
                client_ca = file(ca, &format!("{key}.tls.client_ca"), base, r);
            }
            if let Some(crl) = &tls.client_crl {
                if tls.client_ca.is_none() {
                    r.push(
                        format!("{key}.tls.client_crl"),
                        "needs client_ca: without client certificates there is nothing to revoke",
                    );
                }
                client_crl = file(crl, &format!("{key}.tls.client_crl"), base, r);
            }
        }
    }
    Some(Listener {
        address: address?,
        proxy_protocol,
        trusted_proxies: TrustedProxies::new(nets),
        certificates,
        client_ca,
        client_crl,
    })
}

fn geoip(raw: Option<&RawGeoip>, base: &Path, r: &mut ConfigReport) -> Option<Geoip> {
    let Some(raw) = raw else {
        r.push("geoip", "missing: [geoip] database = \"...\" is required");
        return None;
    };
    let database = match &raw.database {
        Some(db) => file(db, "geoip.database", base, r),
        None => {
            r.push("geoip.database", "missing");
            None
        }
    };
    let mut overrides = Vec::new();
    // Each network's countries so far, with the first override naming
    // each (a list scanned for every override made 300,000 of them take
    // 30 s to load: scale audit, stop 65).
    let mut seen: HashMap<ipnet::IpNet, Vec<(Country, usize)>> = HashMap::new();
    for (i, o) in raw.overrides.iter().enumerate() {
        let key = format!("geoip.overrides[{i}]");
        let mut net = parse_net(&o.network);
        match net {
            None => r.push(
                format!("{key}.network"),
                format!("`{}` is not a CIDR network", o.network),
            ),
            // Widened silently, a typo would move a whole network.
            Some(n) if has_host_bits(&o.network) => {
                r.push(format!("{key}.network"), host_bits_message(&o.network, n));
                net = None;
            }
            Some(_) => {}
        }
        let country = Country::parse(&o.country);
        if country.is_none() {
            r.push(format!("{key}.country"), Country::unknown(&o.country));
        }
        if let (Some(net), Some(country)) = (net, country) {
            // One network, two countries: which applies would depend on
            // the order of the list.
            let countries = seen.entry(net).or_default();
            if let Some((other, j)) = countries.iter().find(|(c, _)| *c != country) {
                r.push(
                    format!("{key}.network"),
                    format!(
                        "`{}` is geoip.overrides[{j}]'s network, which says {other}, not {country}",
                        o.network
                    ),
                );
            }
            if !countries.iter().any(|(c, _)| *c == country) {
                countries.push((country, i));
            }
            overrides.push((net, country));
        }
    }
    let mut canaries = Vec::new();
    for (i, c) in raw.canaries.iter().enumerate() {
        let key = format!("geoip.canaries[{i}]");
        let addr = c.address.trim().parse::<std::net::IpAddr>();
        let country = Country::parse(&c.country);
        // Each field judged on its own: both wrong is two problems.
        if addr.is_err() {
            r.push(
                format!("{key}.address"),
                format!("`{}` is not an IP address", c.address),
            );
        }
        if country.is_none() {
            r.push(format!("{key}.country"), Country::unknown(&c.country));
        }
        if let (Ok(a), Some(country)) = (addr, country) {
            canaries.push((a.to_canonical(), country));
        }
    }
    let max_age = raw.max_age.as_ref().and_then(|d| {
        d.check_is(
            "geoip.max_age",
            r,
            "a positive duration such as \"30d\"",
            |d| !d.is_zero(),
        )
    });
    Some(Geoip {
        database: database?,
        overrides,
        canaries,
        max_age,
    })
}

fn timeouts(raw: &RawTimeouts, r: &mut ConfigReport) -> Timeouts {
    let RawTimeouts {
        tls_handshake,
        request_head,
        request_body_idle,
        upstream_connect,
        upstream_response,
        keepalive_idle,
        shutdown_grace,
        shutdown_delay,
        reload_poll,
        discard_body,
        upstream_send_idle,
        upstream_response_idle,
        client_send_idle,
        connection_max_age,
    } = raw;
    let d = Timeouts::default();
    // A year at most: deadlines are instants, and one past the clock's
    // range would panic at the first connection, not here. A year as the
    // duration syntax has it (`1y`: 365.25 days), so `1y` is one.
    let longest = Duration::from_secs(31_557_600);
    // The deadlines count whole milliseconds: "500us" (meant "500ms"?)
    // would be none at all, every connection ended at once.
    let shortest = Duration::from_millis(1);
    let positive = |value: &Option<Setting<Duration>>, name: &str, default, r: &mut _| {
        value.check_is_or(
            default,
            &format!("timeouts.{name}"),
            r,
            "a duration from 1ms to a year, such as \"500ms\", \"10s\", \"2m\"",
            |d| *d >= shortest && *d <= longest,
        )
    };
    let or_off = |value: &Option<Setting<Duration>>, name: &str, default, r: &mut _| {
        value.check_is_or(
            default,
            &format!("timeouts.{name}"),
            r,
            "\"0s\" (off) or a duration from 1ms to a year, such as \"5s\"",
            |d| d.is_zero() || (*d >= shortest && *d <= longest),
        )
    };
    Timeouts {
        tls_handshake: positive(tls_handshake, "tls_handshake", d.tls_handshake, r),
        request_head: positive(request_head, "request_head", d.request_head, r),
        request_body_idle: positive(
            request_body_idle,
            "request_body_idle",
            d.request_body_idle,
            r,
        ),
        upstream_connect: positive(upstream_connect, "upstream_connect", d.upstream_connect, r),
        upstream_response: positive(
            upstream_response,
            "upstream_response",
            d.upstream_response,
            r,
        ),
        keepalive_idle: positive(keepalive_idle, "keepalive_idle", d.keepalive_idle, r),
        shutdown_grace: positive(shutdown_grace, "shutdown_grace", d.shutdown_grace, r),
        shutdown_delay: or_off(shutdown_delay, "shutdown_delay", d.shutdown_delay, r),
        // Each poll stats every watched file: "1ms" (meant "1s"?) would
        // keep a core busy.
        reload_poll: reload_poll.check_is_or(
            d.reload_poll,
            "timeouts.reload_poll",
            r,
            "\"0s\" (off) or a duration from 100ms to a year, such as \"5s\"",
            |d| d.is_zero() || (*d >= MIN_PERIOD && *d <= longest),
        ),
        discard_body: or_off(discard_body, "discard_body", d.discard_body, r),
        upstream_send_idle: positive(
            upstream_send_idle,
            "upstream_send_idle",
            d.upstream_send_idle,
            r,
        ),
        upstream_response_idle: positive(
            upstream_response_idle,
            "upstream_response_idle",
            d.upstream_response_idle,
            r,
        ),
        client_send_idle: positive(client_send_idle, "client_send_idle", d.client_send_idle, r),
        connection_max_age: positive(
            connection_max_age,
            "connection_max_age",
            d.connection_max_age,
            r,
        ),
    }
}

/// The request methods the proxy forwards, and the `Allow` header its 405
/// answers carry (RFC 9110 §15.5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods {
    allowed: Vec<http::Method>,
    allow: http::HeaderValue,
}

impl Default for Methods {
    fn default() -> Self {
        Methods {
            allowed: vec![http::Method::POST, http::Method::PUT],
            allow: http::HeaderValue::from_static("POST, PUT"),
        }
    }
}

impl Methods {
    pub fn allows(&self, method: &http::Method) -> bool {
        self.allowed.contains(method)
    }

    /// Whether a method is one the proxy knows (RFC 9110 §9.3, RFC 5789,
    /// or `limits.methods`): one it does not is 501, not 405.
    pub fn recognizes(&self, method: &http::Method) -> bool {
        STANDARD_METHODS.contains(&method.as_str()) || self.allows(method)
    }

    /// The `Allow` header value: the allowed methods, comma-separated.
    pub fn allow_header(&self) -> &http::HeaderValue {
        &self.allow
    }
}

/// The methods RFC 9110 §9.3 and RFC 5789 define.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `limits.methods`: HTTP method tokens; CONNECT (a tunnel) and TRACE (it
/// reflects the request) are never forwarded, nor is a standard method
/// spelt in another case.
fn methods(raw: Option<&[String]>, r: &mut ConfigReport) -> Methods {
    let Some(raw) = raw else {
        return Methods::default();
    };
    let mut allowed = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        let key = format!("limits.methods[{i}]");
        // Methods are case-sensitive (RFC 9110 §9.1): `post` is not POST,
        // and would leave every upload refused with 405.
        let upper = text.trim().to_ascii_uppercase();
        if upper != text.trim() && STANDARD_METHODS.contains(&upper.as_str()) {
            r.push(
                key,
                format!("`{text}` is not `{upper}`: methods are case-sensitive (RFC 9110 §9.1)"),
            );
            continue;
        }
        match http::Method::from_bytes(text.trim().as_bytes()) {
            Ok(m) if m == http::Method::CONNECT || m == http::Method::TRACE => {
                r.push(key, format!("`{m}` is never forwarded"));
            }
            Ok(m) if !allowed.contains(&m) => allowed.push(m),
            Ok(_) => {}
            Err(_) => r.push(key, format!("`{text}` is not an HTTP method")),
        }
    }
    if raw.is_empty() {
        r.push("limits.methods", "at least one method is required");
    }
    let names: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
    let allow = http::HeaderValue::from_str(&names.join(", "))
        .unwrap_or_else(|_| http::HeaderValue::from_static("POST, PUT"));
    Methods { allowed, allow }
}

fn limits(raw: &RawLimits, r: &mut ConfigReport) -> Limits {
    let d = Limits::default();
    // Parsed as u64, then range-checked: "`x` is not a non-negative integer"
    // or the range it must be in.
    let limit = |value: &Option<Setting<u64>>,
                 name: &str,
                 range: std::ops::RangeInclusive<u64>,
                 why: &str,
                 r: &mut ConfigReport| {
        let key = format!("limits.{name}");
        match value.as_ref().map(|v| v.check(&key, r)) {
            Some(Some(n)) if range.contains(&n) => Some(n),
            Some(Some(_)) => {
                r.push(key, why);
                None
            }
            _ => None,
        }
    };
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    // What one client may hold at once.
    let per_client = |value: &Option<Setting<u64>>, name: &str, default: u32, r: &mut _| {
        limit(
            value,
            name,
            0..=1_000_000,
            "must be between 0 and 1000000 (0 = no limit)",
            r,
        )
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default)
    };
    Limits {
        max_request_head_bytes: limit(
            &raw.max_request_head_bytes,
            "max_request_head_bytes",
            1024..=1024 * 1024,
            "must be between 1024 and 1048576",
            r,
        )
        .map_or(d.max_request_head_bytes, to_usize),
        request_body_buffer_bytes: limit(
            &raw.request_body_buffer_bytes,
            "request_body_buffer_bytes",
            8192..=1024 * 1024,
            "must be between 8192 and 1048576",
            r,
        )
        .map_or(d.request_body_buffer_bytes, to_usize),
        max_body_bytes: limit(
            &raw.max_body_bytes,
            "max_body_bytes",
            1..=u64::MAX,
            "must be positive",
            r,
        )
        .unwrap_or(d.max_body_bytes),
        h2_max_concurrent_streams: limit(
            &raw.h2_max_concurrent_streams,
            "h2_max_concurrent_streams",
            1..=100,
            "must be between 1 and 100",
            r,
        )
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(d.h2_max_concurrent_streams),
        max_connections: limit(
            &raw.max_connections,
            "max_connections",
            1..=1_000_000,
            "between 1 and 1000000",
            r,
        )
        .map_or(d.max_connections, to_usize),
        discard_body_bytes: limit(
            &raw.discard_body_bytes,
            "discard_body_bytes",
            0..=u64::MAX,
            "must be a non-negative integer",
            r,
        )
        .unwrap_or(d.discard_body_bytes),
        max_detached_requests: limit(
            &raw.max_detached_requests,
            "max_detached_requests",
            0..=1_000_000,
            "must be between 0 and 1000000",
            r,
        )
        .map_or(d.max_detached_requests, to_usize),
        min_request_body_rate: limit(
            &raw.min_request_body_rate,
            "min_request_body_rate",
            0..=u64::MAX,
            "must be a non-negative integer (bytes per second; 0 = no minimum)",
            r,
        )
        .unwrap_or(d.min_request_body_rate),
        max_requests_per_client: per_client(
            &raw.max_requests_per_client,
            "max_requests_per_client",
            d.max_requests_per_client,
            r,
        ),
        max_connections_per_client: per_client(
            &raw.max_connections_per_client,
            "max_connections_per_client",
            d.max_connections_per_client,
            r,
        ),
    }
}

fn upstream(raw: &RawUpstream, base: &Path, r: &mut ConfigReport) -> Option<UpstreamSettings> {
    // At most a year, as the timeouts (a deadline is an instant).
    let pool_idle_timeout = raw.pool_idle_timeout.check_is_or(
        Duration::from_secs(90),
        "upstream.pool_idle_timeout",
        r,
        "a duration of at most a year such as \"90s\" (\"0s\" = no idle connection is kept)",
        |d| *d <= Duration::from_secs(31_557_600),
    );
    let pool_max_idle_per_host =
        raw.pool_max_idle_per_host
            .check_or(32, "upstream.pool_max_idle_per_host", r);
    let max_connections_per_upstream = raw.max_connections_per_upstream.check_is_or(
        1024,
        "upstream.max_connections_per_upstream",
        r,
        "between 1 and 1000000",
        |n| (1..=1_000_000).contains(n),
    );
    let replay_limit_bytes =
        raw.replay_limit_bytes
            .check_or(64 * 1024, "upstream.replay_limit_bytes", r);
    if replay_limit_bytes > 16 * 1024 * 1024 {
        r.push(
            "upstream.replay_limit_bytes",
            "at most 16777216: replayable bodies are held in memory",
        );
    }
    let replay_budget_bytes = raw.replay_budget_bytes.check_is_or(
        64 * 1024 * 1024,
        "upstream.replay_budget_bytes",
        r,
        "a number of bytes up to 4294967295",
        |n| u32::try_from(*n).is_ok(),
    );
    // Each copy reserves replay_limit_bytes: a smaller budget fits none.
    if replay_budget_bytes != 0
        && replay_budget_bytes < replay_limit_bytes
        && replay_limit_bytes <= 16 * 1024 * 1024
    {
        r.push(
            "upstream.replay_budget_bytes",
            format!("{replay_budget_bytes} is below upstream.replay_limit_bytes ({replay_limit_bytes}): no body could ever be kept for a replay (0: no copies are kept)"),
        );
    }
    let ca = match &raw.ca {
        Some(ca) => Some(file(ca, "upstream.ca", base, r)?),
        None => None,
    };
    Some(UpstreamSettings {
        ca,
        pool_idle_timeout,
        pool_max_idle_per_host,
        max_connections_per_upstream,
        replay_limit_bytes,
        replay_budget_bytes,
    })
}

/// The shortest `timeouts.reload_poll` and `health.interval`.
const MIN_PERIOD: Duration = Duration::from_millis(100);
/// The shortest `health.recovery_interval`.
const MIN_RECOVERY_INTERVAL: Duration = Duration::from_millis(10);

fn health(raw: &RawHealth, r: &mut ConfigReport) -> HealthSettings {
    let d = HealthSettings::default();
    let duration = |value: &Option<Setting<Duration>>, name: &str, default, r: &mut _| {
        value.check_is_or(
            default,
            &format!("health.{name}"),
            r,
            "a positive duration such as \"500ms\", \"2s\"",
            |d| !d.is_zero(),
        )
    };
    let count = |value: &Option<Setting<u32>>, name: &str, default, r: &mut _| {
        value.check_is_or(
            default,
            &format!("health.{name}"),
            r,
            "a positive integer",
            |n| *n > 0,
        )
    };
    let path = match raw.path.as_deref() {
        None => d.path,
        Some("off") => None,
        // Not a quiet "off" (config audit, stop 63: an empty value — an
        // unset variable in a template — turned the checks off unsaid).
        Some("") => {
            r.push(
                "health.path",
                "is empty: give a path starting with '/', or \"off\" to turn active checks off",
            );
            d.path
        }
        // A path no request can carry (a space, a control character: an
        // easy paste) would fail every probe, silently, and take every data
        // centre down once the proxy runs.
        Some(p) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => {
            Some(p.to_string())
        }
        Some(p) if p.starts_with('/') => {
            r.push(
                "health.path",
                format!("{p:?} is not a request path (spaces and control characters are not allowed; percent-encode them)"),
            );
            d.path
        }
        Some(_) => {
            r.push("health.path", "must start with '/' (or be \"off\")");
            d.path
        }
    };
    // The probes' periods have floors: every period probes every
    // upstream, so "1ms" (meant "1s"?) would flood the data centres.
    let period =
        |value: &Option<Setting<Duration>>, name: &str, least: Duration, default, r: &mut _| {
            value.check_is_or(
                default,
                &format!("health.{name}"),
                r,
                &format!(
                    "a duration of at least {}, such as \"2s\"",
                    humantime::format_duration(least)
                ),
                |d| *d >= least,
            )
        };
    let interval = period(&raw.interval, "interval", MIN_PERIOD, d.interval, r);
    let h = HealthSettings {
        path,
        interval,
        timeout: duration(&raw.timeout, "timeout", d.timeout, r),
        healthy_threshold: count(
            &raw.healthy_threshold,
            "healthy_threshold",
            d.healthy_threshold,
            r,
        ),
        unhealthy_threshold: count(
            &raw.unhealthy_threshold,
            "unhealthy_threshold",
            d.unhealthy_threshold,
            r,
        ),
        passive_failures: count(
            &raw.passive_failures,
            "passive_failures",
            d.passive_failures,
            r,
        ),
        down_for: duration(&raw.down_for, "down_for", d.down_for, r),
        // Default: 250 ms, or `interval` when that is shorter.
        recovery_interval: period(
            &raw.recovery_interval,
            "recovery_interval",
            MIN_RECOVERY_INTERVAL,
            d.recovery_interval,
            r,
        )
        .min(if raw.recovery_interval.is_some() {
            Duration::MAX
        } else {
            interval
        }),
        hung_after: match raw.hung_after.as_deref().map(str::trim) {
            None => d.hung_after,
            Some("off") => None,
            Some(text) => match residency_core::report::parse_duration(text) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    r.push(
                        "health.hung_after",
                        format!("`{text}` is not a positive duration such as \"1s\", or \"off\""),
                    );
                    d.hung_after
                }
            },
        },
    };
    if h.recovery_interval > h.interval {
        r.push(
            "health.recovery_interval",
            "must not exceed health.interval (it is the faster probing of upstreams that are down)",
        );
    }
    if h.timeout > h.interval {
        r.push("health.timeout", "must not exceed health.interval");
    }
    h
}

// ---------------------------------------------------------------------------
// Small parsers shared with the policy module
// ---------------------------------------------------------------------------

/// Resolves `path` against `base` and checks that it is a readable file.
fn file(path: &str, key: &str, base: &Path, r: &mut ConfigReport) -> Option<PathBuf> {
    let resolved = base.join(path);
    r.named.push(resolved.clone());
    match std::fs::File::open(&resolved).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => Some(resolved),
        Ok(_) => {
            r.push(key, format!("{}: not a regular file", resolved.display()));
            None
        }
        Err(e) => {
            r.push(key, format!("{}: {e}", resolved.display()));
            None
        }
    }
}

impl Config {
    /// Each certificate file the proxy serves, by its key: the listeners'
    /// and the log listener's.
    pub fn served_certificates(&self) -> Vec<(String, &Path)> {
        let listeners = self.listeners.iter().enumerate().flat_map(|(i, l)| {
            l.certificates.iter().enumerate().map(move |(j, c)| {
                (
                    format!("listeners[{i}].tls.certificates[{j}]"),
                    c.cert.as_path(),
                )
            })
        });
        let log = self.transparency.iter().flat_map(|t| {
            t.tls.iter().enumerate().map(|(j, c)| {
                (
                    format!("transparency.tls.certificates[{j}]"),
                    c.cert.as_path(),
                )
            })
        });
        listeners.chain(log).collect()
    }
}

/// The SHA-256 records carry as `policy_sha256`: of the routing policy
/// and the tenants' pins ([`residency_core::tenant::routing_hash`]), and,
/// with `geoip.overrides`, of that hash followed by each override (network
/// and country, one a line, sorted): an override decides a client's
/// country before the GeoIP database, and a record named a hash that did
/// not change when an override moved a network to another jurisdiction
/// (reload audit, stop 68). Unchanged without overrides.
pub fn policy_hash(config: &Config) -> String {
    let routing = residency_core::tenant::routing_hash(&config.policy, &config.tenancy.tenants);
    if config.geoip.overrides.is_empty() {
        return routing;
    }
    // Sorted: the longest prefix wins whatever their order.
    let mut lines: Vec<String> = config
        .geoip
        .overrides
        .iter()
        .map(|(net, country)| format!("override {net} {}\n", country.as_str()))
        .collect();
    lines.sort();
    residency_core::policy::sha256_hex(&format!("{routing}\n{}", lines.concat()))
}

/// What loads but may not be meant, in the parts a reload applies:
/// certificates clients refuse, a `trusted_proxies` network so wide it
/// holds clients (any of them could then name its own address, and so its
/// jurisdiction), tenants' names published in the log (`recording`: a log
/// is on) by default, rules that never match, private keys every user can
/// read, overrides that move much of the Internet. `serve` logs them at
/// start and at each reload taken (a reload that dropped `tenancy.record`
/// published names without a word: privacy audit, stop 68), `check-config`
/// prints them.
pub fn live_warnings(config: &Config, recording: bool) -> Vec<String> {
    let mut warnings = certificate_warnings(config);
    let tenancy = &config.tenancy;
    if recording && tenancy.record_by_default && !tenancy.record_names.is_empty() {
        warnings.push(
            "tenancy.record: not set, so every record names its tenant in clear, and the transparency log is public: anyone who can read it (GET /entries/0, /entries/1, …) lists your tenants and when and how much each uploads; set record = \"hmac\" with record_hmac_key, or record = \"name\" to publish the names knowingly".to_string(),
        );
    }
    // Wider than this: much of the Internet.
    let wide = |net: &ipnet::IpNet| match net {
        ipnet::IpNet::V4(n) => n.prefix_len() < 8,
        ipnet::IpNet::V6(n) => n.prefix_len() < 16,
    };
    for (i, listener) in config.listeners.iter().enumerate() {
        for (j, net) in listener.trusted_proxies.networks().iter().enumerate() {
            if wide(net) {
                warnings.push(format!(
                    "listeners[{i}].trusted_proxies[{j}]: {net} covers much of the Internet: every client in it may name its own address with X-Forwarded-For or PROXY, and so choose its jurisdiction; list the load balancers' addresses only"
                ));
            }
        }
    }
    // Rules that can never match: no listener asks for a certificate.
    if config.tenancy.tenants.by_certificate()
        && config.listeners.iter().all(|l| l.client_ca.is_none())
    {
        warnings.push(
            "tenants: some are recognised by client certificate (client_cert), but no listener asks clients for one (listeners.tls.client_ca): those rules never match".to_string(),
        );
    }
    for (i, listener) in config.listeners.iter().enumerate() {
        for (j, c) in listener.certificates.iter().enumerate() {
            let key = format!("listeners[{i}].tls.certificates[{j}].key");
            warnings.extend(exposed_file(&key, &c.key, false));
        }
    }
    if let Some(path) = &config.tenancy.record_hmac_key_file {
        warnings.extend(exposed_file("tenancy.record_hmac_key", path, false));
    }
    // Every pin the file held gone at once, without an error: a file
    // emptied, or read while written in place (reload audit, stop 68).
    if let Some(path) = &config.tenancy.empty_file {
        warnings.push(format!(
            "tenancy.file: {} holds no tenant: no upload is recognised as a tenant's by it, and none is pinned to a tenant's jurisdiction; if it was emptied by mistake, or is being written, restore it (replace it atomically: write aside, then rename)",
            path.display()
        ));
    }
    for (i, (net, country)) in config.geoip.overrides.iter().enumerate() {
        if wide(net) {
            // An IPv6 network holds IPv6 clients only (and those carrying
            // an IPv4 address, unless an IPv4 override fixes more of it).
            let clients = if net.addr().is_ipv6() {
                "every IPv6 client in it"
            } else {
                "every client in it"
            };
            warnings.push(format!(
                "geoip.overrides[{i}]: {net} covers much of the Internet: {clients} is placed in {country} whatever the GeoIP database says, and its uploads go where {country}'s may; list your own networks only"
            ));
        }
    }
    warnings
}

/// A private key any user on the machine can read, or a log directory any
/// user can write (config audit, stop 63: loaded without a word, where
/// `keygen` writes 0600 and the log makes its directory 0700).
#[cfg(unix)]
pub fn exposed_file(key: &str, path: &std::path::Path, directory: bool) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    match directory {
        false if mode & 0o004 != 0 => Some(format!(
            "{key}: {} is readable by every user on this machine (mode {mode:o}): chmod 600 (or 640 for the proxy's group)",
            path.display()
        )),
        true if mode & 0o002 != 0 => Some(format!(
            "{key}: {} is writable by every user on this machine (mode {mode:o}): anyone could alter or remove the log; chmod 700",
            path.display()
        )),
        _ => None,
    }
}

#[cfg(not(unix))]
pub fn exposed_file(_: &str, _: &std::path::Path, _: bool) -> Option<String> {
    None
}

/// What makes the certificates of `config` fail at clients' handshakes
/// though they load: expired or not yet valid, expiring within 14 days, a
/// CA's as a server's, a client CA expired or CRLs that refuse everyone.
/// Logged at start and at each reload, printed by `check-config`.
pub fn certificate_warnings(config: &Config) -> Vec<String> {
    const SOON: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);
    let now = std::time::SystemTime::now();
    let date = |t| httpdate::fmt_http_date(t);
    let mut warnings = Vec::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        for (j, c) in listener.certificates.iter().enumerate() {
            let Some(v) = std::fs::read(&c.cert)
                .ok()
                .and_then(|pem| residency_tls::validity(&pem).first().copied())
            else {
                continue;
            };
            let key = format!("listeners[{i}].tls.certificates[{j}].cert");
            let path = c.cert.display();
            if v.not_before > now {
                warnings.push(format!(
                    "{key}: {path} is not valid before {}: clients refuse it at the handshake until then",
                    date(v.not_before)
                ));
            }
            match v.not_after.duration_since(now) {
                Err(_) => warnings.push(format!(
                    "{key}: {path} expired ({}): clients refuse it at the handshake; install a renewed one (it is reloaded when its file changes)",
                    date(v.not_after)
                )),
                Ok(left) if left < SOON => warnings.push(format!(
                    "{key}: {path} expires in {} days ({})",
                    (left.as_secs() + 43_200) / 86_400,
                    date(v.not_after)
                )),
                Ok(_) => {}
            }
            if v.ca {
                warnings.push(format!(
                    "{key}: {path} is a CA's certificate (basicConstraints CA:TRUE, as `openssl req -x509` makes by default): clients on rustls or webpki (this tool's loadtest and verify among them) refuse it as a server's; make it with `-addext basicConstraints=critical,CA:FALSE`, or have a CA issue it"
                ));
            }
        }
        // A client CA that expired: every client certificate it issued is
        // refused at the handshake.
        if let Some(ca) = &listener.client_ca {
            let expired = std::fs::read(ca)
                .map(|pem| residency_tls::validity(&pem))
                .unwrap_or_default()
                .into_iter()
                .filter(|v| v.not_after < now)
                .map(|v| date(v.not_after))
                .collect::<Vec<_>>();
            if !expired.is_empty() {
                warnings.push(format!(
                    "listeners[{i}].tls.client_ca: {} holds {} expired certificate(s) ({}): client certificates issued by it are refused at the handshake",
                    ca.display(),
                    expired.len(),
                    expired.join(", ")
                ));
            }
            // A leaf as the CA, CRLs past their nextUpdate or without the
            // CA's: each loads, and then every client is refused (config
            // audit, stop 63).
            let crls: Vec<(String, Vec<u8>)> = listener
                .client_crl
                .iter()
                .filter_map(|p| Some((p.display().to_string(), std::fs::read(p).ok()?)))
                .collect();
            if let Ok(pem) = std::fs::read(ca) {
                warnings.extend(residency_tls::client_auth_warnings(
                    &pem,
                    &format!("listeners[{i}].tls.client_ca"),
                    &crls,
                    &format!("listeners[{i}].tls.client_crl"),
                ));
            }
        }
    }
    warnings
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory with the files a minimal configuration names; removed on drop.
    pub(crate) struct Files(pub(crate) PathBuf);

    impl Files {
        pub(crate) fn new(name: &str) -> Files {
            let dir = std::env::temp_dir().join(format!(
                "rp-config-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["c.pem", "c.key", "g.mmdb"] {
                std::fs::write(dir.join(f), "x").unwrap();
            }
            Files(dir)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) const MINIMAL: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "c.pem", key = "c.key" }]
[geoip]
database = "g.mmdb"
[jurisdictions.ch]
countries = ["CH"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://127.0.0.1:1"]
"#;

    /// A TOML error the parser locates is reported under the key on that
    /// line (it was `config`), and an integer past TOML's says so (it said
    /// "expected any valid TOML value").
    #[test]
    fn a_located_toml_error_names_the_key_on_its_line() {
        let text = format!("{MINIMAL}[limits]\nmax_body_bytes = 99999999999999999999\n");
        let e = problems(&text);
        assert!(
            e.contains("- limits.max_body_bytes: TOML parse error at line ")
                && e.contains("integer `99999999999999999999` is too large: TOML integers go up to 9223372036854775807"),
            "{e}"
        );
        let text = format!("{MINIMAL}[[listeners]]\naddress = \"127.0.0.1:1\n");
        let e = problems(&text);
        assert!(
            e.contains("- listeners[1].address: TOML parse error"),
            "{e}"
        );
    }

    /// A value where a table is wanted says so in a person's words, not
    /// by the type it deserialises into (`expected struct RawAdmin`).
    #[test]
    fn a_value_for_a_table_says_a_table() {
        let text = format!("admin = \"x\"\n{MINIMAL}");
        let e = problems(&text);
        assert!(
            e.contains("admin: invalid type: string \"x\", expected a table of settings ([admin] with its keys)")
                && !e.contains("Raw"),
            "{e}"
        );
    }

    /// One string where a list is wanted says the list's form.
    #[test]
    fn a_string_for_a_list_shows_the_list_s_form() {
        let text = MINIMAL.replace(
            "upstreams = [\"http://127.0.0.1:1\"]",
            "upstreams = \"http://127.0.0.1:1\"",
        );
        assert_ne!(text, MINIMAL);
        let e = problems(&text);
        assert!(
            e.contains("datacenters.zurich.upstreams: invalid type: string")
                && e.contains("expected a sequence (a list: upstreams = [\"…\"])"),
            "{e}"
        );
    }

    /// `--config DIR` says it is a directory, not that it is not there;
    /// `/dev/null` that it is not a regular file, as does a directory
    /// given as `transparency.signing_key` or `tenancy.file` (they said
    /// "no such file" and "not found": config audit, stop 63).
    #[test]
    fn a_directory_given_as_the_file_is_named() {
        let files = Files::new("dir");
        let e = Config::load(&files.0).unwrap_err().to_string();
        assert!(
            e.contains("--config: ") && e.contains("is a directory"),
            "{e}"
        );
        let e = Config::load(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--config: /dev/null is not a regular file"),
            "{e}"
        );
        std::fs::create_dir_all(files.0.join("k")).unwrap();
        for (extra, key) in [
            (
                "[transparency]\ndirectory = \"log\"\norigin = \"x.example/log\"\nsigning_key = \"k\"\n",
                "- transparency.signing_key: ",
            ),
            ("[tenancy]\nfile = \"k\"\n", "- tenancy.file: "),
        ] {
            let e = Config::from_toml(&format!("{MINIMAL}{extra}"), &files.0)
                .unwrap_err()
                .to_string();
            let line = e.lines().find(|l| l.contains(key)).unwrap_or_default();
            assert!(line.contains("is a directory: give the file in it"), "{e}");
        }
    }

    fn problems(toml: &str) -> String {
        let files = Files::new("bad");
        Config::from_toml(toml, &files.0).unwrap_err().to_string()
    }

    /// The records' `policy_sha256` covers `geoip.overrides`: an override
    /// moves a network's uploads to another jurisdiction, and the hash did
    /// not change with it (reload audit, stop 68). Without overrides it is
    /// the routing policy's, as before.
    #[test]
    fn the_policy_hash_covers_the_overrides() {
        let files = Files::new("policy-hash");
        let hash = |extra: &str| {
            let c = Config::from_toml(&format!("{MINIMAL}{extra}"), &files.0).unwrap();
            (
                policy_hash(&c),
                residency_core::tenant::routing_hash(&c.policy, &c.tenancy.tenants),
            )
        };
        let (plain, routing) = hash("");
        assert_eq!(plain, routing);
        let one = "[[geoip.overrides]]\nnetwork = \"198.51.100.0/24\"\ncountry = \"CH\"\n";
        let other = "[[geoip.overrides]]\nnetwork = \"198.51.100.0/24\"\ncountry = \"DE\"\n";
        let (with_one, _) = hash(one);
        let (with_other, _) = hash(other);
        assert_ne!(with_one, plain);
        assert_ne!(with_one, with_other);
        assert_eq!(hash(one).0, with_one);
        // Their order does not route: it does not change the hash.
        let two = "[[geoip.overrides]]\nnetwork = \"203.0.113.0/24\"\ncountry = \"US\"\n";
        assert_eq!(
            hash(&format!("{one}{two}")).0,
            hash(&format!("{two}{one}")).0
        );
    }

    /// `limits.request_body_buffer_bytes` takes 8192 to 1048576, both
    /// ends included (hyper's read buffer has a floor of 8192).
    #[test]
    fn the_body_buffer_takes_its_range_and_no_more() {
        let files = Files::new("body-buffer");
        let with = |n: u64| format!("{MINIMAL}\n[limits]\nrequest_body_buffer_bytes = {n}\n");
        for n in [8192, 1_048_576] {
            let c = Config::from_toml(&with(n), &files.0).unwrap();
            assert_eq!(c.limits.request_body_buffer_bytes as u64, n);
        }
        for n in [8191, 1_048_577] {
            let text = problems(&with(n));
            assert!(
                text.contains(
                    "- limits.request_body_buffer_bytes: must be between 8192 and 1048576"
                ),
                "{n}: {text}"
            );
        }
        let c = Config::from_toml(MINIMAL, &files.0).unwrap();
        assert_eq!(c.limits.request_body_buffer_bytes, 32 * 1024, "the default");
    }

    /// Two sockets that could not both bind are named by key when the
    /// configuration is checked, not found as a bind error at start.
    #[test]
    fn listening_sockets_that_overlap_are_named() {
        let with = |listener: &str, admin: &str| {
            MINIMAL.replace("127.0.0.1:0", listener)
                + &format!(
                    "[[listeners]]\naddress = \"127.0.0.1:8443\"\n[listeners.tls]\n\
                     certificates = [{{ cert = \"c.pem\", key = \"c.key\" }}]\n\
                     [admin]\naddress = \"{admin}\"\n"
                )
        };
        let p = problems(&with("127.0.0.1:8443", "127.0.0.1:9900"));
        assert!(
            p.contains("listeners[1].address: 127.0.0.1:8443 overlaps listeners[0].address (127.0.0.1:8443)"),
            "{p}"
        );
        for (listener, admin, key) in [
            ("0.0.0.0:8443", "127.0.0.1:9900", "listeners[1].address"),
            ("[::]:8443", "127.0.0.1:9900", "listeners[1].address"),
            ("127.0.0.1:9900", "127.0.0.1:9900", "admin.address"),
            ("127.0.0.1:9443", "[::]:8443", "admin.address"),
            // An IPv4-mapped address is the IPv4 one (IPv6 audit, stop 66).
            (
                "[::ffff:127.0.0.1]:8443",
                "127.0.0.1:9900",
                "listeners[1].address",
            ),
            (
                "[::ffff:0.0.0.0]:8443",
                "127.0.0.1:9900",
                "listeners[1].address",
            ),
        ] {
            let p = problems(&with(listener, admin));
            assert!(p.contains(&format!("{key}: ")), "{listener} {admin}: {p}");
        }
        let files = Files::new("apart");
        for (listener, admin) in [
            ("127.0.0.2:8443", "127.0.0.1:9900"),
            ("[::1]:8443", "127.0.0.1:9900"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            let text = with(listener, admin);
            assert!(
                Config::from_toml(&text, &files.0).is_ok(),
                "{listener} {admin}"
            );
        }
    }

    /// An upstream copied from the proxy's own listener (or admin or log
    /// address) is refused by key: uploads would come back to the proxy.
    #[test]
    fn an_upstream_on_the_proxys_own_socket_is_refused() {
        let with = |listener: &str, upstream: &str| {
            MINIMAL
                .replace("127.0.0.1:0", listener)
                .replace("http://127.0.0.1:1", upstream)
        };
        for (listener, upstream) in [
            ("127.0.0.1:8443", "https://127.0.0.1:8443"),
            ("0.0.0.0:8443", "https://localhost:8443/v1"),
            ("[::]:8443", "http://[::1]:8443"),
            ("127.0.0.2:443", "https://127.0.0.2"),
            ("127.0.0.1:8443", "https://[::ffff:127.0.0.1]:8443"),
            ("127.0.0.1:8443", "https://localhost.:8443"),
            ("127.0.0.1:8443", "https://127.1:8443"),
            ("127.0.0.1:8443", "https://2130706433:8443"),
        ] {
            let p = problems(&with(listener, upstream));
            assert!(
                p.contains("datacenters.zurich.upstreams[0]: `")
                    && p.contains("is this proxy's own listeners[0].address"),
                "{listener} {upstream}: {p}"
            );
        }
        let p = problems(&with("127.0.0.1:8443", "http://127.0.0.1:9900"));
        assert!(
            p.contains("is this proxy's own admin.address (127.0.0.1:9900)"),
            "{p}"
        );
        let files = Files::new("not-ours");
        for (listener, upstream) in [
            ("127.0.0.1:8443", "https://127.0.0.1:8444"),
            ("127.0.0.1:8443", "https://127.0.0.2:8443"),
            ("0.0.0.0:8443", "https://10.1.0.10:8443"),
            ("127.0.0.1:8443", "https://ingest.example:8443"),
        ] {
            let text = with(listener, upstream);
            assert!(
                Config::from_toml(&text, &files.0).is_ok(),
                "{listener} {upstream}"
            );
        }
    }

    #[test]
    fn defaults_when_sections_are_absent() {
        let files = Files::new("defaults");
        let c = Config::from_toml(MINIMAL, &files.0).unwrap();
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.methods, Methods::default());
        assert_eq!(c.health, HealthSettings::default());
        assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.upstream.pool_max_idle_per_host, 32);
        assert_eq!(c.upstream.replay_limit_bytes, 64 * 1024);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.worker_threads, None);
        assert_eq!(c.geoip.max_age, None);
        assert!(!c.listeners[0].proxy_protocol);
        assert_eq!(c.policy.datacenters[0].priority, 1);
    }

    /// A deadline past the clock's range would panic at the first
    /// connection: refused here, by key.
    #[test]
    fn durations_longer_than_a_year_are_refused_by_key() {
        let report = problems(&format!(
            "{MINIMAL}\n[timeouts]\ntls_handshake = \"500000000000y\"\ndiscard_body = \"366days\"\nclient_send_idle = \"0s\"\n[upstream]\npool_idle_timeout = \"2y\"\n"
        ));
        for key in [
            "timeouts.tls_handshake",
            "timeouts.discard_body",
            "timeouts.client_send_idle",
            "upstream.pool_idle_timeout",
        ] {
            assert!(report.contains(key), "{key}: {report}");
        }
        assert!(report.contains("at most a year"), "{report}");
        // `1y` itself is at most a year.
        let files = Files::new("a-year");
        let year = format!("{MINIMAL}\n[timeouts]\nconnection_max_age = \"1y\"\n");
        let c = Config::from_toml(&year, &files.0).unwrap();
        assert_eq!(
            c.timeouts.connection_max_age,
            Duration::from_secs(31_557_600)
        );
    }

    /// Periodic work has floors: a period meant as "1s" and written "1ms"
    /// would stat every watched file, or probe every data centre, a
    /// thousand times a second. At the floor, and off, they load.
    #[test]
    fn periods_below_their_floor_are_refused_by_key() {
        let report = problems(&format!(
            "{MINIMAL}\n[timeouts]\nreload_poll = \"1ms\"\n[health]\ninterval = \"99ms\"\ntimeout = \"50ms\"\nrecovery_interval = \"5ms\"\n"
        ));
        for line in [
            "- timeouts.reload_poll: `1ms` is not \"0s\" (off) or a duration from 100ms to a year",
            "- health.interval: `99ms` is not a duration of at least 100ms, such as \"2s\"",
            "- health.recovery_interval: `5ms` is not a duration of at least 10ms, such as \"2s\"",
        ] {
            assert!(report.contains(line), "missing {line:?} in:\n{report}");
        }
        assert!(report.contains(": 3 problems"), "{report}");
        let files = Files::new("floors");
        for extra in [
            "[timeouts]\nreload_poll = \"100ms\"\n[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrecovery_interval = \"10ms\"\n",
            "[timeouts]\nreload_poll = \"0s\"\n",
        ] {
            let c = Config::from_toml(&format!("{MINIMAL}\n{extra}"), &files.0).unwrap();
            assert!(c.timeouts.reload_poll.is_zero() || c.timeouts.reload_poll == Duration::from_millis(100));
            assert!(c.health.interval >= Duration::from_millis(100));
        }
    }

    /// A tenant's `mismatch` that fits neither form says what is wrong
    /// under its key: a typo in the table is an unknown key, a wrong type
    /// says the forms (serde's untagged enum said "data did not match any
    /// variant of untagged enum RawMismatch"; config audit, stop 63).
    #[test]
    fn a_mismatch_that_fits_no_form_says_what_is_wrong() {
        for (value, said) in [
            ("{ allow_country = [\"CH\"] }", "- tenants[0].mismatch.allow_country: unknown key, expected `allow_countries`"),
            ("{}", "- tenants[0].mismatch.allow_countries: missing"),
            ("5", "- tenants[0].mismatch: invalid type: integer `5`, expected \"allow\", \"refuse\" or { allow_countries = [\"CH\", …] }"),
        ] {
            let report = problems(&format!(
                "{MINIMAL}\n[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nsni = [\"acme.example\"]\nmismatch = {value}\n"
            ));
            assert!(report.contains(said), "{value}: {report}");
            assert!(!report.contains("untagged"), "{report}");
        }
    }

    /// Every misspelt key of a file is named in one report, under its key,
    /// with what was expected (serde stops at the first: three typos took
    /// three runs).
    #[test]
    fn every_unknown_key_is_named_at_once() {
        let report = problems(&format!(
            "{MINIMAL}\n[admin]\nadress = \"127.0.0.1:1\"\n[health]\nintervall = \"1s\"\n"
        ));
        let mut typos = MINIMAL.replacen("address", "adress", 1);
        typos.push_str("\n[admin]\nadress = \"127.0.0.1:1\"\n[health]\nintervall = \"1s\"\n");
        let all = problems(&typos);
        for said in [
            "- admin.adress: unknown key, expected `address` or `hosts`",
            "- health.intervall: unknown key, expected one of",
            "- listeners[0].adress: unknown key, expected one of",
        ] {
            assert!(all.contains(said), "{said}: {all}");
        }
        assert!(all.contains("3 problems"), "{all}");
        assert!(report.contains("2 problems"), "{report}");
    }

    /// One value where a list of tables is wanted shows that list's form,
    /// not a list of strings (config audit, stop 63).
    #[test]
    fn a_value_for_a_list_of_tables_shows_its_form() {
        let report = problems(&format!("tenants = \"acme\"\n{MINIMAL}"));
        assert!(
            report.contains("(a list of tables: [[tenants]], each with its keys)"),
            "{report}"
        );
    }

    /// An empty `health.path` is refused: it turned active checks off
    /// unsaid, where "off" is the word for it (config audit, stop 63).
    #[test]
    fn an_empty_health_path_is_refused() {
        let report = problems(&format!("{MINIMAL}\n[health]\npath = \"\"\n"));
        assert!(
            report.contains("- health.path: is empty: give a path starting with '/', or \"off\" to turn active checks off"),
            "{report}"
        );
    }

    /// A witness key that is the log's own public key (as a cosigner key)
    /// is refused by key: its cosignature would be the log vouching for
    /// itself (crypto audit, stop 66). Another key loads.
    #[test]
    fn a_witness_key_that_is_the_log_s_own_is_refused() {
        use residency_log::witness::Cosigner;
        let files = Files::new("witness-self");
        let pkcs8 = residency_log::note::Signer::generate_pkcs8().unwrap();
        std::fs::write(files.0.join("log.key"), &pkcs8).unwrap();
        let own = Cosigner::from_pkcs8("w.example/w", &pkcs8)
            .unwrap()
            .verifier_key();
        let other = Cosigner::from_pkcs8("w.example/w", &Cosigner::generate_pkcs8().unwrap())
            .unwrap()
            .verifier_key();
        for (key, refused) in [(own, true), (other, false)] {
            let toml = format!(
                "{MINIMAL}\n[transparency]\ndirectory = \"log\"\norigin = \"o.example/log\"\nsigning_key = \"log.key\"\n\
                 [[transparency.witnesses]]\nurl = \"http://127.0.0.1:9\"\nkey = \"{key}\"\n"
            );
            let result = Config::from_toml(&toml, &files.0);
            assert_eq!(result.is_err(), refused, "{key}");
            if let Err(report) = result {
                let report = report.to_string();
                assert!(
                    report.contains("transparency.witnesses[0].key: is the log's own public key"),
                    "{report}"
                );
            }
        }
    }

    /// One key for the client-address HMAC and the tenant HMAC is refused
    /// by key: `acme` and 97.99.109.101 would share a pseudonym. Two keys
    /// load.
    #[test]
    fn one_hmac_key_for_addresses_and_tenants_is_refused() {
        let files = Files::new("hmac-twice");
        let pkcs8 = residency_log::note::Signer::generate_pkcs8().unwrap();
        std::fs::write(files.0.join("log.key"), &pkcs8).unwrap();
        std::fs::write(files.0.join("a.key"), [7u8; 32]).unwrap();
        std::fs::write(files.0.join("b.key"), [8u8; 32]).unwrap();
        for (record_key, refused) in [("a.key", true), ("b.key", false)] {
            let toml = format!(
                "{MINIMAL}\n[tenancy]\nrecord = \"hmac\"\nrecord_hmac_key = \"{record_key}\"\n\
                 [transparency]\ndirectory = \"log\"\norigin = \"o.example/log\"\nsigning_key = \"log.key\"\n\
                 client_address = \"hmac\"\nclient_hmac_key = \"a.key\"\n"
            );
            let result = Config::from_toml(&toml, &files.0);
            assert_eq!(result.is_err(), refused, "{record_key}");
            if let Err(report) = result {
                let report = report.to_string();
                assert!(
                    report.contains(
                        "tenancy.record_hmac_key: the same key as transparency.client_hmac_key"
                    ),
                    "{report}"
                );
            }
        }
    }

    /// Settings that load but could not take effect are refused by key:
    /// a connection limit past what the server's semaphore takes, a replay
    /// budget smaller than one copy, an HMAC key beside a mode that does
    /// not use it (records would hold in clear what the operator meant to
    /// hide), prefix lengths beside another mode.
    #[test]
    fn settings_that_could_not_take_effect_are_refused_by_key() {
        let files = Files::new("ineffective");
        std::fs::write(files.0.join("k.key"), [7u8; 32]).unwrap();
        std::fs::write(files.0.join("log.key"), "x").unwrap();
        let toml = format!(
            "{MINIMAL}\n[limits]\nmax_connections = 4294967296\n[upstream]\nreplay_budget_bytes = 1000\n\
             [tenancy]\nrecord_hmac_key = \"k.key\"\n\
             [transparency]\ndirectory = \"log\"\norigin = \"o.example/log\"\nsigning_key = \"log.key\"\n\
             client_address = \"full\"\nclient_hmac_key = \"k.key\"\nclient_prefix_v4 = 16\n"
        );
        let report = Config::from_toml(&toml, &files.0).unwrap_err().to_string();
        for expected in [
            "limits.max_connections: ",
            "upstream.replay_budget_bytes: 1000 is below upstream.replay_limit_bytes (65536)",
            "tenancy.record_hmac_key: set, but tenancy.record is \"name\"",
            "transparency.client_hmac_key: set, but transparency.client_address is \"full\"",
            "transparency.client_prefix_v4: set, but transparency.client_address is \"full\"",
        ] {
            assert!(report.contains(expected), "{expected}: {report}");
        }
        // A tenant's problem does not hide the token section's.
        let report = problems(&format!(
            "{MINIMAL}\n[[tenants]]\nname = \"a\"\njurisdiction = \"mars\"\n[tenancy.token]\nissuer = \"i\"\naudience = \"a\"\n"
        ));
        assert!(report.contains("tenants[0].jurisdiction"), "{report}");
        assert!(report.contains("tenancy.token.jwks: required"), "{report}");
        // A policy's problem does not hide the tenants' either.
        let report = problems(&format!(
            "{}\n[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"not a host\"]\n",
            MINIMAL.replace("countries = [\"CH\"]", "countries = [\"XX\"]")
        ));
        assert!(report.contains("jurisdictions.ch.countries"), "{report}");
        assert!(report.contains("tenants[0].sni[0]"), "{report}");
        assert!(!report.contains("tenants[0].jurisdiction"), "{report}");
        // A key beside allow_countries would be ignored: refused.
        let report = problems(&format!(
            "{MINIMAL}\n[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nmismatch = {{ allow_countries = [\"CH\"], refuse = true }}\n"
        ));
        assert!(report.contains("tenants[0].mismatch"), "{report}");
        // 0: no copies, allowed.
        let files = Files::new("no-replays");
        let toml = format!("{MINIMAL}\n[upstream]\nreplay_budget_bytes = 0\n");
        Config::from_toml(&toml, &files.0).unwrap();
    }

    #[test]
    fn typed_values_from_strings_and_integers() {
        let files = Files::new("typed");
        let toml = format!(
            r#"{MINIMAL}
[timeouts]
tls_handshake = "1m 30s"
request_head = 5
shutdown_delay = "0s"
reload_poll = "0"
[limits]
max_request_head_bytes = "32_768"
request_body_buffer_bytes = "65_536"
h2_max_concurrent_streams = 50
[upstream]
pool_idle_timeout = "2m"
pool_max_idle_per_host = 4
replay_limit_bytes = "1024"
[health]
path = "off"
interval = "5s"
timeout = 2
healthy_threshold = "3"
[log]
format = "json"
[runtime]
worker_threads = 2
"#
        );
        let c = Config::from_toml(&toml, &files.0).unwrap();
        assert_eq!(c.timeouts.tls_handshake, Duration::from_secs(90));
        assert_eq!(c.timeouts.request_head, Duration::from_secs(5));
        assert_eq!(c.timeouts.shutdown_delay, Duration::ZERO);
        assert_eq!(c.timeouts.reload_poll, Duration::ZERO);
        assert_eq!(c.timeouts.keepalive_idle, Duration::from_secs(60));
        assert_eq!(c.limits.max_request_head_bytes, 32_768);
        assert_eq!(c.limits.request_body_buffer_bytes, 65_536);
        assert_eq!(c.limits.h2_max_concurrent_streams, 50);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.upstream.pool_max_idle_per_host, 4);
        assert_eq!(c.upstream.replay_limit_bytes, 1024);
        assert_eq!(c.health.path, None);
        assert_eq!(c.health.interval, Duration::from_secs(5));
        assert_eq!(c.health.timeout, Duration::from_secs(2));
        assert_eq!(c.health.healthy_threshold, 3);
        assert_eq!(c.health.unhealthy_threshold, 2);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.worker_threads, Some(2));
    }

    #[test]
    fn environment_overrides_are_strings() {
        let files = Files::new("env");
        let path = files.0.join("proxy.toml");
        std::fs::write(
            &path,
            format!("{MINIMAL}\n[timeouts]\nupstream_connect = 7\n[limits]\nmax_connections = 5\n"),
        )
        .unwrap();
        let env = |pairs: &[(&str, &str)]| -> Option<config::Map<String, String>> {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let c = Config::load_with_env(
            &path,
            env(&[
                ("RESIDENCY_PROXY__TIMEOUTS__UPSTREAM_CONNECT", "1500ms"),
                ("RESIDENCY_PROXY__LIMITS__MAX_CONNECTIONS", "5"),
                ("RESIDENCY_PROXY__DATACENTERS__ZURICH__PRIORITY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.timeouts.upstream_connect, Duration::from_millis(1500));
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.policy.datacenters[0].priority, 3);

        let report = Config::load_with_env(
            &path,
            env(&[
                ("RESIDENCY_PROXY__TIMEOUTS__UPSTREAM_CONNECT", "soon"),
                ("RESIDENCY_PROXY__LIMITS__MAX_CONNECTIONS", "many"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for line in [
            "- timeouts.upstream_connect: `soon` is not a duration from 1ms to a year",
            "- limits.max_connections: `many` is not a non-negative integer",
            "(set by the environment: RESIDENCY_PROXY__LIMITS__MAX_CONNECTIONS)",
        ] {
            assert!(report.contains(line), "missing {line:?} in:\n{report}");
        }
        // An unknown key, or a section of the wrong shape, that a variable
        // made: the variable is named, not only the file.
        for (var, says) in [
            (
                "RESIDENCY_PROXY__LIMITS__MAX_BODY_BYTE",
                "- limits.max_body_byte: unknown key",
            ),
            (
                "RESIDENCY_PROXY__LISTENERS__0__ADDRESS",
                "- listeners: invalid type: map, expected a sequence: an array, or a key in an array of tables, cannot be set from the environment; set it in the file",
            ),
        ] {
            let report = Config::load_with_env(&path, env(&[(var, "5")]))
                .unwrap_err()
                .to_string();
            assert!(report.contains(says), "{var}: {report}");
            assert!(
                report.contains(&format!("(set by the environment: {var})")),
                "{var}: {report}"
            );
        }
        // A variable whose fault is reported under another key: named after
        // the problems (it went unsaid).
        std::fs::write(
            &path,
            MINIMAL.replace(
                "countries = [\"CH\"]",
                "countries = [\"CH\"]\n[jurisdictions.us]\ncountries = [\"US\"]\nstore_in = [\"ch\"]",
            ),
        )
        .unwrap();
        let var = "RESIDENCY_PROXY__DATACENTERS__ZURICH__JURISDICTION";
        Config::load_with_env(&path, env(&[])).unwrap();
        let report = Config::load_with_env(
            &path,
            env(&[
                (var, "us"),
                ("RESIDENCY_PROXY__LIMITS__MAX_CONNECTIONS", "5"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(report.contains("- jurisdictions.ch.store_in: "), "{report}");
        assert!(
            report.ends_with(&format!(
                "\n  set by the environment, and possibly the cause of a problem above: {var}, RESIDENCY_PROXY__LIMITS__MAX_CONNECTIONS"
            )),
            "{report}"
        );
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let text = problems(&format!(
            r#"{MINIMAL}
[timeouts]
tls_handshake = "0s"
request_head = "ten"
reload_poll = "often"
request_body_idle = "500us"
discard_body = "10us"
[limits]
max_request_head_bytes = 10
request_body_buffer_bytes = 4096
max_body_bytes = "big"
h2_max_concurrent_streams = 500
max_connections = 0
[upstream]
pool_idle_timeout = "forever"
pool_max_idle_per_host = -1
replay_limit_bytes = 100_000_000
[health]
path = "healthz"
interval = "1s"
timeout = "2s"
unhealthy_threshold = 0
down_for = "0s"
[log]
format = "yaml"
[runtime]
worker_threads = 0
"#
        ));
        for line in [
            "- timeouts.tls_handshake: `0s` is not a duration from 1ms to a year, such as \"500ms\", \"10s\", \"2m\"",
            "- timeouts.request_head: `ten` is not a duration from 1ms",
            "- timeouts.request_body_idle: `500us` is not a duration from 1ms",
            "- timeouts.discard_body: `10us` is not \"0s\" (off) or a duration from 1ms to a year",
            "- timeouts.reload_poll: `often` is not \"0s\" (off) or a duration from 100ms to a year",
            "- limits.max_request_head_bytes: must be between 1024 and 1048576",
            "- limits.request_body_buffer_bytes: must be between 8192 and 1048576",
            "- limits.max_body_bytes: `big` is not a non-negative integer",
            "- limits.h2_max_concurrent_streams: must be between 1 and 100",
            "- limits.max_connections: between 1 and 1000000",
            "- upstream.pool_idle_timeout: `forever` is not a duration of at most a year such as",
            "- upstream.pool_max_idle_per_host: `-1` is not a non-negative integer",
            "- upstream.replay_limit_bytes: at most 16777216",
            "- health.path: must start with '/'",
            "- health.timeout: must not exceed health.interval",
            "- health.unhealthy_threshold: `0` is not a positive integer",
            "- health.down_for: `0s` is not a positive duration such as \"500ms\", \"2s\"",
            "- log.format: `yaml` is not one of \"text\", \"json\"",
            "- runtime.worker_threads: `0` is not an integer from 1 to 1024",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains(": 19 problems"), "{text}");
    }

    #[test]
    fn methods_are_http_tokens_and_never_connect_or_trace() {
        let text = problems(&format!(
            "{MINIMAL}\n[limits]\nmethods = [\"POST\", \"TRACE\", \"CONNECT\", \"B@D\", \"post\", \"Trace\", \"BREW\"]\n"
        ));
        for line in [
            "- limits.methods[1]: `TRACE` is never forwarded",
            "- limits.methods[2]: `CONNECT` is never forwarded",
            "- limits.methods[3]: `B@D` is not an HTTP method",
            "- limits.methods[4]: `post` is not `POST`: methods are case-sensitive (RFC 9110 §9.1)",
            "- limits.methods[5]: `Trace` is not `TRACE`: methods are case-sensitive (RFC 9110 §9.1)",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let empty = format!("{MINIMAL}\n[limits]\nmethods = []\n");
        assert!(problems(&empty).contains("- limits.methods: at least one method is required"));
    }

    #[test]
    fn bad_values_elsewhere_are_reported_with_the_policy() {
        let text = problems(
            r#"
[[listeners]]
address = "127.0.0.1:0"
proxy_protocol = "sometimes"
[listeners.tls]
certificates = [{ cert = "c.pem", key = "c.key" }]
[geoip]
database = "g.mmdb"
max_age = "0d"
[jurisdictions.ch]
countries = ["CH"]
[unknown_origin]
action = "maybe"
[datacenters.zurich]
jurisdiction = "ch"
priority = "high"
upstreams = ["http://127.0.0.1:1"]
"#,
        );
        for line in [
            "- listeners[0].proxy_protocol: `sometimes` is not one of \"off\", \"required\"",
            "- geoip.max_age: `0d` is not a positive duration such as \"30d\"",
            "- unknown_origin.action: `maybe` is not one of \"reject\", \"jurisdiction\"",
            "- datacenters.zurich.priority: `high` is not a non-negative integer",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains(": 4 problems"), "{text}");
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_name_their_key() {
        for (toml, line) in [
            (
                "[timeouts]\nfoo = \"1s\"",
                "- timeouts.foo: unknown key, expected one of `tls_handshake`",
            ),
            (
                "[limits]\nmax_bodies = 1",
                "- limits.max_bodies: unknown key",
            ),
            ("[health]\nretries = 1", "- health.retries: unknown key"),
            (
                "colour = \"blue\"",
                "- colour: unknown key, expected one of `listeners`",
            ),
            (
                "[[listeners]]\nport = 1",
                "- listeners[0].port: unknown key, expected one of `address`",
            ),
            (
                "[datacenters.zurich]\nweight = 1",
                "- datacenters.zurich.weight: unknown key",
            ),
            (
                "[[listeners]]\n[listeners.tls]\ncertificates = [{ cert = \"c.pem\" }]",
                "- listeners[0].tls.certificates[0].key: missing",
            ),
            (
                "listeners = \"all\"",
                "- listeners: invalid type: string \"all\"",
            ),
            (
                "[admin]\naddress = [1]",
                "- admin.address: invalid type: sequence",
            ),
            ("[timeouts\n", "- config: "),
        ] {
            let text = problems(toml);
            assert!(
                text.contains(line),
                "{toml:?}: missing {line:?} in:\n{text}"
            );
            assert!(text.contains(": 1 problem"), "{text}");
        }
    }

    #[test]
    fn a_crl_without_a_client_ca_is_named() {
        let text = problems(
            "[[listeners]]\n[listeners.tls]\ncertificates = [{ cert = \"c.pem\", key = \"c.key\" }]\nclient_crl = \"crl.pem\"",
        );
        let line = "- listeners[0].tls.client_crl: needs client_ca";
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of the loader: no input panics it; every failure is a
    //! report whose problems each name a key (or are a TOML syntax error
    //! with its line); a valid file loads the same way every time, and
    //! blank lines, comments and spacing change nothing.

    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A valid configuration using every section the existing tests use.
    const VALID: &str = r#"[[listeners]]
address = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/8"]
[listeners.tls]
certificates = [{ cert = "c.pem", key = "c.key" }]
[admin]
address = "127.0.0.1:9900"
[geoip]
database = "g.mmdb"
overrides = [{ network = "192.0.2.0/24", country = "CH" }]
[jurisdictions.ch]
countries = ["CH"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://127.0.0.1:1"]
[timeouts]
tls_handshake = "1m 30s"
request_head = 5
shutdown_delay = "0s"
reload_poll = "0"
[limits]
max_request_head_bytes = "32_768"
h2_max_concurrent_streams = 50
methods = ["POST", "PUT"]
[upstream]
pool_idle_timeout = "2m"
pool_max_idle_per_host = 4
replay_limit_bytes = "1024"
[health]
path = "off"
interval = "5s"
timeout = 2
healthy_threshold = "3"
[log]
format = "json"
[runtime]
worker_threads = 2
"#;

    const SECTIONS: &[&str] = &[
        "listeners",
        "admin",
        "geoip",
        "jurisdictions",
        "unknown_origin",
        "datacenters",
        "timeouts",
        "limits",
        "upstream",
        "health",
        "log",
        "transparency",
        "runtime",
    ];

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A unique directory under the temp dir with the files `VALID` names,
    /// and one config file in it; removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rp-config-proptest-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["c.pem", "c.key", "g.mmdb"] {
                std::fs::write(dir.join(f), "x").unwrap();
            }
            Dir(dir)
        }

        /// Writes `text` as the config file and loads it (no environment).
        fn load(&self, text: &str) -> (Result<Config, ConfigReport>, String) {
            let path = self.0.join("proxy.toml");
            std::fs::write(&path, text).unwrap();
            let result = Config::load_with_env(&path, Some(config::Map::new()));
            (result, path.display().to_string())
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A failed load: at least one problem, each naming a key (one that is
    /// in the text, or a known section, or `config` for a TOML syntax error
    /// with its line), formatted "FILE: N problem(s)\n  - key: message".
    /// `names` are table names the text holds escaped.
    fn check_report(
        report: &ConfigReport,
        file: &str,
        text: &str,
        names: &[&str],
    ) -> Result<(), TestCaseError> {
        let n = report.problems.len();
        prop_assert!(n > 0, "an error without problems");
        prop_assert_eq!(&report.file, file);
        let shown = report.to_string();
        let head = format!("{file}: {n} problem{}", if n == 1 { "" } else { "s" });
        prop_assert!(shown.starts_with(&head), "{}", shown);
        for p in &report.problems {
            prop_assert!(
                !p.key.trim().is_empty(),
                "a problem without a key: {:?}\n{}",
                p,
                shown
            );
            prop_assert!(
                shown.contains(&format!("\n  - {}: {}", p.key, p.message)),
                "{}",
                shown
            );
            let first = p.key.split(['.', '[']).next().unwrap_or_default();
            if p.key == "config" {
                prop_assert!(
                    p.message.contains("TOML parse error at line "),
                    "an unkeyed problem that is not a syntax error: {:?}",
                    p
                );
            } else {
                prop_assert!(
                    SECTIONS.contains(&first)
                        || text.contains(first)
                        || names.iter().any(|n| p.key.starts_with(n)),
                    "problem key {:?} is neither a section nor in the text",
                    p.key
                );
            }
        }
        Ok(())
    }

    /// A TOML basic string holding `s`.
    fn toml_string(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Right-hand sides: valid TOML values of every type, and garbage.
    fn value() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            any::<String>().prop_map(|s| toml_string(&s)),
            "[a-z0-9 ._:/-]{0,12}".prop_map(|s| toml_string(&s)),
            any::<i64>().prop_map(|n| n.to_string()),
            (-1000i64..100_000).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| {
                if f.is_finite() {
                    format!("{f:?}")
                } else {
                    "nan".into()
                }
            }),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
        ];
        let scalar2 = scalar.clone();
        prop_oneof![
            4 => scalar,
            1 => proptest::collection::vec(scalar2.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            1 => proptest::collection::vec(("[a-z_]{1,8}", scalar2), 0..3).prop_map(|v| {
                let fields: Vec<String> = v.iter().map(|(k, x)| format!("{k} = {x}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
            1 => "[ -~]{0,20}",
        ]
    }

    /// Lines of TOML-ish text: headers of known and random tables, known and
    /// random keys with any value, and garbage.
    fn toml_ish() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            prop::sample::select(SECTIONS.to_vec()).prop_map(str::to_string),
            prop::sample::select(vec![
                "listeners.tls",
                "jurisdictions.ch",
                "datacenters.zurich",
                "transparency.tls",
                "datacenters.\"A B\"",
            ])
            .prop_map(str::to_string),
            "[a-z_]{1,10}(\\.[a-z_]{1,10})?",
        ];
        let key = prop_oneof![
            prop::sample::select(vec![
                "address",
                "database",
                "countries",
                "jurisdiction",
                "upstreams",
                "certificates",
                "priority",
                "tls_handshake",
                "methods",
                "path",
                "format",
                "worker_threads",
                "trusted_proxies",
                "proxy_protocol",
                "max_age",
                "action",
                "directory",
                "origin",
                "overrides",
            ])
            .prop_map(str::to_string),
            "[a-z_]{1,12}",
        ];
        let line = prop_oneof![
            2 => name.clone().prop_map(|n| format!("[{n}]")),
            1 => name.prop_map(|n| format!("[[{n}]]")),
            5 => (key, value()).prop_map(|(k, v)| format!("{k} = {v}")),
            1 => "[ -~]{0,30}",
        ];
        proptest::collection::vec(line, 0..20).prop_map(|lines| lines.join("\n"))
    }

    /// Table names: valid ones, blank ones and any text.
    fn table_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9_-]{1,8}", "[ A-Z.]{0,3}", any::<String>()]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Delete(prop::sample::Index),
        Duplicate(prop::sample::Index),
        Replace(prop::sample::Index, String),
        InsertUnknown(prop::sample::Index, String, String),
        /// Renames a `[section.name]` table (a jurisdiction, a data centre).
        RenameTable(prop::sample::Index, String),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let at = any::<prop::sample::Index>;
        prop_oneof![
            1 => at().prop_map(Mutation::Delete),
            1 => at().prop_map(Mutation::Duplicate),
            3 => (at(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
            1 => (at(), "[a-z_]{1,12}", value()).prop_map(|(i, k, v)| Mutation::InsertUnknown(i, k, v)),
            1 => (at(), table_name()).prop_map(|(i, n)| Mutation::RenameTable(i, n)),
        ]
    }

    fn mutate(text: &str, mutations: &[Mutation]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for m in mutations {
            if lines.is_empty() {
                break;
            }
            match m {
                Mutation::Delete(i) => {
                    lines.remove(i.index(lines.len()));
                }
                Mutation::Duplicate(i) => {
                    let i = i.index(lines.len());
                    lines.insert(i, lines[i].clone());
                }
                Mutation::Replace(i, v) => {
                    let n = lines.len();
                    let line = &mut lines[i.index(n)];
                    if let Some(eq) = line.find(" = ") {
                        line.replace_range(eq + 3.., v);
                    }
                }
                Mutation::InsertUnknown(i, k, v) => {
                    lines.insert(i.index(lines.len() + 1), format!("{k} = {v}"));
                }
                Mutation::RenameTable(i, name) => {
                    let tables: Vec<usize> = (0..lines.len())
                        .filter(|&n| {
                            lines[n].starts_with("[jurisdictions.")
                                || lines[n].starts_with("[datacenters.")
                        })
                        .collect();
                    if !tables.is_empty() {
                        let line = &mut lines[tables[i.index(tables.len())]];
                        let dot = line.find('.').unwrap();
                        *line = format!("{}.{}]", &line[..dot], toml_string(name));
                    }
                }
            }
        }
        lines.join("\n")
    }

    /// Blank lines, comments and spacing: the same configuration.
    #[derive(Debug, Clone)]
    enum Cosmetic {
        BlankLine(prop::sample::Index),
        CommentLine(prop::sample::Index, String),
        TrailingComment(prop::sample::Index, String),
        Spacing(prop::sample::Index, String, String),
    }

    fn cosmetic() -> impl Strategy<Value = Cosmetic> {
        let at = any::<prop::sample::Index>;
        let comment = "[^\\x00-\\x08\\x0a-\\x1f\\x7f]{0,20}";
        prop_oneof![
            at().prop_map(Cosmetic::BlankLine),
            (at(), comment).prop_map(|(i, c)| Cosmetic::CommentLine(i, c)),
            (at(), comment).prop_map(|(i, c)| Cosmetic::TrailingComment(i, c)),
            (at(), "[ \t]{0,3}", "[ \t]{0,3}").prop_map(|(i, a, b)| Cosmetic::Spacing(i, a, b)),
        ]
    }

    fn dress(text: &str, changes: &[Cosmetic]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for c in changes {
            match c {
                Cosmetic::BlankLine(i) => lines.insert(i.index(lines.len() + 1), String::new()),
                Cosmetic::CommentLine(i, c) => {
                    lines.insert(i.index(lines.len() + 1), format!("# {c}"));
                }
                Cosmetic::TrailingComment(i, c) => {
                    let n = lines.len();
                    let line = &mut lines[i.index(n)];
                    if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
                        line.push_str(&format!(" # {c}"));
                    }
                }
                Cosmetic::Spacing(i, a, b) => {
                    let n = lines.len();
                    let line = &mut lines[i.index(n)];
                    if let Some(eq) = line.find(" = ") {
                        line.replace_range(eq..eq + 3, &format!("{a}={b}"));
                    }
                }
            }
        }
        lines.join("\n")
    }

    /// What a load produced, comparable (`Config` has no `PartialEq`).
    fn shape(c: &Config) -> String {
        let mut c = c.clone();
        c.source = None;
        format!("{c:?}")
    }

    #[test]
    fn valid_config_loads_the_same_every_time() {
        let dir = Dir::new();
        let (first, _) = dir.load(VALID);
        let first = shape(&first.unwrap());
        for _ in 0..3 {
            assert_eq!(shape(&dir.load(VALID).0.unwrap()), first);
            let path = dir.0.join("proxy.toml");
            assert_eq!(shape(&Config::load(&path).unwrap()), first);
            assert_eq!(shape(&Config::from_toml(VALID, &dir.0).unwrap()), first);
        }
    }

    /// Was reported under an empty key ("  - : names use lower-case
    /// letters…"): a jurisdiction or data centre with a blank name. Invalid
    /// names are now reported under their table, quoted as TOML does.
    /// A malformed number the `config` crate reports without a place is
    /// reported with its line (found by `arbitrary_text`).
    #[test]
    fn a_malformed_number_is_a_syntax_error_with_its_line() {
        let dir = Dir::new();
        let report = dir.load("address = 1_0F").0.unwrap_err();
        assert!(
            report
                .problems
                .iter()
                .all(|p| p.key != "config" || p.message.contains("TOML parse error at line ")),
            "{report}"
        );
    }

    #[test]
    fn a_blank_table_name_is_reported_under_its_table() {
        let dir = Dir::new();
        let text = VALID.replace("[jurisdictions.ch]", "[jurisdictions.\"\"]");
        let report = dir.load(&text).0.unwrap_err();
        for p in &report.problems {
            assert!(!p.key.trim().is_empty(), "{report}");
        }
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.key == "jurisdictions.\"\""),
            "{report}"
        );
    }

    /// A path the probes cannot send failed every probe silently: every
    /// upstream went down a few seconds after a start `check-config` had
    /// passed.
    #[test]
    fn a_health_path_no_request_can_carry_is_refused() {
        let dir = Dir::new();
        for bad in ["/healthz ", "/health check", "/h\tz"] {
            let text = VALID.replace("path = \"off\"", &format!("path = {bad:?}"));
            let report = dir.load(&text).0.unwrap_err();
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.key == "health.path" && p.message.contains("not a request path")),
                "{bad:?}: {report}"
            );
        }
        let text = VALID.replace("path = \"off\"", "path = \"/status?deep=1\"");
        let config = dir.load(&text).0.unwrap();
        assert_eq!(config.health.path.as_deref(), Some("/status?deep=1"));
    }

    /// A canary with a bad address and a bad country is two problems, each
    /// under its key (the country's went unreported).
    #[test]
    fn each_bad_field_of_a_canary_is_reported() {
        let dir = Dir::new();
        let text = VALID.replace(
            "[jurisdictions.ch]",
            "canaries = [{ address = \"nope\", country = \"ZZZ\" }]\n[jurisdictions.ch]",
        );
        let report = dir.load(&text).0.unwrap_err();
        for key in ["geoip.canaries[0].address", "geoip.canaries[0].country"] {
            assert!(
                report.problems.iter().any(|p| p.key == key),
                "{key}: {report}"
            );
        }
    }

    /// The metrics and the access line say `none` for "no jurisdiction or
    /// data centre": a place of that name would be counted as a refusal
    /// (rules.yml's refusal rule selects `datacenter="none"`) or left out
    /// of one (`jurisdiction!="none"`).
    #[test]
    fn none_is_not_a_name_for_a_jurisdiction_or_a_data_centre() {
        let dir = Dir::new();
        let datacenter = VALID.replace("[datacenters.zurich]", "[datacenters.none]");
        let jurisdiction = VALID
            .replace("[jurisdictions.ch]", "[jurisdictions.none]")
            .replace("jurisdiction = \"ch\"", "jurisdiction = \"none\"");
        for (text, key) in [
            (datacenter, "datacenters.none"),
            (jurisdiction, "jurisdictions.none"),
        ] {
            let report = dir.load(&text).0.unwrap_err();
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.key == key && p.message.contains("reserved")),
                "{report}"
            );
        }
    }

    proptest! {
        #![proptest_config(config(1000))]

        /// TOML-ish text: no panic; a failure names its keys.
        #[test]
        fn arbitrary_text(text in toml_ish()) {
            let dir = Dir::new();
            let (result, file) = dir.load(&text);
            if let Err(report) = &result {
                check_report(report, &file, &text, &[])?;
            }
            match Config::from_toml(&text, &dir.0) {
                Ok(_) => prop_assert!(result.is_ok(), "from_toml accepts what load refuses"),
                Err(report) => check_report(&report, "config", &text, &[])?,
            }
        }

        /// Mutations of a valid file: no panic; a failure names its keys.
        #[test]
        fn mutated_valid_config(mutations in proptest::collection::vec(mutation(), 1..4)) {
            let dir = Dir::new();
            let text = mutate(VALID, &mutations);
            let (result, file) = dir.load(&text);
            let names: Vec<&str> = mutations
                .iter()
                .filter_map(|m| match m {
                    Mutation::RenameTable(_, name) => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            if let Err(report) = &result {
                check_report(report, &file, &text, &names)?;
            }
        }

        /// Blank lines, comments and spacing change nothing.
        #[test]
        fn cosmetic_changes_are_stable(changes in proptest::collection::vec(cosmetic(), 0..6)) {
            let dir = Dir::new();
            let want = shape(&dir.load(VALID).0.unwrap());
            let text = dress(VALID, &changes);
            match dir.load(&text).0 {
                Ok(c) => prop_assert_eq!(shape(&c), want),
                Err(report) => prop_assert!(false, "{}\n{}", report, text),
            }
        }
    }
}
