//! Header rewriting in both directions.
//!
//! Upstream requests lose hop-by-hop headers (RFC 9110 §7.6.1, plus any named
//! in `Connection`), every client-sent `Residency-*` header, `Host` and any
//! `X-Forwarded-Host`/`-Proto`, then gain
//! `X-Forwarded-For` (appended when it came from a trusted proxy, replaced
//! otherwise), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Request-Id`,
//! `Residency-Origin-Country` and `Residency-Jurisdiction`. Responses lose
//! hop-by-hop and upstream-sent `Residency-*` headers and gain `Residency-Jurisdiction`,
//! `Residency-Datacenter` and `X-Request-Id`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Uri, Version};
use residency_core::origin::push_ip;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const RESIDENCY_ORIGIN_COUNTRY: HeaderName =
    HeaderName::from_static("residency-origin-country");
pub const RESIDENCY_JURISDICTION: HeaderName = HeaderName::from_static("residency-jurisdiction");
pub const RESIDENCY_DATACENTER: HeaderName = HeaderName::from_static("residency-datacenter");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Names listed in `Connection` (they are hop-by-hop too); usually none.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Hop-by-hop (RFC 9110 §7.6.1, `Upgrade` included) or `Residency-*`:
/// never passed through in either direction.
fn never_forwarded(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE || name.as_str().starts_with("residency-")
}

/// Removes hop-by-hop and `Residency-*` headers. Scans first: most header
/// sets have nothing to remove, and then nothing is hashed or moved.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(never_forwarded) {
        return;
    }
    let mut names = connection_listed(headers);
    names.extend(headers.keys().filter(|k| never_forwarded(k)).cloned());
    for name in names {
        headers.remove(name);
    }
}

/// What the upstream is told about the upload.
pub struct Forwarded<'a> {
    pub request_id: &'a HeaderValue,
    /// Original `X-Forwarded-For` is kept only when a trusted proxy sent it.
    pub xff_trusted: bool,
    /// The address appended to `X-Forwarded-For`: our TCP peer, or the
    /// client named by the PROXY header.
    pub hop: IpAddr,
    pub country: &'a str,
    pub jurisdiction: &'a str,
    pub host: Option<HeaderValue>,
    /// The client spoke HTTP/2, where cookies may come as several fields.
    pub http2: bool,
}

