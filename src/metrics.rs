//! Every metric the proxy exports, declared once, with help text.
//!
//! Metrics live in an explicit [`prometheus::Registry`] owned by [`Metrics`]
//! (never the global default registry), so tests and several proxies in one
//! process do not share counters. Label values come only from closed sets:
//! configuration names (jurisdictions, data centres) and the fixed reasons in
//! this file, never addresses or paths.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use residency_core::geo::LookupResult;
use residency_core::policy::{DatacenterId, JurisdictionId, Policy};

use crate::config::Config;
use crate::tenancy::Tenancy;
use residency_core::tenant::Recognized;
pub use residency_log::storage::LogMetrics;

/// What the process's log writer has dropped, once `serve` (or another
/// server) has set it up: read into `residency_log_lines_dropped_total` at
/// each scrape.
static LOG_LINES_DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Exports `counter` (the process's log writer's) as
/// `residency_log_lines_dropped_total`; the first call wins.
pub fn count_dropped_log_lines(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = LOG_LINES_DROPPED.set(counter);
}

/// Log lines stderr refused (a full disk, a pipe whose reader has gone):
/// counted by the writer, exported in `residency_log_lines_dropped_total`.
static LOG_LINES_UNWRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a log line stderr did not take.
pub fn count_unwritten_log_line() {
    LOG_LINES_UNWRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Failed accepts on every listener (out of file descriptors and the
/// like), process-wide: counted where the listeners accept, exported by
/// every registry as `residency_accept_errors_total`.
pub fn accept_errors() -> &'static IntCounter {
    static COUNTER: OnceLock<IntCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        IntCounter::new(
            "residency_accept_errors_total",
            "Failed accepts on the listeners (EMFILE: out of file descriptors, ENFILE, ENOBUFS…): the connections wait in the kernel's queue meanwhile; the warning says the error, at most once a minute.",
        )
        .expect("a valid metric")
    })
}

/// Label value when a request never reached a jurisdiction or data centre.
pub const NONE: &str = "none";

/// The `reason` values of `residency_rejections_total`: every
/// `proxy::error::Failure` (a test holds them equal).
pub const REJECTION_REASONS: [&str; 26] = [
    "bad_request",
    "method_not_allowed",
    "bad_forwarded_header",
    "origin_unknown",
    "origin_not_permitted",
    "no_healthy_datacenter",
    "body_too_large",
    "request_body_timeout",
    "client_aborted",
    "upstream_unavailable",
    "upstream_error",
    "upstream_timeout",
    "upstream_saturated",
    "log_unavailable",
    "invalid_tenant_token",
    "tenant_origin_mismatch",
    "tenant_conflict",
    "too_many_requests",
    "misdirected_request",
    "unsupported_transfer_coding",
    "request_head_too_large",
    "method_not_implemented",
    "geoip_error",
    "upstream_answered_early",
    "shutdown",
    "policy_changed",
];

/// The `reason` values of `residency_connections_rejected_total`.
pub const CONNECTION_REJECTIONS: [&str; 11] = [
    "connection_limit",
    "client_connection_limit",
    "admin_connection_limit",
    "admin_client_connection_limit",
    "log_connection_limit",
    "log_client_connection_limit",
    "proxy_untrusted_peer",
    "proxy_header_missing",
    "proxy_header_invalid",
    "proxy_header_io",
    "proxy_header_timeout",
];

/// The `reason` values of `residency_connections_closed_total`: the
/// deadline that passed (named as its `timeouts.*` key, or
/// `response_body`), hyper's own answer to a head it would not read, or
/// the HTTP/2 error the proxy ended the connection with (GOAWAY).
pub const CONNECTION_CLOSES: [&str; 14] = [
    "request_head",
    "keepalive_idle",
    "client_send_idle",
    "response_body",
    "bad_request",
    "head_too_large",
    "http2_protocol_error",
    "http2_flow_control_error",
    "http2_frame_size_error",
    "http2_compression_error",
    "http2_enhance_your_calm",
    "http2_other_error",
    "http2_ping_timeout",
    "client_cancels",
];

