//! What one client may hold at once: requests in flight
//! (`limits.max_requests_per_client`) and open connections
//! (`limits.max_connections_per_client`).
//!
//! Every forwarded request holds a connection to its data centre until its
//! answer has been taken from it to the end (and after an early answer
//! until its body has been sent), and a client decides how long that is (a
//! body sent at the minimum rate, stream after stream; a long answer not
//! read). Without a bound per client, one client could hold every
//! connection an upstream allows.
//! Likewise every open client connection holds one of
//! `limits.max_connections`, and a client decides how long (keep-alive,
//! a slow head, a slow body). A client is an address (for requests the one
//! the residency decision used, so a trusted front's clients count one by
//! one), IPv6 clients by their /64 (one subscriber's usual allocation; see
//! [`key`] for 6to4 and Teredo).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts of what each client holds (requests in flight, or open
/// connections). Hashed with foldhash, seeded
/// per process (a client chooses its key): std's SipHash cost ~250 more
/// instructions per request (`benches/compare/README.md`).
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<u128, u32, foldhash::fast::RandomState>>,
}

/// One request or connection counted against its client until dropped
/// (it may outlive the request's task: a body still sent after an early
/// answer keeps its request counted).
pub struct Counted {
    in_flight: Arc<InFlight>,
    /// The client's key in halves: a `u128` would align the guard, and the
    /// response body holding it, to 16 bytes, and the response carrying
    /// that body past the 256 bytes glibc's `memcpy` copies without a
    /// loop (issue 23: ~650 instructions a request in scenario A).
    key: [u64; 2],
}

/// The client an address counts for: an IPv4 address itself (as its
/// IPv4-mapped IPv6 form); an IPv6 address's /64, but for an address that
/// carries an IPv4 address, that one, as GeoIP locates it
/// ([`residency_core::geo::located`]): a 6to4 site's (`2002:<IPv4>::/48`,
/// the address its tunnel stands for), a Teredo client's own (all clients
/// of one Teredo server share its /64), an IPv4-compatible address's, a
/// NAT64 translator's IPv4 client's (every client behind it shares its
/// /64).
fn key(addr: IpAddr) -> u128 {
    match residency_core::geo::located(addr) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

impl InFlight {
    /// Counts one more for `client`, unless it holds `max` already (`None`:
    /// refuse it). `max = 0`: no limit, nothing counted.
    pub fn enter(self: &Arc<Self>, client: IpAddr, max: u32) -> Option<Option<Counted>> {
        if max == 0 {
            return Some(None);
        }
        let key = key(client);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(counts);
        Some(Some(Counted {
            in_flight: self.clone(),
            key: [(key >> 64) as u64, key as u64],
        }))
    }

    /// Clients holding something.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

impl Counted {
    fn key(&self) -> u128 {
        (u128::from(self.key[0]) << 64) | u128::from(self.key[1])
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self
            .in_flight
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = self.key();
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_max_requests_in_flight_and_its_slots_come_back() {
        let in_flight = Arc::new(InFlight::default());
        let a = in_flight.enter(ip("192.0.2.1"), 2).unwrap();
        let b = in_flight.enter(ip("192.0.2.1"), 2).unwrap();
        assert!(in_flight.enter(ip("192.0.2.1"), 2).is_none());
        // Another client is counted on its own.
        let other = in_flight.enter(ip("192.0.2.2"), 2).unwrap();
        assert!(other.is_some());
        drop(a);
        let c = in_flight.enter(ip("192.0.2.1"), 2).unwrap();
        assert!(in_flight.enter(ip("192.0.2.1"), 2).is_none());
        drop((b, c, other));
        assert_eq!(
            in_flight.clients(),
            0,
            "entries of idle clients are removed"
        );
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_its_address() {
        let in_flight = Arc::new(InFlight::default());
        let _a = in_flight.enter(ip("2001:db8:1:2::1"), 1).unwrap();
        assert!(in_flight.enter(ip("2001:db8:1:2:ffff::9"), 1).is_none());
        assert!(in_flight.enter(ip("2001:db8:1:3::1"), 1).unwrap().is_some());
        let _v4 = in_flight.enter(ip("198.51.100.7"), 1).unwrap();
        assert!(in_flight.enter(ip("::ffff:198.51.100.7"), 1).is_none());
        // ::/64 is not 0.0.0.0.
        assert!(in_flight.enter(ip("0.0.0.0"), 1).unwrap().is_some());
        assert!(in_flight.enter(ip("::5"), 1).unwrap().is_some());
        // A NAT64 translator's client is the IPv4 address it stands for,
        // not the translator's /64.
        let translated = in_flight.enter(ip("64:ff9b::c000:22d"), 1).unwrap();
        assert!(in_flight.enter(ip("192.0.2.45"), 1).is_none());
        assert!(in_flight.enter(ip("64:ff9b::c000:22e"), 1).is_some());
        drop(translated);
        // A 6to4 site is the IPv4 address it carries (its /48); a Teredo
        // client its own IPv4 address.
        let site = in_flight.enter(ip("2002:c000:22d:1::1"), 1).unwrap();
        assert!(in_flight.enter(ip("2002:c000:22d:2::1"), 1).is_none());
        assert!(in_flight.enter(ip("192.0.2.45"), 1).is_none());
        assert!(in_flight.enter(ip("::192.0.2.45"), 1).is_none());
        drop(site);
        let _teredo = in_flight
            .enter(ip("2001:0:cb00:7101:8000:f227:3fff:fdd2"), 1)
            .unwrap();
        assert!(in_flight.enter(ip("192.0.2.45"), 1).is_none());
        assert!(in_flight
            .enter(ip("2001:0:cb00:7101:8000:f227:3fff:fdd3"), 1)
            .unwrap()
            .is_some());
    }

    #[test]
    fn no_limit_counts_nothing() {
        let in_flight = Arc::new(InFlight::default());
        for _ in 0..3 {
            assert!(in_flight.enter(ip("192.0.2.1"), 0).unwrap().is_none());
        }
        assert_eq!(in_flight.clients(), 0);
    }
}
