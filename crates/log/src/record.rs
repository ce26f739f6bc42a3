//! Decision records: what the log says about one upload or refusal.
//!
//! A record is one line of JSON. The log stores, hashes and serves the exact
//! bytes it wrote, so field order and formatting never have to be
//! canonicalised: a verifier hashes the bytes it was given.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::settings::ClientAddress;

/// Record format version.
pub const VERSION: u8 = 1;

/// Strings are borrowed while a request's record is written (no copies
/// on the hot path) and owned when a record is read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record<'a> {
    pub v: u8,
    pub request_id: Cow<'a, str>,
    /// RFC 3339, UTC, milliseconds.
    pub time: Cow<'a, str>,
    pub outcome: Outcome,
    /// For refusals: the `error` the client was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    pub client: Client<'a>,
    pub country: Option<Cow<'a, str>>,
    pub jurisdiction: Option<Cow<'a, str>>,
    /// The data centre the upload went to (or was attempted at).
    pub datacenter: Option<Cow<'a, str>>,
    /// Data centres an earlier attempt may have sent this upload's body to
    /// (it was replayed, with its `Idempotency-Key`, after a failure, a
    /// timeout or a 5xx there), other than the last attempt's in
    /// `datacenter`: each may hold a copy. Absent when there was none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_sent_to: Vec<Cow<'a, str>>,
    pub upstream_status: Option<u16>,
    /// The request body as received from the client.
    pub body: Option<BodyDigest<'a>>,
    /// `Policy::hash` of the routing policy that took the decision.
    pub policy_sha256: Cow<'a, str>,
    pub geoip: Database<'a>,
    /// A recognised tenant (`[[tenants]]`), whose pin decided instead of
    /// GeoIP; absent for everyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantRecord<'a>>,
    /// A summary record: refusals over `transparency.refusal_records_per_second`
    /// are folded into one record per reason and checkpoint interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary<'a>>,
}

/// Which tenant an upload was for and how the proxy knew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord<'a> {
    /// The tenant's name, or `hmac-sha256:…` of it (`tenancy.record`).
    pub name: Cow<'a, str>,
    /// `sni`, `client_cert` or `token`.
    pub source: Cow<'a, str>,
    /// GeoIP's jurisdiction for the client (`null`: none); the record's
    /// `jurisdiction` is the tenant's pin.
    pub origin_jurisdiction: Option<Cow<'a, str>>,
}

/// How many refusals a summary record stands for, and which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary<'a> {
    pub count: u64,
    /// SHA-256 (hex) of the refused requests' ids, each followed by `\n`,
    /// in the order they were refused: a customer holding a request id
    /// and the others can check it was counted.
    pub request_ids_sha256: Cow<'a, str>,
    /// The first and last refusal's time (RFC 3339).
    pub first: Cow<'a, str>,
    pub last: Cow<'a, str>,
}

/// Read from a string only: serde's derive also takes a unit variant as
/// a map (`{"stored": null}`), which the page's verifier refuses (crypto
/// audit, stop 66: one record, two verdicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "Cow<'_, str>")]
pub enum Outcome {
    /// The data centre answered 2xx.
    Stored,
    /// The data centre answered, not 2xx.
    Rejected,
    /// The proxy answered: a residency refusal or a failed delivery.
    Refused,
}

impl TryFrom<Cow<'_, str>> for Outcome {
    type Error = String;

    fn try_from(text: Cow<'_, str>) -> Result<Outcome, String> {
        match &*text {
            "stored" => Ok(Outcome::Stored),
            "rejected" => Ok(Outcome::Rejected),
            "refused" => Ok(Outcome::Refused),
            // serde's own words for an enum.
            other => Err(format!(
                "unknown variant `{other}`, expected one of `stored`, `rejected`, `refused`"
            )),
        }
    }
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
pub struct Client<'a> {
    /// `peer`, `proxy_protocol` or `x_forwarded_for`; absent when the
    /// request was refused before the address was resolved.
    pub source: Option<Cow<'a, str>>,
    /// Minimised as configured: `203.0.113.0/24`, `hmac-sha256:…`, or absent.
    pub address: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyDigest<'a> {
    /// Lowercase hex.
    pub sha256: Cow<'a, str>,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database<'a> {
    pub build_epoch: u64,
    pub sha256: Cow<'a, str>,
}

