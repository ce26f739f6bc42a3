//! The `[transparency]` section: where the log lives, how it signs, what
//! receipts carry and what happens when records cannot be written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use residency_core::report::{parse_addr, ConfigReport, FromSetting, OptionalSetting, Setting};

use crate::witness::CosignatureVerifier;

/// What each 2xx upload response carries in `Residency-Receipt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptMode {
    /// No header (records are still logged).
    Off,
    /// The record and its leaf index; proven by an inclusion proof against a
    /// signed checkpoint.
    Log,
    /// As `Log`, plus an Ed25519 signature over record and index: verifiable
    /// offline with the public key alone.
    Signed,
}

impl FromSetting for ReceiptMode {
    const EXPECTED: &'static str = "one of \"signed\", \"log\", \"off\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "signed" => Some(ReceiptMode::Signed),
            "log" => Some(ReceiptMode::Log),
            "off" => Some(ReceiptMode::Off),
            _ => None,
        }
    }
}

/// `client_address`: which [`ClientAddress`] form records use (its
/// parameters are separate keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddressKind {
    /// `"prefix"`: [`ClientAddress::Prefix`].
    Prefix,
    /// `"hmac"`: [`ClientAddress::Hmac`].
    Hmac,
    /// `"none"`: [`ClientAddress::Omit`].
    Omit,
    /// `"full"`: [`ClientAddress::Full`].
    Full,
}

impl FromSetting for ClientAddressKind {
    const EXPECTED: &'static str = "one of \"prefix\", \"hmac\", \"none\", \"full\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "prefix" => Some(ClientAddressKind::Prefix),
            "hmac" => Some(ClientAddressKind::Hmac),
            "none" => Some(ClientAddressKind::Omit),
            "full" => Some(ClientAddressKind::Full),
            _ => None,
        }
    }
}

/// How the client address appears in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAddress {
    /// The network: IPv4 truncated to `v4` bits, IPv6 to `v6` bits.
    Prefix { v4: u8, v6: u8 },
    /// HMAC-SHA256 of the address under a secret key (first 16 bytes, hex):
    /// the same client always maps to the same value, which only the key
    /// holder can link to an address.
    Hmac { key: Vec<u8> },
    /// Left out.
    Omit,
    /// The full address. Never the default.
    Full,
}

/// What to do when a record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWriteError {
    /// Answer 503 `log_unavailable`: nothing is acknowledged without its record.
    Refuse,
    /// Acknowledge anyway, without a receipt; `residency_log_write_errors_total` counts it.
    Continue,
}

impl FromSetting for OnWriteError {
    const EXPECTED: &'static str = "one of \"refuse\", \"continue\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "refuse" => Some(OnWriteError::Refuse),
            "continue" => Some(OnWriteError::Continue),
            _ => None,
        }
    }
}

/// The validated `[transparency]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transparency {
    /// Holds the log as C2SP tiles, its `checkpoint` and `index.redb`
    /// (`storage = "directory"`; empty with `storage = "postgres"`).
    pub directory: PathBuf,
    /// `storage = "postgres"`: the fleet's shared log in this database
    /// instead of `directory`.
    pub postgres: Option<Postgres>,
    /// The checkpoint origin line and the signing key's name, e.g.
    /// `ingest.example.com/residency-log`.
    pub origin: String,
    /// PKCS#8 Ed25519 private key written by `residency-proxy keygen`.
    pub signing_key: PathBuf,
    pub receipts: ReceiptMode,
    pub checkpoint_interval: Duration,
    /// How long a group commit waits for more records while the log is
    /// busy (more records per fsync or database round trip, against that
    /// much added latency).
    pub commit_window: Duration,
    /// `storage = "directory"`: how long an upload waits for its record to
    /// be durable before it is answered `503 log_unavailable`; a batch
    /// the disk takes longer over turns the log failing until it is done.
    pub write_timeout: Duration,
    pub client_address: ClientAddress,
    pub on_write_error: OnWriteError,
    /// The customer-facing listener (checkpoint, proofs, key, records).
    pub address: Option<SocketAddr>,
    /// Records per origin (`storage = "directory"`): a generation that
    /// holds this many is sealed and the log rolls to a new origin
    /// (default: never; memory does not depend on the log's size).
    pub max_records: u64,
    /// Connections the customer-facing listener holds at once; more are
    /// closed and counted.
    pub max_connections: usize,
    /// Of those, what one client address (an IPv6 client's /64) may hold;
    /// 0: no limit.
    pub max_connections_per_client: u32,
    /// Requests one client address (an IPv6 client's /64) may make of the
    /// customer-facing listener a second; more are answered 429. 0: no
    /// limit.
    pub requests_per_second_per_client: u32,
    /// Of those, how many at once (the burst).
    pub requests_burst_per_client: u32,
    /// Refusals recorded one by one per second (token bucket); beyond it
    /// they are folded into summary records (`refusals`).
    pub refusal_records_per_second: u32,
    /// The bucket's size: refusals recorded one by one in a burst.
    pub refusal_records_burst: u32,
    /// `[transparency.tls]`: serve the listener over TLS with these
    /// certificates (chosen by SNI, the first the default); empty: plain
    /// HTTP/1.1.
    pub tls: Vec<CertPair>,
    /// The secret files the section names but keeps only what it read from
    /// (`client_hmac_key`, `postgres.password_file`), by key: for the
    /// start's warning about files every user can read.
    pub secret_files: Vec<(String, PathBuf)>,
}

/// Where the log keeps its records and tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// `"directory"`: C2SP tiles on local disk, one process.
    Directory,
    /// `"postgres"`: one log for a fleet, sequenced by PostgreSQL.
    Postgres,
}

impl FromSetting for StorageKind {
    const EXPECTED: &'static str = "one of \"directory\", \"postgres\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "directory" => Some(StorageKind::Directory),
            "postgres" => Some(StorageKind::Postgres),
            _ => None,
        }
    }
}

/// `[transparency.postgres]`, validated: the database every replica of a
/// fleet appends to.
#[derive(Clone, PartialEq, Eq)]
pub struct Postgres {
    /// The connection URL as configured (no password in it).
    pub url: String,
    /// Parsed from `url`, with the password from `password_file` or
    /// `password_env` set.
    pub config: PgConfig,
    /// PEM CA certificates for the server's TLS certificate (`sslmode=
    /// require` or `prefer`); `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// How long one commit batch (or a read) may take before it counts as
    /// failed: the records are refused with 503 `log_unavailable`.
    pub timeout: Duration,
    /// Records a replica queues for the database at most; beyond, uploads
    /// are refused at once.
    pub max_pending: usize,
    /// Pooled connections each replica holds for reads and its checkpoint
    /// tick (the log API's reads take at most `pool_size - 1`); each
    /// replica keeps two more, its sequencer's connection and its
    /// integrator-lock session.
    pub pool_size: usize,
}

/// `tokio_postgres::Config`, compared by what the log uses.
#[derive(Clone)]
pub struct PgConfig(pub tokio_postgres::Config);

