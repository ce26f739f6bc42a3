//! Who is the client? Resolving the origin address of an upload.
//!
//! This is the first step of the residency decision and the place where
//! spoofing would move data, so it is a pure function, table-tested:
//!
//! 1. On a `proxy_protocol = "required"` listener the PROXY header names the
//!    client (the listener only accepts the header from trusted peers).
//! 2. Otherwise the TCP peer is the client, unless the peer is a trusted proxy
//!    that sent `X-Forwarded-For`: the header is walked right to left, skipping
//!    trusted addresses, and the first untrusted address is the client.
//!    Entries left of that one were written by the client itself and are never
//!    read. A malformed entry on the walked part (written by a proxy we trust,
//!    or where the client address should be) fails closed with 400.
//!
//! Every address is canonicalised (`::ffff:a.b.c.d` → `a.b.c.d`) before any
//! lookup or CIDR match.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;

/// How the client address was found; logged and reported by `/decide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    Peer,
    ProxyProtocol,
    XForwardedFor,
}

impl AddressSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressSource::Peer => "peer",
            AddressSource::ProxyProtocol => "proxy_protocol",
            AddressSource::XForwardedFor => "x_forwarded_for",
        }
    }
}

/// The resolved client address and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub addr: IpAddr,
    pub source: AddressSource,
}

/// A trusted proxy sent an `X-Forwarded-For` we cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed X-Forwarded-For from a trusted proxy")]
pub struct BadForwardedHeader;

/// The peers allowed to name the client. A handful of networks: linear scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets.into_iter().map(canonical_net).collect())
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

/// Resolves the client address of one request. `proxy_source` is the source
/// address from the connection's PROXY header, if the listener requires one;
/// `xff` are the request's `X-Forwarded-For` values in header order.
pub fn resolve<'a>(
    peer: IpAddr,
    proxy_source: Option<IpAddr>,
    xff: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &TrustedProxies,
) -> Result<Origin, BadForwardedHeader> {
    if let Some(addr) = proxy_source {
        return Ok(Origin {
            addr: addr.to_canonical(),
            source: AddressSource::ProxyProtocol,
        });
    }
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Ok(Origin {
            addr: peer,
            source: AddressSource::Peer,
        });
    }
    let mut leftmost = None;
    for value in xff.rev() {
        let text = value.to_str().map_err(|_| BadForwardedHeader)?;
        for entry in text.rsplit(',') {
            let addr = parse_entry(entry).ok_or(BadForwardedHeader)?;
            if !trusted.contains(addr) {
                return Ok(Origin {
                    addr,
                    source: AddressSource::XForwardedFor,
                });
            }
            leftmost = Some(addr);
        }
    }
    // Every hop was trusted: the left-most is the furthest we can see.
    Ok(match leftmost {
        Some(addr) => Origin {
            addr,
            source: AddressSource::XForwardedFor,
        },
        None => Origin {
            addr: peer,
            source: AddressSource::Peer,
        },
    })
}

/// One `X-Forwarded-For` entry: a bare IPv4 or IPv6 address, whitespace allowed.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .trim_matches(|c| c == ' ' || c == '\t')
        .parse::<IpAddr>()
        .ok()
        .map(|a| a.to_canonical())
}