impl Record<'_> {
    /// The bytes that are logged and hashed: exactly what `serde_json`
    /// writes for the struct (a test holds them equal), written by hand
    /// because this runs for every request and serde's generic path was a
    /// tenth of the proxy's instructions with the log on.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(640);
        out.extend_from_slice(b"{\"v\":");
        push_int(&mut out, self.v);
        out.extend_from_slice(b",\"request_id\":");
        push_str(&mut out, &self.request_id);
        out.extend_from_slice(b",\"time\":");
        push_str(&mut out, &self.time);
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.push(b'"');
        if let Some(reason) = &self.reason {
            out.extend_from_slice(b",\"reason\":");
            push_str(&mut out, reason);
        }
        out.extend_from_slice(b",\"client\":{\"source\":");
        push_opt_str(&mut out, self.client.source.as_deref());
        out.extend_from_slice(b",\"address\":");
        push_opt_str(&mut out, self.client.address.as_deref());
        out.extend_from_slice(b"},\"country\":");
        push_opt_str(&mut out, self.country.as_deref());
        out.extend_from_slice(b",\"jurisdiction\":");
        push_opt_str(&mut out, self.jurisdiction.as_deref());
        out.extend_from_slice(b",\"datacenter\":");
        push_opt_str(&mut out, self.datacenter.as_deref());
        if let Some((first, rest)) = self.also_sent_to.split_first() {
            out.extend_from_slice(b",\"also_sent_to\":[");
            push_str(&mut out, first);
            for dc in rest {
                out.push(b',');
                push_str(&mut out, dc);
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"upstream_status\":");
        match self.upstream_status {
            Some(status) => push_int(&mut out, status),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"body\":");
        match &self.body {
            Some(body) => {
                out.extend_from_slice(b"{\"sha256\":");
                push_str(&mut out, &body.sha256);
                out.extend_from_slice(b",\"bytes\":");
                push_int(&mut out, body.bytes);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"policy_sha256\":");
        push_str(&mut out, &self.policy_sha256);
        out.extend_from_slice(b",\"geoip\":{\"build_epoch\":");
        push_int(&mut out, self.geoip.build_epoch);
        out.extend_from_slice(b",\"sha256\":");
        push_str(&mut out, &self.geoip.sha256);
        out.push(b'}');
        if let Some(tenant) = &self.tenant {
            out.extend_from_slice(b",\"tenant\":{\"name\":");
            push_str(&mut out, &tenant.name);
            out.extend_from_slice(b",\"source\":");
            push_str(&mut out, &tenant.source);
            out.extend_from_slice(b",\"origin_jurisdiction\":");
            push_opt_str(&mut out, tenant.origin_jurisdiction.as_deref());
            out.push(b'}');
        }
        if let Some(summary) = &self.summary {
            out.extend_from_slice(b",\"summary\":{\"count\":");
            push_int(&mut out, summary.count);
            out.extend_from_slice(b",\"request_ids_sha256\":");
            push_str(&mut out, &summary.request_ids_sha256);
            out.extend_from_slice(b",\"first\":");
            push_str(&mut out, &summary.first);
            out.extend_from_slice(b",\"last\":");
            push_str(&mut out, &summary.last);
            out.push(b'}');
        }
        out.push(b'}');
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Record<'static>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string. Almost every value is plain ASCII with nothing to escape
/// and is copied as is; anything else goes through `serde_json`.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // No early exit: the whole scan vectorises, and strings are short.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The client address as the configuration allows it to be recorded.
pub fn minimise(addr: IpAddr, how: &ClientAddress) -> Option<String> {
    let addr = addr.to_canonical();
    match how {
        ClientAddress::Prefix { v4, v6 } => {
            let bits = match addr {
                IpAddr::V4(_) => *v4,
                // 6to4 (2002::/16) carries the client's whole IPv4 address
                // in bits 16..48, all of it inside a /48: cut it where an
                // IPv4 address would be.
                IpAddr::V6(a) if a.segments()[0] == 0x2002 => (*v6).min(16 + *v4),
                // Teredo, NAT64 and IPv4-compatible addresses carry one in
                // their last 32 bits (Teredo's inverted): past 96 bits, no
                // more of it than an IPv4 address keeps.
                IpAddr::V6(_) if residency_core::geo::located(addr).is_ipv4() => {
                    (*v6).min(96 + *v4)
                }
                IpAddr::V6(_) => *v6,
            };
            let net = IpNet::new(addr, bits).ok()?.trunc();
            match net {
                IpNet::V4(net) => {
                    let mut out = String::with_capacity(18);
                    residency_core::origin::push_ip(&mut out, IpAddr::V4(net.addr()));
                    out.push('/');
                    out.push_str(itoa::Buffer::new().format(net.prefix_len()));
                    Some(out)
                }
                IpNet::V6(net) => Some(net.to_string()),
            }
        }
        ClientAddress::Hmac { key } => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, key);
            let tag = match addr {
                IpAddr::V4(a) => hmac::sign(&key, &a.octets()),
                IpAddr::V6(a) => hmac::sign(&key, &a.octets()),
            };
            Some(format!(
                "hmac-sha256:{}",
                residency_core::hex::encode(&tag.as_ref()[..16])
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
    let mut out = [0u8; 24];
    // Years past 9999 are not a concern of a log written today.
    let year = year.clamp(0, 9999) as u32;
    let fields: [(usize, u32, usize); 7] = [
        (0, year, 4),
        (5, month, 2),
        (8, day, 2),
        (11, (rem / 3600) as u32, 2),
        (14, (rem % 3600 / 60) as u32, 2),
        (17, (rem % 60) as u32, 2),
        (20, since.subsec_millis(), 3),
    ];
    for (at, mut value, width) in fields {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = sep;
    }
    out[23] = b'Z';
    // Only ASCII digits and separators were written.
    String::from_utf8(out.to_vec()).unwrap_or_default()
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
        // 6to4: 203.0.113.77 is 2002:cb00:714d::/48; kept to its /24.
        let six_to_four: IpAddr = "2002:cb00:714d::1".parse().unwrap();
        assert_eq!(
            minimise(six_to_four, &prefix).unwrap(),
            "2002:cb00:7100::/40"
        );
        // An IPv4 client in a NAT64 or Teredo address: past 96 bits, kept
        // to its /24 as well.
        let wide = ClientAddress::Prefix { v4: 24, v6: 128 };
        for (addr, kept) in [
            ("64:ff9b::203.0.113.77", "64:ff9b::cb00:7100/120"),
            (
                "2001:0:cb00:7101:8000:f227:3fff:fdd2",
                "2001:0:cb00:7101:8000:f227:3fff:fd00/120",
            ),
            ("2001:db8::1", "2001:db8::1/128"),
        ] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(minimise(addr, &wide).unwrap(), kept);
        }
        for bits in 0..=32 {
            for addr in ["203.0.113.77", "0.0.0.0", "255.255.255.255", "10.9.8.7"] {
                let addr: IpAddr = addr.parse().unwrap();
                let how = ClientAddress::Prefix { v4: bits, v6: 48 };
                let expected = IpNet::new(addr, bits).unwrap().trunc().to_string();
                assert_eq!(minimise(addr, &how).unwrap(), expected);
            }
        }
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
    fn hand_written_json_is_what_serde_json_writes() {
        let texts = [
            "",
            "plain",
            "quote \" and back\\slash",
            "control \u{1}\u{8}\t\n\u{c}\r\u{1f} \u{7f}",
            "unicode: zürich 東京 \u{2028} 🦀",
        ];
        let mut n = 0;
        for text in texts {
            for variant in 0..4u8 {
                let some = |s: &'static str| (variant & 1 == 0).then_some(Cow::Borrowed(s));
                let r = Record {
                    v: VERSION,
                    request_id: text.into(),
                    time: "2026-11-28T04:13:14.123Z".into(),
                    outcome: [Outcome::Stored, Outcome::Rejected, Outcome::Refused]
                        [usize::from(variant) % 3],
                    reason: (variant & 2 == 0).then(|| text.into()),
                    client: Client {
                        source: some("peer"),
                        address: some(text),
                    },
                    country: some(text),
                    jurisdiction: some("ch"),
                    datacenter: some(text),
                    also_sent_to: if variant & 2 == 0 {
                        vec![text.into(), "geneva".into()]
                    } else {
                        Vec::new()
                    },
                    upstream_status: (variant & 1 == 0).then_some(503),
                    body: (variant & 2 == 0).then(|| BodyDigest {
                        sha256: text.into(),
                        bytes: u64::MAX,
                    }),
                    policy_sha256: text.into(),
                    geoip: Database {
                        build_epoch: u64::from(variant) * 1_700_000_000,
                        sha256: text.into(),
                    },
                    tenant: (variant & 1 == 1).then(|| TenantRecord {
                        name: text.into(),
                        source: "sni".into(),
                        origin_jurisdiction: (variant & 2 == 0).then(|| text.into()),
                    }),
                    summary: None,
                };
                assert_eq!(
                    String::from_utf8(r.to_bytes()).unwrap(),
                    serde_json::to_string(&r).unwrap()
                );
                assert_eq!(Record::from_bytes(&r.to_bytes()).unwrap(), r);
                n += 1;
            }
        }
        assert_eq!(n, 20);
    }

    /// The field names `T`'s derived `Deserialize` asks for: a deserializer
    /// that only answers `deserialize_struct`, with them.
    fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{self, Visitor};
        struct Fields;
        #[derive(Debug)]
        struct Found(&'static [&'static str]);
        impl std::fmt::Display for Found {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::error::Error for Found {}
        impl de::Error for Found {
            fn custom<M: std::fmt::Display>(_: M) -> Found {
                Found(&[])
            }
        }
        impl<'de> de::Deserializer<'de> for Fields {
            type Error = Found;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
                Err(Found(&[]))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Found> {
                Err(Found(fields))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        match T::deserialize(Fields) {
            Err(Found(fields)) => fields,
            Ok(_) => unreachable!("nothing to deserialize from"),
        }
    }

    /// Readers of a version refuse a field they do not know (the
    /// verifiers, the page's, a replica reading a record back): a field
    /// added without raising [`VERSION`] makes every older reader call the
    /// record invalid (upgrade audit, stop 68: `also_sent_to` was). This
    /// list is version 1's; a change to it must raise `VERSION`.
    #[test]
    fn the_fields_of_version_1_are_fixed() {
        const VERSION_1: &[&str] = &[
            "also_sent_to",
            "body",
            "body.bytes",
            "body.sha256",
            "client",
            "client.address",
            "client.source",
            "country",
            "datacenter",
            "geoip",
            "geoip.build_epoch",
            "geoip.sha256",
            "jurisdiction",
            "outcome",
            "policy_sha256",
            "reason",
            "request_id",
            "summary",
            "summary.count",
            "summary.first",
            "summary.last",
            "summary.request_ids_sha256",
            "tenant",
            "tenant.name",
            "tenant.origin_jurisdiction",
            "tenant.source",
            "time",
            "upstream_status",
            "v",
        ];
        let every = Record {
            v: VERSION,
            request_id: "r".into(),
            time: "t".into(),
            outcome: Outcome::Refused,
            reason: Some("r".into()),
            client: Client {
                source: Some("peer".into()),
                address: Some("a".into()),
            },
            country: Some("CH".into()),
            jurisdiction: Some("ch".into()),
            datacenter: Some("d".into()),
            also_sent_to: vec!["e".into()],
            upstream_status: Some(201),
            body: Some(BodyDigest {
                sha256: "s".into(),
                bytes: 1,
            }),
            policy_sha256: "p".into(),
            geoip: Database {
                build_epoch: 1,
                sha256: "g".into(),
            },
            tenant: Some(TenantRecord {
                name: "n".into(),
                source: "sni".into(),
                origin_jurisdiction: Some("eu".into()),
            }),
            summary: Some(Summary {
                count: 2,
                request_ids_sha256: "h".into(),
                first: "f".into(),
                last: "l".into(),
            }),
        };
        fn paths(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            if let Some(object) = value.as_object() {
                for (key, value) in object {
                    let path = format!("{prefix}{key}");
                    paths(&format!("{path}."), value, out);
                    out.push(path);
                }
            }
        }
        let mut found = Vec::new();
        paths(
            "",
            &serde_json::from_slice(&every.to_bytes()).unwrap(),
            &mut found,
        );
        found.sort();
        // And every field each struct reads, as serde's derive lists them:
        // one the sample above leaves out (a new optional field, `None`)
        // is counted too (verification, stop 69).
        let mut read: Vec<String> = fields_of::<Record>()
            .iter()
            .map(|f| f.to_string())
            .chain(fields_of::<Client>().iter().map(|f| format!("client.{f}")))
            .chain(
                fields_of::<BodyDigest>()
                    .iter()
                    .map(|f| format!("body.{f}")),
            )
            .chain(fields_of::<Database>().iter().map(|f| format!("geoip.{f}")))
            .chain(
                fields_of::<TenantRecord>()
                    .iter()
                    .map(|f| format!("tenant.{f}")),
            )
            .chain(
                fields_of::<Summary>()
                    .iter()
                    .map(|f| format!("summary.{f}")),
            )
            .collect();
        read.sort();
        assert_eq!(read, found, "a field the sample record leaves out");
        assert_eq!(VERSION, 1, "a new version: list its fields here");
        assert_eq!(
            found, VERSION_1,
            "a record's fields changed: raise record::VERSION (and teach both verifiers, `verify` and the page's verify.js, the new version)"
        );
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
            also_sent_to: Vec::new(),
            upstream_status: Some(201),
            body: Some(BodyDigest {
                sha256: "ab".repeat(32).into(),
                bytes: 1024,
            }),
            policy_sha256: "cd".repeat(32).into(),
            geoip: Database {
                build_epoch: 1,
                sha256: "ef".repeat(32).into(),
            },
            tenant: None,
            summary: None,
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