impl PartialEq for PgConfig {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

impl Eq for PgConfig {}

impl std::fmt::Debug for Postgres {
    /// Without the password (tokio-postgres redacts it too).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .field("max_pending", &self.max_pending)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub ca: Option<String>,
    pub timeout: Option<Setting<Duration>>,
    pub max_pending: Option<Setting<usize>>,
    pub pool_size: Option<Setting<usize>>,
}

/// One `[[transparency.witnesses]]` entry: a C2SP tlog-witness service
/// asked to cosign each new checkpoint (validated by [`witnesses`]; kept
/// apart from [`Transparency`], which the log's storage is opened with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessSettings {
    /// How logs and metrics name the witness (default: its key's name).
    pub name: String,
    /// The witness's submission prefix: `<url>/add-checkpoint` is POSTed.
    pub url: String,
    /// Its cosigner key (type 0x04); cosignatures that do not verify with
    /// it are not published.
    pub key: CosignatureVerifier,
    /// PEM CA certificates for an `https://` witness (default: the
    /// system's roots).
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWitness {
    pub url: Option<String>,
    pub key: Option<String>,
    pub name: Option<String>,
    pub ca: Option<String>,
}

/// A certificate chain and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogTls {
    #[serde(default)]
    pub certificates: Vec<RawCertPair>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransparency {
    pub storage: Option<Setting<StorageKind>>,
    pub directory: Option<String>,
    pub postgres: Option<RawPostgres>,
    pub origin: Option<String>,
    pub signing_key: Option<String>,
    pub receipts: Option<Setting<ReceiptMode>>,
    pub checkpoint_interval: Option<Setting<Duration>>,
    pub commit_window: Option<Setting<Duration>>,
    pub write_timeout: Option<Setting<Duration>>,
    pub client_address: Option<Setting<ClientAddressKind>>,
    pub client_prefix_v4: Option<Setting<u8>>,
    pub client_prefix_v6: Option<Setting<u8>>,
    pub client_hmac_key: Option<String>,
    pub on_write_error: Option<Setting<OnWriteError>>,
    pub address: Option<String>,
    pub max_records: Option<Setting<u64>>,
    pub max_connections: Option<Setting<usize>>,
    pub max_connections_per_client: Option<Setting<u32>>,
    pub requests_per_second_per_client: Option<Setting<u32>>,
    pub requests_burst_per_client: Option<Setting<u32>>,
    pub refusal_records_per_second: Option<Setting<u32>>,
    pub refusal_records_burst: Option<Setting<u32>>,
    pub tls: Option<RawLogTls>,
    pub witnesses: Option<Vec<RawWitness>>,
}

/// A batch's wait for more records while the log is busy: one fsync costs
/// ~30-70 µs of CPU here, a database round trip more.
pub const DEFAULT_COMMIT_WINDOW_DIRECTORY: Duration = Duration::from_micros(500);
/// `transparency.write_timeout`'s default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_COMMIT_WINDOW_POSTGRES: Duration = Duration::from_millis(1);

/// Never roll: memory does not grow with the log.
const DEFAULT_MAX_RECORDS: u64 = u64::MAX;
const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// A browser opens at most six connections to a host, a verifier one or
/// two; a CDN's edge addresses each carry many clients but pool their
/// connections.
const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 32;
/// `transparency.requests_per_second_per_client`'s default: a browser
/// checking receipts, or a client fetching a proof's tiles, makes a few
/// dozen requests at once; one reading entry bundles as fast as it can
/// (each gzipped anew, ~0.4 ms of CPU) kept more than a core busy.
const DEFAULT_REQUESTS_PER_SECOND_PER_CLIENT: u32 = 100;
/// `transparency.requests_burst_per_client`'s default.
const DEFAULT_REQUESTS_BURST_PER_CLIENT: u32 = 500;

/// Converts the raw section, pushing every problem onto `r`.
pub fn transparency(
    raw: &RawTransparency,
    base: &Path,
    r: &mut ConfigReport,
) -> Option<Transparency> {
    let k = |name: &str| format!("transparency.{name}");
    let storage = raw
        .storage
        .check_or(StorageKind::Directory, &k("storage"), r);
    let directory = match (storage, raw.directory.as_deref()) {
        (StorageKind::Directory, Some(d)) if !d.trim().is_empty() => {
            let dir = base.join(d);
            // What can be told without writing: the directory, or the
            // nearest part of its path that exists, must be a directory.
            if let Some(file) = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
                r.push(
                    k("directory"),
                    format!("{}: {} is not a directory", dir.display(), file.display()),
                );
            }
            Some(dir)
        }
        (StorageKind::Directory, _) => {
            r.push(
                k("directory"),
                "required with storage = \"directory\": where the log is kept",
            );
            None
        }
        (StorageKind::Postgres, None) => Some(PathBuf::new()),
        (StorageKind::Postgres, Some(_)) => {
            r.push(
                k("directory"),
                "not used with storage = \"postgres\" (the database holds the log): remove it",
            );
            None
        }
    };
    let postgres = match (storage, raw.postgres.as_ref()) {
        (StorageKind::Postgres, Some(p)) => postgres(p, base, r).map(Some),
        (StorageKind::Postgres, None) => {
            r.push(
                k("postgres.url"),
                "required with storage = \"postgres\": the database the fleet's log lives in",
            );
            None
        }
        (StorageKind::Directory, Some(_)) => {
            r.push(
                k("postgres"),
                "only used with storage = \"postgres\": set transparency.storage or remove the section",
            );
            None
        }
        (StorageKind::Directory, None) => Some(None),
    };
    let origin = match raw.origin.as_deref() {
        // Receipts carry it as `log="…"`, and a receipt's fields are
        // split at `,` (crypto audit, stop 66: every receipt of such a
        // log was INVALID, "not a receipt").
        Some(o) if valid_origin(o) && (o.contains(['"', '\\', ',']) || !o.is_ascii()) => {
            r.push(
                k("origin"),
                format!("{o:?} has a '\"', '\\', ',' or a character outside ASCII, which the Residency-Receipt header (log=\"…\", a structured field's string, fields split at ',') cannot carry: leave them out"),
            );
            None
        }
        Some(o) if valid_origin(o) => Some(o.to_string()),
        Some(o) => {
            r.push(
                k("origin"),
                format!("{o:?} must be non-empty, without spaces, control characters or '+', e.g. \"ingest.example.com/residency-log\""),
            );
            None
        }
        None => {
            r.push(
                k("origin"),
                "required: the log's name, e.g. \"ingest.example.com/residency-log\"",
            );
            None
        }
    };
    let signing_key = match raw.signing_key.as_deref() {
        Some(p) => {
            let path = base.join(p);
            if let Some(problem) = residency_core::report::not_a_file(&path) {
                r.push(k("signing_key"), problem);
            } else if !path.is_file() {
                r.push(
                    k("signing_key"),
                    format!(
                        "{}: no such file (create one with `residency-proxy keygen`)",
                        path.display()
                    ),
                );
            }
            Some(path)
        }
        None => {
            r.push(
                k("signing_key"),
                "required: create one with `residency-proxy keygen`",
            );
            None
        }
    };
    let receipts = raw
        .receipts
        .check_or(ReceiptMode::Signed, &k("receipts"), r);
    let checkpoint_interval = raw.checkpoint_interval.check_is_or(
        Duration::from_secs(1),
        &k("checkpoint_interval"),
        r,
        "a duration of at least 10ms, such as \"1s\"",
        |d| *d >= Duration::from_millis(10),
    );
    let commit_window = raw.commit_window.check_is_or(
        match storage {
            StorageKind::Directory => DEFAULT_COMMIT_WINDOW_DIRECTORY,
            StorageKind::Postgres => DEFAULT_COMMIT_WINDOW_POSTGRES,
        },
        &k("commit_window"),
        r,
        "a duration of at most 10ms, such as \"500us\" or \"2ms\"",
        |d| *d <= Duration::from_millis(10),
    );
    let write_timeout = raw.write_timeout.check_is_or(
        DEFAULT_WRITE_TIMEOUT,
        &k("write_timeout"),
        r,
        "a duration from 10ms to 60s, such as \"5s\"",
        |d| (Duration::from_millis(10)..=Duration::from_secs(60)).contains(d),
    );
    if storage == StorageKind::Postgres && raw.write_timeout.is_some() {
        r.push(
            k("write_timeout"),
            "only used with storage = \"directory\": a fleet's commits are bounded by transparency.postgres.timeout",
        );
    }
    let client_address = client_address(raw, base, r);
    let on_write_error = raw
        .on_write_error
        .check_or(OnWriteError::Refuse, &k("on_write_error"), r);
    // `Some(None)`: not an address (reported).
    let address = raw
        .address
        .as_deref()
        .map(|a| parse_addr(a, &k("address"), r));
    let max_records = raw.max_records.check_is_or(
        DEFAULT_MAX_RECORDS,
        &k("max_records"),
        r,
        "a positive integer",
        |n| *n > 0,
    );
    if storage == StorageKind::Postgres && raw.max_records.is_some() {
        r.push(
            k("max_records"),
            "only used with storage = \"directory\" (where the log rolls to a new origin at that size): a fleet's log has no size limit, and neither memory nor start-up grows with it",
        );
    }
    let max_connections = raw.max_connections.check_is_or(
        DEFAULT_MAX_CONNECTIONS,
        &k("max_connections"),
        r,
        "an integer from 1 to 65536",
        |n| (1..=65_536).contains(n),
    );
    let max_connections_per_client = raw.max_connections_per_client.check_is_or(
        DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        &k("max_connections_per_client"),
        r,
        "an integer from 0 to 65536",
        |n| *n <= 65_536,
    );
    let requests_per_second_per_client = raw.requests_per_second_per_client.check_is_or(
        DEFAULT_REQUESTS_PER_SECOND_PER_CLIENT,
        &k("requests_per_second_per_client"),
        r,
        "an integer from 0 (no limit) to 1000000",
        |n| *n <= 1_000_000,
    );
    let requests_burst_per_client = raw.requests_burst_per_client.check_is_or(
        DEFAULT_REQUESTS_BURST_PER_CLIENT,
        &k("requests_burst_per_client"),
        r,
        "an integer from 1 to 1000000",
        |n| (1..=1_000_000).contains(n),
    );
    let refusal_records_per_second = raw.refusal_records_per_second.check_is_or(
        100,
        &k("refusal_records_per_second"),
        r,
        "an integer from 0 to 1000000",
        |n| *n <= 1_000_000,
    );
    let refusal_records_burst = raw.refusal_records_burst.check_is_or(
        1000,
        &k("refusal_records_burst"),
        r,
        "an integer from 0 to 1000000",
        |n| *n <= 1_000_000,
    );
    let tls = log_tls(raw.tls.as_ref(), address.is_some(), base, r);
    let secret_files = [
        (
            "transparency.client_hmac_key",
            raw.client_hmac_key.as_deref(),
        ),
        (
            "transparency.postgres.password_file",
            raw.postgres
                .as_ref()
                .and_then(|p| p.password_file.as_deref()),
        ),
    ]
    .into_iter()
    .filter_map(|(key, file)| Some((key.to_string(), base.join(file?))))
    .collect();
    Some(Transparency {
        directory: directory?,
        postgres: postgres?,
        origin: origin?,
        signing_key: signing_key?,
        receipts,
        checkpoint_interval,
        commit_window,
        write_timeout,
        client_address: client_address?,
        on_write_error,
        address: match address {
            Some(a) => Some(a?),
            None => None,
        },
        max_records,
        max_connections,
        max_connections_per_client,
        requests_per_second_per_client,
        requests_burst_per_client,
        refusal_records_per_second,
        refusal_records_burst,
        tls: tls?,
        secret_files,
    })
}

