//! The residency policy: countries → jurisdictions → permitted data centres.
//!
//! This module is where compliance lives. It is pure (no I/O, no clocks) and
//! meant to be read in one sitting:
//!
//! * [`Policy::jurisdiction_for`] maps a country (or its absence) to a
//!   jurisdiction, applying `[unknown_origin]`, or refuses.
//! * [`Policy::permitted`] lists, by priority, the data centres whose
//!   jurisdiction is in the origin jurisdiction's `store_in`. It is computed
//!   once at load time, so no request can reach a data centre outside it.
//! * [`Policy::pick`] chooses an upstream from the first priority group that
//!   has one up, sharing load across the group's data centres and upstreams.
//!
//! [`Policy::from_raw`] builds the policy from configuration, reporting every
//! problem PRODUCT.md lists (countries in two jurisdictions, unknown codes,
//! dangling `store_in`, a jurisdiction with nowhere to store, bad URLs).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use http::Uri;

use serde::Deserialize;

use crate::country::Country;
use crate::report::{ConfigReport, FromSetting, OptionalSetting, Setting};

// ---------------------------------------------------------------------------
// The configuration sections the policy is built from (`[jurisdictions.*]`,
// `[unknown_origin]`, `[datacenters.*]`)
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJurisdiction {
    #[serde(default)]
    pub countries: Vec<String>,
    pub store_in: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnknownOrigin {
    pub action: Option<Setting<UnknownOriginAction>>,
    pub jurisdiction: Option<String>,
}

/// `[unknown_origin] action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownOriginAction {
    /// Refuse (451) uploads whose country is unknown or in no jurisdiction.
    Reject,
    /// Treat them as from `[unknown_origin] jurisdiction`.
    Jurisdiction,
}

impl FromSetting for UnknownOriginAction {
    const EXPECTED: &'static str = "one of \"reject\", \"jurisdiction\"";

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "reject" => Some(UnknownOriginAction::Reject),
            "jurisdiction" => Some(UnknownOriginAction::Jurisdiction),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatacenter {
    pub jurisdiction: Option<String>,
    pub priority: Option<Setting<u32>>,
    #[serde(default)]
    pub upstreams: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JurisdictionId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatacenterId(pub usize);

/// Index into [`Policy::upstreams`]: one upstream URL of one data centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(pub usize);

#[derive(Debug, Clone)]
pub struct Jurisdiction {
    pub name: String,
    pub countries: Vec<Country>,
    pub store_in: Vec<JurisdictionId>,
}

#[derive(Debug, Clone)]
pub struct Datacenter {
    pub name: String,
    pub jurisdiction: JurisdictionId,
    pub priority: u32,
    pub upstreams: Vec<UpstreamId>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub datacenter: DatacenterId,
    /// Scheme, authority and optional path prefix, e.g. `https://ingest.zrh:443/v1`.
    pub uri: Uri,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownOrigin {
    Reject,
    Jurisdiction(JurisdictionId),
}

/// Data centres sharing one priority within a jurisdiction's permitted set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityGroup {
    pub priority: u32,
    pub datacenters: Vec<DatacenterId>,
    /// Every upstream of those data centres, flattened for [`Policy::pick`].
    pub upstreams: Vec<UpstreamId>,
}

/// Why an origin is refused before any data centre is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    /// No country is known for the address.
    OriginUnknown,
    /// The country is known but belongs to no jurisdiction.
    OriginNotPermitted,
}

/// How the jurisdiction was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// A jurisdiction lists the country.
    Listed,
    /// `[unknown_origin] action = "jurisdiction"` applied.
    UnknownOrigin,
    /// A recognised tenant's pin (`[[tenants]] jurisdiction`).
    Pinned,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub jurisdictions: Vec<Jurisdiction>,
    pub datacenters: Vec<Datacenter>,
    pub upstreams: Vec<Upstream>,
    pub unknown_origin: UnknownOrigin,
    /// Dense table indexed by [`Country::index`].
    by_country: Vec<Option<JurisdictionId>>,
    /// Per jurisdiction, its permitted data centres grouped by priority.
    permitted: Vec<Vec<PriorityGroup>>,
}

