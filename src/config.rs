//! Configuration: the serde shape an operator writes, and the typed shape the
//! proxy runs on.
//!
//! Loading happens in two steps. The `config` crate merges the TOML file with
//! `RESIDENCY_PROXY__SECTION__KEY` environment overrides into [`RawConfig`],
//! whose fields are strings and options. [`Config::from_raw`] then converts
//! every field to its real type (`SocketAddr`, `Duration`, `IpNet`, policy ids)
//! and collects *every* problem into one [`ConfigReport`], each naming its key,
//! so an operator fixes a broken file in one pass. After loading, invalid
//! states cannot be represented.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use residency_core::country::Country;
use residency_core::origin::TrustedProxies;
use residency_core::policy::{Policy, RawDatacenter, RawJurisdiction, RawUnknownOrigin};
use residency_core::report::{parse_addr, parse_duration, parse_net, ConfigReport};
use residency_log::settings::{RawTransparency, Transparency};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "RESIDENCY_PROXY";

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
    pub upstream: UpstreamSettings,
    pub health: HealthSettings,
    pub log_format: LogFormat,
    /// The transparency log and receipts; `None` when not configured.
    pub transparency: Option<Transparency>,
    /// Tokio worker threads (`runtime.worker_threads`); default one per core.
    pub worker_threads: Option<usize>,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
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
        }
    }
}

/// Size and count limits; everything a peer can grow is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_head_bytes: usize,
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_head_bytes: 16 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            h2_max_concurrent_streams: 100,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// PEM bundle used instead of the system roots for `https` upstreams.
    pub ca: Option<PathBuf>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Bodies up to this size with an `Idempotency-Key` are kept for replay.
    pub replay_limit_bytes: usize,
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
    pub timeouts: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub health: BTreeMap<String, String>,
    #[serde(default)]
    pub log: RawLog,
    pub transparency: Option<RawTransparency>,
    #[serde(default)]
    pub runtime: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Option<String>,
    pub proxy_protocol: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoip {
    pub database: Option<String>,
    #[serde(default)]
    pub overrides: Vec<RawOverride>,
    #[serde(default)]
    pub canaries: Vec<RawCanary>,
    pub max_age: Option<String>,
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
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<String>,
    pub replay_limit_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(env);
        let merged = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(|c| c.try_deserialize::<RawConfig>());
        let raw = merged.map_err(|e| single(&source, "config", e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::from_raw(raw, base, &source)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses TOML text (no environment overrides); paths relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigReport> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<RawConfig>())
            .map_err(|e| single("config", "config", e))?;
        Self::from_raw(raw, base, "config")
    }

    /// Converts the raw shape, reporting every problem at once.
    pub fn from_raw(raw: RawConfig, base: &Path, source: &str) -> Result<Config, ConfigReport> {
        let mut report = ConfigReport::new(source);
        let r = &mut report;

        if raw.listeners.is_empty() {
            r.push("listeners", "at least one [[listeners]] is required");
        }
        let listeners: Vec<Listener> = raw
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| listener(l, &format!("listeners[{i}]"), base, r))
            .collect();

        let admin_address = raw.admin.address.as_deref().unwrap_or("127.0.0.1:9900");
        let admin = parse_addr(admin_address, "admin.address", r).map(|address| Admin { address });

        let geoip = geoip(raw.geoip.as_ref(), base, r);
        let policy = Policy::from_raw(&raw.jurisdictions, &raw.unknown_origin, &raw.datacenters, r);
        let timeouts = timeouts(&raw.timeouts, r);
        let limits = limits(&raw.limits, r);
        let upstream = upstream(&raw.upstream, base, r);
        let health = health(&raw.health, r);
        let transparency = raw
            .transparency
            .as_ref()
            .map(|t| residency_log::settings::transparency(t, base, r));
        let worker_threads = match raw.runtime.worker_threads.as_deref() {
            None => None,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => Some(n),
                _ => {
                    r.push(
                        "runtime.worker_threads",
                        "must be an integer from 1 to 1024",
                    );
                    None
                }
            },
        };
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                r.push(
                    "log.format",
                    format!("`{other}` is not one of \"text\", \"json\""),
                );
                LogFormat::Text
            }
        };

        let config = (|| {
            Some(Config {
                listeners,
                admin: admin?,
                geoip: geoip?,
                policy: policy?,
                timeouts,
                limits,
                upstream: upstream?,
                health,
                log_format,
                transparency: match transparency {
                    Some(t) => Some(t?),
                    None => None,
                },
                worker_threads,
                source: None,
            })
        })();
        report.finish(config)
    }
}

