//! The `[transparency]` section: where the log lives, how it signs, what
//! receipts carry and what happens when records cannot be written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use residency_core::report::{parse_addr, parse_duration, ConfigReport};

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

/// The validated `[transparency]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transparency {
    /// Holds `records.log` and `checkpoint`.
    pub directory: PathBuf,
    /// The checkpoint origin line and the signing key's name, e.g.
    /// `ingest.example.com/residency-log`.
    pub origin: String,
    /// PKCS#8 Ed25519 private key written by `residency-proxy keygen`.
    pub signing_key: PathBuf,
    pub receipts: ReceiptMode,
    pub checkpoint_interval: Duration,
    pub client_address: ClientAddress,
    pub on_write_error: OnWriteError,
    /// The customer-facing listener (checkpoint, proofs, key, records).
    pub address: Option<SocketAddr>,
    /// The log refuses new records beyond this many (memory: ~100 bytes each).
    pub max_records: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransparency {
    pub directory: Option<String>,
    pub origin: Option<String>,
    pub signing_key: Option<String>,
    pub receipts: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub client_address: Option<String>,
    pub client_prefix_v4: Option<String>,
    pub client_prefix_v6: Option<String>,
    pub client_hmac_key: Option<String>,
    pub on_write_error: Option<String>,
    pub address: Option<String>,
    pub max_records: Option<String>,
}

const DEFAULT_MAX_RECORDS: u64 = 20_000_000;

/// Converts the raw section, pushing every problem onto `r`.
pub fn transparency(
    raw: &RawTransparency,
    base: &Path,
    r: &mut ConfigReport,
) -> Option<Transparency> {
    let k = |name: &str| format!("transparency.{name}");
    let directory = match raw.directory.as_deref() {
        Some(d) if !d.trim().is_empty() => Some(base.join(d)),
        _ => {
            r.push(k("directory"), "required: where the log is kept");
            None
        }
    };
    let origin = match raw.origin.as_deref() {
        Some(o) if valid_origin(o) => Some(o.to_string()),
        Some(o) => {
            r.push(
                k("origin"),
                format!("`{o}` must be non-empty, without spaces or '+', e.g. \"ingest.example.com/residency-log\""),
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
            if !path.is_file() {
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
    let receipts = match raw.receipts.as_deref() {
        None | Some("signed") => ReceiptMode::Signed,
        Some("log") => ReceiptMode::Log,
        Some("off") => ReceiptMode::Off,
        Some(other) => {
            r.push(
                k("receipts"),
                format!("`{other}` is not one of \"signed\", \"log\", \"off\""),
            );
            ReceiptMode::Signed
        }
    };
    let checkpoint_interval = match raw.checkpoint_interval.as_deref() {
        None => Duration::from_secs(1),
        Some(v) => match parse_duration(v).filter(|d| *d >= Duration::from_millis(10)) {
            Some(d) => d,
            None => {
                r.push(
                    k("checkpoint_interval"),
                    "not a duration of at least 10ms, such as \"1s\"",
                );
                Duration::from_secs(1)
            }
        },
    };
    let client_address = client_address(raw, base, r);
    let on_write_error = match raw.on_write_error.as_deref() {
        None | Some("refuse") => OnWriteError::Refuse,
        Some("continue") => OnWriteError::Continue,
        Some(other) => {
            r.push(
                k("on_write_error"),
                format!("`{other}` is not one of \"refuse\", \"continue\""),
            );
            OnWriteError::Refuse
        }
    };
    let address = match raw.address.as_deref() {
        Some(a) => Some(parse_addr(a, &k("address"), r)?),
        None => None,
    };
    let max_records = match raw.max_records.as_deref() {
        None => DEFAULT_MAX_RECORDS,
        Some(v) => match v.trim().replace('_', "").parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                r.push(k("max_records"), "must be a positive integer");
                DEFAULT_MAX_RECORDS
            }
        },
    };
    Some(Transparency {
        directory: directory?,
        origin: origin?,
        signing_key: signing_key?,
        receipts,
        checkpoint_interval,
        client_address: client_address?,
        on_write_error,
        address,
        max_records,
    })
}

fn client_address(
    raw: &RawTransparency,
    base: &Path,
    r: &mut ConfigReport,
) -> Option<ClientAddress> {
    let bits =
        |value: &Option<String>, key: &str, default: u8, max: u8, r: &mut ConfigReport| match value
            .as_deref()
            .map(|v| v.trim().parse::<u8>())
        {
            None => default,
            Some(Ok(n)) if n <= max => n,
            Some(_) => {
                r.push(
                    format!("transparency.{key}"),
                    format!("must be a prefix length from 0 to {max}"),
                );
                default
            }
        };
    match raw.client_address.as_deref() {
        None | Some("prefix") => Some(ClientAddress::Prefix {
            v4: bits(&raw.client_prefix_v4, "client_prefix_v4", 24, 32, r),
            v6: bits(&raw.client_prefix_v6, "client_prefix_v6", 48, 128, r),
        }),
        Some("hmac") => {
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
        Some("none") => Some(ClientAddress::Omit),
        Some("full") => Some(ClientAddress::Full),
        Some(other) => {
            r.push(
                "transparency.client_address",
                format!("`{other}` is not one of \"prefix\", \"hmac\", \"none\", \"full\""),
            );
            None
        }
    }
}

/// A signed-note key name: non-empty, no whitespace, no '+'.
pub fn valid_origin(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}