impl Policy {
    /// Step 3: the jurisdiction of an origin country (`None` = unknown).
    pub fn jurisdiction_for(
        &self,
        country: Option<Country>,
    ) -> Result<(JurisdictionId, Assignment), OriginRefusal> {
        if let Some(j) = country.and_then(|c| self.by_country[c.index()]) {
            return Ok((j, Assignment::Listed));
        }
        match (self.unknown_origin, country) {
            (UnknownOrigin::Jurisdiction(j), _) => Ok((j, Assignment::UnknownOrigin)),
            (UnknownOrigin::Reject, None) => Err(OriginRefusal::OriginUnknown),
            (UnknownOrigin::Reject, Some(_)) => Err(OriginRefusal::OriginNotPermitted),
        }
    }

    /// Step 4: the data centres an origin jurisdiction's data may go to,
    /// grouped by priority, most preferred first. Never empty (checked at load).
    pub fn permitted(&self, j: JurisdictionId) -> &[PriorityGroup] {
        &self.permitted[j.0]
    }

    /// Every upstream of every data centre permitted for `j`.
    pub fn permitted_upstreams(&self, j: JurisdictionId) -> impl Iterator<Item = UpstreamId> + '_ {
        self.permitted(j)
            .iter()
            .flat_map(|g| g.datacenters.iter())
            .flat_map(move |d| self.datacenter(*d).upstreams.iter().copied())
    }

    /// Step 5: the upstream for the next request. Takes the first priority
    /// group with any upstream up; within it, `turn` rotates over every up
    /// upstream of every data centre in the group. `None`: nothing is up.
    /// Allocation-free: it only walks the permitted set.
    pub fn pick(
        &self,
        j: JurisdictionId,
        turn: usize,
        is_up: impl Fn(UpstreamId) -> bool,
    ) -> Option<UpstreamId> {
        for group in self.permitted(j) {
            let all = &group.upstreams;
            let up = all.iter().filter(|u| is_up(**u)).count();
            if up == 0 {
                continue;
            }
            // The same rotation without a division when `up` is a power of
            // two (1, 2, 4 upstreams: the usual case); otherwise a 32-bit
            // modulo, a fraction of the 64-bit division's cost.
            let k = if up.is_power_of_two() {
                turn & (up - 1)
            } else {
                (turn as u32 % up as u32) as usize
            };
            if up == all.len() {
                return all.get(k).copied();
            }
            // `is_up` is read again: one may have gone down since it was
            // counted (then the first still up, else the next group).
            let still_up = || all.iter().copied().filter(|u| is_up(*u));
            if let Some(u) = still_up().nth(k).or_else(|| still_up().next()) {
                return Some(u);
            }
        }
        None
    }

    /// True when `u` belongs to a data centre permitted for `j`.
    pub fn is_permitted(&self, j: JurisdictionId, u: UpstreamId) -> bool {
        self.permits(j, self.upstreams[u.0].datacenter)
    }

    /// True when data centre `dc` may store uploads of `j`.
    pub fn permits(&self, j: JurisdictionId, dc: DatacenterId) -> bool {
        self.permitted(j)
            .iter()
            .any(|g| g.datacenters.contains(&dc))
    }

    /// The jurisdiction named `name`.
    pub fn jurisdiction_named(&self, name: &str) -> Option<JurisdictionId> {
        self.jurisdictions
            .iter()
            .position(|x| x.name == name)
            .map(JurisdictionId)
    }

    /// The data centre named `name`.
    pub fn datacenter_named(&self, name: &str) -> Option<DatacenterId> {
        self.datacenters
            .iter()
            .position(|x| x.name == name)
            .map(DatacenterId)
    }

    /// Upstream `u` of this policy in `other` (another configuration's: a
    /// reload renumbers them): the upstream of the data centre of the same
    /// name at the same URL.
    pub fn same_upstream_in(&self, u: UpstreamId, other: &Policy) -> Option<UpstreamId> {
        let uri = &self.upstream(u).uri;
        let dc = other.datacenter_named(&self.datacenter_of(u).name)?;
        other.datacenters[dc.0]
            .upstreams
            .iter()
            .copied()
            .find(|o| other.upstream(*o).uri == *uri)
    }

    pub fn jurisdiction(&self, j: JurisdictionId) -> &Jurisdiction {
        &self.jurisdictions[j.0]
    }

    pub fn datacenter(&self, d: DatacenterId) -> &Datacenter {
        &self.datacenters[d.0]
    }

    pub fn upstream(&self, u: UpstreamId) -> &Upstream {
        &self.upstreams[u.0]
    }

    /// The datacenter name of an upstream.
    pub fn datacenter_of(&self, u: UpstreamId) -> &Datacenter {
        self.datacenter(self.upstreams[u.0].datacenter)
    }

    /// SHA-256 (hex) of a canonical text form of the policy: jurisdictions,
    /// countries, `store_in`, `unknown_origin`, data centres, priorities and
    /// upstream URLs. Equal policies hash equally whatever the file layout.
    pub fn hash(&self) -> String {
        sha256_hex(&self.canonical_text())
    }

    /// The text [`Policy::hash`] hashes.
    pub fn canonical_text(&self) -> String {
        let mut text = self.routing_table();
        for dc in &self.datacenters {
            let _ = write!(
                text,
                "datacenter {} {} {}",
                dc.name,
                self.jurisdiction(dc.jurisdiction).name,
                dc.priority
            );
            for u in &dc.upstreams {
                let _ = write!(text, " {}", self.upstream(*u).uri);
            }
            text.push('\n');
        }
        text
    }

    /// The routing table printed by `check-config`.
    pub fn routing_table(&self) -> String {
        let mut out = String::new();
        for (i, j) in self.jurisdictions.iter().enumerate() {
            let countries: Vec<&str> = j.countries.iter().map(Country::as_str).collect();
            let _ = writeln!(out, "jurisdiction {}", j.name);
            let _ = writeln!(out, "  countries: {}", countries.join(" "));
            let store: Vec<&str> = j
                .store_in
                .iter()
                .map(|s| self.jurisdiction(*s).name.as_str())
                .collect();
            let _ = writeln!(out, "  store_in:  {}", store.join(", "));
            for group in self.permitted(JurisdictionId(i)) {
                let names: Vec<String> = group
                    .datacenters
                    .iter()
                    .map(|d| {
                        let dc = self.datacenter(*d);
                        format!("{} ({})", dc.name, self.jurisdiction(dc.jurisdiction).name)
                    })
                    .collect();
                let _ = writeln!(out, "  priority {}: {}", group.priority, names.join(", "));
            }
        }
        let _ = match self.unknown_origin {
            UnknownOrigin::Reject => writeln!(out, "unknown origin: reject (451)"),
            UnknownOrigin::Jurisdiction(j) => {
                writeln!(
                    out,
                    "unknown origin: treated as {}",
                    self.jurisdiction(j).name
                )
            }
        };
        out
    }

    /// Each data centre's upstreams, as `check-config` prints them after
    /// the routing table (not part of [`Policy::canonical_text`], which
    /// has them in its own form).
    pub fn upstream_table(&self) -> String {
        let mut out = String::new();
        for dc in &self.datacenters {
            let urls: Vec<String> = dc
                .upstreams
                .iter()
                .map(|u| self.upstream(*u).uri.to_string())
                .collect();
            let _ = writeln!(
                out,
                "datacenter {} ({}, priority {}): {}",
                dc.name,
                self.jurisdiction(dc.jurisdiction).name,
                dc.priority,
                urls.join(" ")
            );
        }
        out
    }

    /// Builds the policy, pushing every problem into `r`.
    pub fn from_raw(
        raw_j: &BTreeMap<String, RawJurisdiction>,
        raw_unknown: &RawUnknownOrigin,
        raw_dc: &BTreeMap<String, RawDatacenter>,
        r: &mut ConfigReport,
    ) -> Option<Policy> {
        let problems_before = r.problems.len();
        if raw_j.is_empty() {
            r.push("jurisdictions", "at least one jurisdiction is required");
        }
        if raw_dc.is_empty() {
            r.push("datacenters", "at least one data centre is required");
        }
        let names: Vec<&String> = raw_j.keys().collect();
        let id_of = |name: &str| {
            names
                .iter()
                .position(|n| n.as_str() == name)
                .map(JurisdictionId)
        };
        let tables = raw_j
            .keys()
            .map(|n| ("jurisdictions", n))
            .chain(raw_dc.keys().map(|n| ("datacenters", n)));
        for (table, name) in tables {
            if !valid_name(name) {
                r.push(
                    table_key(table, name),
                    "names use lower-case letters, digits, '-' and '_'",
                );
            } else if name == "none" {
                // The metrics and the access line say `none` for a request
                // that reached no jurisdiction or data centre: a place of
                // that name would be counted as a refusal, or hide one.
                r.push(
                    table_key(table, name),
                    "\"none\" is reserved: metrics and the access line use it for \"no jurisdiction or data centre\"",
                );
            }
        }

        let mut by_country: Vec<Option<JurisdictionId>> = vec![None; 26 * 26];
        let mut jurisdictions = Vec::new();
        for (i, (name, j)) in raw_j.iter().enumerate() {
            let key = table_key("jurisdictions", name);
            let mut countries = Vec::new();
            for code in &j.countries {
                let Some(c) = Country::parse(code) else {
                    r.push(format!("{key}.countries"), Country::unknown(code));
                    continue;
                };
                match by_country[c.index()] {
                    Some(other) if other.0 != i => r.push(
                        format!("{key}.countries"),
                        format!("{c} is already in jurisdiction `{}`", names[other.0]),
                    ),
                    _ => {
                        by_country[c.index()] = Some(JurisdictionId(i));
                        if !countries.contains(&c) {
                            countries.push(c);
                        }
                    }
                }
            }
            let mut store_in = Vec::new();
            let default_store = [name.clone()];
            for target in j.store_in.as_deref().unwrap_or(&default_store) {
                match id_of(target) {
                    Some(t) if !store_in.contains(&t) => store_in.push(t),
                    Some(_) => {}
                    None => r.push(
                        format!("{key}.store_in"),
                        format!("no jurisdiction named `{target}`"),
                    ),
                }
            }
            if j.store_in.as_ref().is_some_and(Vec::is_empty) {
                r.push(
                    format!("{key}.store_in"),
                    "is empty: data from here could be stored nowhere",
                );
            }
            jurisdictions.push(Jurisdiction {
                name: name.clone(),
                countries,
                store_in,
            });
        }

        // `None`: absent; `Some(None)`: not an action (reported).
        let action = raw_unknown
            .action
            .as_ref()
            .map(|a| a.check("unknown_origin.action", r));
        let unknown_origin = match (action, raw_unknown.jurisdiction.as_deref()) {
            (Some(None), _) => UnknownOrigin::Reject,
            (None | Some(Some(UnknownOriginAction::Reject)), None) => UnknownOrigin::Reject,
            (None | Some(Some(UnknownOriginAction::Reject)), Some(_)) => {
                r.push(
                    "unknown_origin.jurisdiction",
                    "only allowed with action = \"jurisdiction\"",
                );
                UnknownOrigin::Reject
            }
            (Some(Some(UnknownOriginAction::Jurisdiction)), Some(name)) => match id_of(name) {
                Some(j) => UnknownOrigin::Jurisdiction(j),
                None => {
                    r.push(
                        "unknown_origin.jurisdiction",
                        format!("no jurisdiction named `{name}`"),
                    );
                    UnknownOrigin::Reject
                }
            },
            (Some(Some(UnknownOriginAction::Jurisdiction)), None) => {
                r.push(
                    "unknown_origin.jurisdiction",
                    "action = \"jurisdiction\" must name one",
                );
                UnknownOrigin::Reject
            }
        };

        let mut datacenters = Vec::new();
        let mut upstreams = Vec::new();
        let mut servers = Servers::default();
        for (d, (name, dc)) in raw_dc.iter().enumerate() {
            let key = table_key("datacenters", name);
            let jurisdiction = match dc.jurisdiction.as_deref() {
                None => {
                    r.push(format!("{key}.jurisdiction"), "missing");
                    None
                }
                Some(j) => {
                    let id = id_of(j);
                    if id.is_none() {
                        r.push(
                            format!("{key}.jurisdiction"),
                            format!("no jurisdiction named `{j}`"),
                        );
                    }
                    id
                }
            };
            let priority = dc.priority.check_or(1, &format!("{key}.priority"), r);
            if dc.upstreams.is_empty() {
                r.push(
                    format!("{key}.upstreams"),
                    "at least one upstream URL is required",
                );
            }
            let mut ids = Vec::new();
            for (i, url) in dc.upstreams.iter().enumerate() {
                match parse_upstream(url) {
                    Ok(uri) => {
                        servers.check(&uri, format!("{key}.upstreams[{i}]"), d, r);
                        ids.push(UpstreamId(upstreams.len()));
                        upstreams.push(Upstream {
                            datacenter: DatacenterId(d),
                            uri,
                        });
                    }
                    Err(why) => r.push(
                        format!("{key}.upstreams[{i}]"),
                        format!("`{}`: {why}", shown_url(url)),
                    ),
                }
            }
            if let Some(jurisdiction) = jurisdiction {
                datacenters.push(Datacenter {
                    name: name.clone(),
                    jurisdiction,
                    priority,
                    upstreams: ids,
                });
            }
        }

        let permitted: Vec<Vec<PriorityGroup>> = jurisdictions
            .iter()
            .map(|j| permitted_groups(&j.store_in, &datacenters))
            .collect();
        for ((j, groups), (_, raw)) in jurisdictions.iter().zip(&permitted).zip(raw_j.iter()) {
            if groups.is_empty() && !j.store_in.is_empty() {
                let store: Vec<&str> = j.store_in.iter().map(|s| names[s.0].as_str()).collect();
                // Not written: the default, which the operator may not know.
                let defaulted = if raw.store_in.is_none() {
                    format!(
                        " (store_in is [\"{}\"] when not set): add a [datacenters.<name>] with jurisdiction = \"{}\", or set store_in",
                        j.name, j.name
                    )
                } else {
                    String::new()
                };
                r.push(
                    format!("jurisdictions.{}.store_in", j.name),
                    format!(
                        "no data centre is in {}: uploads from here could never be stored{defaulted}",
                        store.join(", ")
                    ),
                );
            }
        }

        (r.problems.len() == problems_before).then_some(Policy {
            jurisdictions,
            datacenters,
            upstreams,
            unknown_origin,
            by_country,
            permitted,
        })
    }
}

