//! Tenant pins: residency by customer, not only by where a device is.
//!
//! A tenant (`[[tenants]]`) is pinned to a jurisdiction and recognised by
//! the TLS server name its clients dial (exact, or `*.suffix` for exactly
//! one more label), by names in their client certificate (SAN URI, SAN
//! DNS, subject CN), or by a signed token naming it (verified by the
//! proxy; here only its outcome). A recognised tenant's pin decides where
//! its uploads may go ([`crate::decision::decide_pinned`]); GeoIP decides
//! for everyone else. Everything here is checked at load: each pin names a
//! jurisdiction (which always has a data centre), and no two patterns may
//! match the same name, so recognition never depends on order.
//!
//! Lookups take borrowed, already-lowercased names and allocate nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use serde::Deserialize;

use crate::country::Country;
use crate::policy::{JurisdictionId, Policy};
use crate::report::ConfigReport;

/// One `[[tenants]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: Option<String>,
    /// The jurisdiction the tenant's data must stay in.
    pub jurisdiction: Option<String>,
    /// TLS server names: `ingest.acme.example` or `*.acme.example`.
    #[serde(default)]
    pub sni: Vec<String>,
    /// Client certificate names: `uri:spiffe://acme.example/uploader`,
    /// `dns:*.acme.example`, `cn:acme-uploader`; a trailing `*` on a URI or
    /// CN matches any rest.
    #[serde(default)]
    pub client_cert: Vec<String>,
    /// When GeoIP places the client outside the pinned jurisdiction:
    /// `"allow"` (the default), `"refuse"`, or `{ allow_countries = [...] }`.
    pub mismatch: Option<RawMismatch>,
}

/// `"allow"`, `"refuse"` (checked later) or `{ allow_countries = [...] }`.
#[derive(Debug, Clone)]
pub enum RawMismatch {
    Action(String),
    Countries(AllowCountries),
}

/// `{ allow_countries = [...] }`, and nothing else beside it (a key that
/// would be ignored, such as `refuse = true`, is refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowCountries {
    pub allow_countries: Vec<String>,
}

/// By hand, not `untagged`: serde's words for a value that fits neither
/// form were "data did not match any variant of untagged enum
/// RawMismatch", whatever was wrong (config audit, stop 63); a mistake in
/// the table is said as the table's own.
impl<'de> Deserialize<'de> for RawMismatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = RawMismatch;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"allow\", \"refuse\" or { allow_countries = [\"CH\", …] }")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawMismatch, E> {
                Ok(RawMismatch::Action(v.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawMismatch, A::Error> {
                AllowCountries::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawMismatch::Countries)
            }
        }
        deserializer.deserialize_any(Form)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(pub u32);

/// What to do when GeoIP's jurisdiction for the client is not the pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Route by the pin; the record names both.
    Allow,
    /// 451 `tenant_origin_mismatch`.
    Refuse,
    /// Route by the pin from these countries; refuse from any other.
    AllowCountries(Vec<Country>),
}

impl Mismatch {
    /// Whether an upload from `country` (GeoIP; `None` if unknown) may go
    /// by the pin although GeoIP places it outside the pinned jurisdiction.
    pub fn allows(&self, country: Option<Country>) -> bool {
        match self {
            Mismatch::Allow => true,
            Mismatch::Refuse => false,
            Mismatch::AllowCountries(list) => country.is_some_and(|c| list.contains(&c)),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Mismatch::Allow => "allow",
            Mismatch::Refuse => "refuse",
            Mismatch::AllowCountries(_) => "allow_countries",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub jurisdiction: JurisdictionId,
    pub mismatch: Mismatch,
}

/// How a tenant was recognised (a closed set: a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sni,
    ClientCert,
    Token,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Sni, Source::ClientCert, Source::Token];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sni => "sni",
            Source::ClientCert => "client_cert",
            Source::Token => "token",
        }
    }
}

/// The names a client certificate carries, DNS names lowercased and
/// without trailing dots (as [`Tenants::by_host`] takes a server name):
/// read once per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub cn: Option<String>,
    /// Some of its names could not be read (a subject alternative name or
    /// CN that does not decode): what it would name is not known, so
    /// [`Tenants::by_cert`] recognises nothing by it and refuses it.
    pub unreadable: bool,
}

/// Two sources (or two names of one certificate) recognise different
/// tenants: the identity is ambiguous, and nothing is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

