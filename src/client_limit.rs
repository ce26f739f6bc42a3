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

/// Requests one client may make a second, with a burst (the log
/// listener's `transparency.requests_per_second_per_client`): GCRA, the
/// token bucket kept as one time per client — when its bucket is full
/// again. Clients are grouped as by [`key`]. At most [`RATE_CLIENTS`]
/// are remembered: those whose bucket is full again are forgotten when the
/// table is full (at most once a second); one more client then is not
/// limited until they are.
pub struct Rate {
    /// Nanoseconds one request costs: a second over the rate.
    interval: u64,
    /// How far past now a client's full-again time may be: the burst's
    /// requests.
    tolerance: u64,
    epoch: std::time::Instant,
    state: Mutex<RateState>,
}

struct RateState {
    /// Per client, in ns after `epoch`: when its bucket is full again.
    full_at: HashMap<u128, u64, foldhash::fast::RandomState>,
    /// When the table was last swept of clients full again.
    swept: u64,
}

/// Clients a [`Rate`] remembers at once (~3 MiB of table at most).
const RATE_CLIENTS: usize = 65_536;

const SECOND_NS: u64 = 1_000_000_000;

impl Rate {
    /// `per_second` requests a second for each client, `burst` at once
    /// (both at least 1).
    pub fn new(per_second: u32, burst: u32) -> Rate {
        let interval = SECOND_NS / u64::from(per_second.max(1));
        Rate {
            interval,
            tolerance: interval * u64::from(burst.max(1)),
            epoch: std::time::Instant::now(),
            state: Mutex::new(RateState {
                full_at: HashMap::default(),
                swept: 0,
            }),
        }
    }

    /// Whether `client` may make a request now (it is counted if so).
    pub fn admit(&self, client: IpAddr) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.admit_at(client, now)
    }

    fn admit_at(&self, client: IpAddr, now: u64) -> bool {
        let key = key(client);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let full_at = match state.full_at.get(&key) {
            Some(&t) => t.max(now),
            None => {
                if state.full_at.len() >= RATE_CLIENTS {
                    if now.saturating_sub(state.swept) >= SECOND_NS {
                        state.swept = now;
                        state.full_at.retain(|_, t| *t > now);
                    }
                    if state.full_at.len() >= RATE_CLIENTS {
                        return true;
                    }
                }
                now
            }
        };
        let next = full_at.saturating_add(self.interval);
        if next > now.saturating_add(self.tolerance) {
            return false;
        }
        state.full_at.insert(key, next);
        true
    }

    /// Clients remembered.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.state.lock().unwrap().full_at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let rate = Rate::new(10, 3);
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        for _ in 0..3 {
            assert!(rate.admit_at(a, 0));
        }
        assert!(!rate.admit_at(a, 0), "past its burst");
        assert!(!rate.admit_at(a, SECOND_NS / 10 - 1));
        // Another client (an IPv6 client's /64) has its own.
        for _ in 0..3 {
            assert!(rate.admit_at(b, 0));
        }
        assert!(!rate.admit_at(ip("2001:db8::2"), 0), "the same /64");
        // One more each 100 ms, and no more.
        assert!(rate.admit_at(a, SECOND_NS / 10));
        assert!(!rate.admit_at(a, SECOND_NS / 10));
        // Idle for the burst's time: the whole burst again.
        let later = SECOND_NS;
        for _ in 0..3 {
            assert!(rate.admit_at(a, later));
        }
        assert!(!rate.admit_at(a, later));
    }

    #[test]
    fn the_table_of_clients_is_bounded() {
        let rate = Rate::new(1, 1);
        let client = |n: usize| IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        for n in 0..RATE_CLIENTS {
            assert!(rate.admit_at(client(n), 0));
        }
        // Full of clients still limited: one more is let through, not
        // remembered, and the table does not grow.
        let extra = client(RATE_CLIENTS);
        assert!(rate.admit_at(extra, 1));
        assert!(rate.admit_at(extra, 2));
        assert_eq!(rate.clients(), RATE_CLIENTS);
        assert!(!rate.admit_at(client(0), 3), "those remembered still are");
        // Once their buckets are full again they are forgotten (a sweep
        // at most once a second).
        assert!(rate.admit_at(extra, 2 * SECOND_NS));
        assert_eq!(rate.clients(), 1);
        assert!(!rate.admit_at(extra, 2 * SECOND_NS));
    }

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
