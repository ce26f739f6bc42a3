//! Header rewriting in both directions.
//!
//! Upstream requests lose hop-by-hop headers (RFC 9110 §7.6.1, plus any named
//! in `Connection`), every client-sent `Residency-*` header, other claims of
//! the client's address (`Forwarded`, `X-Real-IP`, …), each of these and the
//! proxy's own fields also spelt with `_` for `-`, and any
//! `X-Forwarded-Host`/`-Proto`; their `Host` becomes the data centre's (set
//! by `forward::prepare`); then they gain
//! `X-Forwarded-For` (appended when it came from a trusted proxy, replaced
//! otherwise), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Request-Id`,
//! `Residency-Origin-Country` and `Residency-Jurisdiction`. Responses lose
//! hop-by-hop, `Alt-Svc` and upstream-sent `Residency-*` headers and gain `Residency-Jurisdiction`,
//! `Residency-Datacenter` and `X-Request-Id`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Uri, Version};
use residency_core::origin::push_ip;

use crate::upstream::pool::RESPONSE_HEAD_LIMIT;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const RESIDENCY_ORIGIN_COUNTRY: HeaderName =
    HeaderName::from_static("residency-origin-country");
pub const RESIDENCY_JURISDICTION: HeaderName = HeaderName::from_static("residency-jurisdiction");
pub const RESIDENCY_TENANT: HeaderName = HeaderName::from_static("residency-tenant");
pub const RESIDENCY_DATACENTER: HeaderName = HeaderName::from_static("residency-datacenter");

// Values the proxy sends, made at compile time: `from_static` in a
// function body checks its bytes each time it runs (issue 23).
const HTTPS: HeaderValue = HeaderValue::from_static("https");
const VIA_2: &str = "2 residency-proxy";
const VIA_10: &str = "1.0 residency-proxy";
const VIA_11: &str = "1.1 residency-proxy";
const VIA_2_VALUE: HeaderValue = HeaderValue::from_static(VIA_2);
const VIA_10_VALUE: HeaderValue = HeaderValue::from_static(VIA_10);
const VIA_11_VALUE: HeaderValue = HeaderValue::from_static(VIA_11);

/// Names listed in `Connection` (they are hop-by-hop too); usually none.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    // Read as bytes: a field with obs-text elsewhere still names the
    // headers it lists (`to_str` would drop it whole).
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

/// Hop-by-hop (RFC 9110 §7.6.1, `Upgrade` and h2c's `HTTP2-Settings`
/// included) or `Residency-*`: never passed through in either direction.
fn never_forwarded(name: &HeaderName) -> bool {
    never_forwarded_text(name.as_str())
}

// The judgements below read a name's text once: a `match` on it tests
// lengths first, where comparing `HeaderName`s one by one took ~175
// instructions per field (issue 23). Names are lower case already (HTTP/1
// parsing lowers them; HTTP/2 refuses upper case).

/// The hop-by-hop names: `hop_by_hop!()` as a pattern (for
/// [`Fields::of`]'s `match` too), `hop_by_hop!(list)` as an array.
macro_rules! hop_by_hop {
    ($($form:ident)?) => {
        names!($($form)?:
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "http2-settings"
        )
    };
}

/// The other claims of the client's address ([`claims_the_client_text`])
/// and of its country (a CDN's geolocation, which a data centre written
/// for one might read beside the proxy's `Residency-Origin-Country`),
/// and of its identity — a client certificate as fronts pass it on
/// (RFC 9440's `Client-Cert` and `Client-Cert-Chain`, Envoy's
/// `X-Forwarded-Client-Cert`, the `X-SSL-Client-*` of nginx and HAProxy
/// setups, AWS's `X-Amzn-Mtls-Clientcert*`) or a tenant — which the proxy
/// establishes itself (`Residency-Tenant`) — and the claims of a front
/// about the request that web frameworks honour (`X-Forwarded-Port` and
/// `X-Forwarded-Prefix` beside the proxy's own `X-Forwarded-Proto` and
/// `-Host`; IIS's and Symfony's `X-Original-URL` and `X-Rewrite-URL`, which
/// route a request to another path than the one the proxy checked), as a
/// pattern (`client_claims!()`) or an array (`client_claims!(list)`).
macro_rules! client_claims {
    ($($form:ident)?) => {
        names!($($form)?:
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "fastly-client-ip",
            "fly-client-ip",
            "cloudfront-viewer-address",
            "x-appengine-user-ip",
            "x-vercel-forwarded-for",
            "client-ip",
            "forwarded-for",
            "x-forwarded",
            "x-originating-ip",
            "x-remote-ip",
            "x-remote-addr",
            "x-proxyuser-ip",
            "cf-pseudo-ipv4",
            "cf-connecting-ipv6",
            "cf-ipcountry",
            "cloudfront-viewer-country",
            "x-appengine-country",
            "x-vercel-ip-country",
            "x-country-code",
            "x-geo-country",
            "client-cert",
            "client-cert-chain",
            "x-forwarded-client-cert",
            "x-client-cert",
            "x-ssl-client-cert",
            "x-ssl-client-verify",
            "x-ssl-client-dn",
            "x-ssl-client-s-dn",
            "x-ssl-client-i-dn",
            "ssl-client-cert",
            "ssl-client-verify",
            "x-amzn-mtls-clientcert",
            "x-amzn-mtls-clientcert-leaf",
            "x-tenant",
            "x-tenant-id",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-original-url",
            "x-rewrite-url"
        )
    };
}

/// Field names as a `match` pattern (`names!(: "a", "b")`) or as an array
/// (`names!(list: "a", "b")`): one list for both.
macro_rules! names {
    (: $($name:literal),+ $(,)?) => {
        $($name)|+
    };
    (list: $($name:literal),+ $(,)?) => {
        [$($name),+]
    };
}

fn never_forwarded_text(name: &str) -> bool {
    matches!(name, hop_by_hop!()) || name.starts_with("residency-")
}

/// [`never_forwarded`], one of the fields the proxy sets, or another claim
/// of who the client is ([`claims_the_client_text`]), also spelt with `_` for
/// `-`: what a client's request does not take to the data centre. Servers
/// that map field names to CGI-style variables (PHP, WSGI, Rack; nginx with
/// `underscores_in_headers`) read `Residency_Jurisdiction` or
/// `X_Forwarded_For` as the field the proxy set, and which copy wins is
/// theirs to pick, so such a name is judged by its dashed spelling. (No
/// name the proxy judges has a `_`; nginx drops every field with a `_` by
/// default, the proxy only those. Towards the client the `_` spellings are
/// not judged: clients read response fields by their names, not as CGI
/// variables.)
fn not_upstream(name: &HeaderName) -> bool {
    let text = name.as_str();
    if has_underscore(text.as_bytes()) {
        let dashed = text.replace('_', "-");
        return never_forwarded_text(&dashed)
            || set_by_us_text(&dashed)
            || claims_the_client_text(&dashed);
    }
    never_forwarded_text(text) || claims_the_client_text(text)
}

/// Whether a field name has a `_`, read eight bytes at a time: `contains`
/// reads a slice shorter than 16 bytes (most field names) one byte at a
/// time, ~60 instructions a name (issue 23).
fn has_underscore(name: &[u8]) -> bool {
    if name.len() < 8 {
        return name.contains(&b'_');
    }
    let word = |eight: &[u8]| {
        word_has(
            u64::from_ne_bytes(eight.try_into().unwrap_or_default()),
            b'_',
        )
    };
    // The last word overlaps the previous one unless the length is a
    // multiple of 8.
    name.chunks_exact(8).any(word) || word(&name[name.len() - 8..])
}

/// Whether any of the eight bytes of `word` is `byte`: a byte of `x` is
/// zero where `word` has `byte`, and the expression is non-zero exactly
/// when some byte of `x` is (issue 23: eight bytes at a time).
fn word_has(word: u64, byte: u8) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    let x = word ^ u64::from_ne_bytes([byte; 8]);
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The fields the proxy sets for the data centre (besides `Residency-*`).
fn set_by_us_text(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-request-id"
    )
}

/// [`claims_the_client_text`] of a name.
#[cfg(test)]
fn claims_the_client(name: &HeaderName) -> bool {
    claims_the_client_text(name.as_str())
}

/// A claim of who the client is that the proxy establishes itself:
/// another way to name its address than `X-Forwarded-For` (RFC 7239
/// `Forwarded` and the common non-standard fields), or its identity (a
/// client certificate as fronts pass it on, a tenant). Never sent upstream,
/// where the client's address is `X-Forwarded-For` (from the walked chain)
/// and `Residency-Origin-Country` alone, and its tenant `Residency-Tenant`:
/// a client's own claim in another field would mislead a data centre that
/// reads it first.
fn claims_the_client_text(name: &str) -> bool {
    matches!(name, client_claims!())
}

/// [`never_forwarded`], or `Alt-Svc` (RFC 7838; and `Alternate-Protocol`,
/// its forerunner): a data centre's alternative services are its own
/// endpoints, offered under the proxy's origin, and a client that took one
/// up (a data centre holding a certificate for that name) would send its
/// next uploads there, past the proxy's decision.
fn not_to_client(name: &HeaderName) -> bool {
    never_forwarded(name) || name == header::ALT_SVC || name.as_str() == "alternate-protocol"
}

/// Removes what a data centre's response does not take to the client:
/// hop-by-hop, `Residency-*` and `Alt-Svc` fields ([`not_to_client`]).
/// Scans first: most header sets have nothing to remove, and then nothing
/// is hashed or moved.
fn strip_for_client(headers: &mut HeaderMap) {
    strip(headers, not_to_client, false);
}

/// Removes the fields `goes` judges and those listed in `Connection`;
/// with `keep_host`, not `Host`, even if listed: on the way to a data
/// centre it is the data centre's already (the caller set it), and a
/// client's `Connection: host` named its own, which it replaced (RFC 9112
/// §3.2: a request without `Host` is one no HTTP/1.1 server takes).
fn strip(headers: &mut HeaderMap, goes: impl Fn(&HeaderName) -> bool, keep_host: bool) {
    if !headers.keys().any(&goes) {
        return;
    }
    let mut names = connection_listed(headers);
    if keep_host {
        names.retain(|name| name != header::HOST);
    }
    names.extend(headers.keys().filter(|k| goes(k)).cloned());
    for name in names {
        headers.remove(name);
    }
}

