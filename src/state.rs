//! The loaded world, as one swappable snapshot.
//!
//! [`Snapshot`] holds everything a request needs — configuration, policy, GeoIP
//! database, TLS server configs, the upstream pool and health table — and is
//! built aside, fully validated, before it is used. An [`Instance`] is one
//! running proxy: the current snapshot behind an `ArcSwap`, and what outlives
//! snapshots (metrics, readiness, request ids, the transparency log). Each
//! request loads the snapshot current when it starts and keeps it, so a
//! reload never changes the rules under an in-flight request; a connection
//! keeps the listener settings and TLS config it was accepted with.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::pool::Pool;
use crate::upstream::{self, Health};
use residency_core::geo::{Geo, GeoError};
use residency_core::policy::{DatacenterId, JurisdictionId, Policy};
use residency_core::report::ConfigReport;
use residency_log::storage::{Log, LogError};

pub struct Snapshot {
    pub config: Config,
    pub geo: Geo,
    /// One server config per listener, in `config.listeners` order.
    pub tls: Vec<Arc<rustls::ServerConfig>>,
    /// The log listener's (`[transparency.tls]`), when it serves HTTPS.
    pub log_tls: Option<Arc<rustls::ServerConfig>>,
    /// Pooled connections to the upstreams of this configuration.
    pub pool: Pool,
    /// The per-request metric children for this configuration's names.
    pub request_metrics: crate::metrics::RequestMetrics,
    /// The response and upstream header values of those names.
    pub header_values: PolicyValues,
    pub health: Health,
    /// `Policy::hash` of `config.policy`, computed once.
    pub policy_hash: String,
    /// The files this state was built from, as they were before reading.
    pub files: crate::files::Fingerprint,
    /// Its place among the snapshots installed ([`Instance::installed`]):
    /// 0 for the first, one more at each reload.
    pub installed: u64,
    turn: AtomicUsize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("geo", &self.geo)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Loads certificates and the GeoIP database named by `config`,
    /// reporting every failure at once.
    pub fn build(config: Config) -> Result<Snapshot, ConfigReport> {
        Self::build_after(config, None)
    }

    /// [`Snapshot::build`] for a reload of `running`: its GeoIP database,
    /// if the file still holds it, is not judged again by the clock (a
    /// clock a day behind its build time refused every reload, whatever
    /// file changed: time audit, stop 65).
    pub fn build_after(config: Config, running: Option<&Geo>) -> Result<Snapshot, ConfigReport> {
        // Named as the file was given, as `check-config` names it.
        let file = config
            .source
            .as_ref()
            .map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        let mut report = ConfigReport::new(file);
        let files = crate::files::fingerprint(&config);
        let geo = open_geo_after(&config.geoip, running)
            .map_err(|e| report.push("geoip.database", e))
            .ok();
        if let Some(geo) = &geo {
            for (i, (addr, want)) in config.geoip.canaries.iter().enumerate() {
                // The database alone: an override would hide what it says.
                let (got, _) = geo.in_database(*addr);
                if got != Some(*want) {
                    let got = got.map_or_else(|| "no country".to_string(), |c| c.to_string());
                    // A 6to4, Teredo, NAT64 or IPv4-compatible address is
                    // located, as a client's is, by the IPv4 address it
                    // carries: say so, or the message misquotes the
                    // database for the IPv6 address (IPv6 audit, stop 66).
                    let located = residency_core::geo::located(*addr);
                    let by = if located == addr.to_canonical() {
                        String::new()
                    } else {
                        format!(" for {located}, the IPv4 address it carries,")
                    };
                    report.push(
                        format!("geoip.canaries[{i}]"),
                        format!("{addr} should be {want}, the database says{by} {got}"),
                    );
                }
            }
        }
        let mut server_configs = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            match listener_tls(&format!("listeners[{i}].tls"), l) {
                Ok(c) => server_configs.push(c),
                Err((key, e)) => report.push(key, e),
            }
        }
        let mut log_tls = None;
        if let Some(t) = config.transparency.as_ref().filter(|t| !t.tls.is_empty()) {
            let pairs = t.tls.iter().map(|p| (p.cert.as_path(), p.key.as_path()));
            match certificates("transparency.tls", pairs).and_then(|certs| {
                crate::plain_http::http1_tls(&certs)
                    .map_err(|e| ("transparency.tls".into(), e.to_string()))
            }) {
                Ok(c) => log_tls = Some(c),
                Err((key, e)) => report.push(key, e),
            }
        }
        let ca = match &config.upstream.ca {
            Some(path) => std::fs::read(path)
                .map_err(|e| report.push("upstream.ca", format!("{}: {e}", path.display())))
                .ok(),
            None => None,
        };
        let pool = upstream::pool(
            &config.policy,
            &config.upstream,
            &config.timeouts,
            ca.as_deref(),
        )
        .map_err(|(key, e)| report.push(key, e))
        .ok();
        if let Some(t) = &config.transparency {
            // The key is read again when the log opens; checked here so
            // `check-config` catches a wrong file.
            let key = std::fs::read(&t.signing_key)
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    residency_log::note::Signer::from_pkcs8(&t.origin, &k)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = key {
                report.push(
                    "transparency.signing_key",
                    format!("{}: {e}", t.signing_key.display()),
                );
            }
        }
        let health = Health::new(&config.policy, config.health.clone());
        let policy_hash = crate::config::policy_hash(&config);
        let request_metrics = crate::metrics::RequestMetrics::new(&config.policy, &config.tenancy);
        let header_values = PolicyValues::new(&config.policy, &config.tenancy.tenants);
        let state = match (geo, pool) {
            (Some(geo), Some(pool)) if report.is_empty() => Some(Snapshot {
                config,
                geo,
                tls: server_configs,
                log_tls,
                pool,
                request_metrics,
                header_values,
                health,
                policy_hash,
                files,
                installed: 0,
                turn: AtomicUsize::new(0),
            }),
            _ => None,
        };
        report.finish(state)
    }

    /// The next load-sharing turn.
    pub fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// The turn [`Snapshot::next_turn`] gives next, left for it.
    pub fn current_turn(&self) -> usize {
        self.turn.load(Ordering::Relaxed)
    }
}

