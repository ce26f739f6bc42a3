//! GeoIP: client address → country.
//!
//! A MaxMind DB (GeoIP2/GeoLite2 Country, City or Enterprise layout) read
//! through `maxminddb` from memory. The file is read whole at load time rather
//! than memory-mapped: `maxminddb`'s `open_mmap` is `unsafe` (a file truncated
//! under a map faults the process, as nginx's module did on in-place updates),
//! the crate forbids `unsafe`, and a Country database is a few MiB. Operator
//! overrides (`[[geoip.overrides]]`) are consulted first, longest prefix wins.
//! A lookup walks the search tree from a precomputed 16-bit first step
//! ([`tree_index`]), then takes the record's country from a lock-free cache
//! keyed by data offset; only a record seen for the first time is decoded
//! (`country.iso_code` as a borrowed `&str`). It returns a `Copy`
//! [`Country`]: no allocation on the hot path, ~15 ns for IPv4.
//!
//! [`build`] writes Country-type databases (the `geoip build` command, test
//! fixtures and the demo).

mod tree_index;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use maxminddb::{PathElement, Reader};

use crate::country::Country;
use crate::origin::canonical_net;
use tree_index::{SharedBytes, TreeIndex, Walk};

/// Where a country answer came from; the `result` label of
/// `residency_geoip_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Override,
    Hit,
    Miss,
    /// The database holds a record for the address that does not decode
    /// (a damaged file): nothing is known, and the client is not to be
    /// taken for one of no country (whose uploads may go to
    /// `[unknown_origin]`'s jurisdiction).
    Error,
}