fn permitted_groups(store_in: &[JurisdictionId], dcs: &[Datacenter]) -> Vec<PriorityGroup> {
    let mut groups = grouped(store_in, dcs);
    for g in &mut groups {
        g.upstreams = g
            .datacenters
            .iter()
            .flat_map(|d| dcs[d.0].upstreams.iter().copied())
            .collect();
    }
    groups
}

fn grouped(store_in: &[JurisdictionId], dcs: &[Datacenter]) -> Vec<PriorityGroup> {
    let mut allowed: Vec<(u32, DatacenterId)> = dcs
        .iter()
        .enumerate()
        .filter(|(_, dc)| store_in.contains(&dc.jurisdiction))
        .map(|(i, dc)| (dc.priority, DatacenterId(i)))
        .collect();
    allowed.sort();
    let mut groups: Vec<PriorityGroup> = Vec::new();
    for (priority, dc) in allowed {
        match groups.last_mut() {
            Some(g) if g.priority == priority => g.datacenters.push(dc),
            _ => groups.push(PriorityGroup {
                priority,
                datacenters: vec![dc],
                upstreams: Vec::new(),
            }),
        }
    }
    groups
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The upstream URLs seen so far, by [`server_of`], with the key each
/// was given at (`datacenters.zurich.upstreams[0]`) and its data centre.
#[derive(Default)]
struct Servers(HashMap<(String, String, u16, String), (String, usize)>);

impl Servers {
    /// An upstream URL given twice: in one data centre, or in two — which
    /// the proxy would then name, answer and record as the data centre
    /// that stored the other's uploads (a copy-paste that moves data into
    /// another jurisdiction without a word). Compared as the server sees
    /// them: scheme and host in any case, the port with its default, the
    /// path prefix without a trailing `/`.
    fn check(&mut self, uri: &Uri, key: String, d: usize, r: &mut ConfigReport) {
        let Some(server) = server_of(uri) else {
            return;
        };
        match self.0.get(&server) {
            None => {
                self.0.insert(server, (key, d));
            }
            Some((first, at)) if *at == d => r.push(
                key,
                format!("`{uri}` is {first} again: list each server once"),
            ),
            Some((first, _)) => r.push(
                key,
                format!(
                    "`{uri}` is also {first}: two data centres cannot be one server (the proxy would name and record each as storing what the other's server stored)"
                ),
            ),
        }
    }
}

/// What identifies an upstream's server and place on it: scheme, host
/// (lower case), port (with the scheme's default) and path prefix (without
/// a trailing `/`).
fn server_of(uri: &Uri) -> Option<(String, String, u16, String)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?;
    // An address in one form (`[0:0:0:0:0:0:0:1]` is `[::1]`); a name
    // without its root's dot.
    let host = match host_address(host) {
        Some(ip) => ip.to_string(),
        None => host.trim_end_matches('.').to_ascii_lowercase(),
    };
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let path = uri.path().trim_end_matches('/').to_string();
    Some((scheme, host, port, path))
}