/// The `reason` values of `residency_upstream_retries_total`.
pub const RETRY_REASONS: [&str; 4] = [
    "connect_failed",
    "tls_failed",
    "upstream_saturated",
    "idempotent_replay",
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub rejections: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub request_body_bytes: IntCounterVec,
    pub geoip_lookups: IntCounterVec,
    pub geoip_build_timestamp: IntGauge,
    pub datacenter_up: IntGaugeVec,
    pub datacenter_drained: IntGaugeVec,
    pub upstream_up: IntGaugeVec,
    /// Connections open to each upstream (busy and idle).
    pub upstream_connections: IntGaugeVec,
    /// Requests refused an upstream because its connection cap was busy.
    pub upstream_saturated: IntCounterVec,
    /// Upstreams ejected as hung (accepting requests, answering none).
    pub upstream_hung: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub connections_active: IntGauge,
    pub connections_idle: IntGauge,
    /// Requests whose client left mid-delivery, running to their end.
    pub detached: IntGauge,
    /// Such requests cancelled because a detached-work budget was full.
    pub detached_cancelled: IntCounter,
    /// Idempotent uploads streamed without a replay copy: budget spent.
    pub replay_budget_exhausted: IntCounter,
    /// Log lines the process's log writer dropped (see [`count_dropped_log_lines`]).
    pub log_lines_dropped: IntCounter,
    /// How many of those it counts already.
    log_lines_exported: std::sync::atomic::AtomicU64,
    pub connections_rejected: IntCounterVec,
    /// Log listener requests answered 429 for
    /// `transparency.requests_per_second_per_client`.
    pub log_requests_limited: IntCounter,
    /// Client connections the proxy ended itself after their handshake.
    pub connections_closed: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub reloads: IntCounterVec,
    /// 1 unless the last reload failed (Prometheus's own
    /// `prometheus_config_last_reload_successful`).
    pub config_last_reload_successful: IntGauge,
    /// 1 while the configuration last reloaded holds settings read at
    /// start only that differ from the running ones.
    pub config_restart_pending: IntGauge,
    pub tenant_requests: IntCounterVec,
    pub tenant_requests_by_tenant: IntCounterVec,
    pub tenant_mismatches: IntCounterVec,
    pub policy_info: IntGaugeVec,
    /// When each served certificate expires (its `notAfter`), by its key
    /// in the configuration.
    pub certificate_expiry: IntGaugeVec,
    pub geoip_age: IntGauge,
    /// The transparency log's (zero when it is not configured).
    pub log: LogMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Seconds, 1 ms to 10 min: a 100 MiB upload (`limits.max_body_bytes`) at
/// a few hundred KiB/s takes minutes, and a request may wait up to
/// `timeouts.upstream_response` after it.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, label: &str| -> Result<HistogramVec, prometheus::Error> {
                let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
                let h = HistogramVec::new(opts, &[label])?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let requests = counter(
            "residency_requests_total",
            "Requests answered, by jurisdiction (the one whose store_in bounds the upload: GeoIP's, or a tenant's pin), data centre and status class.",
            &["jurisdiction", "datacenter", "status_class"],
        )?;
        let rejections = counter(
            "residency_rejections_total",
            "Requests refused by the proxy itself, by reason.",
            &["reason"],
        )?;
        let request_duration = histogram(
            "residency_request_duration_seconds",
            "Time from request head to response head, by jurisdiction (as residency_requests_total).",
            "jurisdiction",
        )?;
        let upstream_duration = histogram(
            "residency_upstream_duration_seconds",
            "Each delivery attempt to a data centre, from sending the request (its body streamed meanwhile) until the response head or the attempt's failure (a timeout, refused connection or saturation included), by data centre.",
            "datacenter",
        )?;
        let request_body_bytes = counter(
            "residency_request_body_bytes_total",
            "Request body bytes read from clients to be forwarded, by jurisdiction (as residency_requests_total): those of refused uploads too, as far as they were read, and a body read whole for an idempotent replay once, whether or not an attempt sent it; what an upstream reads after it answered is added when the body ends.",
            &["jurisdiction"],
        )?;
        let geoip_lookups = counter(
            "residency_geoip_lookups_total",
            "GeoIP lookups by result: hit, miss, override, error (the database's record does not decode: the upload is refused, 503 geoip_error).",
            &["result"],
        )?;
        let geoip_build_timestamp = IntGauge::new(
            "residency_geoip_database_build_timestamp_seconds",
            "Build time of the loaded GeoIP database (Unix seconds).",
        )?;
        registry.register(Box::new(geoip_build_timestamp.clone()))?;
        let datacenter_up = IntGaugeVec::new(
            Opts::new(
                "residency_datacenter_up",
                "1 when at least one of the data centre's upstreams is healthy (drain not considered).",
            ),
            &["datacenter", "jurisdiction"],
        )?;
        registry.register(Box::new(datacenter_up.clone()))?;
        let datacenter_drained = IntGaugeVec::new(
            Opts::new(
                "residency_datacenter_drained",
                "1 while an operator has drained the data centre (no new requests).",
            ),
            &["datacenter"],
        )?;
        registry.register(Box::new(datacenter_drained.clone()))?;
        let upstream_up = IntGaugeVec::new(
            Opts::new(
                "residency_upstream_up",
                "1 when the upstream passes active checks and is not ejected.",
            ),
            &["datacenter", "upstream"],
        )?;
        registry.register(Box::new(upstream_up.clone()))?;
        let upstream_connections = IntGaugeVec::new(
            Opts::new(
                "residency_upstream_connections",
                "Connections open to the upstream, busy and idle (at most upstream.max_connections_per_upstream).",
            ),
            &["datacenter", "upstream"],
        )?;
        registry.register(Box::new(upstream_connections.clone()))?;
        let upstream_saturated = counter(
            "residency_upstream_saturated_total",
            "Delivery attempts that found every connection upstream.max_connections_per_upstream allows busy for timeouts.upstream_connect (nothing was sent).",
            &["datacenter", "upstream"],
        )?;
        let upstream_hung = counter(
            "residency_upstream_hung_total",
            "Upstreams ejected as hung: a request waited health.hung_after after its body was sent and the upstream answered no request meanwhile.",
            &["datacenter", "upstream"],
        )?;
        let tls_handshakes = counter(
            "residency_tls_handshakes_total",
            "TLS handshakes by result: success, failure, timeout.",
            &["result"],
        )?;
        let connections_active = IntGauge::new(
            "residency_connections_active",
            "Client connections currently open on the ingest listeners.",
        )?;
        registry.register(Box::new(connections_active.clone()))?;
        let connections_idle = IntGauge::new(
            "residency_connections_idle",
            "HTTP/1 keep-alive connections waiting for their next request with their HTTP buffers released.",
        )?;
        registry.register(Box::new(connections_idle.clone()))?;
        let detached = IntGauge::new(
            "residency_detached_requests",
            "Requests whose client left (connection closed, HTTP/2 stream reset) while their upload was being delivered, still running so that the delivery completes and is recorded.",
        )?;
        registry.register(Box::new(detached.clone()))?;
        let detached_cancelled = IntCounter::new(
            "residency_detached_requests_cancelled_total",
            "Requests whose client left mid-delivery and that were cancelled instead of finishing, because the connection's (h2_max_concurrent_streams) or the process's (limits.max_detached_requests) budget was full.",
        )?;
        registry.register(Box::new(detached_cancelled.clone()))?;
        let replay_budget_exhausted = IntCounter::new(
            "residency_replay_budget_exhausted_total",
            "Uploads with an Idempotency-Key streamed without a replay copy because upstream.replay_budget_bytes was in use.",
        )?;
        registry.register(Box::new(replay_budget_exhausted.clone()))?;
        let log_lines_dropped = IntCounter::new(
            "residency_log_lines_dropped_total",
            "Lines of the proxy's own log (stderr) dropped: its reader did not take them (one that stopped reading, or fell 8192 lines behind), or stderr refused them (a full disk, a pipe whose reader has gone). Requests never wait for the log's reader.",
        )?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        registry.register(Box::new(accept_errors().clone()))?;
        let connections_rejected = counter(
            "residency_connections_rejected_total",
            "Connections closed before any request was read, by reason (PROXY header missing, invalid, cut off, late or from an untrusted peer; the ingest listeners' limits.max_connections, a client's limits.max_connections_per_client; the admin listener's 64; the log listener's transparency.max_connections and a client's transparency.max_connections_per_client).",
            &["reason"],
        )?;
        let log_requests_limited = IntCounter::new(
            "residency_log_requests_limited_total",
            "Requests to the transparency log's listener answered 429: their client address (an IPv6 client's /64) had made more than transparency.requests_per_second_per_client (with its burst, transparency.requests_burst_per_client).",
        )?;
        registry.register(Box::new(log_requests_limited.clone()))?;
        let connections_closed = counter(
            "residency_connections_closed_total",
            "Client connections the proxy ended itself after their TLS handshake, by reason: a deadline (timeouts.request_head, keepalive_idle, client_send_idle; response_body: an HTTP/2 response body still sent keepalive_idle after its head while other requests keep the connection busy), hyper's own 400 (bad_request) or 431 (head_too_large) for an HTTP/1 head it would not read, or the HTTP/2 error code of the GOAWAY the proxy sent (http2_*; http2_ping_timeout: a client that stopped answering pings).",
            &["reason"],
        )?;
        let upstream_retries = counter(
            "residency_upstream_retries_total",
            "Requests retried on another permitted upstream, by reason.",
            &["reason"],
        )?;
        let reloads = counter(
            "residency_reloads_total",
            "Reloads of configuration, certificates and GeoIP database, by result: success, failure.",
            &["result"],
        )?;
        let config_last_reload_successful = IntGauge::new(
            "residency_config_last_reload_successful",
            "1 unless the last reload failed (0: the previous state keeps serving, until a reload succeeds).",
        )?;
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        config_last_reload_successful.set(1);
        let config_restart_pending = IntGauge::new(
            "residency_config_restart_pending",
            "1 while the configuration last reloaded changes settings read at start only (listener or admin addresses, [transparency], limits.max_connections and the others the reload's warning names): they take effect at the next restart.",
        )?;
        registry.register(Box::new(config_restart_pending.clone()))?;
        let tenant_requests = counter(
            "residency_tenant_requests_total",
            "With tenants configured: requests by how their tenant was recognised (sni, client_cert, token; none: GeoIP decided).",
            &["tenant_source"],
        )?;
        let tenant_requests_by_tenant = counter(
            "residency_tenant_requests_by_tenant_total",
            "Requests per recognised tenant (only with tenancy.metrics_by_tenant = true).",
            &["tenant"],
        )?;
        let tenant_mismatches = counter(
            "residency_tenant_origin_mismatches_total",
            "Requests of a pinned tenant that GeoIP places outside the pin, by what the tenant's mismatch policy did: allowed, refused.",
            &["action"],
        )?;
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "residency_policy_info",
                "Always 1; `hash` is the SHA-256 of the active routing policy, tenant pins and GeoIP overrides (the records' policy_sha256).",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(policy_info.clone()))?;
        // Which build each replica of a fleet runs (a rolling upgrade's
        // progress, a replica left behind): Prometheus's `*_build_info`.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "residency_build_info",
                "Always 1; `version` is the proxy's version and `commit` the commit it was built from (empty when unknown: no git checkout and no RESIDENCY_PROXY_COMMIT at build time).",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                residency_tools::COMMIT.unwrap_or_default(),
            ])
            .set(1);
        registry.register(Box::new(build_info))?;
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "residency_tls_certificate_expiry_timestamp_seconds",
                "When each certificate the proxy serves expires (its notAfter, Unix seconds), by its key in the configuration (listeners[i].tls.certificates[j], transparency.tls.certificates[j]): read at start and at each reload; clients refuse it at the handshake from then on.",
            ),
            &["certificate"],
        )?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        let geoip_age = IntGauge::new(
            "residency_geoip_database_age_seconds",
            "Age of the loaded GeoIP database (now minus its build time).",
        )?;
        registry.register(Box::new(geoip_age.clone()))?;
        let log = LogMetrics::register(&registry)?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(ProcessMetrics::new()?))?;

        Ok(Metrics {
            registry,
            requests,
            rejections,
            request_duration,
            upstream_duration,
            request_body_bytes,
            geoip_lookups,
            geoip_build_timestamp,
            datacenter_up,
            datacenter_drained,
            upstream_up,
            upstream_connections,
            upstream_saturated,
            upstream_hung,
            tls_handshakes,
            connections_active,
            connections_idle,
            detached,
            detached_cancelled,
            replay_budget_exhausted,
            log_lines_dropped,
            log_lines_exported: std::sync::atomic::AtomicU64::new(0),
            connections_rejected,
            log_requests_limited,
            connections_closed,
            upstream_retries,
            reloads,
            config_last_reload_successful,
            config_restart_pending,
            tenant_requests,
            tenant_requests_by_tenant,
            tenant_mismatches,
            policy_info,
            certificate_expiry,
            geoip_age,
            log,
        })
    }

    /// Creates, at 0, every series whose label values are known before the
    /// first event — reasons, results and sources (a closed set), and the
    /// configuration's jurisdictions, data centres, upstreams and
    /// witnesses — so that the first event is an increase from 0, not a new
    /// series `increase()` cannot see. Called at start and on every reload.
    pub fn preset(&self, config: &Config) {
        for reason in REJECTION_REASONS {
            self.rejections.with_label_values(&[reason]);
        }
        for result in ["success", "failure", "timeout"] {
            self.tls_handshakes.with_label_values(&[result]);
        }
        for result in [
            LookupResult::Hit,
            LookupResult::Miss,
            LookupResult::Override,
            LookupResult::Error,
        ] {
            self.geoip_lookups.with_label_values(&[result.as_str()]);
        }
        for result in ["success", "failure"] {
            self.reloads.with_label_values(&[result]);
        }
        for reason in CONNECTION_REJECTIONS {
            self.connections_rejected.with_label_values(&[reason]);
        }
        for reason in CONNECTION_CLOSES {
            self.connections_closed.with_label_values(&[reason]);
        }
        for reason in RETRY_REASONS {
            self.upstream_retries.with_label_values(&[reason]);
        }
        self.tenant_requests.with_label_values(&[NONE]);
        for source in residency_core::tenant::Source::ALL {
            self.tenant_requests.with_label_values(&[source.as_str()]);
        }
        for action in ["allowed", "refused"] {
            self.tenant_mismatches.with_label_values(&[action]);
        }
        // The certificates served now (a reload may have replaced any).
        self.certificate_expiry.reset();
        for (key, cert) in config.served_certificates() {
            let expiry = std::fs::read(cert)
                .ok()
                .and_then(|pem| residency_tls::validity(&pem).first().copied());
            if let Some(v) = expiry {
                let secs = v
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                self.certificate_expiry.with_label_values(&[&key]).set(secs);
            }
        }
        // A tenant no longer configured (or every one, with the setting
        // off) has its series removed: with tenants coming and going they
        // grew without bound until a restart, exporting the names of
        // customers who had left (scale audit, stop 65).
        let named: HashSet<&str> = match config.tenancy.metrics_by_tenant {
            true => config
                .tenancy
                .tenants
                .iter()
                .map(|t| t.name.as_str())
                .collect(),
            false => HashSet::new(),
        };
        for family in prometheus::core::Collector::collect(&self.tenant_requests_by_tenant) {
            for series in family.get_metric() {
                for label in series.get_label() {
                    if !named.contains(label.value()) {
                        let _ = self
                            .tenant_requests_by_tenant
                            .remove_label_values(&[label.value()]);
                    }
                }
            }
        }
        for name in &named {
            self.tenant_requests_by_tenant.with_label_values(&[name]);
        }
        // A request refused before its jurisdiction was known.
        self.request_duration.with_label_values(&[NONE]);
        let policy = &config.policy;
        // A jurisdiction, data centre or upstream a reload removed (or
        // renamed) takes its series with it, as a tenant does: each
        // renamed data centre left 29 series at 0 for good (soak audit,
        // stop 66).
        let jurisdictions: HashSet<&str> = policy
            .jurisdictions
            .iter()
            .map(|j| j.name.as_str())
            .collect();
        let datacenters: HashSet<&str> =
            policy.datacenters.iter().map(|d| d.name.as_str()).collect();
        let uris: Vec<String> = policy.upstreams.iter().map(|u| u.uri.to_string()).collect();
        // And a pair that no longer holds: a data centre no longer
        // permitted to a jurisdiction (a `store_in` changed), an upstream
        // moved to another data centre (verification, stop 66).
        let mut permitted: HashSet<(&str, &str)> = HashSet::new();
        for (i, j) in policy.jurisdictions.iter().enumerate() {
            for g in policy.permitted(residency_core::policy::JurisdictionId(i)) {
                for d in &g.datacenters {
                    permitted.insert((j.name.as_str(), policy.datacenter(*d).name.as_str()));
                }
            }
        }
        let placed: HashSet<(&str, &str)> = policy
            .upstreams
            .iter()
            .zip(&uris)
            .map(|(u, uri)| (policy.datacenter(u.datacenter).name.as_str(), uri.as_str()))
            .collect();
        prune_by(&self.requests, |l| {
            let (j, dc) = (label(l, "jurisdiction"), label(l, "datacenter"));
            (j == NONE || jurisdictions.contains(j)) && (dc == NONE || permitted.contains(&(j, dc)))
        });
        prune(&self.request_duration, "jurisdiction", &jurisdictions);
        prune(&self.request_body_bytes, "jurisdiction", &jurisdictions);
        prune(&self.upstream_duration, "datacenter", &datacenters);
        for vec in [&self.upstream_saturated, &self.upstream_hung] {
            prune_by(vec, |l| {
                placed.contains(&(label(l, "datacenter"), label(l, "upstream")))
            });
        }
        for (i, j) in policy.jurisdictions.iter().enumerate() {
            let name = j.name.as_str();
            self.request_duration.with_label_values(&[name]);
            self.request_body_bytes.with_label_values(&[name]);
            let permitted = policy.permitted(residency_core::policy::JurisdictionId(i));
            for g in permitted {
                for d in &g.datacenters {
                    let dc = policy.datacenter(*d).name.as_str();
                    for class in ["2xx", "3xx", "4xx", "5xx"] {
                        self.requests.with_label_values(&[name, dc, class]);
                    }
                }
            }
            for class in ["4xx", "5xx"] {
                self.requests.with_label_values(&[name, NONE, class]);
            }
        }
        for class in ["4xx", "5xx"] {
            self.requests.with_label_values(&[NONE, NONE, class]);
        }
        // An allowed `OPTIONS` the proxy answers itself counts here.
        if config.methods.allows(&http::Method::OPTIONS) {
            self.requests.with_label_values(&[NONE, NONE, "2xx"]);
        }
        for u in &policy.upstreams {
            let dc = policy.datacenter(u.datacenter).name.as_str();
            let uri = u.uri.to_string();
            self.upstream_saturated.with_label_values(&[dc, &uri]);
            self.upstream_hung.with_label_values(&[dc, &uri]);
        }
        for d in &policy.datacenters {
            self.upstream_duration.with_label_values(&[d.name.as_str()]);
        }
    }

    /// The registry, for metrics registered after start (the witnesses').
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = LOG_LINES_DROPPED
            .get()
            .map_or(0, |queue| queue.dropped_lines() as u64);
        let now = dropped + LOG_LINES_UNWRITTEN.load(std::sync::atomic::Ordering::Relaxed);
        // Each line once, however many scrapes run at once.
        let had = self
            .log_lines_exported
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        self.log_lines_dropped.inc_by(now.saturating_sub(had));
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The per-request metric children of one configuration snapshot, each
/// resolved on first use and then kept: the request path does no label
/// hashing and takes no registry lock. Slots are indexed by jurisdiction and
/// data centre, with one more for "none".
pub struct RequestMetrics {
    /// `[jurisdiction][datacenter][status class]`
    requests: Box<[OnceLock<IntCounter>]>,
    /// `[jurisdiction]`
    duration: Box<[OnceLock<Histogram>]>,
    body_bytes: Box<[OnceLock<IntCounter>]>,
    /// `[datacenter]` (its length is the number of data centres + 1)
    upstream_duration: Box<[OnceLock<Histogram>]>,
    /// `[LookupResult]`
    geoip: [OnceLock<IntCounter>; 4],
    /// `[none, sni, client_cert, token]`
    tenant_source: [OnceLock<IntCounter>; 4],
    /// `[TenantId]`, with `tenancy.metrics_by_tenant`
    tenant_named: Box<[OnceLock<IntCounter>]>,
    /// `[allowed, refused]`
    tenant_mismatch: [OnceLock<IntCounter>; 2],
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn slots<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

impl RequestMetrics {
    pub fn new(policy: &Policy, tenancy: &Tenancy) -> RequestMetrics {
        let (j, d) = (policy.jurisdictions.len() + 1, policy.datacenters.len() + 1);
        RequestMetrics {
            requests: slots(j * d * STATUS_CLASSES.len()),
            duration: slots(j),
            body_bytes: slots(j),
            upstream_duration: slots(d),
            geoip: Default::default(),
            tenant_source: Default::default(),
            tenant_named: slots(if tenancy.metrics_by_tenant {
                tenancy.tenants.len()
            } else {
                0
            }),
            tenant_mismatch: Default::default(),
        }
    }