impl LookupResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Override => "override",
            LookupResult::Hit => "hit",
            LookupResult::Miss => "miss",
            LookupResult::Error => "error",
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
    #[error("{path}: the record of {network} does not decode ({source}): the file is damaged (download it again); every record is read at load, so that no client is taken for one of no country")]
    Damaged {
        path: String,
        network: String,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{path}: built at {build_epoch} (Unix seconds), more than a day after now ({now}): its age cannot be judged (geoip.max_age), and a clock or build this far off is not trusted")]
    BuiltInTheFuture {
        path: String,
        build_epoch: u64,
        now: u64,
    },
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// The country path of every record: what a lookup decodes.
const COUNTRY_PATH: [PathElement<'static>; 2] =
    [PathElement::Key("country"), PathElement::Key("iso_code")];

/// Decodes the country of every record the database's search tree points
/// to, once each: one that does not decode (a damaged file) refuses the
/// database at load (`check-config`, start, reload), rather than leaving
/// its clients to a refusal at each upload (fuzz audit, stop 64: they were
/// taken for clients of no country). The tree is walked visiting each node
/// once ([`TreeIndex::records`]): listing its networks instead let a
/// crafted 1 KB file with 2^128 of them hang the load, the reload and the
/// shutdown behind it (verification, stop 64). A country database has a
/// few hundred records, a city one some hundred thousand.
fn check_records(
    reader: &Reader<SharedBytes>,
    bytes: &std::sync::Arc<[u8]>,
    path: &str,
) -> Result<(), GeoError> {
    let meta = reader.metadata();
    let ipv4 = meta.ip_version == 4;
    let damaged = |network: String, source| GeoError::Damaged {
        path: path.to_string(),
        network,
        source,
    };
    let records = TreeIndex::records(
        bytes.clone(),
        meta.node_count as usize,
        meta.record_size,
        meta.ip_version,
    )
    .map_err(|why| {
        damaged(
            "the search tree".into(),
            maxminddb::MaxMindDbError::invalid_database(why),
        )
    })?;
    for (bits, len) in records {
        let (addr, network) = if ipv4 {
            let a = std::net::Ipv4Addr::from(bits as u32);
            (IpAddr::V4(a), format!("{a}/{len}"))
        } else if bits >> 32 == 0 && len >= 96 {
            // IPv4 under ::/96, as the database's own networks name it.
            let a = std::net::Ipv4Addr::from(bits as u32);
            (
                IpAddr::V6(std::net::Ipv6Addr::from(bits)),
                format!("{a}/{}", len - 96),
            )
        } else {
            let a = std::net::Ipv6Addr::from(bits);
            (IpAddr::V6(a), format!("{a}/{len}"))
        };
        // The country, and the names of the keys on its path: a key whose
        // bytes are not text (`coun\xffry`, damage) would make the record
        // read as one without a country (verification, stop 64).
        type Keys<'a> = std::collections::BTreeMap<&'a str, serde::de::IgnoredAny>;
        reader
            .lookup(addr)
            .and_then(|found| {
                found.decode::<Keys<'_>>()?;
                found.decode_path::<Option<Keys<'_>>>(&COUNTRY_PATH[..1])?;
                found.decode_path::<Option<&str>>(&COUNTRY_PATH)
            })
            .map_err(|e| damaged(network, e))?;
    }
    Ok(())
}

/// Overrides as masks, per family, longest prefix first: a match is an AND
/// and a compare.
struct Overrides {
    v4: Vec<(u32, u32, Country)>,
    v6: Vec<(u128, u128, Country)>,
}

impl Overrides {
    fn new(sorted: &[(IpNet, Country)]) -> Overrides {
        let mut o = Overrides {
            v4: Vec::new(),
            v6: Vec::new(),
        };
        for (net, country) in sorted {
            match net {
                IpNet::V4(n) => {
                    o.v4.push((u32::from(n.network()), u32::from(n.netmask()), *country))
                }
                IpNet::V6(n) => {
                    o.v6.push((u128::from(n.network()), u128::from(n.netmask()), *country))
                }
            }
        }
        o
    }

    /// The longest override matching `addr`, with its prefix length.
    fn find(&self, addr: IpAddr) -> Option<(Country, u32)> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find(|(net, mask, _)| a & mask == *net)
                    .map(|o| (o.2, o.1.count_ones()))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find(|(net, mask, _)| a & mask == *net)
                    .map(|o| (o.2, o.1.count_ones()))
            }
        }
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A loaded GeoIP database with its overrides.
pub struct Geo {
    reader: Reader<SharedBytes>,
    /// Fast walks (see [`tree_index`]); `None` for layouts it declines.
    index: Option<TreeIndex>,
    /// Sorted by prefix length, longest first: the first match wins.
    overrides: Overrides,
    database_type: String,
    /// SHA-256 of the database file, for decision records.
    sha256: [u8; 32],
    sha256_hex: String,
    cache: RecordCache,
    /// An IPv4-only database: an IPv6 client has no country in it.
    ipv4_only: bool,
    /// When a record that does not decode was last logged (seconds since
    /// the Unix epoch, 0: never).
    error_logged: AtomicU64,
}

/// Whether a line last logged at `last` (Unix seconds) may be logged again
/// now: at most once a minute, however many callers race.
fn once_a_minute(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1));
    let then = last.load(Ordering::Relaxed);
    (then == 0 || now >= then + 60)
        && last
            .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
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
    /// A database file's contents, read by the caller (this crate does no
    /// I/O); `path` names it in errors and logs.
    pub fn from_file(
        path: &Path,
        bytes: Vec<u8>,
        overrides: Vec<(IpNet, Country)>,
    ) -> Result<Geo, GeoError> {
        Self::new(bytes, overrides, path.display().to_string(), true)
    }

    /// A database held in memory (demo, tests).
    pub fn from_bytes(bytes: Vec<u8>, overrides: Vec<(IpNet, Country)>) -> Result<Geo, GeoError> {
        Self::new(bytes, overrides, "<memory>".into(), true)
    }

    /// As [`Geo::from_bytes`] without reading every record first: for tests
    /// of what a lookup whose record does not decode is refused with (a
    /// database loaded otherwise has none).
    #[doc(hidden)]
    pub fn from_bytes_unverified(
        bytes: Vec<u8>,
        overrides: Vec<(IpNet, Country)>,
    ) -> Result<Geo, GeoError> {
        Self::new(bytes, overrides, "<memory>".into(), false)
    }

    fn new(
        bytes: Vec<u8>,
        mut overrides: Vec<(IpNet, Country)>,
        path: String,
        verify: bool,
    ) -> Result<Geo, GeoError> {
        let sha256 = sha256(&bytes);
        let bytes: std::sync::Arc<[u8]> = bytes.into();
        let reader =
            Reader::from_source(SharedBytes(bytes.clone())).map_err(|source| GeoError::Open {
                path: path.clone(),
                source,
            })?;
        let meta = reader.metadata();
        let index = TreeIndex::build(
            bytes.clone(),
            meta.node_count as usize,
            meta.record_size,
            meta.ip_version,
        );
        let ipv4_only = meta.ip_version == 4;
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
        if verify {
            check_records(&reader, &bytes, &path)?;
        }
        for (net, _) in &mut overrides {
            *net = canonical_net(*net);
        }
        overrides.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Ok(Geo {
            reader,
            overrides: Overrides::new(&overrides),
            database_type,
            sha256,
            sha256_hex: crate::hex::encode(&sha256),
            cache: RecordCache::new(),
            index,
            ipv4_only,
            error_logged: AtomicU64::new(0),
        })
    }

    /// The country of a (canonical) address. A database record without a
    /// `country` (anycast, satellite) is a miss: we never fall back to
    /// `registered_country`. A Teredo address is located by its client's
    /// public IPv4 address ([`located`]); an override of the address as it
    /// came and one of that IPv4 address are compared by how many of the
    /// IPv6 address's bits each fixes ([`carried_at`]): the longer wins (a
    /// tie, the IPv6 one). An IPv6 address that carries an IPv4
    /// address no packet from the internet comes from (private, loopback,
    /// link-local, shared, multicast, reserved: RFC 3056 has a 6to4
    /// site's be public) is unknown, unless an override matches the IPv6
    /// address itself: an override of an office's private range does not
    /// reach a 6to4 or Teredo address made up around it.
    pub fn lookup(&self, addr: IpAddr) -> (Option<Country>, LookupResult) {
        let canonical = addr.to_canonical();
        let addr = located(canonical);
        let own = self.overrides.find(canonical);
        if let (IpAddr::V4(carried), IpAddr::V6(v6)) = (addr, canonical) {
            if !routable(carried) {
                return match own {
                    Some((c, _)) => (Some(c), LookupResult::Override),
                    None => (None, LookupResult::Miss),
                };
            }
            // (IPv6 audit, stop 66: an IPv6 override won whatever its
            // length — `::/0` over an IPv4 /24.)
            let fixed = self
                .overrides
                .find(addr)
                .map(|(c, len)| (c, carried_at(v6) + len));
            let wins = match (own, fixed) {
                (Some((c, own_len)), Some((_, fixed_len))) if own_len >= fixed_len => Some(c),
                (_, Some((c, _))) | (Some((c, _)), None) => Some(c),
                (None, None) => None,
            };
            if let Some(c) = wins {
                return (Some(c), LookupResult::Override);
            }
        } else if let Some((c, _)) = own {
            return (Some(c), LookupResult::Override);
        }
        self.in_database_at(addr)
    }

    /// The country the database alone gives `addr`, overrides not
    /// applied (for canaries, which test the database).
    pub fn in_database(&self, addr: IpAddr) -> (Option<Country>, LookupResult) {
        self.in_database_at(located(addr.to_canonical()))
    }

    /// [`Geo::in_database`] of an address already [`located`].
    #[inline]
    fn in_database_at(&self, addr: IpAddr) -> (Option<Country>, LookupResult) {
        if let Some(index) = &self.index {
            let walked = match addr {
                IpAddr::V4(a) => index.lookup(u32::from(a)),
                IpAddr::V6(a) => index.lookup6(u128::from(a)),
            };
            match walked {
                Some(Walk::NotFound) => return (None, LookupResult::Miss),
                Some(Walk::Data(offset)) => {
                    if let Some(country) = self.cache.get(offset) {
                        return Self::answer(country);
                    }
                }
                None => {}
            }
        }
        if self.ipv4_only && addr.is_ipv6() {
            // Not an error of the database: an address it cannot know (and
            // one any client can send, so not worth a log line each).
            return (None, LookupResult::Miss);
        }
        let found = self.reader.lookup(addr).and_then(|r| {
            // Many networks share one record: decode each record once.
            let offset = r.offset();
            if let Some(cached) = offset.and_then(|o| self.cache.get(o)) {
                return Ok(cached);
            }
            let code: Option<&str> = r.decode_path(&COUNTRY_PATH)?;
            let country = code.and_then(Country::parse);
            if let Some(o) = offset {
                self.cache.put(o, country);
            }
            Ok(country)
        });
        match found {
            Ok(country) => Self::answer(country),
            Err(e) => {
                // Any client in the range can cause it: once a minute.
                if once_a_minute(&self.error_logged) {
                    tracing::error!(error = %e, database = %self.sha256_hex, "GeoIP lookup failed: the database's record for this address does not decode (a damaged file?); uploads from such addresses are refused (503 geoip_error), not taken for unknown origins, until a good database is loaded");
                }
                (None, LookupResult::Error)
            }
        }
    }

    fn answer(country: Option<Country>) -> (Option<Country>, LookupResult) {
        match country {
            Some(c) => (Some(c), LookupResult::Hit),
            None => (None, LookupResult::Miss),
        }
    }

    /// The database's `build_epoch` (seconds since the Unix epoch).
    /// SHA-256 of the database file as loaded.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// [`Geo::sha256`] as lowercase hex.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256_hex
    }

    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    pub fn database_type(&self) -> &str {
        &self.database_type
    }
}