/// `::ffff:a.b.c.d/len` (len ≥ 96) becomes `a.b.c.d/(len-96)`.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// Appends `ip` in its usual text form; IPv4 without `fmt` machinery (this
/// runs for every upload).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:ffff::/48".parse().unwrap(),
        ])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    type Want = Result<(String, AddressSource), BadForwardedHeader>;

    fn run(peer: &str, xff: &[&str]) -> Want {
        let values: Vec<HeaderValue> = xff
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        resolve(ip(peer), None, values.iter(), &trusted()).map(|o| (o.addr.to_string(), o.source))
    }

    use AddressSource::*;

    #[test]
    fn table() {
        let ok = |a: &str, s| Ok((a.to_string(), s));
        let cases: &[(&str, &[&str], Want)] = &[
            // untrusted peer: headers ignored, even garbage
            ("203.0.113.9", &[], ok("203.0.113.9", Peer)),
            ("203.0.113.9", &["192.0.2.1"], ok("203.0.113.9", Peer)),
            ("203.0.113.9", &["garbage"], ok("203.0.113.9", Peer)),
            (
                "::ffff:203.0.113.9",
                &["192.0.2.1"],
                ok("203.0.113.9", Peer),
            ),
            // trusted peer without header: the peer itself
            ("10.1.1.1", &[], ok("10.1.1.1", Peer)),
            // trusted peer: right-most untrusted entry
            ("10.1.1.1", &["192.0.2.1"], ok("192.0.2.1", XForwardedFor)),
            (
                "10.1.1.1",
                &["198.51.100.7, 192.0.2.1"],
                ok("192.0.2.1", XForwardedFor),
            ),
            (
                "10.1.1.1",
                &["192.0.2.1, 10.2.2.2"],
                ok("192.0.2.1", XForwardedFor),
            ),
            (
                "10.1.1.1",
                &["192.0.2.1", "10.2.2.2, 10.3.3.3"],
                ok("192.0.2.1", XForwardedFor),
            ),
            // client-written garbage left of the client is never read
            (
                "10.1.1.1",
                &["garbage, 192.0.2.1"],
                ok("192.0.2.1", XForwardedFor),
            ),
            (
                "10.1.1.1",
                &["not-an-ip", "192.0.2.1, 10.2.2.2"],
                ok("192.0.2.1", XForwardedFor),
            ),
            // IPv4-mapped entries are canonicalised before the trust check
            (
                "10.1.1.1",
                &["192.0.2.1, ::ffff:10.9.9.9"],
                ok("192.0.2.1", XForwardedFor),
            ),
            (
                "::ffff:10.1.1.1",
                &["::ffff:192.0.2.1"],
                ok("192.0.2.1", XForwardedFor),
            ),
            (
                "2001:db8:ffff::1",
                &["2001:db8::5"],
                ok("2001:db8::5", XForwardedFor),
            ),
            // all trusted: left-most
            (
                "10.1.1.1",
                &["10.5.5.5, 10.2.2.2"],
                ok("10.5.5.5", XForwardedFor),
            ),
            // malformed on the walked part → refused
            ("10.1.1.1", &["192.0.2.1, garbage"], Err(BadForwardedHeader)),
            ("10.1.1.1", &["192.0.2.1:443"], Err(BadForwardedHeader)),
            ("10.1.1.1", &["192.0.2.1,"], Err(BadForwardedHeader)),
            ("10.1.1.1", &[""], Err(BadForwardedHeader)),
            ("10.1.1.1", &["unknown"], Err(BadForwardedHeader)),
            ("10.1.1.1", &["[2001:db8::1]"], Err(BadForwardedHeader)),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(&run(peer, xff), want, "peer {peer} xff {xff:?}");
        }
    }

    #[test]
    fn proxy_protocol_source_wins_and_is_canonical() {
        let values = [HeaderValue::from_static("192.0.2.1")];
        let o = resolve(
            ip("10.1.1.1"),
            Some(ip("::ffff:198.51.100.2")),
            values.iter(),
            &trusted(),
        );
        assert_eq!(
            o,
            Ok(Origin {
                addr: ip("198.51.100.2"),
                source: ProxyProtocol
            })
        );
    }

    #[test]
    fn non_utf8_header_from_trusted_peer_is_refused() {
        let values = [HeaderValue::from_bytes(b"\xff\xfe").unwrap()];
        assert_eq!(
            resolve(ip("10.1.1.1"), None, values.iter(), &trusted()),
            Err(BadForwardedHeader)
        );
    }

    #[test]
    fn mapped_trusted_network_is_canonical() {
        let t = TrustedProxies::new(vec!["::ffff:10.0.0.0/104".parse().unwrap()]);
        assert!(t.contains(ip("10.3.4.5")));
        assert!(t.contains(ip("::ffff:10.3.4.5")));
        assert!(!t.contains(ip("11.0.0.1")));
    }
}