/// What the upstream is told about the upload.
pub struct Forwarded<'a> {
    pub request_id: &'a HeaderValue,
    /// Original `X-Forwarded-For` is kept only when a trusted proxy sent it,
    /// and then only from the client's entry on (what the decision walked).
    pub xff_trusted: bool,
    /// The client's address, as the decision resolved it.
    pub client: IpAddr,
    /// The address appended to `X-Forwarded-For`: our TCP peer, or the
    /// client named by the PROXY header.
    pub hop: IpAddr,
    pub country: &'a str,
    /// `Residency-Jurisdiction` (from [`crate::state::PolicyValues`]; `None`: not sent).
    pub jurisdiction: Option<HeaderValue>,
    /// `Residency-Tenant`: the recognised tenant's name (`None`: none).
    pub tenant: Option<HeaderValue>,
    pub host: Option<HeaderValue>,
    /// The client's HTTP version: for `Via`, and HTTP/2's cookies may come
    /// as several fields.
    pub version: Version,
    /// The request may have a `Via` field ([`Fields::via`]); `false`: it
    /// has none, and ours is added without a lookup.
    pub via: bool,
    /// The request may have a field that does not go upstream
    /// ([`Fields::foreign`]); `false`: it has none, and the fields are not
    /// looked at again.
    pub foreign: bool,
    /// The request has an `Expect` ([`Fields::expect`]). An HTTP/1.0
    /// client's is ignored (RFC 9110 §10.1.1) and not sent on: in the
    /// HTTP/1.1 request the data centre gets, it would say that the client
    /// waits for `100 Continue`.
    pub expect: bool,
    /// `tenancy.token.header`, when tokens are on: its spelling with `_`
    /// for `-` does not go upstream ([`spelt_with_underscores`]).
    pub token_header: Option<&'a HeaderName>,
}

/// Whether `name` is `dashed` (a name with a `-`) spelt with `_` for some
/// of its `-`: `x_tenant_token` for `tenancy.token.header = "x-tenant-token"`.
/// A data centre that maps field names to CGI-style variables reads it as
/// the token field; but the proxy judged the tenant by the dashed one only
/// (or, without it, by GeoIP), so a token in it must not reach the data
/// centre, which would credit the upload to a tenant whose pin it escaped.
fn spelt_with_underscores(name: &HeaderName, dashed: &HeaderName) -> bool {
    let (name, dashed) = (name.as_str().as_bytes(), dashed.as_str().as_bytes());
    name.len() == dashed.len()
        && name != dashed
        && name
            .iter()
            .zip(dashed)
            .all(|(n, d)| n == d || (*n == b'_' && *d == b'-'))
}

/// Rewrites a client request's headers for the upstream, in place: the
/// client's map is already hashed, so only what goes is removed (usually
/// nothing) and ours are inserted; `insert` replaces any value the client
/// sent under the same name. `Host` is the caller's to replace with the
/// data centre's (`forward::prepare` does it in the same operation that
/// takes the client's, for `f.host`).
pub fn to_upstream(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    // Only a trusted peer's chain is kept (allocated then): most requests
    // send just the hop, written on the stack.
    let mut chain = String::new();
    if f.xff_trusted {
        walked_chain(headers, f.client, &mut chain);
    }
    if f.host.is_none() {
        headers.remove(X_FORWARDED_HOST);
    }
    // Hop-by-hop (with any named in `Connection`), client-sent `Residency-*`
    // and other claims of an address, in either spelling.
    if f.foreign {
        match f.token_header {
            Some(token) => strip(
                headers,
                |name| not_upstream(name) || spelt_with_underscores(name, token),
                true,
            ),
            None => strip(headers, not_upstream, true),
        }
    }
    if f.expect && f.version <= Version::HTTP_10 {
        headers.remove(header::EXPECT);
    }
    headers.reserve(7);
    let forwarded_for = if chain.is_empty() {
        // Copied once into a value of its exact length: one allocation,
        // where a `String`'s spare capacity made `Bytes` add a second (its
        // shared header; issue 23).
        let mut hop = IpText::default();
        push_ip(&mut hop, f.hop);
        HeaderValue::from_bytes(hop.as_bytes())
    } else {
        // From a `String`, its buffer becomes the value's (no copy).
        push_ip(&mut chain, f.hop);
        HeaderValue::try_from(chain)
    };
    match forwarded_for {
        Ok(v) => headers.insert(X_FORWARDED_FOR, v),
        Err(_) => headers.remove(X_FORWARDED_FOR),
    };
    if f.version == Version::HTTP_2 {
        join_cookies(headers);
    }
    via(headers, f.version, f.via);
    headers.insert(X_FORWARDED_PROTO, HTTPS);
    if let Some(host) = &f.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    headers.insert(X_REQUEST_ID, f.request_id.clone());
    // (Client-sent ones are gone with the other `Residency-*` headers.)
    if let Some(v) = country_value(f.country) {
        headers.insert(RESIDENCY_ORIGIN_COUNTRY, v);
    }
    if let Some(v) = &f.jurisdiction {
        headers.insert(RESIDENCY_JURISDICTION, v.clone());
    }
    if let Some(v) = &f.tenant {
        headers.insert(RESIDENCY_TENANT, v.clone());
    }
}