/// Whether packets from the internet can come from `v4`: not a private
/// (RFC 1918), loopback, link-local, shared (RFC 6598), "this network",
/// multicast, reserved or broadcast address. (Documentation ranges count
/// as routable here: the tests' fixtures use them as public addresses.)
fn routable(v4: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)))
}

/// The address a lookup locates: the canonical form, and for an IPv6
/// address that carries the IPv4 address its packets are sent to, that
/// IPv4 address:
///
/// * Teredo (RFC 4380, `2001::/32`): its client's public address, the last
///   32 bits inverted. A GeoIP database's alias of `2001::/32` to its IPv4
///   tree would locate the Teredo server instead (bits 32–63), which the
///   client chooses;
/// * 6to4 (RFC 3056, `2002::/16`): its site's address, bits 16–47, where
///   MaxMind's databases alias it too;
/// * IPv4-compatible (`::a.b.c.d`, deprecated by RFC 4291): the IPv4
///   tree's own place in a database (`::/96`);
/// * IPv4-embedded under the NAT64 well-known prefix (RFC 6052 §2.1,
///   `64:ff9b::/96`): the IPv4 client a stateless translator (SIIT-DC,
///   RFC 7755) in front of an IPv6-only proxy stands for, its last 32
///   bits. A client cannot open a connection from such an address itself:
///   the answers to it go to the translator.
///
/// So an override of an IPv4 network also matches the same host reached
/// over 6to4 or as `::a.b.c.d` (which the database already locates there).
pub fn located(addr: IpAddr) -> IpAddr {
    const NAT64_WELL_KNOWN: u128 = 0x0064_ff9b_u128 << 96;
    match addr.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..2] == [0x2001, 0] => {
            IpAddr::V4(std::net::Ipv4Addr::from(!(u128::from(v6) as u32)))
        }
        IpAddr::V6(v6) if v6.segments()[0] == 0x2002 => {
            IpAddr::V4(std::net::Ipv4Addr::from((u128::from(v6) >> 80) as u32))
        }
        IpAddr::V6(v6) if u128::from(v6) >> 32 == 0 && u128::from(v6) > 1 => {
            IpAddr::V4(std::net::Ipv4Addr::from(u128::from(v6) as u32))
        }
        IpAddr::V6(v6) if u128::from(v6) >> 32 == NAT64_WELL_KNOWN >> 32 => {
            IpAddr::V4(std::net::Ipv4Addr::from(u128::from(v6) as u32))
        }
        canonical => canonical,
    }
}