/// A listener's TLS server config: its certificates, and with `client_ca`
/// its client certificates' CA and CRLs. Errors are named by key under
/// `key` (`listeners[i].tls`).
fn listener_tls(
    key: &str,
    l: &crate::config::Listener,
) -> Result<Arc<rustls::ServerConfig>, (String, String)> {
    let pairs = l
        .certificates
        .iter()
        .map(|c| (c.cert.as_path(), c.key.as_path()));
    let certs = certificates(key, pairs)?;
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| (format!("{key}.{what}"), format!("{}: {e}", path.display())))
    };
    let ca = l
        .client_ca
        .as_deref()
        .map(|p| read(p, "client_ca"))
        .transpose()?;
    let crls = match l.client_crl.as_deref() {
        Some(p) => vec![(p.display().to_string(), read(p, "client_crl")?)],
        None => Vec::new(),
    };
    let ca_label = l
        .client_ca
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let client = ca.as_deref().map(|ca_pem| residency_tls::ClientAuth {
        ca_pem,
        ca_label: &ca_label,
        crls: &crls,
    });
    residency_tls::server_config(&certs, client.as_ref()).map_err(|e| {
        // Named by the file it is about, as a file that cannot be read is.
        use residency_tls::TlsError as E;
        let label = match &e {
            E::Pem(l, _) | E::NoCaCertificates(l) | E::BadCa(l, _) | E::NoCrl(l) => Some(l),
            _ => None,
        };
        let field = match (&e, label) {
            // Also when it names client_ca's file (a CA bundle given as
            // the CRLs: config audit, stop 63).
            (E::NoCrl(_) | E::CrlWithoutNumber(..), _) => Some("client_crl"),
            (E::ClientVerifier(rustls::server::VerifierBuilderError::InvalidCrl(_)), _) => {
                Some("client_crl")
            }
            (E::ClientVerifier(_), _) => Some("client_ca"),
            (_, Some(l)) if *l == ca_label => Some("client_ca"),
            (_, Some(l)) if crls.iter().any(|(c, _)| c == l) => Some("client_crl"),
            _ => None,
        };
        let key = field.map_or_else(|| key.to_string(), |f| format!("{key}.{f}"));
        (key, e.to_string())
    })
}

/// Loads certificate/key pairs; an error names `{key}.certificates[i]`.
fn certificates<'a>(
    key: &str,
    pairs: impl Iterator<Item = (&'a std::path::Path, &'a std::path::Path)>,
) -> Result<Vec<residency_tls::CertSource>, (String, String)> {
    pairs
        .enumerate()
        .map(|(i, (cert, private))| {
            residency_tls::load_cert_source(cert, private)
                .map_err(|e| (format!("{key}.certificates[{i}]"), e.to_string()))
        })
        .collect()
}

