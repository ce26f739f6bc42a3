//! GeoIP: client address → country.
//!
//! A MaxMind DB (GeoIP2/GeoLite2 Country, City or Enterprise layout) read
//! through `maxminddb` from memory. The file is read whole at load time rather
//! than memory-mapped: `maxminddb`'s `open_mmap` is `unsafe` (a file truncated
//! under a map faults the process, as nginx's module did on in-place updates),
//! the crate forbids `unsafe`, and a Country database is a few MiB. Operator
//! overrides (`[[geoip.overrides]]`) are consulted first, longest prefix wins.
//! The per-request lookup decodes `country.iso_code` as a borrowed `&str` and
//! returns a `Copy` [`Country`]: no allocation on the hot path.
//!
//! [`build`] writes Country-type databases (the `geoip build` command, test
//! fixtures and the demo).

pub mod build;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use maxminddb::{PathElement, Reader};

use crate::country::Country;
use crate::origin::canonical_net;

/// Where a country answer came from; the `result` label of
/// `residency_geoip_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Override,
    Hit,
    Miss,
}

impl LookupResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Override => "override",
            LookupResult::Hit => "hit",
            LookupResult::Miss => "miss",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: cannot open GeoIP database: {source}")]
    Open {
        path: String,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{path}: database type `{found}` has no country data (want a Country, City or Enterprise database)")]
    WrongType { path: String, found: String },
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// A loaded GeoIP database with its overrides.
pub struct Geo {
    reader: Reader<Vec<u8>>,
    /// Sorted by prefix length, longest first: the first match wins.
    overrides: Vec<(IpNet, Country)>,
    database_type: String,
    /// SHA-256 of the database file, for decision records.
    sha256: [u8; 32],
    cache: RecordCache,
}

/// The country of recently seen database records, by data-section offset:
/// a fixed-size, lock-free, direct-mapped cache. A country database has a
/// few hundred distinct records behind millions of networks, so after
/// warm-up a lookup is the tree walk alone — no decoding, no parsing.
/// Collisions just decode again; the cache never holds more than its slots.
struct RecordCache {
    slots: Box<[AtomicU64]>,
}

impl RecordCache {
    const BITS: u32 = 12;
    const EMPTY: u64 = u64::MAX;
    /// `Country::index` values are below 676; this marks "no country".
    const NO_COUNTRY: u64 = 0xffff;

    fn new() -> RecordCache {
        RecordCache {
            slots: (0..1usize << Self::BITS)
                .map(|_| AtomicU64::new(Self::EMPTY))
                .collect(),
        }
    }

    fn slot(&self, offset: u64) -> &AtomicU64 {
        let i = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - Self::BITS);
        &self.slots[i as usize]
    }

    fn get(&self, offset: usize) -> Option<Option<Country>> {
        let offset = u64::try_from(offset).ok().filter(|o| *o < 1 << 48)?;
        let entry = self.slot(offset).load(Ordering::Relaxed);
        if entry == Self::EMPTY || entry >> 16 != offset {
            return None;
        }
        Some(match entry & 0xffff {
            Self::NO_COUNTRY => None,
            index => Some(Country::from_index(index as usize)?),
        })
    }

    fn put(&self, offset: usize, country: Option<Country>) {
        let Some(offset) = u64::try_from(offset).ok().filter(|o| *o < 1 << 48) else {
            return;
        };
        let code = country.map_or(Self::NO_COUNTRY, |c| c.index() as u64);
        self.slot(offset)
            .store(offset << 16 | code, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geo")
            .field("database_type", &self.database_type)
            .field("build_epoch", &self.build_epoch())
            .field("overrides", &self.overrides.len())
            .finish()
    }
}

impl Geo {
    /// Reads a database file and checks its type.
    pub fn open(path: &Path, overrides: Vec<(IpNet, Country)>) -> Result<Geo, GeoError> {
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| GeoError::Open {
            path: label.clone(),
            source: maxminddb::MaxMindDbError::Io(e),
        })?;
        let sha256 = sha256(&bytes);
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::Open {
            path: label.clone(),
            source,
        })?;
        Self::new(reader, overrides, label, sha256)
    }

    /// A database held in memory (demo, tests).
    pub fn from_bytes(bytes: Vec<u8>, overrides: Vec<(IpNet, Country)>) -> Result<Geo, GeoError> {
        let sha256 = sha256(&bytes);
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::Open {
            path: "<memory>".into(),
            source,
        })?;
        Self::new(reader, overrides, "<memory>".into(), sha256)
    }

    fn new(
        reader: Reader<Vec<u8>>,
        mut overrides: Vec<(IpNet, Country)>,
        path: String,
        sha256: [u8; 32],
    ) -> Result<Geo, GeoError> {
        let database_type = reader.metadata().database_type.clone();
        if !["Country", "City", "Enterprise"]
            .iter()
            .any(|t| database_type.contains(t))
        {
            return Err(GeoError::WrongType {
                path,
                found: database_type,
            });
        }
        for (net, _) in &mut overrides {
            *net = canonical_net(*net);
        }
        overrides.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Ok(Geo {
            reader,
            overrides,
            database_type,
            sha256,
            cache: RecordCache::new(),
        })
    }

    /// The country of a (canonical) address. A database record without a
    /// `country` (anycast, satellite) is a miss: we never fall back to
    /// `registered_country`.
    pub fn lookup(&self, addr: IpAddr) -> (Option<Country>, LookupResult) {
        let addr = addr.to_canonical();
        if let Some((_, c)) = self.overrides.iter().find(|(net, _)| net.contains(&addr)) {
            return (Some(*c), LookupResult::Override);
        }
        const PATH: [PathElement<'static>; 2] =
            [PathElement::Key("country"), PathElement::Key("iso_code")];
        let found = self.reader.lookup(addr).and_then(|r| {
            // Many networks share one record: decode each record once.
            let offset = r.offset();
            if let Some(cached) = offset.and_then(|o| self.cache.get(o)) {
                return Ok(cached);
            }
            let code: Option<&str> = r.decode_path(&PATH)?;
            let country = code.and_then(Country::parse);
            if let Some(o) = offset {
                self.cache.put(o, country);
            }
            Ok(country)
        });
        match found {
            Ok(Some(c)) => (Some(c), LookupResult::Hit),
            Ok(None) => (None, LookupResult::Miss),
            Err(e) => {
                tracing::warn!(error = %e, "GeoIP lookup failed; treating the origin as unknown");
                (None, LookupResult::Miss)
            }
        }
    }

    /// The database's `build_epoch` (seconds since the Unix epoch).
    /// SHA-256 of the database file as loaded.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    pub fn database_type(&self) -> &str {
        &self.database_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use build::{build_country_db, Row};

    fn geo(overrides: &[(&str, &str)]) -> Geo {
        let rows = vec![
            Row {
                network: "192.0.2.0/24".parse().unwrap(),
                country: "CH".into(),
            },
            Row {
                network: "2001:db8::/32".parse().unwrap(),
                country: "DE".into(),
            },
        ];
        let db = build_country_db(&rows, 1_700_000_000).unwrap();
        let ov = overrides
            .iter()
            .map(|(n, c)| (n.parse().unwrap(), Country::parse(c).unwrap()))
            .collect();
        Geo::from_bytes(db, ov).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lookups() {
        let g = geo(&[
            ("192.0.2.128/25", "LI"),
            ("192.0.2.0/16", "AT"),
            ("192.0.2.200/32", "FR"),
        ]);
        let c = |s: &str| g.lookup(ip(s));
        let ch = Country::parse("CH");
        assert_eq!(
            c("192.0.2.1"),
            (Country::parse("AT"), LookupResult::Override)
        );
        assert_eq!(
            c("192.0.2.130"),
            (Country::parse("LI"), LookupResult::Override)
        );
        assert_eq!(
            c("192.0.2.200"),
            (Country::parse("FR"), LookupResult::Override)
        );
        assert_eq!(c("2001:db8::1"), (Country::parse("DE"), LookupResult::Hit));
        assert_eq!(c("198.51.100.1"), (None, LookupResult::Miss));
        let g = geo(&[]);
        assert_eq!(g.lookup(ip("::ffff:192.0.2.9")), (ch, LookupResult::Hit));
        assert_eq!(g.build_epoch(), 1_700_000_000);
    }
}