/// `[transparency.postgres]`: a parseable URL without a password, the
/// password from a file or an environment variable, a CA file.
fn postgres(raw: &RawPostgres, base: &Path, r: &mut ConfigReport) -> Option<Postgres> {
    let k = |name: &str| format!("transparency.postgres.{name}");
    let url = raw.url.as_deref().map(str::trim);
    let config = match url {
        None | Some("") => {
            r.push(
                k("url"),
                "required: e.g. \"postgres://residency@db.example:5432/residency?sslmode=require\"",
            );
            None
        }
        Some(u) => match u.parse::<tokio_postgres::Config>() {
            Ok(c) if c.get_password().is_some() => {
                r.push(
                    k("url"),
                    "holds a password: move it to transparency.postgres.password_file or password_env",
                );
                None
            }
            Ok(c) if c.get_user().is_none() => {
                r.push(k("url"), "names no user, e.g. postgres://residency@host/db");
                None
            }
            // `prefer`, also the default with no `sslmode`, would fall back
            // to plaintext when the server (or one on the path) declines
            // TLS, and send the password in the clear: taken as `require`.
            Ok(mut c) => {
                if c.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
                    c.ssl_mode(tokio_postgres::config::SslMode::Require);
                }
                Some(c)
            }
            Err(e) => {
                // Not echoed: it may hold a password, and reports are logged.
                // A libpq mode the driver lacks is named as such (it said
                // "invalid connection string"; config audit, stop 63).
                let mode = u
                    .split(['?', '&'])
                    .find_map(|p| p.strip_prefix("sslmode="))
                    .filter(|m| !["disable", "prefer", "require"].contains(m));
                match mode {
                    Some(m) => r.push(
                        k("url"),
                        format!("sslmode={m} is not supported: use require (the server's certificate and name are verified, against transparency.postgres.ca or the system's roots), or disable for a database on loopback"),
                    ),
                    None => r.push(k("url"), format!("is not a PostgreSQL URL: {e}")),
                }
                None
            }
        },
    };
    let password = match (raw.password_file.as_deref(), raw.password_env.as_deref()) {
        (Some(_), Some(_)) => {
            r.push(
                k("password_env"),
                "set password_file or password_env, not both",
            );
            None
        }
        (Some(file), None) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                // One trailing newline, as editors and `echo` leave it.
                Ok(p) => Some(Some(p.strip_suffix('\n').unwrap_or(&p).to_string())),
                Err(e) => {
                    r.push(k("password_file"), format!("{}: {e}", path.display()));
                    None
                }
            }
        }
        (None, Some(name)) => match std::env::var(name) {
            Ok(p) => Some(Some(p)),
            Err(_) => {
                r.push(
                    k("password_env"),
                    format!("the environment variable {name} is not set"),
                );
                None
            }
        },
        (None, None) => Some(None),
    };
    let ca = raw.ca.as_deref().map(|c| base.join(c));
    let mut ca_usable = true;
    if let Some(ca) = &ca {
        // Read as the connection will: a file without a certificate made
        // an empty trust store, and every connection failed later
        // (config audit, stop 63).
        use rustls_pki_types::pem::PemObject;
        // Not read unless a regular file (`/dev/zero` would never end).
        let certs = || {
            rustls_pki_types::CertificateDer::pem_file_iter(ca)
                .map(|certs| certs.filter(Result::is_ok).count())
        };
        let problem = match residency_core::report::not_a_file(ca) {
            Some(problem) => Some(problem),
            None if !ca.is_file() => Some(format!("{}: no such file", ca.display())),
            None => match certs() {
                Ok(0) => Some(format!(
                    "{}: holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                    ca.display()
                )),
                Ok(_) => None,
                Err(e) => Some(format!("{}: {e}", ca.display())),
            },
        };
        if let Some(problem) = problem {
            r.push(k("ca"), problem);
            ca_usable = false;
        }
    }
    let timeout = raw.timeout.check_is_or(
        Duration::from_secs(2),
        &k("timeout"),
        r,
        "a duration from 10ms to 60s, such as \"2s\"",
        |d| (Duration::from_millis(10)..=Duration::from_secs(60)).contains(d),
    );
    let max_pending = raw.max_pending.check_is_or(
        10_000,
        &k("max_pending"),
        r,
        "an integer from 1 to 1000000",
        |n| (1..=1_000_000).contains(n),
    );
    let pool_size =
        raw.pool_size
            .check_is_or(8, &k("pool_size"), r, "an integer from 2 to 256", |n| {
                (2..=256).contains(n)
            });
    let mut config = config?;
    if let Some(password) = password? {
        config.password(password);
    }
    if !ca_usable {
        return None;
    }
    Some(Postgres {
        url: url.unwrap_or_default().to_string(),
        config: PgConfig(config),
        ca,
        timeout,
        max_pending,
        pool_size,
    })
}

