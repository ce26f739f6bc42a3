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

use std::fmt::Write;
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
/// Shared: each connection keeps the set it was accepted with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(std::sync::Arc<[IpNet]>);

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

/// What the PROXY header of a connection on a listener that requires one
/// said of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// Its source address.
    Named(IpAddr),
    /// No client (`LOCAL`, `UNKNOWN`, an unspecified or UNIX family: the
    /// balancer's own connection): the TCP peer decides, and the record
    /// says so; `X-Forwarded-For` is still not read.
    Unnamed,
}

/// Resolves the client address of one request. `proxied` is what the
/// connection's PROXY header said, if the listener requires one; `xff` are
/// the request's `X-Forwarded-For` values in header order.
pub fn resolve<'a>(
    peer: IpAddr,
    proxied: Option<Proxied>,
    xff: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &TrustedProxies,
) -> Result<Origin, BadForwardedHeader> {
    let peer = peer.to_canonical();
    match proxied {
        Some(Proxied::Named(addr)) => {
            return Ok(Origin {
                addr: addr.to_canonical(),
                source: AddressSource::ProxyProtocol,
            })
        }
        Some(Proxied::Unnamed) => {
            return Ok(Origin {
                addr: peer,
                source: AddressSource::Peer,
            })
        }
        None => {}
    }
    if !trusted.contains(peer) {
        return Ok(Origin {
            addr: peer,
            source: AddressSource::Peer,
        });
    }
    let mut leftmost = None;
    for value in xff.rev() {
        // Bytes, not `to_str`: what is left of the entry that ends the walk
        // is never read, whatever it holds.
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let entry = std::str::from_utf8(entry).map_err(|_| BadForwardedHeader)?;
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
/// runs for every upload). Into a `String`, or a buffer on the stack.
pub fn push_ip(out: &mut impl Write, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write_char('.');
                }
                if octet >= 100 {
                    let _ = out.write_char(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    let _ = out.write_char(char::from(b'0' + octet / 10 % 10));
                }
                let _ = out.write_char(char::from(b'0' + octet % 10));
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
            Some(Proxied::Named(ip("::ffff:198.51.100.2"))),
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
        // A header naming no client: the peer decides, and is named the
        // source; a trusted peer's X-Forwarded-For is still not read.
        let o = resolve(
            ip("::ffff:10.1.1.1"),
            Some(Proxied::Unnamed),
            values.iter(),
            &trusted(),
        );
        assert_eq!(
            o,
            Ok(Origin {
                addr: ip("10.1.1.1"),
                source: Peer
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

#[cfg(test)]
mod proptests {
    //! Properties of [`resolve`]'s right-to-left `X-Forwarded-For` walk.

    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:ffff::/48".parse().unwrap(),
        ])
    }

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Addresses on both sides of the trust boundary, IPv4-mapped ones included.
    fn any_addr() -> impl Strategy<Value = IpAddr> {
        let v4 = prop_oneof![
            any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(10, b, c, d)),
            any::<u32>().prop_map(Ipv4Addr::from),
        ];
        prop_oneof![
            v4.clone().prop_map(IpAddr::V4),
            v4.prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
            any::<[u16; 5]>().prop_map(|[d, e, f, g, h]| IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0xffff, d, e, f, g, h
            ))),
            any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        ]
    }

    fn untrusted_addr() -> impl Strategy<Value = IpAddr> {
        any_addr().prop_filter("untrusted", |a| !trusted().contains(*a))
    }

    /// One well-formed entry as a proxy may write it: optional blanks around.
    fn entry_text() -> impl Strategy<Value = (IpAddr, String)> {
        (any_addr(), "[ \t]{0,2}", "[ \t]{0,2}").prop_map(|(a, l, r)| (a, format!("{l}{a}{r}")))
    }

    /// Text a client may write: XFF-ish alphabet, or any visible ASCII.
    fn junk_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-fA-F:.,\\[\\] \t%a-z]{0,40}",
            "[ -~\t]{0,40}",
            any_addr().prop_map(|a| format!("{a}:443")),
            any_addr().prop_map(|a| format!("[{a}]")),
        ]
    }

    /// Any bytes a `HeaderValue` can hold (no controls other than tab).
    fn any_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            junk_text().prop_map(|s| HeaderValue::from_str(&s).unwrap()),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut b| {
                b.retain(|&c| c == b'\t' || (c >= 0x20 && c != 0x7f));
                HeaderValue::from_bytes(&b).unwrap()
            }),
        ]
    }

    /// Header values of well-formed entries (each value 1..4 entries).
    fn good_values() -> impl Strategy<Value = (Vec<IpAddr>, Vec<HeaderValue>)> {
        proptest::collection::vec(proptest::collection::vec(entry_text(), 1..4), 0..4).prop_map(
            |values| {
                let addrs = values.iter().flatten().map(|(a, _)| *a).collect();
                let values = values
                    .iter()
                    .map(|v| {
                        let text: Vec<&str> = v.iter().map(|(_, t)| t.as_str()).collect();
                        HeaderValue::from_str(&text.join(",")).unwrap()
                    })
                    .collect();
                (addrs, values)
            },
        )
    }

    /// Every entry literally present in the header, parsed like `resolve` does.
    fn literal_entries(values: &[HeaderValue]) -> Vec<Option<IpAddr>> {
        values
            .iter()
            .flat_map(|v| match v.to_str() {
                Ok(s) => s.split(',').map(parse_entry).collect(),
                Err(_) => vec![None],
            })
            .collect()
    }

    /// The documented rule, stated index-wise: the right-most entry that is
    /// not a valid trusted address decides (a valid one is the client, a
    /// malformed one is refused); with none, the left-most entry, else the peer.
    fn model(
        peer: IpAddr,
        values: &[HeaderValue],
        t: &TrustedProxies,
    ) -> Result<Origin, BadForwardedHeader> {
        let peer = peer.to_canonical();
        if !t.contains(peer) {
            return Ok(Origin {
                addr: peer,
                source: AddressSource::Peer,
            });
        }
        let entries = literal_entries(values);
        let decisive = entries
            .iter()
            .rposition(|e| !e.is_some_and(|a| t.contains(a)));
        let pick = match decisive {
            Some(i) => entries[i].ok_or(BadForwardedHeader)?,
            None => match entries.first() {
                Some(first) => first.expect("all valid"),
                None => {
                    return Ok(Origin {
                        addr: peer,
                        source: AddressSource::Peer,
                    })
                }
            },
        };
        Ok(Origin {
            addr: pick,
            source: AddressSource::XForwardedFor,
        })
    }

    proptest! {
        #![proptest_config(config(2000))]

        /// Arbitrary headers: no panic; the result is the peer or an address
        /// literally in the header, and matches the documented walk.
        #[test]
        fn arbitrary_headers(peer in any_addr(), values in proptest::collection::vec(any_value(), 0..4)) {
            let t = trusted();
            let got = resolve(peer, None, values.iter(), &t);
            if let Ok(o) = got {
                match o.source {
                    AddressSource::Peer => prop_assert_eq!(o.addr, peer.to_canonical()),
                    AddressSource::XForwardedFor => prop_assert!(
                        literal_entries(&values).contains(&Some(o.addr)),
                        "{} is not in the header", o.addr
                    ),
                    AddressSource::ProxyProtocol => prop_assert!(false, "no PROXY source given"),
                }
            }
            prop_assert_eq!(got, model(peer, &values, &t));
        }

        /// An untrusted peer's header is never read, whatever it holds.
        #[test]
        fn untrusted_peer_is_the_client(peer in untrusted_addr(), values in proptest::collection::vec(any_value(), 0..4)) {
            let t = trusted();
            prop_assert_eq!(
                resolve(peer, None, values.iter(), &t),
                Ok(Origin { addr: peer.to_canonical(), source: AddressSource::Peer })
            );
        }

        /// Well-formed chains from a trusted peer: the right-most untrusted
        /// entry; all trusted → the left-most; no entries → the peer.
        #[test]
        fn well_formed_chains(peer_host in any::<[u8; 3]>(), (addrs, values) in good_values()) {
            let t = trusted();
            let [b, c, d] = peer_host;
            let peer = IpAddr::V4(Ipv4Addr::new(10, b, c, d));
            let want = match addrs.iter().rev().find(|a| !t.contains(**a)) {
                Some(a) => Origin { addr: a.to_canonical(), source: AddressSource::XForwardedFor },
                None => match addrs.first() {
                    Some(a) => Origin { addr: a.to_canonical(), source: AddressSource::XForwardedFor },
                    None => Origin { addr: peer, source: AddressSource::Peer },
                },
            };
            prop_assert_eq!(resolve(peer, None, values.iter(), &t), Ok(want));
        }

        /// What the client writes left of an untrusted hop never changes the
        /// result: prepended as entries of the same header line or as
        /// earlier header lines.
        #[test]
        fn prepended_entries_cannot_spoof(
            peer_host in any::<[u8; 3]>(),
            (addrs, values) in good_values(),
            client in untrusted_addr(),
            same_line in proptest::collection::vec(junk_text(), 0..4),
            earlier in proptest::collection::vec(any_value(), 0..3),
            obs in proptest::collection::vec(0x80u8..=0xff, 0..4),
        ) {
            let t = trusted();
            let [b, c, d] = peer_host;
            let peer = IpAddr::V4(Ipv4Addr::new(10, b, c, d));
            // The untrusted hop first, then what the trusted proxies added.
            let mut honest = vec![HeaderValue::from_str(&client.to_string()).unwrap()];
            honest.extend(values);
            let want = resolve(peer, None, honest.iter(), &t);
            prop_assert_eq!(
                want,
                Ok(Origin {
                    addr: addrs
                        .iter()
                        .rev()
                        .find(|a| !t.contains(**a))
                        .unwrap_or(&client)
                        .to_canonical(),
                    source: AddressSource::XForwardedFor
                })
            );

            let mut spoofed = honest.clone();
            let mut first = same_line.clone();
            first.push(client.to_string());
            // obs-text in front of the client's own entries.
            let line = [obs.as_slice(), b",", first.join(",").as_bytes()].concat();
            spoofed[0] = HeaderValue::from_bytes(&line).unwrap();
            prop_assert_eq!(resolve(peer, None, spoofed.iter(), &t), want);

            let mut spoofed = earlier.clone();
            spoofed.extend(honest.iter().cloned());
            prop_assert_eq!(resolve(peer, None, spoofed.iter(), &t), want);
        }
    }

    /// Was refused (400): client-written obs-text left of the client
    /// address on the same line, which the walk never needs to read.
    #[test]
    fn obs_text_left_of_the_client_is_not_read() {
        let values = [HeaderValue::from_bytes(b"\xe9, 192.0.2.1").unwrap()];
        assert_eq!(
            resolve("10.1.1.1".parse().unwrap(), None, values.iter(), &trusted()),
            Ok(Origin {
                addr: "192.0.2.1".parse().unwrap(),
                source: AddressSource::XForwardedFor
            })
        );
    }
}