/// The address a URL's host names without DNS, as the system's resolver
/// reads it: an IPv6 literal (`[::ffff:127.0.0.1]` as `127.0.0.1`), or an
/// IPv4 one in any form `inet_aton(3)` takes — `127.0.0.1`, `127.1`,
/// `2130706433`, `0x7f.1`, `0177.0.0.1` (octal). `None` for a name.
pub fn host_address(host: &str) -> Option<std::net::IpAddr> {
    let host = host.trim_end_matches('.');
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| std::net::IpAddr::V6(ip).to_canonical());
    }
    let number = |part: &str| -> Option<u64> {
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            u64::from_str_radix(hex, 16).ok()
        } else if part.len() > 1 && part.starts_with('0') {
            u64::from_str_radix(&part[1..], 8).ok()
        } else {
            part.parse().ok()
        }
    };
    let parts: Vec<u64> = host.split('.').map(number).collect::<Option<_>>()?;
    // a, a.b (b: 24 bits), a.b.c (c: 16 bits), a.b.c.d; each leading part
    // a byte, the last what is left.
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|p| *p > 255) {
        return None;
    }
    let room = 32 - 8 * leading.len() as u32;
    if *last >= 1u64 << room {
        return None;
    }
    let value = leading
        .iter()
        .fold(0u64, |acc, p| (acc << 8) | p)
        .checked_shl(room)?
        | last;
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
        u32::try_from(value).ok()?,
    )))
}