/// How many of an IPv6 address's bits say that it carries an IPv4 address
/// ([`located`]), before that address's own bits: a 6to4 address's prefix
/// (16), a Teredo one's (32: the server's address between them is not the
/// client's), the 96 of an IPv4-compatible or NAT64 one. An override of
/// the carried address's `/n` fixes that many plus `n` of the IPv6
/// address's bits.
fn carried_at(v6: std::net::Ipv6Addr) -> u32 {
    match v6.segments()[0] {
        0x2002 => 16,
        0x2001 => 32,
        _ => 96,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use residency_tools::geoip::{self as build, build_country_db, Row};

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

    /// What `maxminddb` alone answers: the reference for the fast paths.
    fn reference(g: &Geo, addr: IpAddr) -> Option<Country> {
        const PATH: [PathElement<'static>; 2] =
            [PathElement::Key("country"), PathElement::Key("iso_code")];
        let code: Option<&str> = g.reader.lookup(addr).unwrap().decode_path(&PATH).unwrap();
        code.and_then(Country::parse)
    }

    /// A Teredo client is located by its own public IPv4 address, not by
    /// the Teredo server it chose (where a database aliasing `2001::/32` to
    /// its IPv4 tree, as MaxMind's do, would place it); other IPv6
    /// addresses are looked up as they are.
    /// A 6to4 address (`2002:c000:22d::/48` is 192.0.2.45's site) and an
    /// IPv4-compatible one (`::192.0.2.45`) are located by the IPv4 address
    /// they carry, so an override of its network applies to them too (it
    /// was skipped: the database's alias still answered its own country).
    #[test]
    fn an_override_of_an_ipv4_network_holds_over_6to4() {
        let rows = vec![
            Row {
                network: "192.0.2.0/24".parse().unwrap(),
                country: "CH".into(),
            },
            // What MaxMind's alias of 2002::/16 answers for it.
            Row {
                network: "2002:c000:200::/40".parse().unwrap(),
                country: "CH".into(),
            },
        ];
        assert_eq!(located(ip("2002:c000:22d::1")), ip("192.0.2.45"));
        assert_eq!(located(ip("::192.0.2.45")), ip("192.0.2.45"));
        assert_eq!(located(ip("::1")), ip("::1"));
        assert_eq!(located(ip("::")), ip("::"));
        let db = build_country_db(&rows, 1_700_000_000).unwrap();
        let g = Geo::from_bytes(db, Vec::new()).unwrap();
        assert_eq!(g.lookup(ip("2002:c000:22d::1")).0, Country::parse("CH"));
        let db = build_country_db(&rows, 1_700_000_000).unwrap();
        let corrected = vec![(
            "192.0.2.0/24".parse().unwrap(),
            Country::parse("JP").unwrap(),
        )];
        let g = Geo::from_bytes(db, corrected).unwrap();
        for addr in ["192.0.2.45", "2002:c000:22d::1", "::192.0.2.45"] {
            assert_eq!(
                g.lookup(ip(addr)),
                (Country::parse("JP"), LookupResult::Override),
                "{addr}"
            );
        }
    }

    /// An override of an IPv6 address that carries an IPv4 one, against
    /// one of that IPv4 address: the one fixing more of the IPv6 address's
    /// bits wins, as for any two overrides (IPv6 audit, stop 66: `::/0` and
    /// `2002::/16` won over an IPv4 /24 for every form of its addresses).
    #[test]
    fn the_longer_override_wins_for_an_address_carrying_an_ipv4_one() {
        let rows = vec![Row {
            network: "192.0.2.0/24".parse().unwrap(),
            country: "CH".into(),
        }];
        let overrides = |list: &[(&str, &str)]| -> Vec<(IpNet, Country)> {
            list.iter()
                .map(|(n, c)| (n.parse().unwrap(), Country::parse(c).unwrap()))
                .collect()
        };
        let db = || build_country_db(&rows, 1_700_000_000).unwrap();
        let g = Geo::from_bytes(
            db(),
            overrides(&[
                ("192.0.2.0/24", "JP"),
                ("2002::/16", "US"),
                ("2001::/32", "US"),
                ("::/0", "US"),
            ]),
        )
        .unwrap();
        for addr in [
            "192.0.2.45",
            "2002:c000:22d::1",
            "::192.0.2.45",
            "64:ff9b::192.0.2.45",
            "2001:0:cb00:7101:8000:f227:3fff:fdd2",
        ] {
            assert_eq!(
                g.lookup(ip(addr)),
                (Country::parse("JP"), LookupResult::Override),
                "{addr}"
            );
        }
        // Other IPv6 addresses: `::/0`'s.
        assert_eq!(g.lookup(ip("2001:db8::1")).0, Country::parse("US"));
        // A 6to4 site's /48 fixes more than its IPv4 /24 (16 + 24 bits);
        // a NAT64 /96 fewer than the IPv4 /24 under it (96 + 24).
        let g = Geo::from_bytes(
            db(),
            overrides(&[
                ("192.0.2.0/24", "JP"),
                ("2002:c000:22d::/48", "DE"),
                ("64:ff9b::/96", "US"),
            ]),
        )
        .unwrap();
        assert_eq!(g.lookup(ip("2002:c000:22d::1")).0, Country::parse("DE"));
        assert_eq!(g.lookup(ip("2002:c000:22e::1")).0, Country::parse("JP"));
        assert_eq!(g.lookup(ip("64:ff9b::192.0.2.45")).0, Country::parse("JP"));
        assert_eq!(
            g.lookup(ip("64:ff9b::198.51.100.1")).0,
            Country::parse("US")
        );
    }

    #[test]
    fn a_teredo_client_is_located_by_its_own_address() {
        let rows = vec![
            Row {
                network: "192.0.2.0/24".parse().unwrap(),
                country: "CH".into(),
            },
            // What an alias of 2001::/32 answers for a US Teredo server.
            Row {
                network: "2001::/32".parse().unwrap(),
                country: "US".into(),
            },
            Row {
                network: "2001:db8::/32".parse().unwrap(),
                country: "DE".into(),
            },
        ];
        let db = build_country_db(&rows, 1_700_000_000).unwrap();
        let g = Geo::from_bytes(db, Vec::new()).unwrap();
        // Server 203.0.113.1, client 192.0.2.45 (inverted: 3fff:fdd2).
        let teredo = ip("2001:0:cb00:7101:8000:f227:3fff:fdd2");
        assert_eq!(located(teredo), ip("192.0.2.45"));
        assert_eq!(g.lookup(teredo).0, Country::parse("CH"));
        assert_eq!(g.lookup(ip("2001:db8::1")).0, Country::parse("DE"));
        assert_eq!(located(ip("::ffff:192.0.2.45")), ip("192.0.2.45"));
        // A NAT64 (SIIT) translator's address for an IPv4 client.
        assert_eq!(located(ip("64:ff9b::192.0.2.45")), ip("192.0.2.45"));
        assert_eq!(g.lookup(ip("64:ff9b::c000:22d")).0, Country::parse("CH"));
        for beside in [
            "64:ff9b:0:0:0:1:c000:22d",
            "64:ff9b:1::c000:22d",
            "64:ff9a::c000:22d",
        ] {
            assert_eq!(located(ip(beside)), ip(beside), "{beside}");
        }
        // One around a private address is unknown, though an override
        // covers that address (6to4, Teredo, IPv4-compatible alike).
        let office = vec![(
            "10.20.0.0/16".parse().unwrap(),
            Country::parse("CH").unwrap(),
        )];
        let g = Geo::from_bytes(build_country_db(&rows, 1_700_000_000).unwrap(), office).unwrap();
        assert_eq!(g.lookup(ip("10.20.0.1")).0, Country::parse("CH"));
        let around = [
            "2002:a14:1::1",                        // 6to4
            "2001:0:cb00:7101:8000:f227:f5eb:fffe", // Teredo, client 10.20.0.1
            "::10.20.0.1",                          // IPv4-compatible
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:6440:1::1",                       // 6to4 of 100.64.0.1
            "64:ff9b::10.20.0.1",                   // NAT64
        ];
        for addr in around {
            assert_eq!(g.lookup(ip(addr)), (None, LookupResult::Miss), "{addr}");
        }
        assert_eq!(g.lookup(teredo).0, Country::parse("CH"));
        // An override of Teredo's prefix still matches first.
        let db = build_country_db(&rows, 1_700_000_000).unwrap();
        let refused = vec![("2001::/32".parse().unwrap(), Country::parse("JP").unwrap())];
        let g = Geo::from_bytes(db, refused).unwrap();
        assert_eq!(
            g.lookup(teredo),
            (Country::parse("JP"), LookupResult::Override)
        );
    }

    /// The /16 index and the record cache answer exactly what `maxminddb`
    /// does, for every record size, nested networks of every length, and
    /// addresses on and around every network boundary.
    #[test]
    fn fast_paths_agree_with_maxminddb() {
        let codes = ["CH", "DE", "US", "FR", "JP", "GB"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut rows = Vec::new();
        for i in 0..600 {
            let prefix = 8 + (next() % 25) as u8; // /8 … /32
            let addr = std::net::Ipv4Addr::from(next() as u32);
            rows.push(build::Row {
                network: IpNet::new(IpAddr::V4(addr), prefix).unwrap().trunc(),
                country: codes[i % codes.len()].into(),
            });
        }
        for i in 0..300 {
            let prefix = 16 + (next() % 113) as u8; // /16 … /128
                                                    // Mostly under 2001::/16 so networks nest and share prefixes.
            let addr = (0x2001u128 << 112) | u128::from(next()) << 48 | u128::from(next() >> 16);
            let addr = if i % 5 == 0 {
                u128::from(next()) << 64 | u128::from(next())
            } else {
                addr
            };
            let net = IpNet::new(IpAddr::V6(addr.into()), prefix).unwrap().trunc();
            // IPv4-mapped space is the IPv4 tree; covered above.
            if net.contains(&IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)) {
                continue;
            }
            rows.push(build::Row {
                network: net,
                country: codes[i % codes.len()].into(),
            });
        }
        rows.sort_by_key(|r| (r.network.network(), r.network.prefix_len()));
        rows.dedup_by_key(|r| r.network);
        for (record_size, padding) in [(24, 0), (28, 1 << 24), (32, 1 << 28)] {
            let (db, _) = build::build(&rows, 1, Some(record_size), padding).unwrap();
            let g = Geo::from_bytes(db, Vec::new()).unwrap();
            assert!(g.index.is_some(), "{record_size}-bit records are indexed");
            let mut probes: Vec<u32> = (0..5000).map(|_| next() as u32).collect();
            for r in &rows {
                if let (IpAddr::V4(lo), IpAddr::V4(hi)) =
                    (r.network.network(), r.network.broadcast())
                {
                    let (lo, hi) = (u32::from(lo), u32::from(hi));
                    probes.extend([lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]);
                }
            }
            let mut probes: Vec<IpAddr> =
                probes.into_iter().map(|p| IpAddr::V4(p.into())).collect();
            for _ in 0..5000 {
                probes.push(IpAddr::V6(
                    ((0x2001u128 << 112) | u128::from(next()) << 48 | u128::from(next())).into(),
                ));
            }
            for r in &rows {
                if let (IpAddr::V6(lo), IpAddr::V6(hi)) =
                    (r.network.network(), r.network.broadcast())
                {
                    let (lo, hi) = (u128::from(lo), u128::from(hi));
                    for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                        probes.push(IpAddr::V6(a.into()));
                    }
                }
            }
            let index = g.index.as_ref().unwrap();
            for addr in &probes {
                let walked = match addr.to_canonical() {
                    IpAddr::V4(a) => index.lookup(u32::from(a)),
                    IpAddr::V6(a) => index.lookup6(u128::from(a)),
                };
                assert!(walked.is_some(), "the index answers {addr} itself");
            }
            for _round in 0..2 {
                // Twice: the second round answers from the cache.
                for addr in &probes {
                    let addr = addr.to_canonical();
                    assert_eq!(
                        g.lookup(addr).0,
                        reference(&g, located(addr)),
                        "{addr} ({record_size}-bit)"
                    );
                }
            }
        }
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