/// An address's text, on the stack: the longest IPv6 form
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`) is 45 bytes.
struct IpText {
    text: [u8; 45],
    len: usize,
}

impl Default for IpText {
    fn default() -> IpText {
        IpText {
            text: [0; 45],
            len: 0,
        }
    }
}

impl IpText {
    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

impl std::fmt::Write for IpText {
    // IPv4's digits and dots, a byte each (the default encodes each
    // `char` first).
    fn write_char(&mut self, c: char) -> std::fmt::Result {
        let to = self.text.get_mut(self.len).ok_or(std::fmt::Error)?;
        *to = u8::try_from(c).map_err(|_| std::fmt::Error)?;
        self.len += 1;
        Ok(())
    }

    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let to = self.text.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        to.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The part of a trusted peer's `X-Forwarded-For` that the decision walked
/// (`origin::resolve`, right to left): the client's entry and the trusted
/// hops after it, each followed by ", ". What is left of the client's
/// entry is the client's own writing: a data centre that read it (the
/// left-most entry, say) would see an address the decision did not use.
/// With no entry naming the client (every hop trusted), all of it.
fn walked_chain(headers: &HeaderMap, client: IpAddr, chain: &mut String) {
    let entries = || {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
    };
    // Visible ASCII only, as a header value we send must be.
    fn text(entry: &[u8]) -> Option<&str> {
        let visible = entry
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        let entry = std::str::from_utf8(entry).ok().filter(|_| visible)?;
        Some(entry.trim_matches(|c| c == ' ' || c == '\t'))
    }
    let total = entries().count();
    let keep = entries()
        .rev()
        .position(|e| {
            text(e)
                .and_then(|e| e.parse::<IpAddr>().ok())
                .is_some_and(|a| a.to_canonical() == client)
        })
        .map_or(total, |i| i + 1);
    for entry in entries().skip(total - keep).filter_map(text) {
        chain.push_str(entry);
        chain.push_str(", ");
    }
}

/// RFC 9110 §7.6.3: a proxy adds itself to `Via`, with the protocol the
/// request was received in, after any the client sent (fields with no
/// element, such as an empty one, are left out rather than joined into an
/// empty list element).
fn via(headers: &mut HeaderMap, version: Version, maybe_sent: bool) {
    let (ours, value) = match version {
        Version::HTTP_2 => (VIA_2, VIA_2_VALUE),
        Version::HTTP_10 => (VIA_10, VIA_10_VALUE),
        _ => (VIA_11, VIA_11_VALUE),
    };
    if !maybe_sent || !headers.contains_key(header::VIA) {
        headers.insert(header::VIA, value);
        return;
    }
    let mut hops: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.iter().all(|b| matches!(b, b' ' | b'\t' | b',')))
        .collect();
    hops.push(ours.as_bytes());
    let joined = HeaderValue::from_bytes(&hops.join(&b", "[..])).unwrap_or(value);
    headers.insert(header::VIA, joined);
}

/// `code` as a header value: a country code without allocating, anything
/// else as `HeaderValue::from_str` makes it (`None` when it cannot be one).
fn country_value(code: &str) -> Option<HeaderValue> {
    // `Country`'s own table of codes: no copy, and no `str::from_utf8`
    // (issue 23; `from_static` still checks the two bytes).
    match residency_core::country::code_text(code) {
        Some(code) => Some(HeaderValue::from_static(code)),
        None => HeaderValue::from_str(code).ok(),
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `cookie` into several
/// fields; going upstream as HTTP/1.1 they become one, joined by "; ".
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    match HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        Ok(v) => headers.insert(header::COOKIE, v),
        Err(_) => headers.remove(header::COOKIE),
    };
}

/// Adds the headers every response carries (the values from
/// [`crate::state::PolicyValues`]). A data centre's answer has been through
/// [`from_upstream`]; the proxy's own carry no hop-by-hop field.
pub fn to_client(
    headers: &mut HeaderMap,
    request_id: &HeaderValue,
    jurisdiction: Option<&HeaderValue>,
    datacenter: Option<&HeaderValue>,
) {
    headers.insert(X_REQUEST_ID, request_id.clone());
    if let Some(v) = jurisdiction {
        headers.insert(RESIDENCY_JURISDICTION, v.clone());
    }
    if let Some(v) = datacenter {
        headers.insert(RESIDENCY_DATACENTER, v.clone());
    }
}

/// A data centre's response fields made the client's, in place, from one
/// pass over them (issue 23): its framing ([`client_framing`]), then its
/// hop-by-hop, `Residency-*` and `Alt-Svc` fields removed ([`strip_for_client`]; the
/// framing reads `Transfer-Encoding` first). `Err` says why the response
/// cannot be forwarded: a transfer coding beyond `chunked`, or fields over
/// [`RESPONSE_HEAD_LIMIT`] (hyper reads a head up to that limit before
/// each read, so one read may take it past).
pub fn from_upstream(
    status: http::StatusCode,
    headers: &mut HeaderMap,
) -> Result<(), &'static str> {
    let fields = Fields::of(headers);
    if fields.head_bytes > RESPONSE_HEAD_LIMIT {
        return Err("a response head over 64 KiB");
    }
    let foreign = fields.foreign;
    let framing = Framing::of(&fields);
    if !client_framing(status, headers, framing) {
        return Err("a transfer coding other than chunked");
    }
    if foreign {
        strip_for_client(headers);
    }
    Ok(())
}

/// What [`client_framing`] needs of a response's [`Fields`].
#[derive(Clone, Copy)]
struct Framing {
    /// It has `Transfer-Encoding`.
    coded: bool,
    /// No `Content-Length`, or one that is a single valid length
    /// (`1*DIGIT`: hyper's client does not check the field of a 304 or of
    /// an answer to HEAD, and an HTTP/2 client resets a stream whose
    /// `content-length` does not parse).
    usual: bool,
}

impl Framing {
    fn of(fields: &Fields<'_>) -> Framing {
        Framing {
            coded: fields.transfer_encodings > 0,
            usual: match (fields.content_lengths, fields.content_length) {
                (0, _) => true,
                (1, Some(one)) => !one.is_empty() && one.as_bytes().iter().all(u8::is_ascii_digit),
                _ => false,
            },
        }
    }
}

/// A data centre's response framing made the client's, in place; `false`
/// when it cannot be (the response is not forwarded). With
/// `Transfer-Encoding`, `Content-Length` is not the body's length (RFC 9112
/// §6.3: hyper decoded the chunks, and an intermediary removes it), and a
/// coding beyond `chunked` (`gzip, chunked`) could not be labelled for the
/// client (transfer codings are hop-by-hop; HTTP/2 has none). A list of
/// equal lengths (`5, 5`, which hyper's client accepts) becomes the one
/// value, as HTTP/2 clients require. A 204 has no content and carries
/// neither field (RFC 9110 §8.6: an HTTP/2 client may take a
/// `content-length` on it for a malformed response). In the usual case,
/// no lookup: `framing` comes from the one pass of [`from_upstream`].
fn client_framing(status: http::StatusCode, headers: &mut HeaderMap, framing: Framing) -> bool {
    if status == http::StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        return true;
    }
    let Framing { coded, usual } = framing;
    if coded {
        let chunked_only = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .all(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        headers.remove(header::CONTENT_LENGTH);
        return chunked_only;
    }
    if usual {
        return true;
    }
    let mut lengths = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|n| {
            let n = n.trim_ascii();
            // `1*DIGIT` (`parse` would also take a sign).
            if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(n).ok()?.parse::<u64>().ok()
        });
    let one = lengths.next().flatten();
    match one.filter(|n| lengths.all(|m| m == Some(*n))) {
        Some(n) => headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n)),
        None => headers.remove(header::CONTENT_LENGTH),
    };
    true
}

/// `Max-Forwards` (RFC 9110 §7.6.2: `1*DIGIT`), when present and valid.
/// Read as a `u128` (saturating): exact far beyond the `u64` the proxy
/// sends, so [`forwarded_max_forwards`] can take the lesser of the two.
pub fn max_forwards(headers: &HeaderMap) -> Option<u128> {
    let value = headers.get(header::MAX_FORWARDS)?.as_bytes();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    }))
}

/// The `Max-Forwards` a forwarded request carries for a received `n` > 0:
/// the lesser of `n - 1` and the proxy's maximum, `u64::MAX` (RFC 9110
/// §7.6.2). A value too large for that is not passed on as it came.
pub fn forwarded_max_forwards(n: u128) -> u64 {
    u64::try_from(n.saturating_sub(1)).unwrap_or(u64::MAX)
}

/// Request framing that could smuggle a second request past a proxy:
/// both `Content-Length` and `Transfer-Encoding`, several
/// `Transfer-Encoding` headers, or one other than exactly `chunked`.
pub fn ambiguous_framing(headers: &HeaderMap) -> bool {
    Fields::of(headers).ambiguous_framing()
}

/// What the proxy reads of a client request's fields (or a data centre's
/// response's, [`from_upstream`]), gathered in one pass over them: a
/// lookup by name hashes the name and probes the map (about 100
/// instructions each, and a request took eight, issue 23).
#[derive(Default)]
pub struct Fields<'a> {
    /// The first `Host`, `Content-Length` and `Transfer-Encoding` value,
    /// and how many each has.
    host: Option<&'a HeaderValue>,
    hosts: usize,
    content_length: Option<&'a HeaderValue>,
    content_lengths: usize,
    transfer_encoding: Option<&'a HeaderValue>,
    transfer_encodings: usize,
    /// The request has an `X-Forwarded-For`, an `Idempotency-Key`, a `Via`,
    /// an `Expect`.
    pub forwarded_for: bool,
    pub idempotency_key: bool,
    pub via: bool,
    pub expect: bool,
    /// The request may have a field that does not go upstream
    /// ([`not_upstream`]): hop-by-hop, `Residency-*`, another claim of an
    /// address, or any name with a `_` (judged by `strip` then). `false`
    /// is exact: [`to_upstream`] then skips its own pass over the fields.
    pub foreign: bool,
    /// The fields' size as a head, each counted as `name: value` and CRLF
    /// (for [`from_upstream`]'s bound).
    head_bytes: usize,
}

/// The names [`Fields::of`]'s `match` reads, besides the hop-by-hop ones
/// and the claims of the client.
const FIELDS_READ: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "idempotency-key",
    "expect",
    "via",
    "alt-svc",
    "alternate-protocol",
];

/// A first test of a field's name for [`Fields::of`]: `false` for most
/// names none of its `match`'s arms names, never for one that does. The
/// `match` jumps on a name's length, but a name that matches nothing then
/// runs a chain of tests that grows with the alternatives (~60
/// instructions per field with 53 names, and most of a request's fields
/// match nothing: `accept`, `user-agent`, `content-type`; issue 23). A
/// bit per hash of the length and the first and last bytes, set for each
/// name listed.
struct NameFilter([u64; 4]);

impl NameFilter {
    const fn of(lists: &[&[&str]]) -> NameFilter {
        let mut bits = [0u64; 4];
        let mut l = 0;
        while l < lists.len() {
            let mut i = 0;
            while i < lists[l].len() {
                let slot = Self::slot(lists[l][i].as_bytes());
                bits[slot / 64] |= 1 << (slot % 64);
                i += 1;
            }
            l += 1;
        }
        NameFilter(bits)
    }

    const fn slot(name: &[u8]) -> usize {
        match (name.first(), name.last()) {
            (Some(&first), Some(&last)) => {
                (name.len() * 13 + last as usize * 2 + first as usize) % 256
            }
            _ => 0,
        }
    }

    #[inline]
    fn may_name(&self, name: &[u8]) -> bool {
        let slot = Self::slot(name);
        self.0[slot / 64] & (1 << (slot % 64)) != 0
    }
}

static JUDGED: NameFilter =
    NameFilter::of(&[&hop_by_hop!(list), &client_claims!(list), &FIELDS_READ]);

/// A name none of [`Fields::of`]'s arms names that still may not go
/// upstream: `Residency-*`, or any with a `_` (judged by `strip`).
fn foreign_unlisted(name: &str) -> bool {
    name.starts_with("residency-") || has_underscore(name.as_bytes())
}

impl<'a> Fields<'a> {
    pub fn of(headers: &'a HeaderMap) -> Fields<'a> {
        let mut f = Fields::default();
        for (name, value) in headers {
            let name = name.as_str();
            f.head_bytes += name.len() + value.len() + 4;
            if !JUDGED.may_name(name.as_bytes()) {
                f.foreign |= foreign_unlisted(name);
                continue;
            }
            match name {
                "host" => {
                    f.hosts += 1;
                    f.host.get_or_insert(value);
                }
                "content-length" => {
                    f.content_lengths += 1;
                    f.content_length.get_or_insert(value);
                }
                "transfer-encoding" => {
                    f.transfer_encodings += 1;
                    f.transfer_encoding.get_or_insert(value);
                    f.foreign = true;
                }
                "x-forwarded-for" => f.forwarded_for = true,
                "idempotency-key" => f.idempotency_key = true,
                "expect" => f.expect = true,
                "via" => f.via = true,
                // Only a response's goes ([`from_upstream`]).
                "alt-svc" | "alternate-protocol" => f.foreign = true,
                // In the same `match` as the names above, not a pass of
                // its own in `to_upstream` (issue 23).
                #[allow(unreachable_patterns)] // transfer-encoding: above
                hop_by_hop!() | client_claims!() => f.foreign = true,
                other => f.foreign |= foreign_unlisted(other),
            }
        }
        f
    }

    /// The first `Content-Length` value.
    pub fn content_length(&self) -> Option<&'a HeaderValue> {
        self.content_length
    }

    /// See [`ambiguous_framing`].
    fn ambiguous_framing(&self) -> bool {
        match (self.transfer_encodings, self.transfer_encoding) {
            (0, _) => self.content_lengths > 1,
            (1, Some(one)) => {
                self.content_lengths > 0
                    || !(one.as_bytes().eq_ignore_ascii_case(b"chunked")
                        || coded_before_chunked(one.as_bytes()))
            }
            _ => true,
        }
    }

    /// One `Transfer-Encoding` that ends in `chunked` after other codings
    /// (`gzip, chunked`), and no `Content-Length`: framed unambiguously,
    /// but in codings the proxy does not decode and so cannot forward (its
    /// data centres get the body re-framed, in no coding but `chunked`).
    /// RFC 9112 §6.1: "A server that receives a request message with a
    /// transfer coding it does not understand SHOULD respond with 501".
    pub fn unsupported_coding(&self) -> bool {
        self.content_lengths == 0
            && self.transfer_encodings == 1
            && self
                .transfer_encoding
                .is_some_and(|v| coded_before_chunked(v.as_bytes()))
    }

    /// See [`bad_host`].
    fn bad_host(&self, version: Version, uri: &Uri) -> bool {
        let Some(host) = self.host else {
            return version == Version::HTTP_11;
        };
        if self.hosts > 1 || !valid_host(host.as_bytes()) {
            return true;
        }
        version == Version::HTTP_2
            && uri.authority().is_some_and(|a| {
                !without_default_port(a.as_str().as_bytes())
                    .eq_ignore_ascii_case(without_default_port(host.as_bytes()))
            })
    }
}

/// A `Transfer-Encoding` list of codings (RFC 9112 §6.1: `token *( OWS ";"
/// OWS transfer-parameter )` each; empty elements skipped, RFC 9110 §5.6.1)
/// whose last is `chunked`, after at least one other that is not: `gzip,
/// chunked`. `chunked` twice, or a coding that is not a token, is not.
fn coded_before_chunked(value: &[u8]) -> bool {
    let mut codings = value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    if !codings
        .next_back()
        .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"))
    {
        return false;
    }
    let mut others = 0;
    for coding in codings {
        let name = coding
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if name.eq_ignore_ascii_case(b"chunked") || HeaderName::from_bytes(name).is_err() {
            return false;
        }
        others += 1;
    }
    others > 0
}

/// A request to answer 400 `bad_request`: ambiguous framing, a refused
/// request-target (but asterisk-form where `asterisk`: an `OPTIONS *` the
/// proxy answers), a `Host` against the rules, or an HTTP/2 field value
/// padded with whitespace or a field name that is not a token.
pub fn malformed<B>(req: &http::Request<B>, asterisk: bool) -> bool {
    malformed_with(req, &Fields::of(req.headers()), asterisk)
}

/// [`malformed`], with the request's [`Fields`] read already.
pub fn malformed_with<B>(req: &http::Request<B>, fields: &Fields<'_>, asterisk: bool) -> bool {
    fields.ambiguous_framing()
        || (!asterisk && bad_target(req.uri()))
        || fields.bad_host(req.version(), req.uri())
        || malformed_h2_field(req.version(), req.headers())
}

/// The host a request is for, without its port: the target's authority
/// (`:authority`, absolute-form), else `Host` (`None` without one). An IP
/// literal keeps its brackets; no tenant has such a name.
pub fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.host());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(name),
        _ => Some(host),
    }
}

