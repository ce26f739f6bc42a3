//! Writer for MaxMind DB (`.mmdb`, format spec 2.0) country databases.
//!
//! The proxy decides where an upload may go from the country of the client's
//! address, looked up in an mmdb file. Operators with their own address plans
//! (and our tests and demo) need such a file without MaxMind's tooling, so this
//! module turns a `network,country` CSV into a database that both the
//! `maxminddb` crate and libmaxminddb (`mmdblookup`) can read.
//!
//! Layout: binary search tree over 128-bit addresses (IPv4 lives at
//! `::a.b.c.d/(96+len)` and `::ffff:0:0/96` aliases that subtree), a 16-byte
//! zero separator, the data section with one `{"country": {"iso_code": XX}}`
//! map per country, then `\xAB\xCD\xEFMaxMind.com` and the metadata map.
//! More specific networks win over the networks containing them.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// One CSV row: every address in `network` is in `country`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub network: IpNet,
    /// Upper-case ISO 3166-1 alpha-2 code.
    pub country: String,
}

/// Why a database could not be built; CSV problems carry their line number.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A CSV line that is not `network,country` (1-based line number).
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("network {network}: `{country}` is not an upper-case two-letter ISO country code")]
    InvalidCountry { network: IpNet, country: String },
    #[error("network {network} is listed as both {first} and {second}")]
    Conflict {
        network: IpNet,
        first: String,
        second: String,
    },
    #[error("database too large for {record_size}-bit records ({nodes} tree nodes)")]
    TooLarge { nodes: usize, record_size: u16 },
    #[error("{}: no networks found", path.display())]
    NoRows { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What [`build_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSummary {
    /// Distinct networks in the tree.
    pub networks: usize,
    /// Distinct countries (= data records).
    pub countries: usize,
    /// Size of the written file.
    pub bytes: usize,
}

/// Parses `network,country` rows. Blank lines and `#` comments are skipped; the
/// first remaining line is a header if its first field is a word (`network`).
/// A bare address is a /32 or /128; countries are upper-cased.
pub fn parse_csv(text: &str) -> Result<Vec<Row>, BuildError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_start_matches('\u{feff}').trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .peekable();
    if lines.peek().is_some_and(|(_, line)| is_header(line)) {
        lines.next();
    }
    lines
        .map(|(number, line)| parse_row(number, line))
        .collect()
}

/// A header's first field is a word (`network`); networks have digits or `:`.
fn is_header(line: &str) -> bool {
    let first = line.split(',').next().unwrap_or_default().trim();
    let wordy = |c: char| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | ' ');
    !first.is_empty() && first.chars().all(wordy)
}

fn parse_row(line: usize, text: &str) -> Result<Row, BuildError> {
    let problem = |problem: String| BuildError::Line { line, problem };
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let &[network, country] = fields.as_slice() else {
        let found = fields.len();
        return Err(problem(format!(
            "expected `network,country`, found {found} fields"
        )));
    };
    let parsed = parse_network(network)
        .map_err(|reason| problem(format!("`{network}` is not a network: {reason}")))?;
    if parsed.trunc() != parsed {
        let hint = parsed.trunc();
        return Err(problem(format!(
            "`{network}` has host bits set (did you mean `{hint}`?)"
        )));
    }
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(problem(format!(
            "`{country}` is not a two-letter ISO country code"
        )));
    }
    let country = country.to_ascii_uppercase();
    // A code the proxy does not know (`UK` for GB, `EU`) would build, and
    // every address in it would be a miss: refused here, as in a policy.
    if residency_core::country::Country::parse(&country).is_none() {
        return Err(problem(residency_core::country::Country::unknown(&country)));
    }
    Ok(Row {
        network: parsed,
        country,
    })
}