/// Witnesses a log may have: C2SP signed-note verifiers "MUST accept at
/// least up to 16" signatures, and one is the log's own.
pub const MAX_WITNESSES: usize = 15;

/// `[[transparency.witnesses]]`: an http(s) URL and a cosigner vkey each;
/// no URL, key or name twice.
pub fn witnesses(
    raw: &RawTransparency,
    base: &Path,
    r: &mut ConfigReport,
) -> Option<Vec<WitnessSettings>> {
    let raw = raw.witnesses.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    let mut complete = true;
    if raw.len() > MAX_WITNESSES {
        r.push(
            "transparency.witnesses",
            format!(
                "{} witnesses; at most {MAX_WITNESSES}: with the log's own signature a checkpoint then has at most 16 signature lines, which every signed-note verifier must accept",
                raw.len()
            ),
        );
        complete = false;
    }
    for (i, w) in raw.iter().enumerate() {
        let k = |name: &str| format!("transparency.witnesses[{i}].{name}");
        let url = match w.url.as_deref().map(str::trim) {
            Some(u) if valid_url(u) && !has_userinfo(u) => {
                Some(u.trim_end_matches('/').to_string())
            }
            Some(u) if valid_url(u) => {
                r.push(
                    k("url"),
                    format!(
                        "`{}`: user info is not allowed (a witness is asked without credentials)",
                        residency_core::policy::shown_url(u)
                    ),
                );
                None
            }
            Some(u) => {
                r.push(
                    k("url"),
                    format!(
                        "`{}` is not an http:// or https:// URL, e.g. \"https://witness.example/w1\"",
                        residency_core::policy::shown_url(u)
                    ),
                );
                None
            }
            None => {
                r.push(k("url"), "required: the witness's submission URL prefix");
                None
            }
        };
        let key = match w.key.as_deref() {
            Some(text) => CosignatureVerifier::parse(text)
                .map_err(|e| r.push(k("key"), e.to_string()))
                .ok(),
            None => {
                r.push(
                    k("key"),
                    "required: the witness's cosigner key, <name>+<key id>+<base64>",
                );
                None
            }
        };
        let name = match (&w.name, &key) {
            (Some(n), _) if valid_origin(n) => Some(n.clone()),
            (Some(n), _) => {
                r.push(
                    k("name"),
                    format!("{n:?} must be non-empty, without spaces, control characters or '+'"),
                );
                None
            }
            (None, Some(key)) => Some(key.name().to_string()),
            (None, None) => None,
        };
        let ca = match w.ca.as_deref() {
            None => Some(None),
            Some(path) => {
                let resolved = base.join(path);
                match std::fs::metadata(&resolved) {
                    Ok(m) if m.is_file() => match pem_certificates(&resolved) {
                        Ok(()) => Some(Some(resolved)),
                        Err(message) => {
                            r.push(k("ca"), message);
                            None
                        }
                    },
                    Ok(_) => {
                        r.push(
                            k("ca"),
                            format!("{}: not a regular file", resolved.display()),
                        );
                        None
                    }
                    Err(e) => {
                        r.push(k("ca"), format!("{}: {e}", resolved.display()));
                        None
                    }
                }
            }
        };
        let (Some(url), Some(key), Some(name), Some(ca)) = (url, key, name, ca) else {
            complete = false;
            continue;
        };
        for (field, clash) in [
            (
                "url",
                out.iter().position(|o: &WitnessSettings| o.url == url),
            ),
            // Under another name too: a cosignature does not commit to
            // the witness's name (tlog-cosignature), so one witness's line
            // would be served twice and count twice towards a quorum.
            ("key", out.iter().position(|o| o.key.same_public_key(&key))),
            ("name", out.iter().position(|o| o.name == name)),
        ] {
            if let Some(j) = clash {
                let what = if field == "key" { "public key" } else { field };
                r.push(
                    k(field),
                    format!("the same {what} as transparency.witnesses[{j}]"),
                );
                complete = false;
            }
        }
        out.push(WitnessSettings { name, url, key, ca });
    }
    complete.then_some(out)
}

/// Whether `url` (a [`valid_url`]) may name user info: any `@` (a password
/// holding `/` ends the authority where a parser looks).
fn has_userinfo(url: &str) -> bool {
    url.contains('@')
}

fn valid_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or("");
        !host.is_empty() && !r.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
    })
}