/// An HTTP/2 field value that starts or ends with a space or tab: the
/// request is malformed (RFC 9113 §8.2.1: MUST NOT), and an intermediary
/// MUST NOT forward it (§8.1.1). (HTTP/1.1's parser strips such
/// whitespace as optional; h2 passes it through.) Nor a field name that is
/// not a token (RFC 9110 §5.1): the `http` crate takes `"` in one, which
/// would go into the data centre's HTTP/1.1 request as it is (HTTP/1.1's
/// parser refuses it, and h2 every other such byte).
pub fn malformed_h2_field(version: Version, headers: &HeaderMap) -> bool {
    let padded = |b: &u8| *b == b' ' || *b == b'\t';
    version == Version::HTTP_2
        && headers.iter().any(|(name, v)| {
            let v = v.as_bytes();
            v.first().is_some_and(padded)
                || v.last().is_some_and(padded)
                || name.as_str().contains('"')
        })
}

/// The most header fields a request may have: hyper's HTTP/1 parser
/// refuses more (a bare 431), and so, by default, does a data centre's
/// (hyper's, as the reference `sink`): the request goes to it as HTTP/1.1.
pub const MAX_REQUEST_FIELDS: usize = 100;

/// The most fields the proxy adds to a request on its way (`Host` for
/// HTTP/2, `Via`, `X-Forwarded-For`, `-Proto`, `-Host`, `X-Request-Id`,
/// `Residency-Origin-Country`, `-Jurisdiction`, `-Tenant`, a framing
/// field): a request the data centre gets stays within
/// [`MAX_REQUEST_FIELDS`].
pub const FIELDS_ADDED: usize = 10;

/// A request with more fields than the data centre may take once the
/// proxy's are added (more than [`MAX_REQUEST_FIELDS`] − [`FIELDS_ADDED`]),
/// HTTP/2's `cookie` crumbs counted as the one field they become (RFC 9113
/// §8.2.3, [`join_cookies`]). h2 bounds a header list by its bytes only;
/// HTTP/1.1 over 100 is hyper's bare 431 (README audit, stop 69: 91 to 100
/// fields went on, and the data centre's hyper answered a bare 431).
pub fn too_many_fields(version: Version, headers: &HeaderMap) -> bool {
    const MOST: usize = MAX_REQUEST_FIELDS - FIELDS_ADDED;
    headers.len() > MOST
        && headers.len()
            - if version == Version::HTTP_2 {
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .count()
                    .saturating_sub(1)
            } else {
                0
            }
            > MOST
}

/// A request-target that is not forwarded (400): asterisk-form and
/// authority-form (RFC 9112 §3.2.3-4: only for `OPTIONS` and `CONNECT`,
/// neither of which goes upstream), one with bytes outside US-ASCII
/// (not part of the request-target grammar; an upstream's parser may read
/// them differently), a path that does not start with `/` or has a dot
/// segment ([`dot_segment`]).
pub fn bad_target(uri: &Uri) -> bool {
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    let path = uri.path();
    authority_form
        // An HTTP/2 request without `:path` or `:authority` (RFC 9113
        // §8.3.1: malformed; the h2 crate lets it through as an empty
        // URI), and asterisk-form: any path but an absolute one (`http`
        // refuses to parse the others).
        || !path.starts_with('/')
        // Userinfo (RFC 9110 §4.2.4; RFC 9113 §8.3.1: MUST NOT be sent).
        || uri.authority().is_some_and(|a| a.as_str().contains('@'))
        // Most targets have none of the bytes the next two checks look
        // for, which one pass eight bytes at a time tells (issue 23).
        || uri.path_and_query().is_some_and(|p| {
            !plain(p.as_str().as_bytes()) && (!p.as_str().is_ascii() || dotted(path))
        })
}

/// Whether `bytes` holds no `.`, `%`, `\` and no byte outside ASCII, read
/// eight at a time: a target without any is neither [`dotted`] nor
/// outside US-ASCII.
fn plain(bytes: &[u8]) -> bool {
    let word =
        |w: u64| !(word_has(w, b'.') || word_has(w, b'%') || word_has(w, b'\\') || w & HIGHS != 0);
    if bytes.len() < 8 {
        return bytes
            .iter()
            .all(|&b| b.is_ascii() && !matches!(b, b'.' | b'%' | b'\\'));
    }
    let load = |eight: &[u8]| u64::from_ne_bytes(eight.try_into().unwrap_or([0x80; 8]));
    // The last word overlaps the previous one unless the length is a
    // multiple of 8.
    bytes.chunks_exact(8).all(|c| word(load(c))) && word(load(&bytes[bytes.len() - 8..]))
}

/// A path with a dot segment ([`dot_segment`]), or with a `\`, which
/// some servers (IIS) take for a `/`. One pass over the bytes: only a
/// segment starting with `.` or `%` may be a dot segment.
fn dotted(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut maybe = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return true,
            b'.' | b'%' if i > 0 && bytes[i - 1] == b'/' => maybe = true,
            _ => {}
        }
    }
    maybe && path.split('/').any(dot_segment)
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, …): a data centre
/// that removes dot segments (RFC 3986 §5.2.4) would take `/v1/../admin`
/// out of the path prefix it is reached under, so such a path is refused
/// rather than forwarded or normalised here.
fn dot_segment(segment: &str) -> bool {
    // Up to its parameters (`..;x`: Tomcat and Spring drop them first).
    let segment = segment.split(';').next().unwrap_or(segment);
    let mut dots = 0;
    let mut rest = segment.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = match (b, tail) {
            (b'.', _) => tail,
            (b'%', [b'2', e, more @ ..]) if e.eq_ignore_ascii_case(&b'e') => more,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// A request whose `Host` breaks RFC 9112 §3.2 or RFC 9113 §8.3.1, to be
/// answered 400: an HTTP/1.1 request without `Host`; any request with more
/// than one, or with one that is not a valid `uri-host[:port]` (empty is
/// valid); an HTTP/2 request whose `Host` names another authority than its
/// `:authority`.
pub fn bad_host(version: Version, uri: &Uri, headers: &HeaderMap) -> bool {
    Fields::of(headers).bad_host(version, uri)
}

/// An authority without an empty port or the default one: compared after
/// RFC 3986 §6.2.3's normalisation (RFC 9113 §8.3.1), `a.example`,
/// `a.example:` and `a.example:443` name the same `https` origin (the
/// proxy's HTTP/2 is over TLS only).
fn without_default_port(authority: &[u8]) -> &[u8] {
    let authority = authority.strip_suffix(b":443").unwrap_or(authority);
    authority.strip_suffix(b":").unwrap_or(authority)
}

/// The bytes of the usual `Host` name: ASCII letters, digits, `-`, `.`.
static PLAIN_HOST: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
        b += 1;
    }
    t
};

/// `uri-host [ ":" port ]` (RFC 9110 §7.2), or empty. `http`'s authority
/// parser checks the host; userinfo and a non-numeric port are refused here.
fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    // The usual `name[:port]`, checked without the full parser (this runs
    // for every request): one pass over the name's bytes, looked up in a
    // table (issue 23), then the port's digits.
    let name = value
        .iter()
        .position(|&b| !PLAIN_HOST[usize::from(b)])
        .unwrap_or(value.len());
    if name > 0 {
        match value[name..] {
            [] => return true,
            [b':', ref port @ ..] if port.iter().all(u8::is_ascii_digit) => return true,
            _ => {}
        }
    }
    if value[0] == b'[' {
        // IP-literal [ ":" port ]: `http`'s parser checks neither the
        // address inside the brackets nor what follows them.
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let port_ok = match &value[end + 1..] {
            [] => true,
            [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
            _ => false,
        };
        return port_ok && ip_literal(&value[1..end]);
    }
    if value.contains(&b'@') || value.contains(&b'[') || value.contains(&b']') {
        return false;
    }
    if Authority::try_from(value).is_err() {
        return false;
    }
    match value.iter().position(|&b| b == b':') {
        Some(colon) => value[colon + 1..].iter().all(u8::is_ascii_digit),
        None => true,
    }
}

