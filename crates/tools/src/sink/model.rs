//! The sink's data: what it keeps per stored upload ([`Record`]), how a data
//! centre is told to fail ([`Mode`], parsed from the admin body by
//! [`parse_mode_body`]), the bounded record store, the counters, and the JSON
//! shapes the admin port serves ([`Stats`], [`DatacenterStats`]).
//!
//! Every public type here is `Serialize + Deserialize` so a load test or drill
//! can read the admin port's JSON back into the same types.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One stored upload, as `GET /records` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The data centre that stored it.
    pub datacenter: String,
    /// `X-Upload-Id`, else `Idempotency-Key`, else `null`.
    pub upload_id: Option<String>,
    /// `X-Request-Id` (set by the proxy).
    pub request_id: Option<String>,
    /// SHA-256 of the whole body, lowercase hex.
    pub sha256: String,
    /// Body length in bytes.
    pub bytes: u64,
    /// `Residency-Origin-Country` (set by the proxy).
    pub origin_country: Option<String>,
    /// `Residency-Jurisdiction` (set by the proxy).
    pub jurisdiction: Option<String>,
    /// When the last body byte was read, Unix milliseconds.
    pub received_at_ms: u64,
}

/// How a data centre behaves. JSON: `{"mode": "slow", "delay_ms": 500}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    /// Store uploads and answer 201; `/healthz` answers 200.
    #[default]
    Normal,
    /// Not listening: connecting gets ECONNREFUSED; open connections are closed.
    Refuse,
    /// Accept connections but never read from them nor answer (a blackhole).
    Hang,
    /// Read and store as normal, then hold each response for `delay_ms`.
    Slow { delay_ms: u64 },
    /// Read the body, then answer 503 (and store nothing) with probability
    /// `error_rate`; otherwise behave as normal.
    Error { error_rate: f64 },
}

impl Mode {
    /// `delay_ms` of `slow` when the admin body gives none.
    pub const DEFAULT_DELAY_MS: u64 = 500;
    /// `error_rate` of `error` when the admin body gives none.
    pub const DEFAULT_ERROR_RATE: f64 = 1.0;
    /// The longest `slow` delay accepted: one hour.
    pub const MAX_DELAY_MS: u64 = 3_600_000;