/// A recognised tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recognized {
    pub tenant: TenantId,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Uri,
    Dns,
    Cn,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Uri => "uri",
            Kind::Dns => "dns",
            Kind::Cn => "cn",
        }
    }
}

/// Every tenant and the indexes that recognise them.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    list: Vec<Tenant>,
    by_name: HashMap<String, TenantId>,
    sni_exact: HashMap<String, TenantId>,
    /// `*.suffix` patterns by suffix.
    sni_wildcard: HashMap<String, TenantId>,
    /// Exact certificate names, per [`Kind`].
    cert_exact: [HashMap<String, TenantId>; 3],
    cert_dns_wildcard: HashMap<String, TenantId>,
    /// `uri:` and `cn:` patterns ending in `*`, per [`Kind`], by prefix:
    /// sorted, so a name finds its one prefix at once ([`prefix_of`]; a
    /// scan of every prefix per certificate before: scale audit, stop 65).
    cert_prefix: [BTreeMap<String, TenantId>; 3],
}

impl Tenants {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn get(&self, id: TenantId) -> &Tenant {
        &self.list[id.0 as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.list.iter()
    }

    /// Tenants any client can claim: recognised by a TLS server name,
    /// which anyone can send, and routed by their pin wherever GeoIP places
    /// the client (`mismatch = "allow"`). Each with its server names
    /// (`*.suffix` for a wildcard), sorted.
    pub fn claimable_by_server_name(&self) -> Vec<(&str, Vec<String>)> {
        let exact = self.sni_exact.iter().map(|(n, id)| (n.clone(), *id));
        let wild = self
            .sni_wildcard
            .iter()
            .map(|(suffix, id)| (format!("*.{suffix}"), *id));
        let mut names: Vec<Vec<String>> = vec![Vec::new(); self.list.len()];
        for (name, id) in exact.chain(wild) {
            names[id.0 as usize].push(name);
        }
        self.list
            .iter()
            .zip(names)
            .filter(|(t, names)| !names.is_empty() && matches!(t.mismatch, Mismatch::Allow))
            .map(|(t, mut names)| {
                names.sort();
                (t.name.as_str(), names)
            })
            .collect()
    }

    /// Whether any tenant is recognised by the server name.
    pub fn by_server_name(&self) -> bool {
        !self.sni_exact.is_empty() || !self.sni_wildcard.is_empty()
    }

    /// Whether any tenant is recognised by its client certificate.
    pub fn by_certificate(&self) -> bool {
        self.cert_exact.iter().any(|m| !m.is_empty())
            || !self.cert_dns_wildcard.is_empty()
            || self.cert_prefix.iter().any(|m| !m.is_empty())
    }

    pub fn by_name(&self, name: &str) -> Option<TenantId> {
        self.by_name.get(name).copied()
    }

    /// The tenant whose `sni` matches a name as a client may write it (a
    /// request's host, an operator's `sni=`): without case, and without
    /// trailing dots (a fully qualified `name.` is the name, and so, to a
    /// data centre that trims dots, is `name..`). Allocates only for a
    /// name with upper case.
    pub fn by_host(&self, host: &str) -> Option<TenantId> {
        let host = host.trim_end_matches('.');
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_sni(&host.to_ascii_lowercase())
        } else {
            self.by_sni(host)
        }
    }

    /// The tenant whose `sni` matches a (lowercase) server name.
    pub fn by_sni(&self, host: &str) -> Option<TenantId> {
        if let Some(id) = self.sni_exact.get(host) {
            return Some(*id);
        }
        self.sni_wildcard.get(wildcard_parent(host)?).copied()
    }