/// Rewrites a client request's headers for the upstream, in place: the
/// client's map is already hashed, so only what goes is removed (usually
/// just `Host`) and ours are inserted; `insert` replaces any value the
/// client sent under the same name.
pub fn to_upstream(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    // Room for one IPv4 hop without growing; a chain grows once.
    let mut chain = String::with_capacity(24);
    if f.xff_trusted {
        for v in headers.get_all(X_FORWARDED_FOR) {
            if let Ok(v) = v.to_str() {
                chain.push_str(v);
                chain.push_str(", ");
            }
        }
    }
    headers.remove(header::HOST);
    if f.host.is_none() {
        headers.remove(X_FORWARDED_HOST);
    }
    // Hop-by-hop (with any named in `Connection`) and client-sent `Residency-*`.
    strip_hop_by_hop(headers);
    headers.reserve(6);
    push_ip(&mut chain, f.hop);
    // From a `String`, its buffer becomes the value's (no copy).
    match HeaderValue::try_from(chain) {
        Ok(v) => headers.insert(X_FORWARDED_FOR, v),
        Err(_) => headers.remove(X_FORWARDED_FOR),
    };
    if f.http2 {
        join_cookies(headers);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Some(host) = &f.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    headers.insert(X_REQUEST_ID, f.request_id.clone());
    // (Client-sent ones are gone with the other `Residency-*` headers.)
    if let Ok(v) = HeaderValue::from_str(f.country) {
        headers.insert(RESIDENCY_ORIGIN_COUNTRY, v);
    }
    if let Ok(v) = HeaderValue::from_str(f.jurisdiction) {
        headers.insert(RESIDENCY_JURISDICTION, v);
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

/// Adds the headers every response carries.
pub fn to_client(
    headers: &mut HeaderMap,
    request_id: &HeaderValue,
    jurisdiction: Option<&str>,
    datacenter: Option<&str>,
) {
    strip_hop_by_hop(headers);
    headers.insert(X_REQUEST_ID, request_id.clone());
    if let Some(v) = jurisdiction.and_then(|j| HeaderValue::from_str(j).ok()) {
        headers.insert(RESIDENCY_JURISDICTION, v);
    }
    if let Some(v) = datacenter.and_then(|d| HeaderValue::from_str(d).ok()) {
        headers.insert(RESIDENCY_DATACENTER, v);
    }
}

/// Request framing that could smuggle a second request past a proxy:
/// both `Content-Length` and `Transfer-Encoding`, several
/// `Transfer-Encoding` headers, or one other than exactly `chunked`.
pub fn ambiguous_framing(headers: &HeaderMap) -> bool {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    match te.as_slice() {
        [] => headers.get_all(header::CONTENT_LENGTH).iter().count() > 1,
        [one] => {
            headers.contains_key(header::CONTENT_LENGTH)
                || !one.as_bytes().eq_ignore_ascii_case(b"chunked")
        }
        _ => true,
    }
}

/// A request-target that is not forwarded (400): asterisk-form and
/// authority-form (RFC 9112 §3.2.3-4: only for `OPTIONS` and `CONNECT`,
/// neither of which goes upstream), or one with bytes outside US-ASCII
/// (not part of the request-target grammar; an upstream's parser may read
/// them differently).
pub fn bad_target(uri: &Uri) -> bool {
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    authority_form
        || uri.path() == "*"
        || uri.path_and_query().is_some_and(|p| !p.as_str().is_ascii())
}

/// A request whose `Host` breaks RFC 9112 §3.2 or RFC 9113 §8.3.1, to be
/// answered 400: an HTTP/1.1 request without `Host`; any request with more
/// than one, or with one that is not a valid `uri-host[:port]` (empty is
/// valid); an HTTP/2 request whose `Host` names another authority than its
/// `:authority`.
pub fn bad_host(version: Version, uri: &Uri, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return version == Version::HTTP_11;
    };
    if hosts.next().is_some() || !valid_host(host.as_bytes()) {
        return true;
    }
    version == Version::HTTP_2
        && uri
            .authority()
            .is_some_and(|a| !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()))
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2), or empty. `http`'s authority
/// parser checks the host; userinfo and a non-numeric port are refused here.
fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    // The usual `name[:port]`, checked without the full parser (this runs
    // for every request).
    let (name, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.';
    if !name.is_empty()
        && name.iter().all(plain)
        && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
    {
        return true;
    }
    if value.contains(&b'@') || Authority::try_from(value).is_err() {
        return false;
    }
    let after_ipv6 = match value.iter().rposition(|&b| b == b']') {
        Some(end) => &value[end + 1..],
        None => value,
    };
    match after_ipv6.iter().position(|&b| b == b':') {
        Some(colon) => after_ipv6[colon + 1..].iter().all(u8::is_ascii_digit),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            hop: "10.0.0.1".parse().unwrap(),
            country: "DE",
            jurisdiction: "eu",
            host: h.get(header::HOST).cloned(),
            http2: false,
        };
        to_upstream(&mut h, &f);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none() && h.get("host").is_none());
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
        let f = Forwarded {
            request_id: &id,
            xff_trusted: false,
            hop: "203.0.113.5".parse().unwrap(),
            country: "US",
            jurisdiction: "us",
            host: None,
            http2: false,
        };
        to_upstream(&mut h, &f);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        // No Host: the client's X-Forwarded-Host does not pass either.
        assert!(h.get("x-forwarded-host").is_none());
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["residency-origin-country"], "US");
        assert_eq!(h.get_all("residency-origin-country").iter().count(), 1);
    }

    #[test]
    fn http2_cookie_fields_are_joined() {
        let id = HeaderValue::from_static("abc");
        for (http2, want) in [(true, 1), (false, 2)] {
            let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("host", "x")]);
            let f = Forwarded {
                request_id: &id,
                xff_trusted: false,
                hop: "203.0.113.5".parse().unwrap(),
                country: "US",
                jurisdiction: "us",
                host: None,
                http2,
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
        }
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
        assert!(ambiguous_framing(&map(&[(
            "transfer-encoding",
            "gzip, chunked"
        )])));
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
    }
}
