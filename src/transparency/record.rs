//! Decision records: what the log says about one upload or refusal.
//!
//! A record is one line of JSON. The log stores, hashes and serves the exact
//! bytes it wrote, so field order and formatting never have to be
//! canonicalised: a verifier hashes the bytes it was given.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::settings::ClientAddress;

/// Record format version.
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub v: u8,
    pub request_id: String,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub outcome: Outcome,
    /// For refusals: the `error` the client was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub client: Client,
    pub country: Option<String>,
    pub jurisdiction: Option<String>,
    /// The data centre the upload went to (or was attempted at).
    pub datacenter: Option<String>,
    pub upstream_status: Option<u16>,
    /// The request body as received from the client.
    pub body: Option<BodyDigest>,
    /// `Policy::hash` of the routing policy that took the decision.
    pub policy_sha256: String,
    pub geoip: Database,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The data centre answered 2xx.
    Stored,
    /// The data centre answered, not 2xx.
    Rejected,
    /// The proxy answered: a residency refusal or a failed delivery.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Rejected => "rejected",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// `peer`, `proxy_protocol` or `x_forwarded_for`; absent when the
    /// request was refused before the address was resolved.
    pub source: Option<String>,
    /// Minimised as configured: `203.0.113.0/24`, `hmac-sha256:…`, or absent.
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyDigest {
    /// Lowercase hex.
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub build_epoch: u64,
    pub sha256: String,
}

impl Record {
    /// The bytes that are logged and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The client address as the configuration allows it to be recorded.
pub fn minimise(addr: IpAddr, how: &ClientAddress) -> Option<String> {
    let addr = addr.to_canonical();
    match how {
        ClientAddress::Prefix { v4, v6 } => {
            let bits = if addr.is_ipv4() { *v4 } else { *v6 };
            IpNet::new(addr, bits).ok().map(|n| n.trunc().to_string())
        }
        ClientAddress::Hmac { key } => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, key);
            let tag = match addr {
                IpAddr::V4(a) => hmac::sign(&key, &a.octets()),
                IpAddr::V6(a) => hmac::sign(&key, &a.octets()),
            };
            Some(format!(
                "hmac-sha256:{}",
                crate::hex::encode(&tag.as_ref()[..16])
            ))
        }
        ClientAddress::Omit => None,
        ClientAddress::Full => Some(addr.to_string()),
    }
}

/// `time` as RFC 3339 UTC with milliseconds: `2026-11-28T04:13:14.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (y, m, d).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_839_194_123);
        assert_eq!(rfc3339(t), "2026-11-28T04:13:14.123Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_825_600);
        assert_eq!(rfc3339(t), "2000-02-29T12:00:00.000Z");
    }

    #[test]
    fn minimises_addresses() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:1234:5678::1".parse().unwrap();
        let prefix = ClientAddress::Prefix { v4: 24, v6: 48 };
        assert_eq!(minimise(v4, &prefix).unwrap(), "203.0.113.0/24");
        assert_eq!(minimise(v6, &prefix).unwrap(), "2001:db8:1234::/48");
        let mapped: IpAddr = "::ffff:203.0.113.77".parse().unwrap();
        assert_eq!(minimise(mapped, &prefix).unwrap(), "203.0.113.0/24");
        let hmac = ClientAddress::Hmac { key: vec![7; 32] };
        let a = minimise(v4, &hmac).unwrap();
        assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 32, "{a}");
        assert_eq!(minimise(v4, &hmac), Some(a.clone()), "stable");
        let other = ClientAddress::Hmac { key: vec![8; 32] };
        assert_ne!(minimise(v4, &other), Some(a), "keyed");
        assert_eq!(minimise(v4, &ClientAddress::Omit), None);
        assert_eq!(minimise(v4, &ClientAddress::Full).unwrap(), "203.0.113.77");
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            v: VERSION,
            request_id: "00ff".into(),
            time: "2026-11-28T04:13:14.123Z".into(),
            outcome: Outcome::Stored,
            reason: None,
            client: Client {
                source: Some("peer".into()),
                address: Some("203.0.113.0/24".into()),
            },
            country: Some("CH".into()),
            jurisdiction: Some("ch".into()),
            datacenter: Some("zurich".into()),
            upstream_status: Some(201),
            body: Some(BodyDigest {
                sha256: "ab".repeat(32),
                bytes: 1024,
            }),
            policy_sha256: "cd".repeat(32),
            geoip: Database {
                build_epoch: 1,
                sha256: "ef".repeat(32),
            },
        };
        let bytes = r.to_bytes();
        assert!(!bytes.contains(&b'\n'));
        assert_eq!(Record::from_bytes(&bytes).unwrap(), r);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"request_id":"00ff","time":"#),
            "{text}"
        );
        assert!(
            !text.contains("reason"),
            "absent fields are left out: {text}"
        );
    }
}