/// `a.b.c.d/len`, `v6::/len` or a bare address (a /32 or /128).
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let (addr, len) = text
        .split_once('/')
        .ok_or("expected an address or address/len")?;
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("bad address `{addr}`"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.trim().parse().ok().filter(|len| *len <= max);
    len.and_then(|len| IpNet::new(addr, len).ok())
        .ok_or_else(|| format!("prefix length must be 0..={max}"))
}

/// Builds the database; `build_epoch` goes into the metadata (Unix seconds).
pub fn build_country_db(rows: &[Row], build_epoch: u64) -> Result<Vec<u8>, BuildError> {
    build(rows, build_epoch, None, 0).map(|(bytes, _)| bytes)
}

/// Reads `csv`, builds the database and atomically replaces `out` with it.
pub fn build_file(csv: &Path, out: &Path, build_epoch: u64) -> Result<BuildSummary, BuildError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let text = std::fs::read_to_string(csv).map_err(io_error(csv))?;
    let rows = parse_csv(&text)?;
    if rows.is_empty() {
        return Err(BuildError::NoRows {
            path: csv.to_path_buf(),
        });
    }
    let (bytes, (networks, countries)) = build(&rows, build_epoch, None, 0)?;
    // Write a sibling temp file and rename it over `out`, so readers never see half a file.
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io_error(out))?;
    Ok(BuildSummary {
        networks,
        countries,
        bytes: bytes.len(),
    })
}

/// A search tree record: no data, a data record (its offset) or a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Empty,
    Data(usize),
    Node(usize),
}

/// Node `i` of the file is `nodes[i]`; node 0 is the root. Nodes may be shared
/// (the IPv4-mapped alias), so this is a DAG, which the format allows.
struct Tree {
    nodes: Vec<[Rec; 2]>,
}

fn bit(addr: u128, depth: u8) -> usize {
    usize::from((addr >> (127 - depth)) & 1 == 1)
}

impl Tree {
    /// The record covering `addr/prefix` (or the leaf above it).
    fn get(&self, addr: u128, prefix: u8) -> Rec {
        let mut rec = Rec::Node(0);
        for depth in 0..prefix {
            match rec {
                Rec::Node(node) => rec = self.nodes[node][bit(addr, depth)],
                leaf => return leaf,
            }
        }
        rec
    }

    /// Sets the record for `addr/prefix`, splitting leaves on the way down.
    fn set(&mut self, addr: u128, prefix: u8, value: Rec) {
        if prefix == 0 {
            self.nodes[0] = [value; 2];
            return;
        }
        let mut node = 0;
        for depth in 0..prefix - 1 {
            let side = bit(addr, depth);
            node = match self.nodes[node][side] {
                Rec::Node(next) => next,
                leaf => {
                    self.nodes.push([leaf; 2]);
                    self.nodes[node][side] = Rec::Node(self.nodes.len() - 1);
                    self.nodes.len() - 1
                }
            };
        }
        self.nodes[node][bit(addr, prefix - 1)] = value;
    }
}

const IPV4_MAPPED: u128 = 0xffff << 32;

/// Position of a network in the 128-bit tree; IPv4 (also IPv4-mapped) at `::a.b.c.d`.
fn tree_key(network: &IpNet) -> (u128, u8) {
    match network {
        IpNet::V4(net) => (u128::from(u32::from(net.network())), net.prefix_len() + 96),
        IpNet::V6(net) => {
            let addr = u128::from(net.network());
            if net.prefix_len() >= 96 && addr >> 32 == IPV4_MAPPED >> 32 {
                (addr & 0xffff_ffff, net.prefix_len())
            } else {
                (addr, net.prefix_len())
            }
        }
    }
}