    /// `residency_tenant_requests_total` (and, when configured,
    /// `residency_tenant_requests_by_tenant_total`): only with tenancy on.
    pub fn tenant(&self, metrics: &Metrics, tenancy: &Tenancy, recognized: Option<Recognized>) {
        if tenancy.tenants.is_empty() && tenancy.token.is_none() {
            return;
        }
        let (slot, label) = match recognized.map(|r| r.source) {
            None => (0, NONE),
            Some(source) => (1 + source as usize, source.as_str()),
        };
        self.tenant_source[slot]
            .get_or_init(|| metrics.tenant_requests.with_label_values(&[label]))
            .inc();
        if let Some(r) = recognized {
            if let Some(cell) = self.tenant_named.get(r.tenant.0 as usize) {
                cell.get_or_init(|| {
                    let name = tenancy.tenants.get(r.tenant).name.as_str();
                    metrics.tenant_requests_by_tenant.with_label_values(&[name])
                })
                .inc();
            }
        }
    }

    /// `residency_tenant_origin_mismatches_total`.
    pub fn tenant_mismatch(&self, metrics: &Metrics, refused: bool) {
        let (slot, label) = if refused {
            (1, "refused")
        } else {
            (0, "allowed")
        };
        self.tenant_mismatch[slot]
            .get_or_init(|| metrics.tenant_mismatches.with_label_values(&[label]))
            .inc();
    }