/// An upstream base URL: `http` or `https`, a host, an optional path prefix,
/// no query, no user info.
/// `url` as a message may show it: everything between `://` and its last
/// `@` replaced by `…`, so that a URL refused for holding a password does
/// not repeat it to a terminal or a log pipeline (privacy audit, stop 68)
/// — also a password holding `/`, `?` or `#`, which ends the authority
/// where a parser looks (verification, stop 68). A path holding an `@` is
/// shown cut too: the message is about the URL, not its path.
pub fn shown_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return url.into();
    };
    let rest = &url[scheme_end + 3..];
    match rest.rfind('@') {
        Some(at) => format!("{}://…@{}", &url[..scheme_end], &rest[at + 1..]).into(),
        None => url.into(),
    }
}

fn parse_upstream(url: &str) -> Result<Uri, &'static str> {
    let uri: Uri = url.trim().parse().map_err(|_| "not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("scheme must be http or https"),
    }
    let authority = uri.authority().ok_or("missing host")?;
    // Anywhere: a password holding `/` made `user:pa` the host and the
    // rest of it a path (verification, stop 68).
    if authority.as_str().contains('@') || url.contains('@') {
        return Err("user info (or any `@`) is not allowed");
    }
    if uri.query().is_some() {
        return Err("a query string is not allowed");
    }
    // `0.0.0.0` or `[::]` (in any form): a listening address, which a
    // connection takes for this host — so the same server as `127.0.0.1`
    // (or this host's own address) at that port, which another data
    // centre may be (IPv6 audit, stop 66: a US data centre at
    // `0.0.0.0:P` stored in a Swiss one's server at `127.0.0.1:P`).
    if uri
        .host()
        .and_then(host_address)
        .is_some_and(|ip| ip.is_unspecified())
    {
        return Err("an unspecified address (0.0.0.0, [::]) is one to listen on, not to connect to: give the data centre's own address");
    }
    // A port given must be one a connection can be made to: 99999 was
    // taken, and every upload to it refused (config audit, stop 63).
    let text = authority.as_str();
    let after_host = text.rfind(']').map_or(text, |i| &text[i + 1..]);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if port.is_empty() {
            return Err("a ':' without a port after it");
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err("the port must be 1 to 65535");
        }
    }
    Ok(uri)
}

/// `table.name` as TOML spells the key: the name quoted unless it is a
/// bare key (so a blank or spaced name is still a key a person can find).
fn table_key(table: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        format!("{table}.{name}")
    } else {
        format!("{table}.{name:?}")
    }
}

#[cfg(test)]
mod tests;

/// SHA-256 of `text`, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    crate::hex::encode(digest.as_ref())
}