/// One running proxy: the current snapshot, and what outlives it: metrics, readiness, ids,
/// the transparency log.
pub struct Instance {
    current: ArcSwap<Snapshot>,
    /// The `installed` of the current snapshot: a request whose snapshot's
    /// differs was decided before a reload.
    installed: AtomicU64,
    pub metrics: Metrics,
    ready: AtomicBool,
    /// The GeoIP database was found older than `geoip.max_age` when last
    /// asked ([`Instance::readiness`] logs each change).
    geoip_stale: AtomicBool,
    pub ids: RequestIds,
    /// Opened once from the first snapshot's `[transparency]`; a reload
    /// cannot change it.
    pub log: Option<Arc<Log>>,
    /// Requests running detached from their departed client (see
    /// `server::connection::Detached`), against `limits.max_detached_requests`.
    pub detached: AtomicUsize,
    /// Set when `timeouts.shutdown_grace` has run out: what still runs —
    /// connections (aborted by `server::Bound::run`), HTTP/2 streams and
    /// detached requests (each under [`crate::shutdown::until_cut`]) — is
    /// dropped, and a request cut while
    /// its upload was with a data centre records itself as a refusal
    /// (`shutdown`), before the final checkpoint.
    pub cut: tokio::sync::watch::Sender<bool>,
    /// Bytes of idempotent bodies held for replay, against
    /// `upstream.replay_budget_bytes` (sized from the first snapshot).
    pub replay_budget: Arc<tokio::sync::Semaphore>,
    /// The bytes `replay_budget` was made with: the budget in effect,
    /// whatever a reload's config says (it needs a restart).
    pub replay_budget_bytes: usize,
    /// Requests in flight per client, against
    /// `limits.max_requests_per_client`.
    pub clients: Arc<crate::client_limit::InFlight>,
    /// Open ingest connections per client, against
    /// `limits.max_connections_per_client`.
    pub client_connections: Arc<crate::client_limit::InFlight>,
    /// Held while the per-snapshot gauges are written, so a refresh that
    /// read the previous snapshot cannot write its data centres back after
    /// a reload reset them.
    gauges: std::sync::Mutex<()>,
    /// Held while a new snapshot takes the old one's health over and is
    /// stored, and while a drain is set: a drain set on the old snapshot
    /// after its health was copied would be lost.
    swapping: std::sync::Mutex<()>,
}

impl Instance {
    /// Opens the transparency log (when configured: a directory log, or a
    /// fleet's database) and marks the proxy ready.
    pub async fn start(state: Snapshot, metrics: Metrics) -> Result<Arc<Instance>, LogError> {
        let log = match &state.config.transparency {
            Some(t) => Some(Log::start(t, metrics.log.clone()).await?),
            None => None,
        };
        Ok(Instance::with_log(state, metrics, log))
    }

    /// As [`Instance::start`] for a log kept in a directory (blocking).
    pub fn new(state: Snapshot, metrics: Metrics) -> Result<Arc<Instance>, LogError> {
        let log = match &state.config.transparency {
            Some(t) => Some(Log::open(t, metrics.log.clone())?),
            None => None,
        };
        Ok(Instance::with_log(state, metrics, log))
    }

    fn with_log(state: Snapshot, metrics: Metrics, log: Option<Arc<Log>>) -> Arc<Instance> {
        let replay_budget_bytes = state.config.upstream.replay_budget_bytes;
        let replay_budget = Arc::new(tokio::sync::Semaphore::new(replay_budget_bytes));
        let instance = Arc::new(Instance {
            current: ArcSwap::from_pointee(state),
            installed: AtomicU64::new(0),
            metrics,
            ready: AtomicBool::new(false),
            geoip_stale: AtomicBool::new(false),
            ids: RequestIds::new(),
            log,
            detached: AtomicUsize::new(0),
            cut: tokio::sync::watch::Sender::new(false),
            replay_budget,
            replay_budget_bytes,
            clients: Default::default(),
            client_connections: Default::default(),
            gauges: std::sync::Mutex::new(()),
            swapping: std::sync::Mutex::new(()),
        });
        instance.set_policy_info();
        instance.metrics.preset(&instance.snapshot().config);
        instance.refresh_gauges();
        instance.ready.store(true, Ordering::Release);
        instance
    }