/// What RFC 3986 allows between the brackets: an IPv6 address or an
/// IPvFuture (`v` 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )).
fn ip_literal(inner: &[u8]) -> bool {
    if std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()) {
        return true;
    }
    let Some(rest) = inner
        .strip_prefix(b"v")
        .or_else(|| inner.strip_prefix(b"V"))
    else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(b);
    dot > 0
        && rest[..dot].iter().all(u8::is_ascii_hexdigit)
        && rest.len() > dot + 1
        && rest[dot + 1..].iter().all(allowed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_underscore_is_found_at_every_place_in_every_length() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(!super::has_underscore(&clean), "{len}");
            for at in 0..len {
                let mut name = clean.clone();
                name[at] = b'_';
                assert!(super::has_underscore(&name), "{len} {at}");
                // Its neighbours in ASCII are not taken for it.
                for near in [b'^', b'`', b'-', 0x5f + 0x80] {
                    name[at] = near;
                    assert!(!super::has_underscore(&name), "{len} {at} {near}");
                }
            }
        }
    }

    #[test]
    fn dot_segments_and_relative_paths_are_bad_targets() {
        let bad = |t: &str| bad_target(&t.parse::<Uri>().unwrap());
        for t in [
            "/v1/../admin",
            "/v1/./x",
            "/..",
            "/v1/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E./admin",
            "/v1/.%2e/admin",
            "/v1/%2e/x",
            "/v1/..;x/admin",
            "/v1/.;/x",
            "*",
        ] {
            assert!(bad(t), "{t}");
        }
        // A backslash (`http` lets one through).
        assert!(bad("/v1/..\\admin"));
        assert!(bad("/v1/a\\b"));
        for t in [
            "/v1/telemetry",
            "/v1/a.b",
            "/v1/...",
            "/v1/..x",
            "/v1/%2e%2ex",
            "/.well-known/x",
            "/",
        ] {
            assert!(!bad(t), "{t}");
        }
    }

    #[test]
    fn targets_that_are_not_forwarded() {
        use http::uri::Parts;
        let empty = Uri::from_parts(Parts::default()).unwrap();
        assert_eq!(empty.path(), "");
        for bad in [
            empty,
            "*".parse().unwrap(),
            "localhost:443".parse().unwrap(),
            "https://user@localhost/v1/telemetry".parse().unwrap(),
        ] {
            assert!(super::bad_target(&bad), "{bad}");
        }
        for good in [
            "/v1/telemetry?x=1",
            "https://localhost/v1/telemetry",
            "https://localhost",
        ] {
            assert!(!super::bad_target(&good.parse().unwrap()), "{good}");
        }
    }

    use super::*;

    /// One pass over the fields finds what lookups by name would: the
    /// first value of each, how many there are, and which are present.
    #[test]
    fn fields_read_in_one_pass_agree_with_lookups() {
        let h = map(&[
            ("content-type", "text/plain"),
            ("content-length", "007"),
            ("host", "a.example"),
            ("x-forwarded-for", "192.0.2.1"),
            ("content-length", "7"),
            ("x-forwarded-for", "192.0.2.2"),
        ]);
        let f = Fields::of(&h);
        assert_eq!(f.content_length(), h.get(header::CONTENT_LENGTH));
        assert_eq!(f.content_length().unwrap(), "007");
        assert_eq!(f.content_lengths, 2);
        assert_eq!(f.hosts, 1);
        assert!(f.forwarded_for && !f.idempotency_key && !f.via);
        assert!(f.ambiguous_framing(), "two Content-Length fields");

        let h = map(&[
            ("idempotency-key", "k"),
            ("via", "1.1 a"),
            ("transfer-encoding", "chunked"),
        ]);
        let f = Fields::of(&h);
        assert!(!f.forwarded_for && f.idempotency_key && f.via);
        assert!(!f.ambiguous_framing());
        assert!(
            f.bad_host(Version::HTTP_11, &Uri::from_static("/")),
            "no Host"
        );
        assert!(!f.bad_host(Version::HTTP_10, &Uri::from_static("/")));
        assert_eq!(f.content_length(), None);
    }

    #[test]
    fn a_response_head_is_refused_past_64_kib_of_fields() {
        let ok = http::StatusCode::OK;
        // "x-padding: " + value + CRLF: 13 + value bytes.
        let value = |n: usize| HeaderValue::from_str(&"p".repeat(n)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-padding", value(RESPONSE_HEAD_LIMIT - 13));
        assert_eq!(from_upstream(ok, &mut headers), Ok(()));
        headers.insert("x-padding", value(RESPONSE_HEAD_LIMIT - 12));
        assert_eq!(
            from_upstream(ok, &mut headers),
            Err("a response head over 64 KiB")
        );
        // Many small fields count together.
        let mut many = HeaderMap::new();
        for i in 0..1000 {
            many.append("x-many", value(60 + i % 2));
        }
        assert!(from_upstream(ok, &mut many).is_err());
    }

    /// A data centre's hop-by-hop and `Residency-*` fields do not reach
    /// the client, whether or not the framing needed a change; the others
    /// do, as they came.
    #[test]
    fn from_upstream_strips_what_is_not_the_clients() {
        let ok = http::StatusCode::OK;
        for extra in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            let mut h = map(&[
                ("content-type", "text/plain"),
                ("connection", "keep-alive, x-trace"),
                ("x-trace", "1"),
                ("keep-alive", "timeout=5"),
                ("residency-jurisdiction", "us"),
                ("x-kept", "yes"),
                extra,
            ]);
            assert_eq!(from_upstream(ok, &mut h), Ok(()));
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            let framing = if extra.0 == "content-length" {
                vec!["content-length", "content-type", "x-kept"]
            } else {
                vec!["content-type", "x-kept"]
            };
            assert_eq!(names, framing, "{extra:?}");
        }
        let mut plain = map(&[("content-type", "text/plain"), ("content-length", "5")]);
        let before = plain.clone();
        assert_eq!(from_upstream(ok, &mut plain), Ok(()));
        assert_eq!(plain, before);
        let mut gzip = map(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(
            from_upstream(ok, &mut gzip),
            Err("a transfer coding other than chunked")
        );
        // A length that is not `1*DIGIT` (hyper's client lets it through on
        // a 304 or an answer to HEAD) is not passed on; a list of equal
        // ones becomes the one.
        for (value, kept) in [
            ("abc", None),
            ("", None),
            ("+5", None),
            (" 5", Some("5")),
            ("5, 5", Some("5")),
            ("5, 6", None),
            ("7", Some("7")),
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-length", HeaderValue::from_str(value).unwrap());
            assert_eq!(
                from_upstream(http::StatusCode::NOT_MODIFIED, &mut h),
                Ok(())
            );
            let got = h.get("content-length").map(|v| v.to_str().unwrap());
            assert_eq!(got, kept, "{value:?}");
        }
    }

    /// `Fields::foreign` is `false` exactly when `to_upstream` would strip
    /// nothing (a name with `_` counts as foreign, and `strip` judges it).
    #[test]
    fn fields_know_whether_anything_is_stripped() {
        let kept = [
            "host",
            "content-type",
            "content-length",
            "user-agent",
            "x-forwarded-for",
            "via",
            "idempotency-key",
            "accept",
            "cookie",
            "residency",
            "x-forwarded-proto",
        ];
        for name in kept {
            let h = map(&[(name, "v")]);
            assert!(!Fields::of(&h).foreign, "{name}");
            assert!(!h.keys().any(not_upstream), "{name}");
        }
        let stripped = [
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "proxy-authorization",
            "forwarded",
            "x-real-ip",
            "client-ip",
            "fly-client-ip",
            "cloudfront-viewer-address",
            "cf-ipcountry",
            "cloudfront-viewer-country",
            "x-appengine-country",
            "x-country-code",
            "residency-jurisdiction",
            "residency-anything",
            "x_forwarded_for",
            "residency_jurisdiction",
            "client-cert",
            "client-cert-chain",
            "x-forwarded-client-cert",
            "x-ssl-client-s-dn",
            "x-tenant",
            "x_tenant",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-original-url",
            "x-rewrite-url",
            "x_original_url",
        ];
        for name in stripped {
            let h = map(&[("host", "a"), (name, "v"), ("accept", "*/*")]);
            assert!(Fields::of(&h).foreign, "{name}");
            assert!(h.keys().any(not_upstream), "{name}");
        }
        // An underscore that `strip` keeps is still looked at.
        assert!(Fields::of(&map(&[("x_custom", "v")])).foreign);
        assert!(!not_upstream(&HeaderName::from_static("x_custom")));
    }

    /// `Fields::of`'s first test passes every name its `match` reads, and
    /// each is found as it was without the test.
    #[test]
    fn every_name_fields_of_reads_passes_its_filter() {
        let listed = hop_by_hop!(list).into_iter().chain(client_claims!(list));
        for name in listed.clone().chain(FIELDS_READ) {
            assert!(JUDGED.may_name(name.as_bytes()), "{name}");
        }
        for name in listed {
            assert!(Fields::of(&map(&[(name, "v")])).foreign, "{name}");
        }
        let h = map(&[
            ("expect", "100-continue"),
            ("via", "1.1 a"),
            ("idempotency-key", "k"),
            ("x-forwarded-for", "192.0.2.1"),
            ("host", "a"),
            ("content-length", "1"),
            ("transfer-encoding", "chunked"),
        ]);
        let f = Fields::of(&h);
        assert!(f.expect && f.via && f.idempotency_key && f.forwarded_for && f.foreign);
        assert_eq!(
            (f.hosts, f.content_lengths, f.transfer_encodings),
            (1, 1, 1)
        );
        // What it is for: the usual fields of a request and an answer skip
        // the `match`.
        for name in [
            "accept",
            "accept-encoding",
            "user-agent",
            "content-type",
            "date",
        ] {
            assert!(!JUDGED.may_name(name.as_bytes()), "{name}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// At most 90 fields (100 less the proxy's own), HTTP/2's `cookie`
    /// crumbs counted as one.
    #[test]
    fn a_request_has_at_most_90_fields_http2_cookies_one() {
        let with = |fields: usize, cookies: usize| {
            let mut h = HeaderMap::new();
            for i in 0..fields {
                h.insert(
                    HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            for _ in 0..cookies {
                h.append(header::COOKIE, HeaderValue::from_static("a=b"));
            }
            h
        };
        let too_many = |v, h: &HeaderMap| super::too_many_fields(v, h);
        assert!(!too_many(Version::HTTP_2, &with(90, 0)));
        assert!(too_many(Version::HTTP_2, &with(91, 0)));
        assert!(!too_many(Version::HTTP_2, &with(89, 60)));
        assert!(too_many(Version::HTTP_2, &with(90, 2)));
        assert!(!too_many(Version::HTTP_11, &with(90, 0)));
        assert!(too_many(Version::HTTP_11, &with(91, 0)));
        assert!(
            too_many(Version::HTTP_11, &with(89, 2)),
            "HTTP/1.1's cookies are fields"
        );
    }

    #[test]
    fn a_name_spelt_with_underscores_for_its_dashes() {
        let token = HeaderName::from_static("x-tenant-token");
        for (name, same) in [
            ("x_tenant_token", true),
            ("x-tenant_token", true),
            ("x-tenant-token", false),
            ("x_tenant_tokens", false),
            ("y_tenant_token", false),
            ("x_tenant-token", true),
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(super::spelt_with_underscores(&name, &token), same, "{name}");
        }
    }

    #[test]
    fn upstream_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("residency-jurisdiction", "ch"),
            ("Residency-Datacenter", "zurich"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-request-id", "client-chosen"),
            ("host", "ingest.example.com"),
            ("content-type", "application/json"),
        ]);
        let id = HeaderValue::from_static("abc");
        let f = Forwarded {
            request_id: &id,
            xff_trusted: true,
            client: "192.0.2.1".parse().unwrap(),
            hop: "10.0.0.1".parse().unwrap(),
            country: "DE",
            jurisdiction: Some(HeaderValue::from_static("eu")),
            tenant: None,
            host: h.get(header::HOST).cloned(),
            version: Version::HTTP_11,
            via: true,
            foreign: true,
            token_header: None,
            expect: false,
        };
        to_upstream(&mut h, &f);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        // The caller's to replace (forward::prepare).
        assert_eq!(h["host"], "ingest.example.com");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.1");
        assert!(h.get("x-request-id").is_some_and(|v| v == "abc"));
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "ingest.example.com");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["residency-origin-country"], "DE");
        assert_eq!(h["residency-jurisdiction"], "eu");
        assert!(h.get("residency-datacenter").is_none());
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn untrusted_forwarded_for_is_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-host", "spoofed.example"),
            ("x-forwarded-proto", "http"),
            ("residency-origin-country", "CH"),
        ]);
        let id = HeaderValue::from_static("abc");
        to_upstream(&mut h, &untrusted_us_client(&id));
        assert_eq!(h["x-forwarded-for"], "203.0.113.5");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        // No Host: the client's X-Forwarded-Host does not pass either.
        assert!(h.get("x-forwarded-host").is_none());
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["residency-origin-country"], "US");
        assert_eq!(h.get_all("residency-origin-country").iter().count(), 1);
    }

    /// What an untrusted client in the US (203.0.113.5), with no `Host`,
    /// has the data centre told.
    fn untrusted_us_client(id: &HeaderValue) -> Forwarded<'_> {
        Forwarded {
            request_id: id,
            xff_trusted: false,
            client: "203.0.113.5".parse().unwrap(),
            hop: "203.0.113.5".parse().unwrap(),
            country: "US",
            jurisdiction: Some(HeaderValue::from_static("us")),
            tenant: None,
            host: None,
            version: Version::HTTP_11,
            via: true,
            foreign: true,
            token_header: None,
            expect: false,
        }
    }

    /// The proxy's fields spelt with `_` for `-` (read as the same field
    /// by CGI-style servers) go; other fields with `_` stay.
    #[test]
    fn underscored_spellings_of_our_fields_do_not_pass() {
        let spoofs = [
            "residency_jurisdiction",
            "residency_origin_country",
            "residency_datacenter",
            "x_forwarded_for",
            "x-forwarded_for",
            "x_forwarded_host",
            "x_forwarded_proto",
            "x_request_id",
            "x_real_ip",
            "true_client_ip",
            "transfer_encoding",
            "proxy_connection",
        ];
        let mut fields: Vec<(&str, &str)> = spoofs.iter().map(|n| (*n, "ch")).collect();
        fields.push(("x_custom_field", "kept"));
        fields.push(("forwarded_", "kept"));
        let mut h = map(&fields);
        let id = HeaderValue::from_static("abc");
        to_upstream(&mut h, &untrusted_us_client(&id));
        for name in spoofs {
            assert!(h.get(name).is_none(), "{name} passed");
        }
        assert_eq!(h["x_custom_field"], "kept");
        assert_eq!(h["forwarded_"], "kept");
        // From a data centre to the client only the dashed names go.
        let mut h = map(&[("residency_receipt", "kept"), ("x_custom_field", "kept")]);
        strip_for_client(&mut h);
        assert_eq!(
            h["residency_receipt"], "kept",
            "not judged towards the client"
        );
        assert_eq!(h["x_custom_field"], "kept");
    }

    /// The data centre gets the part of the chain the decision walked —
    /// the client's entry and the trusted hops — not what the client wrote
    /// left of its own address, and no other claim of an address.
    #[test]
    fn only_the_walked_chain_and_no_other_address_claim_goes_upstream() {
        let mut h = map(&[
            ("x-forwarded-for", "192.0.2.66"),
            ("x-forwarded-for", "192.0.2.67, 203.0.113.5,10.0.0.2"),
            ("forwarded", "for=192.0.2.66;proto=https"),
            ("x-real-ip", "192.0.2.66"),
            ("true-client-ip", "192.0.2.66"),
            ("cf-connecting-ip", "192.0.2.66"),
            ("forwarded-for", "192.0.2.66"),
            ("x-forwarded", "for=192.0.2.66"),
            ("x-originating-ip", "192.0.2.66"),
        ]);
        let id = HeaderValue::from_static("abc");
        let f = Forwarded {
            request_id: &id,
            xff_trusted: true,
            client: "203.0.113.5".parse().unwrap(),
            hop: "10.0.0.1".parse().unwrap(),
            country: "US",
            jurisdiction: Some(HeaderValue::from_static("us")),
            tenant: None,
            host: None,
            version: Version::HTTP_11,
            via: true,
            foreign: true,
            token_header: None,
            expect: false,
        };
        to_upstream(&mut h, &f);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5, 10.0.0.2, 10.0.0.1");
        for name in [
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "forwarded-for",
            "x-forwarded",
            "x-originating-ip",
        ] {
            assert!(h.get(name).is_none(), "{name} went upstream");
        }
        // An entry the client wrote that is not UTF-8 cannot take the
        // client's place either.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xe9, 203.0.113.5").unwrap(),
        );
        to_upstream(&mut h, &f);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5, 10.0.0.1");
    }

    #[test]
    fn http2_cookie_fields_are_joined() {
        let id = HeaderValue::from_static("abc");
        for (http2, want) in [(true, 1), (false, 2)] {
            let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("host", "x")]);
            let f = Forwarded {
                request_id: &id,
                xff_trusted: false,
                client: "203.0.113.5".parse().unwrap(),
                hop: "203.0.113.5".parse().unwrap(),
                country: "US",
                jurisdiction: Some(HeaderValue::from_static("us")),
                tenant: None,
                host: None,
                version: if http2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                },
                via: true,
                foreign: true,
                token_header: None,
                expect: false,
            };
            to_upstream(&mut h, &f);
            assert_eq!(h.get_all("cookie").iter().count(), want, "http2 = {http2}");
            if http2 {
                assert_eq!(h["cookie"], "a=1; b=2");
            }
        }
    }

    #[test]
    fn formats_addresses_like_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "203.0.113.9",
            "2001:db8::1",
            "::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
            let mut text = IpText::default();
            push_ip(&mut text, ip);
            assert_eq!(text.as_bytes(), s.as_bytes());
        }
    }

    #[test]
    fn the_longest_address_fits_on_the_stack() {
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        // Displayed as eight groups (39 bytes): a mapped IPv4 one is
        // shorter. The buffer takes the longest text form either way.
        let mut text = IpText::default();
        push_ip(&mut text, longest);
        assert_eq!(text.as_bytes(), longest.to_string().as_bytes());
        let mapped: IpAddr = "::ffff:255.255.255.255".parse().unwrap();
        let mut text = IpText::default();
        push_ip(&mut text, mapped);
        assert_eq!(text.as_bytes(), mapped.to_string().as_bytes());
        use std::fmt::Write;
        let mut text = IpText::default();
        assert!(text.write_str(&"f".repeat(45)).is_ok());
        assert!(text.write_str("f").is_err(), "bounded, never past the end");
    }

    #[test]
    fn framing() {
        assert!(!ambiguous_framing(&map(&[("content-length", "5")])));
        assert!(!ambiguous_framing(&map(&[(
            "transfer-encoding",
            "chunked"
        )])));
        assert!(ambiguous_framing(&map(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5")
        ])));
        // Unambiguous, in a coding the proxy does not decode: 501, not 400.
        for coded in ["gzip, chunked", "GZIP,chunked", "x-custom;q=1 ,, Chunked"] {
            let h = map(&[("transfer-encoding", coded)]);
            assert!(!ambiguous_framing(&h), "{coded}");
            assert!(Fields::of(&h).unsupported_coding(), "{coded}");
        }
        for bad in [
            "chunked, gzip",
            "chunked, chunked",
            "gzip",
            "g z, chunked",
            ", chunked",
        ] {
            let h = map(&[("transfer-encoding", bad)]);
            assert!(ambiguous_framing(&h), "{bad}");
            assert!(!Fields::of(&h).unsupported_coding(), "{bad}");
        }
        let h = map(&[
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "5"),
        ]);
        assert!(ambiguous_framing(&h) && !Fields::of(&h).unsupported_coding());
        assert!(!Fields::of(&map(&[("transfer-encoding", "chunked")])).unsupported_coding());
        assert!(ambiguous_framing(&map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(ambiguous_framing(&map(&[
            ("content-length", "5"),
            ("content-length", "6")
        ])));
    }

    #[test]
    fn host_rules() {
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        let origin_form = uri("/v1/telemetry");
        let h11 = Version::HTTP_11;
        assert!(
            bad_host(h11, &origin_form, &map(&[])),
            "HTTP/1.1 needs Host"
        );
        assert!(
            !bad_host(Version::HTTP_10, &origin_form, &map(&[])),
            "HTTP/1.0 may omit it"
        );
        assert!(!bad_host(
            h11,
            &origin_form,
            &map(&[("host", "ingest.example.com:8443")])
        ));
        assert!(!bad_host(
            h11,
            &origin_form,
            &map(&[("host", "[2001:db8::1]:443")])
        ));
        assert!(
            !bad_host(h11, &origin_form, &map(&[("host", "")])),
            "empty is valid"
        );
        for bad in [
            "a b",
            "user@ingest.example.com",
            "ingest.example.com:port",
            "a/b",
        ] {
            assert!(bad_host(h11, &origin_form, &map(&[("host", bad)])), "{bad}");
        }
        let two = map(&[("host", "a.example"), ("host", "a.example")]);
        assert!(bad_host(h11, &origin_form, &two), "two Host lines");
        let h2 = Version::HTTP_2;
        let with_authority = uri("https://a.example/v1/telemetry");
        assert!(!bad_host(h2, &with_authority, &map(&[])));
        assert!(!bad_host(
            h2,
            &with_authority,
            &map(&[("host", "A.example")])
        ));
        assert!(bad_host(
            h2,
            &with_authority,
            &map(&[("host", "b.example")])
        ));
        assert!(bad_host(h2, &with_authority, &two));
        // The default port, or an empty one, names the same origin
        // (RFC 9113 §8.3.1, RFC 3986 §6.2.3); another port does not.
        for (authority, host) in [
            ("https://a.example/", "a.example:443"),
            ("https://a.example:443/", "A.example"),
            ("https://a.example:/", "a.example"),
            ("https://[2001:db8::1]:443/", "[2001:db8::1]"),
        ] {
            assert!(
                !bad_host(h2, &uri(authority), &map(&[("host", host)])),
                "{authority} against {host}"
            );
        }
        for (authority, host) in [
            ("https://a.example/", "a.example:8443"),
            ("https://a.example:8443/", "a.example:443"),
            ("https://a.example:4430/", "a.example"),
            ("https://[2001:db8::443]/", "[2001:db8::]"),
        ] {
            assert!(
                bad_host(h2, &uri(authority), &map(&[("host", host)])),
                "{authority} against {host}"
            );
        }
    }

    #[test]
    fn max_forwards_is_read_exactly_and_sent_within_the_proxys_maximum() {
        let read = |v: &str| max_forwards(&map(&[("max-forwards", v)]));
        assert_eq!(read("0"), Some(0));
        assert_eq!(read("007"), Some(7));
        assert_eq!(read(""), None);
        assert_eq!(read("1 "), None);
        assert_eq!(read("-1"), None);
        assert_eq!(max_forwards(&map(&[])), None);
        assert_eq!(forwarded_max_forwards(5), 4);
        assert_eq!(forwarded_max_forwards(1), 0);
        // RFC 9110 §7.6.2: the lesser of the received value minus one and
        // the recipient's maximum, never the value as it came.
        let max = u64::MAX.to_string();
        assert_eq!(forwarded_max_forwards(read(&max).unwrap()), u64::MAX - 1);
        for huge in [
            "18446744073709551616",
            "99999999999999999999999",
            &"9".repeat(60),
        ] {
            assert_eq!(
                forwarded_max_forwards(read(huge).unwrap()),
                u64::MAX,
                "{huge}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of the request-head checks and the upstream rewrite, on
    //! arbitrary header maps.

    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Names that matter here (some in mixed case: names are case-insensitive).
    const NAMES: &[&str] = &[
        "connection",
        "Connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "Transfer-Encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
        "host",
        "Host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
        "residency-origin-country",
        "Residency-Jurisdiction",
        "residency-datacenter",
        "residency-anything",
        "content-length",
        "cookie",
        "via",
        "Via",
        "alt-svc",
        "Alt-Svc",
        "alternate-protocol",
        "content-type",
        "x-secret",
    ];

    /// Hop-by-hop in every map that leaves the proxy.
    const HOP_BY_HOP_NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    ];

    /// Set by `to_upstream` itself, whatever the client sent.
    const OURS: &[&str] = &[
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "residency-origin-country",
        "residency-jurisdiction",
    ];

    /// Bytes drawn from `alphabet` (strategies over byte tables are much
    /// cheaper than regex ones in a debug build).
    fn from_alphabet(
        alphabet: &'static [u8],
        len: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), len).prop_map(move |b| {
            b.iter()
                .map(|&i| alphabet[usize::from(i) % alphabet.len()])
                .collect()
        })
    }

    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789";
    const TOKEN: &[u8] = b"ABCXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+.^_`|~-";

    fn name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            3 => prop::sample::select(NAMES.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
            1 => from_alphabet(TOKEN, 1..12),
        ]
        .prop_map(|n| HeaderName::from_bytes(&n).unwrap())
    }

    /// Any bytes a field value may hold: visible ASCII, SP, HTAB, obs-text.
    fn visible_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|mut b| {
            for c in &mut b {
                if *c == 0x7f {
                    *c = b'~';
                } else if *c < 0x20 {
                    *c = if *c % 2 == 0 { b'\t' } else { *c | 0x40 };
                }
            }
            b
        })
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            3 => visible_bytes(),
            // A list of names, as in `Connection`, perhaps with one element
            // of any bytes.
            2 => (
                proptest::collection::vec(name(), 1..4),
                prop::sample::select(vec![",", ", ", ",\t", " , "]),
                proptest::option::weighted(0.3, visible_bytes()),
            )
                .prop_map(|(names, sep, junk)| {
                    let mut list: Vec<Vec<u8>> =
                        names.iter().map(|n| n.as_str().as_bytes().to_vec()).collect();
                    list.extend(junk);
                    list.join(sep.as_bytes())
                }),
            1 => prop::sample::select(vec![
                "chunked", "Chunked", "gzip, chunked", "chunked, gzip", "chunked ", "identity", "5",
                "192.0.2.1", "10.0.0.1, 192.0.2.7", "example.com", "a=1",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        ]
        .prop_map(|b| HeaderValue::from_bytes(&b).unwrap())
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec((name(), value()), 0..12).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(k, v);
            }
            h
        })
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
            any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        ]
    }

    #[derive(Debug, Clone)]
    struct Hop {
        request_id: HeaderValue,
        xff_trusted: bool,
        client: IpAddr,
        hop: IpAddr,
        country: String,
        jurisdiction: String,
        host: Option<HeaderValue>,
        http2: bool,
    }

    impl Hop {
        /// What the proxy tells the data centre, with `fields` read from
        /// the client's request as `admit` reads them.
        fn forwarded(&self, fields: &Fields<'_>) -> Forwarded<'_> {
            Forwarded {
                request_id: &self.request_id,
                xff_trusted: self.xff_trusted,
                client: self.client,
                hop: self.hop,
                country: &self.country,
                jurisdiction: HeaderValue::from_str(&self.jurisdiction).ok(),
                tenant: None,
                host: self.host.clone(),
                version: if self.http2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                },
                via: fields.via,
                foreign: fields.foreign,
                expect: false,
                token_header: None,
            }
        }
    }

    fn hop() -> impl Strategy<Value = Hop> {
        let text = || {
            prop_oneof![
                from_alphabet(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                    2..3
                )
                .prop_map(|b| String::from_utf8(b).unwrap()),
                proptest::collection::vec(any::<char>(), 0..6)
                    .prop_map(|c| c.into_iter().collect::<String>()),
            ]
        };
        (
            from_alphabet(b"abcdefghijklmnopqrstuvwxyz0123456789-", 1..16)
                .prop_map(|b| String::from_utf8(b).unwrap()),
            any::<bool>(),
            prop_oneof![
                Just("192.0.2.7".parse::<IpAddr>().unwrap()),
                Just("192.0.2.1".parse::<IpAddr>().unwrap()),
                any_ip(),
            ],
            any_ip(),
            text(),
            text(),
            proptest::option::of(value()),
            any::<bool>(),
        )
            .prop_map(
                |(id, xff_trusted, client, hop, country, jurisdiction, host, http2)| Hop {
                    request_id: HeaderValue::from_str(&id).unwrap(),
                    xff_trusted,
                    client,
                    hop,
                    country,
                    jurisdiction,
                    host,
                    http2,
                },
            )
    }

    /// Names listed in the request's `Connection` fields, read from the
    /// bytes (comma-separated, OWS around each).
    fn connection_names(h: &HeaderMap) -> Vec<HeaderName> {
        h.get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
            .collect()
    }

    /// Was forwarded: a header named in a `Connection` field that has an
    /// obs-text byte elsewhere (the field was not read at all).
    #[test]
    fn connection_with_obs_text_still_strips_what_it_lists() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret, \x80").unwrap(),
        );
        h.append("x-secret", HeaderValue::from_static("1"));
        strip_for_client(&mut h);
        assert!(h.get("x-secret").is_none(), "{h:?}");
    }

    /// RFC 3986 `host [ ":" port ]`, or empty (RFC 9110 §7.2).
    fn rfc_host(v: &[u8]) -> bool {
        if v.is_empty() {
            return true;
        }
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        let sub_delim = |b: u8| b"!$&'()*+,;=".contains(&b);
        let (host, rest) = if v[0] == b'[' {
            match v.iter().position(|&b| b == b']') {
                Some(end) => v.split_at(end + 1),
                None => return false,
            }
        } else {
            match v.iter().position(|&b| b == b':') {
                Some(colon) => v.split_at(colon),
                None => (v, &[][..]),
            }
        };
        let port_ok =
            rest.is_empty() || (rest[0] == b':' && rest[1..].iter().all(u8::is_ascii_digit));
        let host_ok =
            if let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
                let ipv6 = std::str::from_utf8(inner).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok());
                let future = inner.len() > 2
                    && inner[0].eq_ignore_ascii_case(&b'v')
                    && match inner.iter().position(|&b| b == b'.') {
                        Some(dot) => {
                            dot > 1
                                && inner[1..dot].iter().all(u8::is_ascii_hexdigit)
                                && dot + 1 < inner.len()
                                && inner[dot + 1..]
                                    .iter()
                                    .all(|&b| unreserved(b) || sub_delim(b) || b == b':')
                        }
                        None => false,
                    };
                ipv6 || future
            } else {
                let mut i = 0;
                let mut ok = true;
                while i < host.len() {
                    let b = host[i];
                    if b == b'%' {
                        if i + 2 < host.len()
                            && host[i + 1].is_ascii_hexdigit()
                            && host[i + 2].is_ascii_hexdigit()
                        {
                            i += 3;
                            continue;
                        }
                        ok = false;
                        break;
                    }
                    if !(unreserved(b) || sub_delim(b)) {
                        ok = false;
                        break;
                    }
                    i += 1;
                }
                ok
            };
        port_ok && host_ok
    }

    /// Hosts that are plainly valid: names, IPv4, bracketed IPv6, any port.
    fn plain_host() -> impl Strategy<Value = String> {
        let host = prop_oneof![
            (
                from_alphabet(ALNUM, 1..2),
                from_alphabet(b"aZ09.-", 0..20),
                from_alphabet(ALNUM, 0..2)
            )
                .prop_map(|(a, b, c)| String::from_utf8([a, b, c].concat()).unwrap()),
            any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
            any::<u128>().prop_map(|n| format!("[{}]", Ipv6Addr::from(n))),
        ];
        (
            host,
            proptest::option::of(
                from_alphabet(b"0123456789", 0..6).prop_map(|p| String::from_utf8(p).unwrap()),
            ),
        )
            .prop_map(|(h, port)| match port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            })
    }

    /// Were accepted (`http`'s `Authority` checks neither the IP literal
    /// nor what follows `]`): invalid bracketed hosts.
    #[test]
    fn invalid_ip_literal_hosts_are_refused() {
        let origin_form = Uri::from_static("/v1/telemetry");
        for v in ["[]", "[x]", "[1.2.3.4]", "[:]", "[::1]x", "[a]b:1"] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(v));
            assert!(bad_host(Version::HTTP_11, &origin_form, &h), "{v} accepted");
        }
    }

    /// Host-like values assembled from the pieces that make `host[:port]`.
    fn host_like() -> impl Strategy<Value = HeaderValue> {
        let piece = prop::sample::select(vec![
            "[",
            "]",
            "::1",
            "2001:db8::",
            "v1.x",
            "vF.a:b",
            ":",
            "80",
            "443",
            "%",
            "%2",
            "%41",
            "a",
            "Z",
            "@",
            "user",
            ".",
            "-",
            "_",
            "~",
            "!",
            "*",
            "1.2.3.4",
            "256.1.1.1",
            " ",
            "/",
            "?",
            "#",
            "\"",
            "\\",
            "{",
            "<",
        ]);
        proptest::collection::vec(piece, 1..7)
            .prop_map(|p| HeaderValue::from_str(&p.concat()).unwrap())
    }

    fn version() -> impl Strategy<Value = Version> {
        prop::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2])
    }

    fn uri() -> impl Strategy<Value = Uri> {
        prop_oneof![
            Just(Uri::from_static("/v1/telemetry")),
            Just(Uri::from_static("https://a.example/v1/telemetry")),
            plain_host().prop_filter_map("a URI authority", |h| format!("https://{h}/up")
                .parse::<Uri>()
                .ok()),
        ]
    }

    proptest! {
        #![proptest_config(config(2000))]

        /// No function panics on any header map.
        #[test]
        fn no_panics(h in header_map(), hop in hop(), v in version(), u in uri()) {
            let _ = ambiguous_framing(&h);
            let _ = bad_host(v, &u, &h);
            let mut s = h.clone();
            strip_for_client(&mut s);
            let mut c = h.clone();
            let value = |s: &str| HeaderValue::from_str(s).ok();
            to_client(&mut c, &hop.request_id, value(&hop.jurisdiction).as_ref(), value(&hop.country).as_ref());
            let mut r = h.clone();
            let _ = from_upstream(http::StatusCode::OK, &mut r);
            let mut up = h;
            let forwarded = hop.forwarded(&Fields::of(&up));
            to_upstream(&mut up, &forwarded);
        }

        /// `plain`, eight bytes at a time, says what a byte-by-byte look
        /// says, at every length and position.
        #[test]
        fn plain_is_exact(bytes in proptest::collection::vec(prop_oneof![
            4 => 0x20u8..0x7f,
            1 => Just(b'.'),
            1 => Just(b'%'),
            1 => Just(b'\\'),
            1 => any::<u8>(),
        ], 0..40)) {
            let expected = bytes.iter().all(|&b| b.is_ascii() && !matches!(b, b'.' | b'%' | b'\\'));
            prop_assert_eq!(plain(&bytes), expected);
        }

        /// Whether a request has a field that does not go upstream, with
        /// `Fields::of`'s first test: as `not_upstream` judges each name
        /// (any with a `_` is looked at again by `strip`).
        #[test]
        fn fields_of_finds_every_foreign_name(h in header_map()) {
            // (And `Alt-Svc` and `Alternate-Protocol`, which only a
            // response loses.)
            let foreign = h.keys().any(|n| not_upstream(n) || has_underscore(n.as_str().as_bytes()) || n == header::ALT_SVC || n.as_str() == "alternate-protocol");
            prop_assert_eq!(Fields::of(&h).foreign, foreign);
        }

        /// A data centre's answer after `from_upstream` (when it is to be
        /// forwarded): no hop-by-hop, listed or `Residency-*` field, as
        /// after `strip_for_client`, whatever its framing needed.
        #[test]
        fn from_upstream_leaves_no_hop_by_hop(h in header_map()) {
            let listed = connection_names(&h);
            let mut r = h.clone();
            if from_upstream(http::StatusCode::OK, &mut r).is_ok() {
                for name in r.keys() {
                    prop_assert!(!HOP_BY_HOP_NAMES.contains(&name.as_str()), "{} remains in {:?}", name, r);
                    prop_assert!(!name.as_str().starts_with("residency-"), "{} remains", name);
                    prop_assert!(name != header::ALT_SVC && name.as_str() != "alternate-protocol", "{} remains", name);
                    prop_assert!(!listed.contains(name), "{} is listed in Connection: {:?}", name, h);
                }
            }
        }

        /// After `strip_for_client`: no hop-by-hop, listed or `Residency-*`
        /// header remains, and every other field is untouched.
        #[test]
        fn strip_leaves_no_hop_by_hop(h in header_map()) {
            let listed = connection_names(&h);
            let mut s = h.clone();
            strip_for_client(&mut s);
            for name in s.keys() {
                prop_assert!(!HOP_BY_HOP_NAMES.contains(&name.as_str()), "{} remains in {:?}", name, s);
                prop_assert!(!name.as_str().starts_with("residency-"), "{} remains", name);
                prop_assert!(!listed.contains(name), "{} is listed in Connection: {:?}", name, h);
            }
            for name in h.keys() {
                let gone = HOP_BY_HOP_NAMES.contains(&name.as_str())
                    || name.as_str().starts_with("residency-")
                    || name == header::ALT_SVC
                    || name.as_str() == "alternate-protocol"
                    || listed.contains(name);
                if !gone {
                    prop_assert!(h.get_all(name).iter().eq(s.get_all(name).iter()), "{} changed", name);
                }
            }
        }

        /// The upstream request: no hop-by-hop, listed or client-sent
        /// `Residency-*` header; `X-Forwarded-For` ends with the hop (after
        /// the client's chain only when trusted); ours once each; the rest
        /// (`Host` included, even when `Connection` lists it: the caller
        /// has replaced it with the data centre's) untouched.
        #[test]
        fn upstream_rewrite(h in header_map(), hop in hop()) {
            let listed = connection_names(&h);
            let mut up = h.clone();
            let forwarded = hop.forwarded(&Fields::of(&up));
            to_upstream(&mut up, &forwarded);
            for name in up.keys() {
                let n = name.as_str();
                prop_assert!(!HOP_BY_HOP_NAMES.contains(&n), "{} remains in {:?}", n, up);
                prop_assert!(
                    !listed.contains(name) || OURS.contains(&n) || name == header::VIA || name == header::HOST,
                    "{} is listed in Connection but remains: {:?}", n, h
                );
            }
            // Residency-*: ours only, once, with our values.
            let residency: Vec<&str> = up.keys().map(HeaderName::as_str).filter(|n| n.starts_with("residency-")).collect();
            for n in &residency {
                prop_assert!(*n == "residency-origin-country" || *n == "residency-jurisdiction", "{} survives", n);
                prop_assert_eq!(up.get_all(*n).iter().count(), 1);
            }
            for (n, ours) in [("residency-origin-country", &hop.country), ("residency-jurisdiction", &hop.jurisdiction)] {
                match HeaderValue::from_str(ours) {
                    Ok(v) => prop_assert_eq!(up.get(n), Some(&v)),
                    Err(_) => prop_assert!(up.get(n).is_none(), "client's {} survives", n),
                }
            }
            // X-Forwarded-For: one field, the hop last.
            let xff: Vec<&HeaderValue> = up.get_all(X_FORWARDED_FOR).iter().collect();
            prop_assert_eq!(xff.len(), 1);
            let xff = xff[0].to_str().unwrap();
            let hop_text = hop.hop.to_string();
            prop_assert_eq!(xff.rsplit(',').next().map(str::trim), Some(hop_text.as_str()));
            // From the last entry naming the client (all, if none does).
            let mut want = String::new();
            if hop.xff_trusted {
                let entries: Vec<&[u8]> = h
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                    .collect();
                let names_client = |e: &[u8]| {
                    std::str::from_utf8(e)
                        .ok()
                        .and_then(|e| e.trim_matches([' ', '\t']).parse::<IpAddr>().ok())
                        .is_some_and(|a| a.to_canonical() == hop.client)
                };
                let from = entries.iter().rposition(|e| names_client(e)).unwrap_or(0);
                for e in &entries[from..] {
                    if let Some(e) = HeaderValue::from_bytes(e).ok().and_then(|v| v.to_str().ok().map(str::to_string)) {
                        want.push_str(e.trim_matches([' ', '\t']));
                        want.push_str(", ");
                    }
                }
            }
            want.push_str(&hop_text);
            prop_assert_eq!(xff, want.as_str());
            // Via: the client's elements (unless `Connection` names it),
            // then ours, in one field.
            let ours = if hop.http2 { "2 residency-proxy" } else { "1.1 residency-proxy" };
            let mut hops: Vec<&[u8]> = h
                .get_all(header::VIA)
                .iter()
                .filter(|_| !listed.contains(&header::VIA))
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.iter().all(|b| matches!(b, b' ' | b'\t' | b',')))
                .collect();
            hops.push(ours.as_bytes());
            let via: Vec<&[u8]> = up.get_all(header::VIA).iter().map(HeaderValue::as_bytes).collect();
            let want = hops.join(&b", "[..]);
            prop_assert_eq!(via, vec![&want[..]]);
            prop_assert_eq!(up.get_all(X_FORWARDED_PROTO).iter().collect::<Vec<_>>(), vec!["https"]);
            prop_assert_eq!(up.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(), vec![&hop.request_id]);
            prop_assert_eq!(up.get_all(X_FORWARDED_HOST).iter().collect::<Vec<_>>(), hop.host.iter().collect::<Vec<_>>());
            // Everything else as the client sent it (cookies joined on HTTP/2).
            for name in h.keys() {
                let n = name.as_str();
                let rewritten = HOP_BY_HOP_NAMES.contains(&n)
                    || n.starts_with("residency-")
                    || n == "via"
                    || claims_the_client(name)
                    || OURS.contains(&n)
                    || (listed.contains(name) && name != header::HOST);
                if rewritten {
                    continue;
                }
                let sent: Vec<&HeaderValue> = h.get_all(name).iter().collect();
                let got: Vec<&HeaderValue> = up.get_all(name).iter().collect();
                if n == "cookie" && hop.http2 && sent.len() > 1 {
                    let joined: Vec<&[u8]> = sent.iter().map(|v| v.as_bytes()).collect();
                    let joined = HeaderValue::from_bytes(&joined.join(&b"; "[..])).unwrap();
                    prop_assert_eq!(got, vec![&joined]);
                } else {
                    prop_assert_eq!(got, sent, "{} changed", n);
                }
            }
        }

        /// `Host`: HTTP/1.1 needs exactly one; never two; an invalid one
        /// (RFC 3986 `host [":" port]`) is refused; a plain one accepted.
        #[test]
        fn host_rules(
            h in header_map(),
            v in version(),
            u in uri(),
            plain in plain_host(),
            like in host_like(),
        ) {
            // A Host built from host-like pieces: refused unless RFC-valid.
            let mut with_like = h.clone();
            with_like.insert(header::HOST, like.clone());
            if !rfc_host(like.as_bytes()) {
                let origin_form = Uri::from_static("/v1/telemetry");
                prop_assert!(bad_host(v, &origin_form, &with_like), "invalid Host {:?} accepted", like);
            }
            let hosts: Vec<&HeaderValue> = h.get_all(header::HOST).iter().collect();
            let bad = bad_host(v, &u, &h);
            match hosts.as_slice() {
                [] => prop_assert_eq!(bad, v == Version::HTTP_11),
                [one] => {
                    if !rfc_host(one.as_bytes()) {
                        prop_assert!(bad, "invalid Host {:?} accepted", one);
                    }
                }
                _ => prop_assert!(bad, "{} Host fields accepted", hosts.len()),
            }
            // Exactly one plain Host, origin-form target.
            let mut one = h.clone();
            one.insert(header::HOST, HeaderValue::from_str(&plain).unwrap());
            let origin_form = Uri::from_static("/v1/telemetry");
            prop_assert!(!bad_host(v, &origin_form, &one), "Host {:?} refused", plain);
            let mut two = one.clone();
            two.append(header::HOST, HeaderValue::from_str(&plain).unwrap());
            prop_assert!(bad_host(v, &origin_form, &two));
        }

        /// Framing: several `Transfer-Encoding` fields, a final coding other
        /// than `chunked`, `Content-Length` with it, or several
        /// `Content-Length` fields are ambiguous; nothing else is. Codings
        /// before a final `chunked` are unsupported (501), not ambiguous.
        #[test]
        fn framing_rules(h in header_map()) {
            let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
            let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
            let got = ambiguous_framing(&h);
            if te.len() > 1 {
                prop_assert!(got);
            }
            if let Some(last) = te.last() {
                let final_coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
                if !final_coding.eq_ignore_ascii_case(b"chunked") {
                    prop_assert!(got, "final coding {:?} accepted", last);
                }
            }
            let coded = |v: &HeaderValue| {
                let codings: Vec<&[u8]> = v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()).collect();
                let name = |c: &[u8]| c.split(|&b| b == b';').next().unwrap_or_default().trim_ascii().to_vec();
                match codings.split_last() {
                    Some((last, others)) => last.eq_ignore_ascii_case(b"chunked")
                        && !others.is_empty()
                        && others.iter().all(|c| !name(c).eq_ignore_ascii_case(b"chunked") && HeaderName::from_bytes(&name(c)).is_ok()),
                    None => false,
                }
            };
            let want = match te.as_slice() {
                [] => cl > 1,
                [one] => cl > 0 || !(one.as_bytes().eq_ignore_ascii_case(b"chunked") || coded(one)),
                _ => true,
            };
            prop_assert_eq!(got, want);
            prop_assert_eq!(Fields::of(&h).unsupported_coding(), matches!(te.as_slice(), [one] if cl == 0 && coded(one)));
        }
    }
}