    /// The tenant a certificate's names match; a conflict if they match
    /// more than one.
    /// A certificate with names that could not be read is a conflict when
    /// tenants are recognised by certificate: a name it carries might have
    /// named one.
    pub fn by_cert(&self, names: &CertNames) -> Result<Option<TenantId>, Conflict> {
        if names.unreadable && self.by_certificate() {
            return Err(Conflict);
        }
        let mut found: Option<TenantId> = None;
        let mut note = |id: Option<TenantId>| -> Result<(), Conflict> {
            match (found, id) {
                (Some(a), Some(b)) if a != b => Err(Conflict),
                (None, Some(b)) => {
                    found = Some(b);
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        for uri in &names.uris {
            note(self.cert_lookup(Kind::Uri, &uri_compared(uri, false)))?;
        }
        for dns in &names.dns {
            note(self.cert_lookup(Kind::Dns, dns))?;
            if let Some(parent) = wildcard_parent(dns) {
                note(self.cert_dns_wildcard.get(parent).copied())?;
            }
        }
        if let Some(cn) = &names.cn {
            note(self.cert_lookup(Kind::Cn, cn))?;
        }
        Ok(found)
    }

    fn cert_lookup(&self, kind: Kind, name: &str) -> Option<TenantId> {
        let exact = self.cert_exact[kind.index()].get(name).copied();
        exact.or_else(|| prefix_of(&self.cert_prefix[kind.index()], name).map(|(_, id)| id))
    }

    /// Builds the tenants from their entries, reporting every problem under
    /// `key_of(i)…`, entry `i`'s key (e.g. `tenants[3]`, or a tenant file's
    /// entry): overlaps are checked across all of them. Without a `policy`
    /// (the configuration's is invalid), the jurisdictions are not looked
    /// up, everything else is checked, and no tenants are built.
    pub fn from_raw(
        raw: &[RawTenant],
        key_of: impl Fn(usize) -> String,
        policy: Option<&Policy>,
        r: &mut ConfigReport,
    ) -> Option<Tenants> {
        let before = r.problems.len();
        let mut t = Tenants::default();
        // Where each pattern came from, to name both sides of an overlap.
        let mut origin: HashMap<String, String> = HashMap::new();
        // The exact server and DNS names under each parent, for the
        // `*.parent` patterns to find theirs at once (each scanned every
        // exact name: scale audit, stop 65).
        let mut sni_under: HashMap<String, Vec<String>> = HashMap::new();
        let mut dns_under: HashMap<String, Vec<String>> = HashMap::new();
        // The exact `uri:` and `cn:` names, sorted, for a prefix to find
        // those it starts.
        let mut exact_sorted: [BTreeSet<String>; 3] = Default::default();
        for (i, raw) in raw.iter().enumerate() {
            let key = key_of(i);
            // Without a valid name the rest is still checked (a bad name
            // hid every other problem of its tenant: README audit, stop
            // 64), named by its key; nothing is built then.
            let valid = raw.name.as_deref().filter(|n| valid_tenant_name(n));
            if valid.is_none() {
                r.push(
                    format!("{key}.name"),
                    "required: 1 to 128 letters, digits, '.', '-' and '_'",
                );
            }
            let name = valid.unwrap_or(&key);
            let id = TenantId(t.list.len() as u32);
            if valid.is_some() && t.by_name.insert(name.to_string(), id).is_some() {
                r.push(
                    format!("{key}.name"),
                    format!("tenant `{name}` is defined twice"),
                );
            }
            let jurisdiction = match raw.jurisdiction.as_deref() {
                None => {
                    r.push(
                        format!("{key}.jurisdiction"),
                        "required: the jurisdiction the tenant is pinned to",
                    );
                    None
                }
                Some(j) => {
                    let found = policy.and_then(|p| {
                        p.jurisdictions
                            .iter()
                            .position(|x| x.name == j)
                            .map(JurisdictionId)
                    });
                    if policy.is_some() && found.is_none() {
                        r.push(
                            format!("{key}.jurisdiction"),
                            format!("no jurisdiction named `{j}`"),
                        );
                    }
                    found
                }
            };
            let mismatch = mismatch(raw.mismatch.as_ref(), &format!("{key}.mismatch"), r);
            for (j, pattern) in raw.sni.iter().enumerate() {
                let k = format!("{key}.sni[{j}]");
                let p = pattern.to_ascii_lowercase();
                if p.parse::<std::net::Ipv4Addr>().is_ok() {
                    // All digits and dots passes as a DNS name, but TLS
                    // never sends an address as a server name (RFC 6066
                    // §3): the tenant could never be recognised.
                    r.push(
                        k,
                        format!("`{pattern}` is an IP address, which TLS never sends as a server name: give a host name clients connect by"),
                    );
                    continue;
                }
                if !valid_host_pattern(&p) {
                    r.push(
                        k,
                        format!("`{pattern}` is not a host name or `*.suffix` pattern"),
                    );
                    continue;
                }
                let here = format!("{k} (tenant `{name}`)");
                if let Some(suffix) = p.strip_prefix("*.") {
                    overlap_wild(&origin, "sni", suffix, &sni_under, &k, r);
                    t.sni_wildcard.insert(suffix.to_string(), id);
                } else {
                    overlap_exact(&origin, "sni", &p, &t.sni_wildcard, &k, r);
                    if t.sni_exact.insert(p.clone(), id).is_none() {
                        under(&mut sni_under, &p);
                    }
                }
                remember(&mut origin, format!("sni {p}"), &k, here, r);
            }
            for (j, pattern) in raw.client_cert.iter().enumerate() {
                let k = format!("{key}.client_cert[{j}]");
                let Some((kind, value)) = cert_pattern(pattern) else {
                    r.push(k, format!("`{pattern}` is not `uri:…`, `dns:…` or `cn:…`"));
                    continue;
                };
                let here = format!("{k} (tenant `{name}`)");
                match kind {
                    Kind::Dns => {
                        let p = value.to_ascii_lowercase();
                        if !valid_host_pattern(&p) {
                            r.push(
                                k,
                                format!("`{value}` is not a host name or `*.suffix` pattern"),
                            );
                            continue;
                        }
                        if let Some(suffix) = p.strip_prefix("*.") {
                            overlap_wild(&origin, "dns", suffix, &dns_under, &k, r);
                            t.cert_dns_wildcard.insert(suffix.to_string(), id);
                        } else {
                            overlap_exact(&origin, "dns", &p, &t.cert_dns_wildcard, &k, r);
                            if t.cert_exact[Kind::Dns.index()]
                                .insert(p.clone(), id)
                                .is_none()
                            {
                                under(&mut dns_under, &p);
                            }
                        }
                        remember(&mut origin, format!("dns {p}"), &k, here, r);
                    }
                    Kind::Uri | Kind::Cn => {
                        let compared;
                        let value = if kind == Kind::Uri {
                            compared = uri_compared(value, value.ends_with('*'));
                            compared.as_ref()
                        } else {
                            value
                        };
                        if value.is_empty() {
                            r.push(k, "the name is empty");
                            continue;
                        }
                        let label = kind.as_str();
                        let prefixes = &t.cert_prefix[kind.index()];
                        if let Some(prefix) = value.strip_suffix('*') {
                            // A prefix overlaps any name or prefix it starts
                            // (sorted right after it), or the prefix that
                            // starts it.
                            let started = exact_sorted[kind.index()]
                                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                                .take_while(|n| n.starts_with(prefix));
                            for n in started {
                                r.push(
                                    k.clone(),
                                    format!(
                                        "`{value}` also matches {label}:{n} of {}",
                                        origin[&format!("{label} {n}")]
                                    ),
                                );
                            }
                            let mut overlapped: BTreeSet<&String> = prefixes
                                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                                .map(|(p, _)| p)
                                .take_while(|p| p.starts_with(prefix))
                                .collect();
                            overlapped.extend(prefix_of(prefixes, prefix).map(|(p, _)| p));
                            for p in overlapped {
                                r.push(
                                    k.clone(),
                                    format!(
                                        "`{value}` overlaps {label}:{p}* of {}",
                                        origin[&format!("{label} {p}*")]
                                    ),
                                );
                            }
                            t.cert_prefix[kind.index()].insert(prefix.to_string(), id);
                        } else {
                            if let Some((p, _)) = prefix_of(prefixes, value) {
                                r.push(
                                    k.clone(),
                                    format!(
                                        "`{value}` is also matched by {label}:{p}* of {}",
                                        origin[&format!("{label} {p}*")]
                                    ),
                                );
                            }
                            t.cert_exact[kind.index()].insert(value.to_string(), id);
                            exact_sorted[kind.index()].insert(value.to_string());
                        }
                        remember(&mut origin, format!("{label} {value}"), &k, here, r);
                    }
                }
            }
            if let (Some(jurisdiction), Some(mismatch)) = (jurisdiction, mismatch) {
                t.list.push(Tenant {
                    name: name.to_string(),
                    jurisdiction,
                    mismatch,
                });
            } else {
                // Keep ids dense: a placeholder never reached (the report,
                // or the invalid policy, already fails the load).
                t.list.push(Tenant {
                    name: name.to_string(),
                    jurisdiction: JurisdictionId(0),
                    mismatch: Mismatch::Refuse,
                });
            }
        }
        (r.problems.len() == before && policy.is_some()).then_some(t)
    }
}

/// The prefix among `prefixes` that `name` starts with, if any: the
/// greatest one not after `name`. Among prefixes none of which starts
/// another (checked at load), no other can come between that one and the
/// name: it would start with it, or sort after the name.
fn prefix_of<'a>(
    prefixes: &'a BTreeMap<String, TenantId>,
    name: &str,
) -> Option<(&'a String, TenantId)> {
    prefixes
        .range::<str, _>((Bound::Unbounded, Bound::Included(name)))
        .next_back()
        .filter(|(p, _)| name.starts_with(p.as_str()))
        .map(|(p, id)| (p, *id))
}

/// Records where a pattern came from; the same pattern twice is an overlap.
/// `here` names the pattern for later messages: its `key` and tenant.
fn remember(
    origin: &mut HashMap<String, String>,
    pattern: String,
    key: &str,
    here: String,
    r: &mut ConfigReport,
) {
    if let Some(first) = origin.get(&pattern) {
        let (kind, value) = pattern.split_once(' ').unwrap_or(("", &pattern));
        r.push(key, format!("{kind} `{value}` is also given at {first}"));
    } else {
        origin.insert(pattern, here);
    }
}

/// Files `name` under its parent (what follows its first label).
fn under(index: &mut HashMap<String, Vec<String>>, name: &str) {
    if let Some((_, parent)) = name.split_once('.') {
        index
            .entry(parent.to_string())
            .or_default()
            .push(name.to_string());
    }
}

/// A `*.suffix` pattern overlaps every exact name one label below it.
fn overlap_wild(
    origin: &HashMap<String, String>,
    kind: &str,
    suffix: &str,
    under: &HashMap<String, Vec<String>>,
    key: &str,
    r: &mut ConfigReport,
) {
    for name in under.get(suffix).into_iter().flatten() {
        r.push(
            key,
            format!(
                "`*.{suffix}` also matches {kind} `{name}` of {}",
                origin[&format!("{kind} {name}")]
            ),
        );
    }
}

/// An exact name overlaps a `*.suffix` pattern of its parent.
fn overlap_exact(
    origin: &HashMap<String, String>,
    kind: &str,
    name: &str,
    wildcard: &HashMap<String, TenantId>,
    key: &str,
    r: &mut ConfigReport,
) {
    if let Some((_, parent)) = name.split_once('.') {
        if wildcard.contains_key(parent) {
            r.push(
                key,
                format!(
                    "`{name}` is also matched by {kind} `*.{parent}` of {}",
                    origin[&format!("{kind} *.{parent}")]
                ),
            );
        }
    }
}

fn mismatch(raw: Option<&RawMismatch>, key: &str, r: &mut ConfigReport) -> Option<Mismatch> {
    match raw {
        None => Some(Mismatch::Allow),
        Some(RawMismatch::Action(a)) if a == "allow" => Some(Mismatch::Allow),
        Some(RawMismatch::Action(a)) if a == "refuse" => Some(Mismatch::Refuse),
        Some(RawMismatch::Action(a)) => {
            r.push(
                key,
                format!(
                    "`{a}` is not one of \"allow\", \"refuse\" or {{ allow_countries = [...] }}"
                ),
            );
            None
        }
        Some(RawMismatch::Countries(AllowCountries { allow_countries })) => {
            let mut list = Vec::new();
            for code in allow_countries {
                match Country::parse(code) {
                    Some(c) => list.push(c),
                    None => r.push(format!("{key}.allow_countries"), Country::unknown(code)),
                }
            }
            (list.len() == allow_countries.len()).then_some(Mismatch::AllowCountries(list))
        }
    }
}

/// A URI as certificate names are compared (RFC 5280 §7.4): its scheme and
/// host without regard to case, the rest as it is. Both sides go through
/// it: a certificate's SAN URIs, and `uri:` patterns at load. For a
/// pattern's `prefix` (before its `*`), text without a `:` is all scheme,
/// and an authority the prefix cuts short is all host.
/// Allocates only when there is upper case to lower (tenant recognition
/// runs per request, and allocates nothing for names already lower case).
pub fn uri_compared(uri: &str, prefix: bool) -> Cow<'_, str> {
    // The byte ranges compared without regard to case.
    let (scheme, host) = match uri.find(':') {
        None if prefix => (0..uri.len(), 0..0),
        None => (0..0, 0..0),
        Some(colon) => {
            let start = colon + 3;
            let host = match uri.get(colon + 1..).and_then(|r| r.strip_prefix("//")) {
                Some(rest) => {
                    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                    // The host follows any userinfo, which is compared as
                    // it is; a port's digits have no case.
                    let host = rest[..authority].rfind('@').map_or(0, |at| at + 1);
                    start + host..start + authority
                }
                None => 0..0,
            };
            (0..colon, host)
        }
    };
    let upper =
        |r: &std::ops::Range<usize>| uri.as_bytes()[r.clone()].iter().any(u8::is_ascii_uppercase);
    if !upper(&scheme) && !upper(&host) {
        return Cow::Borrowed(uri);
    }
    let mut out = uri.to_string();
    out[scheme].make_ascii_lowercase();
    out[host].make_ascii_lowercase();
    Cow::Owned(out)
}

fn cert_pattern(pattern: &str) -> Option<(Kind, &str)> {
    let (kind, value) = pattern.split_once(':')?;
    let kind = match kind {
        "uri" => Kind::Uri,
        "dns" => Kind::Dns,
        "cn" => Kind::Cn,
        _ => return None,
    };
    Some((kind, value))
}

fn valid_tenant_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `host.example` or `*.example` (lowercase, at least one dot after `*.`
/// is not required: `*.internal` is allowed).
fn valid_host_pattern(p: &str) -> bool {
    valid_dns_name(p.strip_prefix("*.").unwrap_or(p))
}

/// A DNS name as configuration names hosts: lowercase labels of letters,
/// digits and `-`, each 1 to 63 bytes, at most 253 in all.
pub fn valid_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The SHA-256 that records carry as `policy_sha256`: the routing policy's
/// ([`Policy::hash`], unchanged without tenants) or, with tenants, of the
/// policy's canonical text followed by every tenant's pin, mismatch policy
/// and patterns, so that a record commits to the pins that routed it.
pub fn routing_hash(policy: &Policy, tenants: &Tenants) -> String {
    if tenants.is_empty() {
        return policy.hash();
    }
    let mut text = policy.canonical_text();
    let mut lines: Vec<String> = Vec::new();
    // Each tenant's patterns, every map read once (each tenant scanning
    // every map made 50,000 tenants take seconds to load: scale audit,
    // stop 65).
    let mut per_tenant: Vec<Vec<String>> = vec![Vec::new(); tenants.list.len()];
    let mut mine = |map: &HashMap<String, TenantId>, label: &str| {
        for (k, v) in map {
            per_tenant[v.0 as usize].push(format!("{label}{k}"));
        }
    };
    mine(&tenants.sni_exact, "sni:");
    mine(&tenants.sni_wildcard, "sni:*.");
    for kind in [Kind::Uri, Kind::Dns, Kind::Cn] {
        mine(
            &tenants.cert_exact[kind.index()],
            &format!("{}:", kind.as_str()),
        );
    }
    mine(&tenants.cert_dns_wildcard, "dns:*.");
    for kind in [Kind::Uri, Kind::Dns, Kind::Cn] {
        for (p, v) in &tenants.cert_prefix[kind.index()] {
            per_tenant[v.0 as usize].push(format!("{}:{p}*", kind.as_str()));
        }
    }
    for (t, mut patterns) in tenants.list.iter().zip(per_tenant) {
        patterns.sort();
        let mismatch = match &t.mismatch {
            Mismatch::AllowCountries(list) => {
                let mut codes: Vec<&str> = list.iter().map(|c| c.as_str()).collect();
                codes.sort();
                format!("allow_countries {}", codes.join(","))
            }
            m => m.as_str().to_string(),
        };
        lines.push(format!(
            "tenant {} {} {mismatch} {}\n",
            t.name,
            policy.jurisdiction(t.jurisdiction).name,
            patterns.join(" ")
        ));
    }
    lines.sort();
    for line in lines {
        text.push_str(&line);
    }
    crate::policy::sha256_hex(&text)
}

/// The recognised tenant, from what each source found: a token wins over a
/// client certificate, which wins over the server name — but two sources
/// that name different tenants are a [`Conflict`].
pub fn combine(
    token: Option<TenantId>,
    cert: Option<TenantId>,
    sni: Option<TenantId>,
) -> Result<Option<Recognized>, Conflict> {
    let found = [
        (token, Source::Token),
        (cert, Source::ClientCert),
        (sni, Source::Sni),
    ];
    let mut winner: Option<Recognized> = None;
    for (id, source) in found {
        let Some(id) = id else { continue };
        match winner {
            None => winner = Some(Recognized { tenant: id, source }),
            Some(w) if w.tenant != id => return Err(Conflict),
            Some(_) => {}
        }
    }
    Ok(winner)
}

/// What a wildcard `*.parent` of `name` would be: `name` without its first
/// label, which must not be empty (`.globex.test` is no name under
/// `*.globex.test`, which takes exactly one more label: verification,
/// stop 70).
fn wildcard_parent(name: &str) -> Option<&str> {
    name.split_once('.')
        .filter(|(label, _)| !label.is_empty())
        .map(|(_, parent)| parent)
}