/// Returns the database and (distinct networks, distinct countries). Tests
/// (the core's lookup tests among them)
/// pin `record_size` and put `padding` unreferenced bytes before the data
/// records to push record values past 24 bits.
pub fn build(
    rows: &[Row],
    build_epoch: u64,
    record_size: Option<u16>,
    padding: usize,
) -> Result<(Vec<u8>, (usize, usize)), BuildError> {
    let mut networks: BTreeMap<(u128, u8), &Row> = BTreeMap::new();
    for row in rows {
        let country = &row.country;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            let (network, country) = (row.network, country.clone());
            return Err(BuildError::InvalidCountry { network, country });
        }
        if let Some(first) = networks.insert(tree_key(&row.network), row) {
            if first.country != row.country {
                return Err(BuildError::Conflict {
                    network: first.network.trunc(),
                    first: first.country.clone(),
                    second: row.country.clone(),
                });
            }
        }
    }

    // One data record per country: {"country": {"iso_code": "CH"}}.
    let mut data = vec![0; padding];
    let mut offsets: BTreeMap<&str, usize> = BTreeMap::new();
    for row in networks.values() {
        offsets.entry(&row.country).or_insert_with(|| {
            let offset = data.len();
            control(&mut data, MAP, 1);
            string(&mut data, "country");
            control(&mut data, MAP, 1);
            string(&mut data, "iso_code");
            string(&mut data, &row.country);
            offset
        });
    }

    // Less specific first, so more specific networks overwrite what they are inside.
    let mut ordered: Vec<_> = networks.iter().collect();
    ordered.sort_by_key(|((_, prefix), _)| *prefix);
    let mut tree = Tree {
        nodes: vec![[Rec::Empty; 2]],
    };
    for ((addr, prefix), row) in ordered {
        tree.set(*addr, *prefix, Rec::Data(offsets[row.country.as_str()]));
    }
    let ipv4 = tree.get(0, 96);
    if tree.get(IPV4_MAPPED, 96) != ipv4 {
        tree.set(IPV4_MAPPED, 96, ipv4);
    }

    let nodes = tree.nodes.len();
    let max_value = (nodes + 16 + data.len()) as u64;
    let record_size = record_size.unwrap_or(match max_value {
        v if v < 1 << 24 => 24,
        v if v < 1 << 28 => 28,
        _ => 32,
    });
    if max_value >= 1 << record_size {
        return Err(BuildError::TooLarge { nodes, record_size });
    }
    let value = |rec: Rec| match rec {
        Rec::Empty => nodes as u64, // "no data"
        Rec::Data(offset) => (nodes + 16 + offset) as u64,
        Rec::Node(node) => node as u64,
    };
    let mut out = Vec::new();
    for [left, right] in &tree.nodes {
        let (l, r) = (value(*left).to_be_bytes(), value(*right).to_be_bytes());
        match record_size {
            24 => out.extend_from_slice(&[l[5], l[6], l[7], r[5], r[6], r[7]]),
            // The middle byte holds the top nibbles: left's high, right's low.
            28 => out.extend_from_slice(&[l[5], l[6], l[7], l[4] << 4 | r[4], r[5], r[6], r[7]]),
            _ => out.extend_from_slice(&[l[4], l[5], l[6], l[7], r[4], r[5], r[6], r[7]]),
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    write_metadata(&mut out, build_epoch, nodes as u64, record_size);
    Ok((out, (networks.len(), offsets.len())))
}

fn write_metadata(out: &mut Vec<u8>, build_epoch: u64, node_count: u64, record_size: u16) {
    control(out, MAP, 9);
    let numbers = [
        ("binary_format_major_version", UINT16, 2),
        ("binary_format_minor_version", UINT16, 0),
        ("build_epoch", UINT64, build_epoch),
        ("ip_version", UINT16, 6),
        ("node_count", UINT32, node_count),
        ("record_size", UINT16, u64::from(record_size)),
    ];
    for (key, kind, value) in numbers {
        string(out, key);
        uint(out, kind, value);
    }
    string(out, "database_type");
    string(out, DATABASE_TYPE);
    string(out, "description");
    control(out, MAP, 1);
    string(out, "en");
    string(out, DESCRIPTION);
    string(out, "languages");
    control(out, ARRAY, 1);
    string(out, "en");
}

const DATABASE_TYPE: &str = "residency-proxy-Country";
const DESCRIPTION: &str = "residency-proxy network to country database";
const UTF8: u8 = 2;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;

/// Control byte(s): type in the top 3 bits (types > 7 go in an extended byte
/// as `type - 7`), size in the low 5 bits with 29/30/31 meaning 1-3 more bytes.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let size_bits = match size {
        0..=28 => size as u8,
        29..=284 => 29,
        285..=65_820 => 30,
        _ => 31,
    };
    if kind <= 7 {
        out.push(kind << 5 | size_bits);
    } else {
        out.extend_from_slice(&[size_bits, kind - 7]);
    }
    match size_bits {
        29 => out.push((size - 29) as u8),
        30 => out.extend_from_slice(&((size - 285) as u16).to_be_bytes()),
        31 => out.extend_from_slice(&((size - 65_821) as u32).to_be_bytes()[1..]),
        _ => {}
    }
}