/// `[transparency.tls]`: every certificate and key must be a file.
fn log_tls(
    raw: Option<&RawLogTls>,
    listening: bool,
    base: &Path,
    r: &mut ConfigReport,
) -> Option<Vec<CertPair>> {
    let Some(raw) = raw else {
        return Some(Vec::new());
    };
    if !listening {
        r.push(
            "transparency.tls",
            "needs transparency.address: there is no log listener to serve over TLS",
        );
    }
    if raw.certificates.is_empty() {
        r.push(
            "transparency.tls.certificates",
            "at least one certificate is required",
        );
        return None;
    }
    let mut pairs = Vec::new();
    let mut complete = true;
    for (i, c) in raw.certificates.iter().enumerate() {
        let mut file = |name: &str, value: &str, check: fn(&Path) -> Result<(), String>| {
            let path = base.join(value);
            let problem = if path.is_file() {
                check(&path).err()
            } else {
                Some(format!("{}: no such file", path.display()))
            };
            if let Some(message) = problem {
                r.push(
                    format!("transparency.tls.certificates[{i}].{name}"),
                    message,
                );
                complete = false;
            }
            path
        };
        let cert = file("cert", &c.cert, pem_certificates);
        let key = file("key", &c.key, pem_key);
        pairs.push(CertPair { cert, key });
    }
    complete.then_some(pairs)
}

/// At least one PEM certificate, and nothing unreadable among them.
fn pem_certificates(path: &Path) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut count = 0;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        cert.map_err(|e| bad(&e))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(())
}

/// A PEM private key, not encrypted (PKCS#8 `ENCRYPTED PRIVATE KEY`, or
/// a traditional key with `Proc-Type: 4,ENCRYPTED`: said so, as the
/// listeners' keys are).
fn pem_key(path: &Path) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(format!(
            "{}: the private key is encrypted, which is not supported: give it unencrypted, readable by the proxy only (`openssl pkey -in KEY -out KEY.plain`, then chmod 600)",
            path.display()
        ));
    }
    rustls_pki_types::PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map(drop)
        .map_err(|e| format!("{}: no PEM private key in it ({e})", path.display()))
}