    /// Which snapshot is current (its `installed`): one load, for a
    /// request to tell whether a reload came since it was decided.
    #[inline]
    pub fn installed(&self) -> u64 {
        self.installed.load(Ordering::Acquire)
    }

    /// The current snapshot; hold it for the whole connection or request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Ready (loaded, not shutting down, and the GeoIP database no older
    /// than `geoip.max_age`), or why not, in words an operator acts on.
    /// The first time the GeoIP database is found too old (again) it is
    /// logged as a warning too: a probe says only that the proxy is not
    /// ready, and is asked every few seconds.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        // Every upload would get 503 until a restart (README audit, stop
        // 69: it stayed ready): traffic goes to the other replicas.
        if let Some(why) = self.log.as_ref().and_then(|log| log.needs_restart()) {
            return Err(why.into());
        }
        let state = self.snapshot();
        let stale = geoip_too_old(&state);
        if self.geoip_stale.swap(stale.is_some(), Ordering::AcqRel) == stale.is_some() {
            return stale.map_or(Ok(()), Err);
        }
        match &stale {
            Some(why) => {
                tracing::warn!(database = %state.config.geoip.database.display(), "not ready: {why}")
            }
            None => {
                tracing::info!(database = %state.config.geoip.database.display(), "ready: the GeoIP database is within geoip.max_age again")
            }
        }
        stale.map_or(Ok(()), Err)
    }

    /// Installs a new snapshot: new connections and requests use it; those
    /// in flight finish on the one they started with.
    pub fn replace(&self, mut state: Snapshot) {
        let swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.snapshot();
        state
            .health
            .inherit(&state.config.policy, &old.health, &old.config.policy);
        if !state.pool.inherit(&old.pool) {
            tracing::warn!("the new configuration's upstream pool was in use before it was installed: its connection limits start from nothing");
        }
        state.installed = old.installed + 1;
        let installed = state.installed;
        self.current.store(Arc::new(state));
        self.installed.store(installed, Ordering::Release);
        drop(swapping);
        let _writing = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let m = &self.metrics;
        m.datacenter_up.reset();
        m.datacenter_drained.reset();
        m.upstream_up.reset();
        m.upstream_connections.reset();
        self.set_policy_info();
        m.preset(&self.snapshot().config);
        self.write_gauges();
    }

    /// Drains (or undrains) the data centre `name` of the current snapshot;
    /// `false` when it has none of that name. Never on a snapshot a reload
    /// is replacing, whose drains [`Instance::replace`] has already copied.
    pub fn set_drained(&self, name: &str, drained: bool) -> bool {
        let _swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.snapshot();
        let datacenters = &state.config.policy.datacenters;
        let Some(i) = datacenters.iter().position(|d| d.name == name) else {
            return false;
        };
        state
            .health
            .set_drained(residency_core::policy::DatacenterId(i), drained);
        true
    }

    /// `residency_policy_info{hash}` for the current snapshot; set when a
    /// snapshot is installed, not on every refresh.
    fn set_policy_info(&self) {
        let info = &self.metrics.policy_info;
        info.reset();
        info.with_label_values(&[self.snapshot().policy_hash.as_str()])
            .set(1);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Re-reads health and the database into the gauges.
    pub fn refresh_gauges(&self) {
        let _writing = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        self.write_gauges();
    }

    /// [`Instance::refresh_gauges`], with [`Instance::gauges`] held.
    fn write_gauges(&self) {
        // Here too, not only after each checkpoint tick: a tick that hangs
        // (a stuck fsync, a database that does not answer) would freeze
        // the age its alert watches. (Before the first checkpoint covered
        // anything, the tick alone sets it.)
        if let Some(log) = self.log.as_ref().filter(|l| l.covered_at() > 0) {
            log.refresh_age();
        }
        let state = self.snapshot();
        let policy = &state.config.policy;
        self.metrics
            .geoip_age
            .set(i64::try_from(geoip_age(&state)).unwrap_or(i64::MAX));
        self.metrics
            .geoip_build_timestamp
            .set(i64::try_from(state.geo.build_epoch()).unwrap_or(i64::MAX));
        let health = &state.health;
        let m = &self.metrics;
        for (i, dc) in policy.datacenters.iter().enumerate() {
            let name = dc.name.as_str();
            let up = dc.upstreams.iter().any(|u| health.is_healthy(*u));
            let j = policy.jurisdiction(dc.jurisdiction).name.as_str();
            m.datacenter_up
                .with_label_values(&[name, j])
                .set(i64::from(up));
            let drained = health.is_drained(residency_core::policy::DatacenterId(i));
            m.datacenter_drained
                .with_label_values(&[name])
                .set(i64::from(drained));
            for u in &dc.upstreams {
                let uri = policy.upstream(*u).uri.to_string();
                m.upstream_up
                    .with_label_values(&[name, uri.as_str()])
                    .set(i64::from(health.is_healthy(*u)));
                m.upstream_connections
                    .with_label_values(&[name, uri.as_str()])
                    .set(i64::try_from(state.pool.open(*u)).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Why the GeoIP database is too old to be ready on, if it is: older
/// than `geoip.max_age`. Its age in whole days (hours, minutes under a
/// day): to the second says nothing more to an operator.
pub fn geoip_too_old(state: &Snapshot) -> Option<String> {
    let max = state.config.geoip.max_age?;
    let age = geoip_age(state);
    let (count, unit) = [(86_400, "days"), (3_600, "hours"), (60, "minutes")]
        .into_iter()
        .find(|&(secs, _)| age >= secs)
        .map_or((age, "seconds"), |(secs, unit)| (age / secs, unit));
    (age > max.as_secs()).then(|| {
        format!(
            "the GeoIP database was built {count} {unit} ago, longer than geoip.max_age ({}); install a newer one (it is reloaded when its file changes)",
            humantime::format_duration(max)
        )
    })
}

/// Seconds since the GeoIP database was built (0 if built in the future).
fn geoip_age(state: &Snapshot) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    now.saturating_sub(state.geo.build_epoch())
}

/// Request ids: 32 hex digits, laid out like a UUIDv7 (RFC 9562): the
/// Unix time in milliseconds (48 bits), then 80 random bits — unguessable,
/// because a receipt's request id finds its record in the customer-facing
/// log. The time first makes ids arrive in nearly ascending order, so the
/// log's on-disk request-id index (a copy-on-write B-tree) appends at its
/// right edge instead of rewriting pages all over the tree at every
/// checkpoint. The record carries the same time anyway.
///
/// Randomness comes from the system RNG 4 KiB at a time into a per-thread
/// buffer (409 ids per `getrandom` call) rather than one call per request.
pub struct RequestIds {
    rng: ring::rand::SystemRandom,
    /// Fallback if the system RNG ever fails: unique, not unguessable.
    fallback: AtomicU64,
}

const ID_BYTES: usize = 16;
/// The random part: what follows the 6-byte time.
const ID_RANDOM: usize = 10;
const ID_POOL: usize = 4096;

thread_local! {
    static ID_POOL_BUF: std::cell::RefCell<(Box<[u8; ID_POOL]>, usize)> =
        std::cell::RefCell::new((Box::new([0; ID_POOL]), ID_POOL));
}

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds {
            rng: ring::rand::SystemRandom::new(),
            fallback: AtomicU64::new(0),
        }
    }

    /// The id of a request received at `now` (its first digits).
    pub fn next(&self, now: std::time::SystemTime) -> HeaderValue {
        let mut id = [0u8; ID_BYTES];
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        id[..ID_BYTES - ID_RANDOM].copy_from_slice(&millis.to_be_bytes()[2..]);
        let filled = ID_POOL_BUF.with(|pool| {
            let mut pool = pool.borrow_mut();
            let (buf, used) = &mut *pool;
            if *used + ID_RANDOM > ID_POOL {
                if ring::rand::SecureRandom::fill(&self.rng, &mut buf[..]).is_err() {
                    return false;
                }
                *used = 0;
            }
            id[ID_BYTES - ID_RANDOM..].copy_from_slice(&buf[*used..*used + ID_RANDOM]);
            *used += ID_RANDOM;
            true
        });
        if !filled {
            tracing::warn!("system random number generator failed: request id is predictable");
            let n = self.fallback.fetch_add(1, Ordering::Relaxed);
            id[ID_BYTES - 8..].copy_from_slice(&n.to_be_bytes());
        }
        let mut text = [0u8; 2 * ID_BYTES];
        residency_core::hex::encode_to(&id, &mut text);
        // Owned by the value, not a `String`'s buffer: `Bytes` made from a
        // `Vec` allocates again when it is first cloned (it becomes
        // shared), and the id is cloned for the data centre and the client
        // (issue 23).
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// Reads the GeoIP database file `geoip.database` names, with its overrides.
pub fn open_geo(geoip: &crate::config::Geoip) -> Result<Geo, GeoError> {
    open_geo_after(geoip, None)
}

/// [`open_geo`]; a database that is `running`'s (the same bytes) is not
/// refused for a build time ahead of the clock: it was taken when it
/// loaded.
fn open_geo_after(geoip: &crate::config::Geoip, running: Option<&Geo>) -> Result<Geo, GeoError> {
    let path = &geoip.database;
    let bytes = std::fs::read(path).map_err(|e| GeoError::Open {
        path: path.display().to_string(),
        source: maxminddb::MaxMindDbError::Io(e),
    })?;
    let geo = Geo::from_file(path, bytes, geoip.overrides.clone())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A day of clock skew between the builder and this machine is allowed.
    let loaded = running.is_some_and(|r| r.sha256() == geo.sha256());
    if geo.build_epoch() > now.saturating_add(86_400) && !loaded {
        return Err(GeoError::BuiltInTheFuture {
            path: path.display().to_string(),
            build_epoch: geo.build_epoch(),
            now,
        });
    }
    Ok(geo)
}

/// The header values of a configuration's jurisdiction and data centre
/// names, made once per configuration instead of per request (`None` for
/// a name that cannot be a header value: such a header is not sent).
pub struct PolicyValues {
    jurisdictions: Vec<Option<HeaderValue>>,
    datacenters: Vec<Option<HeaderValue>>,
    tenants: Vec<Option<HeaderValue>>,
}

impl PolicyValues {
    pub fn new(policy: &Policy, tenants: &residency_core::tenant::Tenants) -> PolicyValues {
        let value = |name: &str| HeaderValue::from_str(name).ok();
        PolicyValues {
            jurisdictions: policy
                .jurisdictions
                .iter()
                .map(|j| value(&j.name))
                .collect(),
            datacenters: policy.datacenters.iter().map(|d| value(&d.name)).collect(),
            tenants: tenants.iter().map(|t| value(&t.name)).collect(),
        }
    }

    /// `Residency-Tenant` for tenant `t`.
    pub fn tenant(&self, t: residency_core::tenant::TenantId) -> Option<&HeaderValue> {
        self.tenants.get(t.0 as usize).and_then(Option::as_ref)
    }

    pub fn jurisdiction(&self, j: JurisdictionId) -> Option<&HeaderValue> {
        self.jurisdictions.get(j.0).and_then(Option::as_ref)
    }

    pub fn datacenter(&self, d: DatacenterId) -> Option<&HeaderValue> {
        self.datacenters.get(d.0).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    /// A database built more than a day after the clock's now is refused
    /// when it loads, but not the one running when a reload reads it
    /// again: a clock a day behind refused every reload, whatever file
    /// changed (a new CRL included: time audit, stop 65).
    #[test]
    fn the_running_database_is_not_judged_again_by_the_clock() {
        let dir = std::env::temp_dir().join(format!("rp-geo-future-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("geo.mmdb");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let rows = residency_tools::geoip::parse_csv("192.0.2.0/24,CH\n").unwrap();
        let bytes = residency_tools::geoip::build_country_db(&rows, now + 3 * 86_400).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let geoip = crate::config::Geoip {
            database: path.clone(),
            overrides: Vec::new(),
            canaries: Vec::new(),
            max_age: None,
        };
        let refused = super::open_geo(&geoip).unwrap_err();
        assert!(
            refused.to_string().contains("more than a day after now"),
            "{refused}"
        );
        let running =
            residency_core::geo::Geo::from_file(&path, bytes.clone(), Vec::new()).unwrap();
        assert!(super::open_geo_after(&geoip, Some(&running)).is_ok());
        // Another database as far ahead is still refused.
        let other = residency_tools::geoip::build_country_db(&rows, now + 4 * 86_400).unwrap();
        std::fs::write(&path, &other).unwrap();
        assert!(super::open_geo_after(&geoip, Some(&running)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn request_ids_are_a_time_then_random_hex_and_distinct() {
        let ids = super::RequestIds::new();
        let mut seen = std::collections::HashSet::new();
        // More than one pool's worth, so the refill path runs.
        for _ in 0..1000 {
            let id = ids.next(std::time::SystemTime::now());
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), 32);
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(text.to_string()), "duplicate {text}");
        }
        // The first 12 digits are the time in milliseconds.
        let id = ids.next(std::time::SystemTime::now());
        let millis = u64::from_str_radix(&id.to_str().unwrap()[..12], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - millis < 60_000, "{millis} vs {now}");
    }
}