fn string(out: &mut Vec<u8>, text: &str) {
    control(out, UTF8, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Unsigned integers are big-endian with leading zero bytes dropped.
fn uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let skip = (value.leading_zeros() / 8) as usize;
    control(out, kind, 8 - skip);
    out.extend_from_slice(&value.to_be_bytes()[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{geoip2, Reader};

    fn row(network: &str, country: &str) -> Row {
        let network = network.parse().unwrap();
        Row {
            network,
            country: country.into(),
        }
    }

    fn rows() -> Vec<Row> {
        vec![
            row("10.20.0.0/16", "CH"), // more specific first: row order must not matter
            row("10.0.0.0/8", "DE"),
            row("192.0.2.7/32", "FR"),
            row("2001:db8::/32", "NL"),
            row("2001:db8:1::/48", "CH"),
            row("10.0.0.0/8", "DE"), // an identical duplicate is fine
        ]
    }

    /// Builds `rows()` and checks lookups and metadata with the `maxminddb` crate.
    fn check(record_size: Option<u16>, padding: usize) {
        let (bytes, counts) = build(&rows(), 1_700_000_000, record_size, padding).unwrap();
        assert_eq!(counts, (5, 4));
        let reader = Reader::from_source(bytes).unwrap();
        reader.verify().unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.database_type, DATABASE_TYPE);
        assert_eq!((meta.build_epoch, meta.ip_version), (1_700_000_000, 6));
        assert_eq!(meta.record_size, record_size.unwrap_or(24));
        let expected = [
            ("10.20.1.1", Some("CH")),
            ("10.30.1.1", Some("DE")),
            ("192.0.2.7", Some("FR")),
            ("192.0.2.8", None),
            ("11.0.0.1", None),
            ("2001:db8:1::5", Some("CH")),
            ("2001:db8:2::1", Some("NL")),
            ("2001:db9::1", None),
            ("::ffff:10.20.1.1", Some("CH")),
            ("::ffff:10.30.1.1", Some("DE")),
            ("::ffff:11.0.0.1", None),
        ];
        for (ip, country) in expected {
            let result = reader.lookup(ip.parse().unwrap()).unwrap();
            let record = result.decode::<geoip2::Country>().unwrap();
            assert_eq!(record.and_then(|r| r.country.iso_code), country, "{ip}");
        }
        let hit = reader.lookup("10.20.1.1".parse().unwrap()).unwrap();
        assert_eq!(hit.network().unwrap().to_string(), "10.20.0.0/16");
    }

    #[test]
    fn maxminddb_reads_every_record_size() {
        check(None, 0);
        check(Some(28), 1 << 24); // data pointers need the 28-bit middle nibbles
        check(Some(32), 1 << 24);
        let error = build(&rows(), 0, Some(24), 1 << 24).unwrap_err();
        assert!(matches!(error, BuildError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn conflicts_bad_countries_and_edge_databases() {
        let mut conflicting = rows();
        conflicting.push(row("10.0.0.0/8", "AT"));
        let error = build_country_db(&conflicting, 0).unwrap_err().to_string();
        assert_eq!(error, "network 10.0.0.0/8 is listed as both DE and AT");
        let error = build_country_db(&[row("::/0", "ch")], 0).unwrap_err();
        assert!(matches!(error, BuildError::InvalidCountry { .. }));
        // Empty, IPv6-only and IPv4-mapped-only databases are valid too.
        let mapped = vec![row("::ffff:10.0.0.0/104", "DE")];
        for rows in [vec![], vec![row("::/0", "CH")], mapped] {
            let reader = Reader::from_source(build_country_db(&rows, 0).unwrap()).unwrap();
            reader.verify().unwrap();
            let hit = reader.lookup("10.1.2.3".parse().unwrap()).unwrap();
            assert_eq!(hit.has_data(), !rows.is_empty(), "{rows:?}");
        }
    }

    /// Fails (on purpose) without `mmdblookup`: CI installs the `mmdb-bin` package.
    #[test]
    fn mmdblookup_reads_build_file_output() {
        let base =
            std::env::temp_dir().join(format!("residency-proxy-build-{}", std::process::id()));
        let (csv, db) = (base.with_extension("csv"), base.with_extension("mmdb"));
        let text = "network,country\n10.0.0.0/8,de\n10.20.0.0/16,CH\n2001:db8::/32,NL\n";
        std::fs::write(&csv, text).unwrap();
        let summary = build_file(&csv, &db, 1_700_000_000);
        let lookup = |ip: &str| {
            let output = std::process::Command::new("mmdblookup")
                .args(["--file".as_ref(), db.as_os_str()])
                .args(["--ip", ip, "country", "iso_code"])
                .output()?;
            let text = [output.stdout, output.stderr].concat();
            Ok::<_, io::Error>(String::from_utf8_lossy(&text).into_owned())
        };
        let ips = [
            "10.20.1.1",
            "10.30.1.1",
            "::ffff:10.20.1.1",
            "2001:db8::1",
            "11.0.0.1",
        ];
        let results = ips.map(lookup);
        let written = std::fs::metadata(&db).map(|m| m.len() as usize);
        let _ = (std::fs::remove_file(&csv), std::fs::remove_file(&db));
        let results = results.map(|r| r.expect("mmdblookup (Debian package `mmdb-bin`) must run"));
        let summary = summary.unwrap();
        assert_eq!((summary.networks, summary.countries), (3, 3));
        assert_eq!(summary.bytes, written.unwrap());
        for (result, country) in results.iter().zip(["\"CH\"", "\"DE\"", "\"CH\"", "\"NL\""]) {
            assert!(result.contains(country), "{result}");
        }
        let miss = &results[4];
        assert!(miss.contains("Could not find an entry"), "{miss}");
    }

    #[test]
    fn csv_parsing() {
        let text =
            "\u{feff}# comment\n\nnetwork,country\n 10.0.0.0/8 , de \n192.0.2.1,FR\n::1,NL\n";
        let expected = [
            row("10.0.0.0/8", "DE"),
            row("192.0.2.1/32", "FR"),
            row("::1/128", "NL"),
        ];
        assert_eq!(parse_csv(text).unwrap(), expected);
        let no_header = parse_csv("10.0.0.0/8,DE").unwrap();
        assert_eq!(no_header, [row("10.0.0.0/8", "DE")]);
        let errors = [
            (
                "network,country\n# c\n10.0.0.0/33,DE",
                "line 3: `10.0.0.0/33` is not a network: prefix length must be 0..=32",
            ),
            ("10.0.0.0/8,DEU", "line 1: `DEU` is not a two-letter ISO"),
            (
                "10.0.0.0/8,DE\n10.0.0.1/8,DE",
                "line 2: `10.0.0.1/8` has host bits",
            ),
            ("10.0.0.0/8", "line 1: expected `network,country`, found 1"),
            (",DE", "line 1: `` is not a network"),
        ];
        for (text, expected) in errors {
            let error = parse_csv(text).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }
}