fn client_address(
    raw: &RawTransparency,
    base: &Path,
    r: &mut ConfigReport,
) -> Option<ClientAddress> {
    let bits =
        |value: &Option<Setting<u8>>, key: &str, default: u8, max: u8, r: &mut ConfigReport| {
            value.check_is_or(
                default,
                &format!("transparency.{key}"),
                r,
                &format!("a prefix length from 0 to {max}"),
                |n| *n <= max,
            )
        };
    let kind = match &raw.client_address {
        None => ClientAddressKind::Prefix,
        Some(kind) => kind.check("transparency.client_address", r)?,
    };
    // Keys of a mode not chosen would look like a setting that is not in
    // effect (an HMAC key while addresses are recorded by prefix, or in
    // full).
    let mode = match kind {
        ClientAddressKind::Prefix => "prefix",
        ClientAddressKind::Hmac => "hmac",
        ClientAddressKind::Omit => "none",
        ClientAddressKind::Full => "full",
    };
    let unused = [
        ("client_hmac_key", raw.client_hmac_key.is_some(), "hmac"),
        ("client_prefix_v4", raw.client_prefix_v4.is_some(), "prefix"),
        ("client_prefix_v6", raw.client_prefix_v6.is_some(), "prefix"),
    ];
    let mut misplaced = false;
    for (key, set, needs) in unused {
        if set && mode != needs {
            r.push(
                format!("transparency.{key}"),
                format!("set, but transparency.client_address is \"{mode}\": it applies only with client_address = \"{needs}\""),
            );
            misplaced = true;
        }
    }
    if misplaced {
        return None;
    }
    match kind {
        ClientAddressKind::Prefix => Some(ClientAddress::Prefix {
            v4: bits(&raw.client_prefix_v4, "client_prefix_v4", 24, 32, r),
            v6: bits(&raw.client_prefix_v6, "client_prefix_v6", 48, 128, r),
        }),
        ClientAddressKind::Hmac => {
            let Some(path) = raw.client_hmac_key.as_deref() else {
                r.push(
                    "transparency.client_hmac_key",
                    "required with client_address = \"hmac\": a file of at least 32 secret bytes",
                );
                return None;
            };
            let path = base.join(path);
            match std::fs::read(&path) {
                Ok(key) if key.len() >= 32 => Some(ClientAddress::Hmac { key }),
                Ok(_) => {
                    r.push(
                        "transparency.client_hmac_key",
                        format!("{}: shorter than 32 bytes", path.display()),
                    );
                    None
                }
                Err(e) => {
                    r.push(
                        "transparency.client_hmac_key",
                        format!("{}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        ClientAddressKind::Omit => Some(ClientAddress::Omit),
        ClientAddressKind::Full => Some(ClientAddress::Full),
    }
}

/// A signed-note key name: non-empty, no whitespace, no control
/// character, no '+'.
pub fn valid_origin(name: &str) -> bool {
    crate::note::check_name(name).is_ok()
}

impl Transparency {
    /// The log's verifier key — what customers are given — as this
    /// configuration signs: its `origin` with `signing_key`'s key; `None`
    /// if the key cannot be read.
    pub fn verifier_key(&self) -> Option<String> {
        let pkcs8 = std::fs::read(&self.signing_key).ok()?;
        let signer = crate::note::Signer::from_pkcs8(&self.origin, &pkcs8).ok()?;
        Some(signer.verifier_key())
    }

    /// A warning when the fleet's database is reached in the clear
    /// (`sslmode=disable`) at an address not on loopback (config audit,
    /// stop 63: loaded without a word, README saying `disable` is for a
    /// database on loopback).
    pub fn cleartext_warning(&self) -> Option<String> {
        use tokio_postgres::config::{Host, SslMode};
        let pg = self.postgres.as_ref()?;
        let remote = pg.config.0.get_hosts().iter().any(|h| match h {
            Host::Tcp(name) => {
                name != "localhost"
                    && !name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            _ => false,
        });
        (remote && pg.config.0.get_ssl_mode() == SslMode::Disable).then(|| {
            "transparency.postgres.url: sslmode=disable to a database not on loopback: the log's records, and the password, cross the network in the clear; use sslmode=require".to_string()
        })
    }

    /// A warning when the `.pub` file `keygen` wrote beside `signing_key`
    /// (`log.key` → `log.pub`) is not [`Transparency::verifier_key`]: made
    /// with another `--name` than `origin` (or for another key), it fails
    /// every receipt for a customer who was given it.
    pub fn public_key_warning(&self) -> Option<String> {
        // keygen's names: PREFIX.key and PREFIX.pub.
        if self.signing_key.extension().is_none_or(|e| e != "key") {
            return None;
        }
        let public = self.signing_key.with_extension("pub");
        let given = std::fs::read_to_string(&public).ok()?;
        let given = given.trim();
        let signed = self.verifier_key()?;
        if given == signed {
            return None;
        }
        let named = given.split('+').next().unwrap_or_default();
        let why = if crate::note::Verifier::parse(given).is_err() {
            "it is not a verifier key (`name+keyid+base64`, as keygen writes)".to_string()
        } else if named == self.origin {
            "it is not the public key of transparency.signing_key".to_string()
        } else {
            format!(
                "it names `{named}`, transparency.origin is `{}`",
                self.origin
            )
        };
        Some(format!(
            "{}: {why}, so receipts do not verify with it; the verifier key of transparency.origin is {signed}",
            public.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting<T: FromSetting>(text: &str) -> Option<Setting<T>> {
        Some(Setting::from_text(text))
    }

    /// A log directory whose path runs through a file is refused at load,
    /// naming the key (the log's start would fail); one that does not
    /// exist yet is made at start.
    #[test]
    fn a_log_directory_through_a_file_is_refused_at_load() {
        let dir = std::env::temp_dir().join(format!("rp-settings-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), b"k").unwrap();
        std::fs::write(dir.join("file"), b"").unwrap();
        for (directory, refused) in [("file", true), ("file/log", true), ("new/log", false)] {
            let raw = RawTransparency {
                origin: Some("ingest.example.com/residency-log".into()),
                signing_key: Some("key".into()),
                directory: Some(directory.into()),
                ..RawTransparency::default()
            };
            let mut r = ConfigReport::new("test");
            transparency(&raw, &dir, &mut r);
            let text = r.to_string();
            assert_eq!(!r.problems.is_empty(), refused, "{directory}: {text}");
            if refused {
                assert_eq!(r.problems[0].key, "transparency.directory");
                assert!(text.contains("file is not a directory"), "{text}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An origin with a character the receipt header cannot carry is
    /// refused at load (every receipt was "not a receipt" to verifiers).
    #[test]
    fn an_origin_a_receipt_cannot_carry_is_refused() {
        let dir = std::env::temp_dir();
        for (origin, refused) in [
            ("ingest.example.com/residency-log", false),
            ("ingest.example.com/a,b", true),
            ("ingest.example.com/\"quoted\"", true),
            ("ingest.example.com/back\\slash", true),
            ("ingest.example.com/résidency", true),
        ] {
            let raw = RawTransparency {
                origin: Some(origin.into()),
                signing_key: Some("key".into()),
                directory: Some("log".into()),
                ..RawTransparency::default()
            };
            let mut r = ConfigReport::new("test");
            transparency(&raw, &dir, &mut r);
            let text = r.to_string();
            let said = r.problems.iter().any(|p| p.key == "transparency.origin");
            assert_eq!(said, refused, "{origin}: {text}");
            if refused {
                assert!(text.contains("Residency-Receipt header"), "{text}");
            }
        }
    }

    #[test]
    fn postgres_storage_names_each_bad_key() {
        let dir = std::env::temp_dir().join(format!("rp-settings-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), b"k").unwrap();
        std::fs::write(dir.join("pw"), b"secret\n").unwrap();
        let base = RawTransparency {
            storage: setting("postgres"),
            origin: Some("ingest.example.com/residency-log".into()),
            signing_key: Some("key".into()),
            ..RawTransparency::default()
        };
        let problems = |raw: &RawTransparency| {
            let mut r = ConfigReport::new("test");
            let t = transparency(raw, &dir, &mut r);
            let keys: Vec<String> = r.problems.iter().map(|p| p.key.clone()).collect();
            (t, keys, r.to_string())
        };
        let (_, keys, _) = problems(&base);
        assert_eq!(keys, ["transparency.postgres.url"]);
        let pg = |raw: RawPostgres| RawTransparency {
            postgres: Some(raw),
            ..RawTransparency {
                storage: setting("postgres"),
                origin: base.origin.clone(),
                signing_key: base.signing_key.clone(),
                ..RawTransparency::default()
            }
        };
        let (_, keys, text) = problems(&pg(RawPostgres {
            url: Some("postgres://u:hunter2@db/log".into()),
            ..RawPostgres::default()
        }));
        assert_eq!(keys, ["transparency.postgres.url"], "{text}");
        assert!(text.contains("password_file"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the password is not echoed: {text}"
        );
        // Unparsable, with a password in it: not echoed either.
        let (_, keys, text) = problems(&pg(RawPostgres {
            url: Some("postgres://u:hunter2@db:notaport/log".into()),
            ..RawPostgres::default()
        }));
        assert_eq!(keys, ["transparency.postgres.url"], "{text}");
        assert!(text.contains("is not a PostgreSQL URL"), "{text}");
        assert!(!text.contains("hunter2"), "the password is echoed: {text}");
        let (_, keys, _) = problems(&pg(RawPostgres {
            url: Some("postgres://u@db/log".into()),
            password_env: Some("RP_TEST_NO_SUCH_VARIABLE".into()),
            timeout: setting("0s"),
            max_pending: setting("0"),
            ..RawPostgres::default()
        }));
        assert_eq!(
            keys,
            [
                "transparency.postgres.password_env",
                "transparency.postgres.timeout",
                "transparency.postgres.max_pending"
            ]
        );
        let (t, keys, text) = problems(&pg(RawPostgres {
            url: Some("postgres://u@db:5433/log?sslmode=require".into()),
            password_file: Some("pw".into()),
            ..RawPostgres::default()
        }));
        assert!(keys.is_empty(), "{text}");
        let t = t.unwrap();
        let p = t.postgres.unwrap();
        assert_eq!(p.config.0.get_password(), Some(&b"secret"[..]));
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert!(!format!("{p:?}").contains("secret"));
        // A directory, rolling at a size and the disk's write timeout
        // belong to the other storage.
        let fleet = || {
            pg(RawPostgres {
                url: Some("postgres://u@db/log".into()),
                ..RawPostgres::default()
            })
        };
        for (raw, key, says) in [
            (
                RawTransparency {
                    directory: Some("log".into()),
                    ..fleet()
                },
                "transparency.directory",
                "",
            ),
            (
                RawTransparency {
                    max_records: setting("1000"),
                    ..fleet()
                },
                "transparency.max_records",
                "rolls to a new origin",
            ),
            (
                RawTransparency {
                    write_timeout: setting("5s"),
                    ..fleet()
                },
                "transparency.write_timeout",
                "transparency.postgres.timeout",
            ),
        ] {
            let (_, keys, text) = problems(&raw);
            assert_eq!(keys, [key]);
            assert!(text.contains(says), "{text}");
        }
        // No plaintext fallback: `prefer` and no `sslmode` are `require`;
        // `disable` stays as asked.
        use tokio_postgres::config::SslMode;
        for (query, mode) in [
            ("", SslMode::Require),
            ("?sslmode=prefer", SslMode::Require),
            ("?sslmode=require", SslMode::Require),
            ("?sslmode=disable", SslMode::Disable),
        ] {
            let (t, keys, text) = problems(&pg(RawPostgres {
                url: Some(format!("postgres://u@db/log{query}")),
                password_file: Some("pw".into()),
                ..RawPostgres::default()
            }));
            assert!(keys.is_empty(), "{text}");
            let p = t.unwrap().postgres.unwrap();
            assert_eq!(p.config.0.get_ssl_mode(), mode, "{query:?}");
        }
        // A libpq mode the driver lacks is named, and a CA file without a
        // certificate is refused (it made an empty trust store; config
        // audit, stop 63).
        std::fs::write(dir.join("not-a-ca"), b"garbage\n").unwrap();
        for (raw, says) in [
            (
                RawPostgres {
                    url: Some("postgres://u@db/log?sslmode=allow".into()),
                    ..RawPostgres::default()
                },
                "transparency.postgres.url: sslmode=allow is not supported: use require",
            ),
            (
                RawPostgres {
                    url: Some("postgres://u@db/log".into()),
                    ca: Some("not-a-ca".into()),
                    ..RawPostgres::default()
                },
                "not-a-ca: holds no PEM certificate",
            ),
        ] {
            let (t, _, text) = problems(&pg(raw));
            assert!(t.is_none() && text.contains(says), "{says}: {text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_and_typed_values() {
        let dir = std::env::temp_dir();
        let raw = RawTransparency {
            directory: Some("log".into()),
            origin: Some("ingest.example.com/residency-log".into()),
            signing_key: Some("no-such-key".into()),
            ..RawTransparency::default()
        };
        let mut r = ConfigReport::new("test");
        let t = transparency(&raw, &dir, &mut r).expect("only the key file is missing");
        assert_eq!(r.problems.len(), 1, "{r}");
        assert_eq!(r.problems[0].key, "transparency.signing_key");
        assert_eq!(t.receipts, ReceiptMode::Signed);
        assert_eq!(t.checkpoint_interval, Duration::from_secs(1));
        assert_eq!(t.commit_window, Duration::from_micros(500));
        assert_eq!(t.client_address, ClientAddress::Prefix { v4: 24, v6: 48 });
        assert_eq!(t.on_write_error, OnWriteError::Refuse);
        assert_eq!(t.max_records, DEFAULT_MAX_RECORDS);
        assert_eq!(t.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(t.max_connections_per_client, 32);

        let raw = RawTransparency {
            receipts: setting("log"),
            checkpoint_interval: setting("250ms"),
            commit_window: setting("2ms"),
            client_prefix_v4: setting("16"),
            on_write_error: setting("continue"),
            max_records: setting("1_000"),
            address: Some("127.0.0.1:9901".into()),
            ..raw
        };
        let mut r = ConfigReport::new("test");
        let t = transparency(&raw, &dir, &mut r).unwrap();
        assert_eq!(t.receipts, ReceiptMode::Log);
        assert_eq!(t.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(t.commit_window, Duration::from_millis(2));
        assert_eq!(t.client_address, ClientAddress::Prefix { v4: 16, v6: 48 });
        assert_eq!(t.on_write_error, OnWriteError::Continue);
        assert_eq!(t.max_records, 1_000);
        assert_eq!(t.address, "127.0.0.1:9901".parse().ok());
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let raw = RawTransparency {
            storage: None,
            postgres: None,
            directory: Some("log".into()),
            origin: Some("has space".into()),
            signing_key: None,
            receipts: setting("always"),
            checkpoint_interval: setting("1ms"),
            commit_window: setting("1s"),
            write_timeout: setting("2m"),
            client_address: setting("prefix"),
            client_prefix_v4: setting("33"),
            client_prefix_v6: setting("x"),
            client_hmac_key: None,
            on_write_error: setting("ignore"),
            address: Some("nowhere".into()),
            max_records: setting("0"),
            max_connections: setting("0"),
            max_connections_per_client: setting("-1"),
            requests_per_second_per_client: setting("1000001"),
            requests_burst_per_client: setting("0"),
            refusal_records_per_second: None,
            refusal_records_burst: None,
            tls: None,
            witnesses: None,
        };
        let mut r = ConfigReport::new("test");
        assert!(transparency(&raw, &std::env::temp_dir(), &mut r).is_none());
        let text = r.to_string();
        for line in [
            "- transparency.origin: \"has space\" must be non-empty",
            "- transparency.signing_key: required",
            "- transparency.receipts: `always` is not one of \"signed\", \"log\", \"off\"",
            "- transparency.checkpoint_interval: `1ms` is not a duration of at least 10ms",
            "- transparency.commit_window: `1s` is not a duration of at most 10ms, such as \"500us\" or \"2ms\"",
            "- transparency.client_prefix_v4: `33` is not a prefix length from 0 to 32",
            "- transparency.client_prefix_v6: `x` is not a prefix length from 0 to 128",
            "- transparency.on_write_error: `ignore` is not one of \"refuse\", \"continue\"",
            "- transparency.address: `nowhere` is not a socket address",
            "- transparency.max_records: `0` is not a positive integer",
            "- transparency.max_connections: `0` is not an integer from 1 to 65536",
            "- transparency.max_connections_per_client: `-1` is not an integer from 0 to 65536",
            "- transparency.requests_per_second_per_client: `1000001` is not an integer from 0 (no limit) to 1000000",
            "- transparency.requests_burst_per_client: `0` is not an integer from 1 to 1000000",
            "- transparency.write_timeout: `2m` is not a duration from 10ms to 60s",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(r.problems.len(), 15, "{text}");

        let raw = RawTransparency {
            client_address: setting("partial"),
            ..RawTransparency::default()
        };
        let mut r = ConfigReport::new("test");
        assert!(transparency(&raw, &std::env::temp_dir(), &mut r).is_none());
        assert!(r.to_string().contains(
            "- transparency.client_address: `partial` is not one of \"prefix\", \"hmac\", \"none\", \"full\""
        ));
    }

    #[test]
    fn log_tls_names_each_missing_file() {
        let dir = std::env::temp_dir();
        let raw = RawTransparency {
            directory: Some("log".into()),
            origin: Some("ingest.example.com/residency-log".into()),
            signing_key: Some("no-such-key".into()),
            tls: Some(RawLogTls {
                certificates: vec![RawCertPair {
                    cert: "no-such.pem".into(),
                    key: "no-such.key".into(),
                }],
            }),
            ..RawTransparency::default()
        };
        let mut r = ConfigReport::new("test");
        assert!(transparency(&raw, &dir, &mut r).is_none());
        let keys: Vec<&str> = r.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "transparency.signing_key",
                "transparency.tls",
                "transparency.tls.certificates[0].cert",
                "transparency.tls.certificates[0].key",
            ],
            "{r}"
        );
    }

    /// Files that exist but hold no certificate or key are named by key
    /// too (`check-config` said "OK", and the proxy failed at start).
    #[test]
    fn log_tls_and_witness_ca_files_must_hold_pem() {
        use crate::witness::Cosigner;
        let dir = std::env::temp_dir().join(format!("rp-settings-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
        std::fs::write(dir.join("junk.key"), "not a key\n").unwrap();
        let witness = Cosigner::from_pkcs8("w1.example", &Cosigner::generate_pkcs8().unwrap())
            .unwrap()
            .verifier_key();
        let raw = RawTransparency {
            directory: Some("log".into()),
            origin: Some("ingest.example.com/residency-log".into()),
            signing_key: Some("junk.key".into()),
            tls: Some(RawLogTls {
                certificates: vec![RawCertPair {
                    cert: "junk.pem".into(),
                    key: "junk.key".into(),
                }],
            }),
            witnesses: Some(vec![RawWitness {
                url: Some("https://w1.example".into()),
                key: Some(witness),
                name: None,
                ca: Some("junk.pem".into()),
            }]),
            ..RawTransparency::default()
        };
        let mut r = ConfigReport::new("test");
        assert!(transparency(&raw, &dir, &mut r).is_none());
        let mut w = ConfigReport::new("test");
        witnesses(&raw, &dir, &mut w);
        let text = format!("{r}{w}");
        for key in [
            "transparency.tls.certificates[0].cert: ",
            "transparency.tls.certificates[0].key: ",
            "transparency.witnesses[0].ca: ",
        ] {
            assert!(text.contains(key), "{key}: {text}");
        }
        assert!(text.contains("no PEM certificate"), "{text}");
        // An encrypted key is named as one (it said "no PEM private key").
        std::fs::write(
            dir.join("junk.key"),
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let mut r = ConfigReport::new("test");
        assert!(transparency(&raw, &dir, &mut r).is_none());
        let text = r.to_string();
        assert!(
            text.contains("transparency.tls.certificates[0].key: ")
                && text.contains("the private key is encrypted, which is not supported"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn witnesses_are_validated_and_named_by_index() {
        use crate::witness::Cosigner;
        let key = Cosigner::from_pkcs8("w1.example", &Cosigner::generate_pkcs8().unwrap())
            .unwrap()
            .verifier_key();
        let log_key = crate::note::Signer::from_pkcs8("log", &Cosigner::generate_pkcs8().unwrap())
            .unwrap()
            .verifier_key();
        let witness = |url: &str, key: &str| RawWitness {
            url: Some(url.into()),
            key: Some(key.into()),
            name: None,
            ca: None,
        };
        let base = RawTransparency {
            directory: Some("log".into()),
            origin: Some("ingest.example.com/residency-log".into()),
            signing_key: Some("no-such-key".into()),
            ..RawTransparency::default()
        };
        // The problems of a witness list that is refused.
        let refused = |raw: &RawTransparency| {
            let mut r = ConfigReport::new("test");
            assert!(witnesses(raw, Path::new("."), &mut r).is_none());
            r.to_string()
        };

        let raw = RawTransparency {
            witnesses: Some(vec![witness("https://w1.example/", &key)]),
            ..base
        };
        let mut r = ConfigReport::new("test");
        let w = witnesses(&raw, Path::new("."), &mut r).unwrap();
        assert!(r.is_empty(), "{r}");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].name, "w1.example");
        assert_eq!(w[0].url, "https://w1.example");
        assert_eq!(w[0].key.verifier_key(), key);

        // Credentials in the URL: refused, and not repeated (privacy
        // audit, stop 68).
        let raw = RawTransparency {
            witnesses: Some(vec![witness("https://w:S3CRET@w1.example/", &key)]),
            ..raw
        };
        let text = refused(&raw);
        assert!(
            text.contains(
                "transparency.witnesses[0].url: `https://…@w1.example/`: user info is not allowed"
            ),
            "{text}"
        );
        assert!(!text.contains("S3CRET"), "{text}");

        // A note key (type 0x01) is not a witness key.
        let raw = RawTransparency {
            witnesses: Some(vec![witness("http://127.0.0.1:9", &log_key)]),
            ..raw
        };
        let text = refused(&raw);
        assert!(
            text.contains("- transparency.witnesses[0].key: malformed verifier key"),
            "{text}"
        );
        assert!(text.contains("type byte 0x04"), "{text}");

        let raw = RawTransparency {
            witnesses: Some(vec![
                witness("https://w1.example", &key),
                witness("ftp://w2.example", "nonsense"),
                witness("https://w1.example", &key),
                RawWitness::default(),
            ]),
            ..raw
        };
        let mut r = ConfigReport::new("test");
        assert!(witnesses(&raw, Path::new("."), &mut r).is_none());
        let keys: Vec<&str> = r.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "transparency.witnesses[1].url",
                "transparency.witnesses[1].key",
                "transparency.witnesses[2].url",
                "transparency.witnesses[2].key",
                "transparency.witnesses[2].name",
                "transparency.witnesses[3].url",
                "transparency.witnesses[3].key",
            ],
            "{r}"
        );

        // The same public key under another name (and so another key ID)
        // is the same witness: refused, naming the public key.
        let pkcs8 = Cosigner::generate_pkcs8().unwrap();
        let [a, b] = ["w1.example", "w2.example"]
            .map(|name| Cosigner::from_pkcs8(name, &pkcs8).unwrap().verifier_key());
        let raw = RawTransparency {
            witnesses: Some(vec![
                witness("https://w1.example", &a),
                witness("https://w2.example", &b),
            ]),
            ..raw
        };
        let text = refused(&raw);
        assert!(
            text.contains(
                "- transparency.witnesses[1].key: the same public key as transparency.witnesses[0]"
            ),
            "{text}"
        );

        // A CA file that is not there is reported under its key.
        let raw = RawTransparency {
            witnesses: Some(vec![RawWitness {
                ca: Some("no-such-ca.pem".into()),
                ..witness("https://w1.example", &key)
            }]),
            ..raw
        };
        let mut r = ConfigReport::new("test");
        assert!(witnesses(&raw, Path::new("."), &mut r).is_none());
        assert!(
            r.to_string()
                .contains("- transparency.witnesses[0].ca: ./no-such-ca.pem:"),
            "{r}"
        );

        // Sixteen witnesses and the log's signature: more lines than a
        // signed-note verifier must accept.
        let many = (0..=MAX_WITNESSES)
            .map(|i| {
                let name = format!("w{i}.example");
                let key = Cosigner::from_pkcs8(&name, &Cosigner::generate_pkcs8().unwrap())
                    .unwrap()
                    .verifier_key();
                witness(&format!("https://{name}"), &key)
            })
            .collect::<Vec<_>>();
        let mut many = many;
        let sixteenth = many.pop();
        let raw = RawTransparency {
            witnesses: Some(many),
            ..raw
        };
        let mut r = ConfigReport::new("test");
        assert_eq!(witnesses(&raw, Path::new("."), &mut r).unwrap().len(), 15);
        let mut raw = raw;
        raw.witnesses.as_mut().unwrap().extend(sixteenth);
        let mut r = ConfigReport::new("test");
        assert!(witnesses(&raw, Path::new("."), &mut r).is_none());
        assert!(
            r.to_string()
                .contains("- transparency.witnesses: 16 witnesses; at most 15"),
            "{r}"
        );
    }
}