    /// The mode's name: `normal`, `refuse`, `hang`, `slow` or `error`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Refuse => "refuse",
            Mode::Hang => "hang",
            Mode::Slow { .. } => "slow",
            Mode::Error { .. } => "error",
        }
    }

    /// Checks the parameters: `delay_ms` at most [`Mode::MAX_DELAY_MS`],
    /// `error_rate` within 0..=1.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Mode::Slow { delay_ms } if delay_ms > Mode::MAX_DELAY_MS => Err(format!(
                "delay_ms must be at most {}, got {delay_ms}",
                Mode::MAX_DELAY_MS
            )),
            Mode::Error { error_rate } if !(0.0..=1.0).contains(&error_rate) => Err(format!(
                "error_rate must be between 0 and 1, got {error_rate}"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Slow { delay_ms } => write!(f, "slow (delay_ms {delay_ms})"),
            Mode::Error { error_rate } => write!(f, "error (error_rate {error_rate})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Parses and validates the body of `POST /datacenters/{name}/mode`:
/// `{"mode": "normal"|"refuse"|"hang"|"slow"|"error", "delay_ms": 500,
/// "error_rate": 0.5}`. `delay_ms` and `error_rate` are optional, may be sent
/// with any mode and are used only by the mode they belong to. The error
/// names the problem.
pub fn parse_mode_body(body: &[u8]) -> Result<Mode, String> {
    use serde_json::Value;
    const FIELDS: [&str; 3] = ["mode", "delay_ms", "error_rate"];
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err(r#"body must be a JSON object like {"mode": "slow", "delay_ms": 500}"#.into());
    };
    if let Some(key) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{key}`: want mode, delay_ms, error_rate"
        ));
    }
    let present = |k: &str| fields.get(k).filter(|v| !v.is_null());
    let delay_ms = match present("delay_ms") {
        None => Mode::DEFAULT_DELAY_MS,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("delay_ms must be a whole number of milliseconds, got {v}"))?,
    };
    let error_rate = match present("error_rate") {
        None => Mode::DEFAULT_ERROR_RATE,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("error_rate must be a number between 0 and 1, got {v}"))?,
    };
    let mode = match present("mode") {
        None => return Err("missing field `mode`".into()),
        Some(Value::String(m)) => match m.as_str() {
            "normal" => Mode::Normal,
            "refuse" => Mode::Refuse,
            "hang" => Mode::Hang,
            "slow" => Mode::Slow { delay_ms },
            "error" => Mode::Error { error_rate },
            other => {
                return Err(format!(
                    "unknown mode `{other}`: want normal, refuse, hang, slow or error"
                ))
            }
        },
        Some(v) => return Err(format!("mode must be a string, got {v}")),
    };
    mode.validate()?;
    Ok(mode)
}

/// One data centre in `GET /stats` (and the answer to a mode change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatacenterStats {
    /// `mode`, plus `delay_ms` (slow) or `error_rate` (error).
    #[serde(flatten)]
    pub mode: Mode,
    /// The bound data port.
    pub address: SocketAddr,
    /// Uploads stored (answered 201).
    pub uploads: u64,
    /// Body bytes of the stored uploads.
    pub bytes: u64,
    /// Uploads read whole and then answered with an injected 503 (not stored).
    pub errors: u64,
    /// Uploads refused before being stored: too large (413), body failed or
    /// stalled (400/408).
    pub rejected: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now (not cleared by `/reset`).
    pub open_connections: u64,
}

/// `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub datacenters: BTreeMap<String, DatacenterStats>,
    /// Records held (what `GET /records` would list).
    pub records: u64,
    /// Stored uploads not kept because `max_records` were already held.
    pub dropped_records: u64,
    /// When the records held began (Unix milliseconds): the sink's start,
    /// or its last `/reset`. Records are kept in memory only: a reader
    /// that saw another value before has lost what was held then.
    pub records_since_ms: u64,
}

/// Per-data-centre counters, cleared by `/reset` (except `open`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub uploads: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub rejected: AtomicU64,
    pub connections: AtomicU64,
    pub open: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for c in [
            &self.uploads,
            &self.bytes,
            &self.errors,
            &self.rejected,
            &self.connections,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub fn stats(&self, mode: Mode, address: SocketAddr) -> DatacenterStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DatacenterStats {
            mode,
            address,
            uploads: get(&self.uploads),
            bytes: get(&self.bytes),
            errors: get(&self.errors),
            rejected: get(&self.rejected),
            connections: get(&self.connections),
            open_connections: get(&self.open),
        }
    }
}

/// Stored records, at most `max`; later ones are counted, not kept.
#[derive(Debug)]
pub(crate) struct RecordStore {
    pub records: Vec<Record>,
    pub dropped: u64,
    pub max: usize,
    /// [`Stats::records_since_ms`].
    pub since_ms: u64,
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RecordStore {
    pub fn push(&mut self, record: Record) {
        if self.records.len() < self.max {
            self.records.push(record);
        } else {
            self.dropped += 1;
        }
    }
}

/// xorshift64*: small, deterministic, good enough to decide injected errors.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `name` (FNV-1a), so every run draws the same sequence.
    pub fn seeded(name: &str) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_names_problems() {
        assert_eq!(parse_mode_body(br#"{"mode":"hang"}"#), Ok(Mode::Hang));
        assert_eq!(
            parse_mode_body(br#"{"mode":"slow","error_rate":0.5}"#),
            Ok(Mode::Slow { delay_ms: 500 })
        );
        assert_eq!(
            parse_mode_body(br#"{"mode":"error","delay_ms":5,"error_rate":0.25}"#),
            Ok(Mode::Error { error_rate: 0.25 })
        );
        let bad = |b: &[u8], want: &str| {
            let e = parse_mode_body(b).expect_err("should fail");
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        };
        bad(br#"{"mode":"sideways"}"#, "sideways");
        bad(br#"{"mode":"error","error_rate":1.5}"#, "error_rate");
        bad(br#"{"mode":"slow","delay_ms":-1}"#, "delay_ms");
        bad(br#"{"mode":"normal","colour":"red"}"#, "colour");
        bad(br#"{"delay_ms":5}"#, "mode");
        bad(b"not json", "not valid JSON");
        bad(b"[1]", "JSON object");
        bad(br#"{"mode":7}"#, "mode must be a string");
    }

    #[test]
    fn stats_round_trip_with_flattened_mode() {
        let s = Counters::default().stats(
            Mode::Error { error_rate: 0.5 },
            SocketAddr::from(([127, 0, 0, 1], 9001)),
        );
        let json = serde_json::to_value(&s).expect("serialize");
        assert_eq!(json["mode"], "error");
        assert_eq!(json["error_rate"], 0.5);
        let back: DatacenterStats = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, s);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::seeded("zurich"), Rng::seeded("zurich"));
        for _ in 0..1000 {
            let x = a.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x.to_bits(), b.next_f64().to_bits());
        }
    }
}