    /// The `residency_request_body_bytes_total` child of `jurisdiction`.
    pub fn body_bytes<'a>(
        &'a self,
        metrics: &Metrics,
        policy: &Policy,
        jurisdiction: Option<JurisdictionId>,
    ) -> &'a IntCounter {
        let j = jurisdiction.map_or(self.duration.len() - 1, |j| j.0);
        self.body_bytes[j].get_or_init(|| {
            let label = jurisdiction.map_or(NONE, |j| policy.jurisdiction(j).name.as_str());
            metrics.request_body_bytes.with_label_values(&[label])
        })
    }

    /// One request answered: `residency_requests_total`,
    /// `residency_request_duration_seconds` and
    /// `residency_request_body_bytes_total`.
    #[allow(clippy::too_many_arguments)]
    pub fn answered(
        &self,
        metrics: &Metrics,
        policy: &Policy,
        jurisdiction: Option<JurisdictionId>,
        datacenter: Option<DatacenterId>,
        status: http::StatusCode,
        seconds: f64,
        body_bytes: u64,
    ) {
        let datacenters = self.upstream_duration.len();
        let j = jurisdiction.map_or(self.duration.len() - 1, |j| j.0);
        let d = datacenter.map_or(datacenters - 1, |d| d.0);
        let class = status_index(status);
        let j_label = || jurisdiction.map_or(NONE, |j| policy.jurisdiction(j).name.as_str());
        let d_label = || datacenter.map_or(NONE, |d| policy.datacenter(d).name.as_str());
        self.requests[(j * datacenters + d) * STATUS_CLASSES.len() + class]
            .get_or_init(|| {
                metrics
                    .requests
                    .with_label_values(&[j_label(), d_label(), STATUS_CLASSES[class]])
            })
            .inc();
        self.duration[j]
            .get_or_init(|| metrics.request_duration.with_label_values(&[j_label()]))
            .observe(seconds);
        if body_bytes > 0 {
            self.body_bytes(metrics, policy, jurisdiction)
                .inc_by(body_bytes);
        }
    }

    /// `residency_upstream_duration_seconds` of data centre `d`.
    pub fn upstream_duration(
        &self,
        metrics: &Metrics,
        policy: &Policy,
        d: DatacenterId,
        seconds: f64,
    ) {
        self.upstream_duration[d.0]
            .get_or_init(|| {
                let name = policy.datacenter(d).name.as_str();
                metrics.upstream_duration.with_label_values(&[name])
            })
            .observe(seconds);
    }

    /// `residency_geoip_lookups_total`.
    pub fn geoip_lookup(&self, metrics: &Metrics, lookup: LookupResult) {
        self.geoip[lookup as usize]
            .get_or_init(|| metrics.geoip_lookups.with_label_values(&[lookup.as_str()]))
            .inc();
    }
}