fn single(source: &str, key: &str, e: config::ConfigError) -> ConfigReport {
    let mut report = ConfigReport::new(source);
    report.push(key, e);
    report
}

fn listener(raw: &RawListener, key: &str, base: &Path, r: &mut ConfigReport) -> Option<Listener> {
    let address = match &raw.address {
        Some(a) => parse_addr(a, &format!("{key}.address"), r),
        None => {
            r.push(format!("{key}.address"), "missing");
            None
        }
    };
    let proxy_protocol = match raw.proxy_protocol.as_deref() {
        None | Some("off") => false,
        Some("required") => true,
        Some(other) => {
            r.push(
                format!("{key}.proxy_protocol"),
                format!("`{other}` is not one of \"off\", \"required\""),
            );
            false
        }
    };
    let mut nets = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().enumerate() {
        match parse_net(text) {
            Some(net) => nets.push(net),
            None => r.push(
                format!("{key}.trusted_proxies[{i}]"),
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
        }
    }
    Some(Listener {
        address: address?,
        proxy_protocol,
        trusted_proxies: TrustedProxies::new(nets),
        certificates,
        client_ca,
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
    for (i, o) in raw.overrides.iter().enumerate() {
        let key = format!("geoip.overrides[{i}]");
        let net = parse_net(&o.network);
        if net.is_none() {
            r.push(
                format!("{key}.network"),
                format!("`{}` is not a CIDR network", o.network),
            );
        }
        let country = Country::parse(&o.country);
        if country.is_none() {
            r.push(
                format!("{key}.country"),
                format!("`{}` is not an ISO 3166-1 alpha-2 code", o.country),
            );
        }
        if let (Some(net), Some(country)) = (net, country) {
            overrides.push((net, country));
        }
    }
    let mut canaries = Vec::new();
    for (i, c) in raw.canaries.iter().enumerate() {
        let key = format!("geoip.canaries[{i}]");
        let addr = c.address.trim().parse::<std::net::IpAddr>();
        let country = Country::parse(&c.country);
        match (addr, country) {
            (Ok(a), Some(country)) => canaries.push((a.to_canonical(), country)),
            (Err(_), _) => r.push(
                format!("{key}.address"),
                format!("`{}` is not an IP address", c.address),
            ),
            (_, None) => r.push(
                format!("{key}.country"),
                format!("`{}` is not an ISO 3166-1 alpha-2 code", c.country),
            ),
        }
    }
    let max_age = match raw.max_age.as_deref().map(parse_duration) {
        None => None,
        Some(Some(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            r.push("geoip.max_age", "not a positive duration such as \"30d\"");
            None
        }
    };
    Some(Geoip {
        database: database?,
        overrides,
        canaries,
        max_age,
    })
}

fn timeouts(raw: &BTreeMap<String, String>, r: &mut ConfigReport) -> Timeouts {
    let mut t = Timeouts::default();
    for (name, value) in raw {
        let slot = match name.as_str() {
            "tls_handshake" => &mut t.tls_handshake,
            "request_head" => &mut t.request_head,
            "request_body_idle" => &mut t.request_body_idle,
            "upstream_connect" => &mut t.upstream_connect,
            "upstream_response" => &mut t.upstream_response,
            "keepalive_idle" => &mut t.keepalive_idle,
            "shutdown_grace" => &mut t.shutdown_grace,
            "shutdown_delay" | "reload_poll" => {
                match parse_duration(value) {
                    Some(d) if name == "shutdown_delay" => t.shutdown_delay = d,
                    Some(d) => t.reload_poll = d,
                    None => r.push(
                        format!("timeouts.{name}"),
                        format!("`{value}` is not a duration such as \"5s\" (\"0s\" = off)"),
                    ),
                }
                continue;
            }
            _ => {
                r.push(format!("timeouts.{name}"), "unknown timeout");
                continue;
            }
        };
        match parse_duration(value) {
            Some(d) if !d.is_zero() => *slot = d,
            _ => r.push(
                format!("timeouts.{name}"),
                format!("`{value}` is not a positive duration such as \"500ms\", \"10s\", \"2m\""),
            ),
        }
    }
    t
}

fn limits(raw: &BTreeMap<String, String>, r: &mut ConfigReport) -> Limits {
    let mut l = Limits::default();
    for (name, value) in raw {
        let key = format!("limits.{name}");
        let Ok(n) = value.trim().replace('_', "").parse::<u64>() else {
            r.push(key, format!("`{value}` is not a non-negative integer"));
            continue;
        };
        let as_usize = usize::try_from(n).unwrap_or(usize::MAX);
        match name.as_str() {
            "max_request_head_bytes" if (1024..=1024 * 1024).contains(&n) => {
                l.max_request_head_bytes = as_usize
            }
            "max_request_head_bytes" => r.push(key, "must be between 1024 and 1048576"),
            "max_body_bytes" if n > 0 => l.max_body_bytes = n,
            "max_body_bytes" => r.push(key, "must be positive"),
            "h2_max_concurrent_streams" if (1..=100).contains(&n) => {
                l.h2_max_concurrent_streams = n as u32
            }
            "h2_max_concurrent_streams" => r.push(key, "must be between 1 and 100"),
            "max_connections" if n > 0 => l.max_connections = as_usize,
            "max_connections" => r.push(key, "must be positive"),
            _ => r.push(key, "unknown limit"),
        }
    }
    l
}

fn upstream(raw: &RawUpstream, base: &Path, r: &mut ConfigReport) -> Option<UpstreamSettings> {
    let duration =
        |value: &Option<String>, key: &str, default: u64, r: &mut ConfigReport| match value
            .as_deref()
            .map(parse_duration)
        {
            None => Duration::from_secs(default),
            Some(Some(d)) => d,
            Some(None) => {
                r.push(key, "not a duration such as \"500ms\", \"10s\", \"2m\"");
                Duration::from_secs(default)
            }
        };
    let pool_idle_timeout = duration(&raw.pool_idle_timeout, "upstream.pool_idle_timeout", 90, r);
    let count =
        |value: &Option<String>, key: &str, default: usize, r: &mut ConfigReport| match value
            .as_deref()
            .map(|v| v.trim().replace('_', "").parse::<usize>())
        {
            None => default,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                r.push(key, "not a non-negative integer");
                default
            }
        };
    let pool_max_idle_per_host = count(
        &raw.pool_max_idle_per_host,
        "upstream.pool_max_idle_per_host",
        32,
        r,
    );
    let replay_limit_bytes = count(
        &raw.replay_limit_bytes,
        "upstream.replay_limit_bytes",
        64 * 1024,
        r,
    );
    if replay_limit_bytes > 16 * 1024 * 1024 {
        r.push(
            "upstream.replay_limit_bytes",
            "at most 16777216: replayable bodies are held in memory",
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
        replay_limit_bytes,
    })
}

fn health(raw: &BTreeMap<String, String>, r: &mut ConfigReport) -> HealthSettings {
    let mut h = HealthSettings::default();
    for (name, value) in raw {
        let key = format!("health.{name}");
        let duration = || parse_duration(value).filter(|d| !d.is_zero());
        let count = || value.trim().parse::<u32>().ok().filter(|n| *n > 0);
        let bad_duration = "not a positive duration such as \"500ms\", \"2s\"";
        match name.as_str() {
            "path" if value.is_empty() || value == "off" => h.path = None,
            "path" if value.starts_with('/') => h.path = Some(value.clone()),
            "path" => r.push(key, "must start with '/' (or be \"off\")"),
            "interval" => match duration() {
                Some(d) => h.interval = d,
                None => r.push(key, bad_duration),
            },
            "timeout" => match duration() {
                Some(d) => h.timeout = d,
                None => r.push(key, bad_duration),
            },
            "down_for" => match duration() {
                Some(d) => h.down_for = d,
                None => r.push(key, bad_duration),
            },
            "healthy_threshold" | "unhealthy_threshold" | "passive_failures" => match count() {
                Some(n) if name == "healthy_threshold" => h.healthy_threshold = n,
                Some(n) if name == "unhealthy_threshold" => h.unhealthy_threshold = n,
                Some(n) => h.passive_failures = n,
                None => r.push(key, "must be a positive integer"),
            },
            _ => r.push(key, "unknown health setting"),
        }
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