fn status_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Removes each series of `vec` whose label `name` is neither [`NONE`] nor one
/// of `kept`.
fn prune<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    name: &str,
    kept: &HashSet<&str>,
) {
    prune_by(vec, |l| {
        let v = label(l, name);
        v == NONE || kept.contains(v)
    });
}

/// Labels by name, as [`prune_by`] hands them over.
type Labels<'a> = HashMap<&'a str, &'a str>;

/// A series' label `name` (`""` when it has none).
fn label<'a>(labels: &Labels<'a>, name: &str) -> &'a str {
    labels.get(name).copied().unwrap_or_default()
}

/// Removes each series of `vec` that `keep`, given its labels, does not
/// keep.
fn prune_by<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    keep: impl Fn(&Labels<'_>) -> bool,
) {
    for family in prometheus::core::Collector::collect(vec) {
        for series in family.get_metric() {
            let labels: Labels<'_> = series
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if !keep(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// The standard `process_*` metrics of Prometheus's clients, read from
/// `/proc/self` at each scrape. The prometheus crate's own collector
/// exports the CPU time in whole seconds (an `IntCounter`): `rate()` of a
/// lightly loaded proxy read 0, then a spike (observability audit, stop
/// 67). Here it is in seconds with the kernel's tick as resolution.
#[cfg(target_os = "linux")]
struct ProcessMetrics {
    cpu: prometheus::Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    virtual_memory: IntGauge,
    resident_memory: IntGauge,
    start_time: prometheus::Gauge,
    threads: IntGauge,
    descs: Vec<prometheus::core::Desc>,
    /// One scrape at a time: the CPU counter is raised by the difference.
    scraping: std::sync::Mutex<()>,
}

#[cfg(target_os = "linux")]
impl ProcessMetrics {
    fn new() -> prometheus::Result<ProcessMetrics> {
        let cpu = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )?;
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let start_time = prometheus::Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        if let (Ok(boot), Ok(stat)) = (
            procfs::boot_time_secs(),
            procfs::process::Process::myself().and_then(|p| p.stat()),
        ) {
            start_time.set(boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64);
        }
        let mut m = ProcessMetrics {
            cpu,
            open_fds: gauge("process_open_fds", "Number of open file descriptors.")?,
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?,
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?,
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            start_time,
            threads: gauge("process_threads", "Number of OS threads in the process.")?,
            descs: Vec::new(),
            scraping: std::sync::Mutex::new(()),
        };
        let descs = m.parts().iter().flat_map(|c| c.desc()).cloned().collect();
        m.descs = descs;
        Ok(m)
    }

    fn parts(&self) -> [&dyn prometheus::core::Collector; 7] {
        [
            &self.cpu,
            &self.open_fds,
            &self.max_fds,
            &self.virtual_memory,
            &self.resident_memory,
            &self.start_time,
            &self.threads,
        ]
    }
}

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _one = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(me) = procfs::process::Process::myself() else {
            return Vec::new();
        };
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                self.max_fds.set(i64::try_from(max).unwrap_or(i64::MAX));
            }
        }
        if let Ok(stat) = me.stat() {
            self.virtual_memory
                .set(i64::try_from(stat.vsize).unwrap_or(i64::MAX));
            self.resident_memory.set(
                i64::try_from(stat.rss.saturating_mul(procfs::page_size())).unwrap_or(i64::MAX),
            );
            let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
            let past = self.cpu.get();
            if cpu > past {
                self.cpu.inc_by(cpu - past);
            }
            self.threads.set(stat.num_threads);
        }
        self.parts().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["ch", "zurich", "2xx"]).inc();
        m.rejections.with_label_values(&["origin_unknown"]).inc();
        m.request_duration.with_label_values(&["ch"]).observe(0.01);
        m.upstream_duration
            .with_label_values(&["zurich"])
            .observe(0.01);
        m.request_body_bytes.with_label_values(&["ch"]).inc_by(5);
        m.geoip_lookups.with_label_values(&["hit"]).inc();
        m.datacenter_up.with_label_values(&["zurich", "ch"]).set(1);
        m.tls_handshakes.with_label_values(&["success"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "residency_requests_total{datacenter=\"zurich\",jurisdiction=\"ch\",status_class=\"2xx\"} 1",
            "residency_rejections_total{reason=\"origin_unknown\"} 1",
            "residency_request_duration_seconds_bucket",
            "residency_upstream_duration_seconds_bucket",
            "residency_request_body_bytes_total{jurisdiction=\"ch\"} 5",
            "residency_geoip_lookups_total{result=\"hit\"} 1",
            "residency_geoip_database_build_timestamp_seconds",
            "residency_datacenter_up{datacenter=\"zurich\",jurisdiction=\"ch\"} 1",
            "residency_tls_handshakes_total{result=\"success\"} 1",
            "residency_connections_active",
            "residency_connections_idle",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }

    /// What the log's writer drops while its reader is stuck is exported,
    /// counted once however often it is scraped.
    #[test]
    fn dropped_log_lines_are_counted() {
        use std::io::Write as _;
        /// A reader of the log that takes nothing until told.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl std::io::Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (unstick, stuck) = std::sync::mpsc::channel();
        let (mut log, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(1)
            .finish(Stuck(stuck));
        count_dropped_log_lines(log.error_counter());
        for _ in 0..10 {
            log.write_all(b"a line\n").unwrap();
        }
        let exported = |m: &Metrics| {
            let text = String::from_utf8(m.render()).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("residency_log_lines_dropped_total "))
                .expect("exported")
                .to_string();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        let m = Metrics::new().unwrap();
        // At most two lines are taken: the one the reader is stuck on, and
        // one buffered.
        let dropped = exported(&m);
        assert!((8..=10).contains(&dropped), "{dropped}");
        assert_eq!(exported(&m), dropped, "counted once");
        drop(unstick);
        drop(guard);
    }

    /// `process_cpu_seconds_total` in seconds with the kernel tick's
    /// resolution (the prometheus crate's collector truncated it to whole
    /// seconds: 0 for a process under a second of CPU).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_cpu_time_is_not_whole_seconds() {
        use prometheus::core::Collector;
        let process = ProcessMetrics::new().unwrap();
        // Some CPU of this process's own (well under a second in all).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let families = process.collect();
        let cpu = families
            .iter()
            .find(|f| f.name() == "process_cpu_seconds_total")
            .unwrap();
        let seconds = cpu.get_metric()[0].get_counter().get_value();
        let stat = procfs::process::Process::myself().unwrap().stat().unwrap();
        let kernel = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
        assert!(seconds > 0.0, "{seconds}");
        assert!(
            (kernel - seconds).abs() <= 0.05,
            "{seconds} against {kernel}"
        );
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for name in [
            "process_open_fds",
            "process_max_fds",
            "process_virtual_memory_bytes",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(names.contains(&name), "{names:?}");
        }
    }
}
