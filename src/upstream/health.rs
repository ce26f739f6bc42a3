//! Whether each upstream may receive traffic.
//!
//! Three inputs decide it, all lock-free:
//!
//! * **Active checks** (`crate::probes`): an upstream goes down after
//!   `unhealthy_threshold` consecutive failed probes and comes back after
//!   `healthy_threshold` consecutive successes. Upstreams start up.
//! * **Passive ejection**: a failed connection ejects the upstream at once;
//!   `passive_failures` consecutive failed requests (errors, 5xx, timeouts)
//!   eject it too — except that a run of 5xx *answers* never ejects the
//!   last upstream in rotation of its jurisdiction ([`Health::record_server_error`]:
//!   an answer proves the upstream alive, and its 5xx may be the upload's
//!   own fault, so one client must not empty a jurisdiction for everyone);
//!   so does a **hang** — a request whose body was sent
//!   waiting `hung_after` without this upstream answering anything
//!   meanwhile ([`Health::eject_hung`], from the forwarding path).
//!   Ejection lasts `down_for`, then the upstream is tried again.
//! * **Recovery**: upstreams that are down or ejected are probed every
//!   `recovery_interval` instead of every `interval`. A passing probe ends
//!   an ejection for a failed connection at once (the upstream accepts
//!   connections again and answered), and one for a hang when the active
//!   checks had taken the upstream down too (its health endpoint hung as
//!   well, and answers again); an ejection for failing requests, or a hang
//!   of uploads while the health endpoint kept answering, runs its
//!   `down_for` — a passing probe proves nothing about those.
//! * **Drain**: an operator takes a whole data centre out of rotation; no new
//!   request goes there, in-flight ones finish.
//!
//! The clock is tokio's, so tests drive it with a paused clock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::HealthSettings;
use residency_core::policy::{DatacenterId, Policy, UpstreamId};

#[derive(Debug, Default)]
struct Upstream {
    datacenter: usize,
    /// Its data centre's jurisdiction.
    jurisdiction: usize,
    active_up: AtomicBool,
    active_successes: AtomicU32,
    active_failures: AtomicU32,
    passive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the upstream is ejected.
    ejected_until: AtomicU64,
    /// Why: one of the `EJECTED_*` values.
    ejected_for: AtomicU8,
    /// Milliseconds since `epoch` of the last ejection.
    ejected_at: AtomicU64,
    /// Answers (any status) to forwarded requests so far: a count, not a
    /// time, so that an answer reads no clock (issue 23).
    answers: AtomicU64,
}

/// Ejected after `passive_failures` failed requests.
const EJECTED_FAILING: u8 = 0;
/// Ejected because a connection to it failed.
const EJECTED_UNREACHABLE: u8 = 1;
/// Ejected because it stopped answering.
const EJECTED_HUNG: u8 = 2;

#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    settings: HealthSettings,
    upstreams: Vec<Upstream>,
    drained: Vec<AtomicBool>,
    /// Per jurisdiction: held while a run of 5xx answers decides whether
    /// another upstream is in rotation and ejects, so that two upstreams
    /// reaching the run at once on two threads do not both go.
    sparing: Vec<Mutex<()>>,
}

/// A change of an upstream's active state, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    CameUp,
    /// A passing probe ended an ejection (see the module documentation).
    Readmitted,
}

impl Health {
    pub fn new(policy: &Policy, settings: HealthSettings) -> Health {
        Health {
            epoch: Instant::now(),
            settings,
            upstreams: policy
                .upstreams
                .iter()
                .map(|u| Upstream {
                    datacenter: u.datacenter.0,
                    jurisdiction: policy.datacenter(u.datacenter).jurisdiction.0,
                    active_up: AtomicBool::new(true),
                    ..Upstream::default()
                })
                .collect(),
            drained: policy
                .datacenters
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            sparing: policy
                .jurisdictions
                .iter()
                .map(|_| Mutex::new(()))
                .collect(),
        }
    }

    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` on the clock of [`Health::now_ms`] (for a time already read).
    pub fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// May this upstream receive a new request now?
    pub fn is_up(&self, u: UpstreamId) -> bool {
        self.is_healthy(u)
            && self
                .upstreams
                .get(u.0)
                .is_some_and(|x| !self.drained[x.datacenter].load(Ordering::Relaxed))
    }

    /// Healthy by checks and not ejected (drain not considered).
    pub fn is_healthy(&self, u: UpstreamId) -> bool {
        self.upstreams.get(u.0).is_some_and(|x| {
            // 0: not ejected (never, or readmitted by a probe), and no
            // clock read (issue 23).
            x.active_up.load(Ordering::Relaxed) && {
                let until = x.ejected_until.load(Ordering::Relaxed);
                until == 0 || until <= self.now_ms()
            }
        })
    }

    /// Records one active probe result; returns a transition if the state changed.
    pub fn record_probe(&self, u: UpstreamId, ok: bool) -> Option<Transition> {
        let x = self.upstreams.get(u.0)?;
        if ok {
            x.active_failures.store(0, Ordering::Relaxed);
            let n = x.active_successes.fetch_add(1, Ordering::Relaxed) + 1;
            let came_up =
                n >= self.settings.healthy_threshold && !x.active_up.swap(true, Ordering::Relaxed);
            let ejected = x.ejected_until.load(Ordering::Relaxed) > self.now_ms();
            let readmit = ejected
                && match x.ejected_for.load(Ordering::Relaxed) {
                    EJECTED_UNREACHABLE => true,
                    EJECTED_HUNG => came_up,
                    _ => false,
                };
            if readmit {
                x.ejected_until.store(0, Ordering::Relaxed);
            }
            if came_up {
                return Some(Transition::CameUp);
            }
            if readmit && x.active_up.load(Ordering::Relaxed) {
                return Some(Transition::Readmitted);
            }
        } else {
            x.active_successes.store(0, Ordering::Relaxed);
            let n = x.active_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= self.settings.unhealthy_threshold && x.active_up.swap(false, Ordering::Relaxed)
            {
                return Some(Transition::WentDown);
            }
        }
        None
    }

    /// Should `u` be probed at the faster `recovery_interval`: down by
    /// checks, or ejected?
    pub fn recovering(&self, u: UpstreamId) -> bool {
        !self.is_healthy(u)
    }

    /// `u` answered a forwarded request (any status).
    pub fn record_answer(&self, u: UpstreamId) {
        if let Some(x) = self.upstreams.get(u.0) {
            x.answers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many forwarded requests `u` has answered so far: the mark for
    /// [`Health::answered_since`].
    pub fn answers(&self, u: UpstreamId) -> u64 {
        self.upstreams
            .get(u.0)
            .map_or(0, |x| x.answers.load(Ordering::Relaxed))
    }

    /// Has `u` answered any forwarded request since [`Health::answers`]
    /// gave `mark`?
    pub fn answered_since(&self, u: UpstreamId, mark: u64) -> bool {
        self.answers(u) > mark
    }

    /// Ejects `u` as hung (a request waited `hung_after` with nothing
    /// answered meanwhile); true if it was not ejected already.
    pub fn eject_hung(&self, u: UpstreamId) -> bool {
        let Some(x) = self.upstreams.get(u.0) else {
            return false;
        };
        if x.ejected_until.load(Ordering::Relaxed) > self.now_ms() {
            return false;
        }
        self.eject_for(u, EJECTED_HUNG);
        true
    }

    /// A request to `u` succeeded (any response below 500).
    pub fn record_success(&self, u: UpstreamId) {
        if let Some(x) = self.upstreams.get(u.0) {
            x.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to `u`, sent at `sent_ms` ([`Health::now_ms`]), failed
    /// after connecting; ejects after `passive_failures` in a row. Returns
    /// true if it ejected. A request sent before the upstream's last
    /// ejection does not count: it belongs to the episode that ejection
    /// dealt with (the requests a hung upstream held fail together when it
    /// comes back, and must not eject it again).
    pub fn record_failure(&self, u: UpstreamId, sent_ms: u64) -> bool {
        self.count_failure(u, sent_ms, false)
    }

    /// As [`Health::record_failure`], for a request `u` answered with a
    /// 5xx: counted the same, but the run does not eject `u` while it is
    /// the last upstream in rotation of its jurisdiction. An upstream that
    /// answers is alive, and its 5xx may be the upload's own fault; without
    /// this, one client's uploads (each replay with an `Idempotency-Key`
    /// counting against the next data centre) would eject every data
    /// centre of the jurisdiction for everyone. The run stays counted: the
    /// next 5xx ejects it once another upstream of the jurisdiction is back.
    pub fn record_server_error(&self, u: UpstreamId, sent_ms: u64) -> bool {
        self.count_failure(u, sent_ms, true)
    }

    fn count_failure(&self, u: UpstreamId, sent_ms: u64, spare_last: bool) -> bool {
        let Some(x) = self.upstreams.get(u.0) else {
            return false;
        };
        if sent_ms < x.ejected_at.load(Ordering::Relaxed) {
            return false;
        }
        let n = x.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.settings.passive_failures {
            return false;
        }
        // Held from the look at the others to the ejection (`sparing`).
        let _held = spare_last.then(|| self.sparing.get(x.jurisdiction).map(Mutex::lock));
        if spare_last && !self.another_up(u, x) {
            return false;
        }
        self.eject_for(u, EJECTED_FAILING);
        true
    }

    /// Is an upstream other than `u` (whose entry is `x`) of `u`'s
    /// jurisdiction in rotation?
    fn another_up(&self, u: UpstreamId, x: &Upstream) -> bool {
        self.upstreams
            .iter()
            .enumerate()
            .any(|(i, o)| i != u.0 && o.jurisdiction == x.jurisdiction && self.is_up(UpstreamId(i)))
    }

    /// Ejects `u` for `down_for` (a connection to it failed).
    pub fn eject(&self, u: UpstreamId) {
        self.eject_for(u, EJECTED_UNREACHABLE);
    }

    fn eject_for(&self, u: UpstreamId, why: u8) {
        let down_for = u64::try_from(self.settings.down_for.as_millis()).unwrap_or(u64::MAX);
        if let Some(x) = self.upstreams.get(u.0) {
            x.passive_failures.store(0, Ordering::Relaxed);
            x.ejected_for.store(why, Ordering::Relaxed);
            x.ejected_at.store(self.now_ms(), Ordering::Relaxed);
            // Never 0: 0 means "not ejected" even at the epoch.
            let until = self.now_ms().saturating_add(down_for).max(1);
            x.ejected_until.store(until, Ordering::Relaxed);
        }
    }

    /// Carries state over from the previous snapshot on reload: drains by
    /// data-centre name; check results (unless checks are now off) and
    /// ejections by (data centre, upstream URL). Upstreams new to the
    /// policy start up.
    pub fn inherit(&self, policy: &Policy, old: &Health, old_policy: &Policy) {
        let old_now = old.now_ms();
        let now = self.now_ms();
        for (i, dc) in policy.datacenters.iter().enumerate() {
            let Some(j) = old_policy.datacenter_named(&dc.name) else {
                continue;
            };
            self.set_drained(DatacenterId(i), old.is_drained(j));
            for u in &dc.upstreams {
                let same = policy.same_upstream_in(*u, old_policy);
                let (Some(o), Some(x)) = (
                    same.and_then(|o| old.upstreams.get(o.0)),
                    self.upstreams.get(u.0),
                ) else {
                    continue;
                };
                // Checks turned off: their last result would stand for
                // good (nothing else sets it back), so the upstream starts
                // up, as one new to the policy does.
                if self.settings.path.is_some() {
                    x.active_up
                        .store(o.active_up.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                x.active_successes.store(
                    o.active_successes.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                x.active_failures
                    .store(o.active_failures.load(Ordering::Relaxed), Ordering::Relaxed);
                x.passive_failures.store(
                    o.passive_failures.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                x.ejected_for
                    .store(o.ejected_for.load(Ordering::Relaxed), Ordering::Relaxed);
                let remaining = o
                    .ejected_until
                    .load(Ordering::Relaxed)
                    .saturating_sub(old_now);
                if remaining > 0 {
                    x.ejected_until
                        .store(now.saturating_add(remaining).max(1), Ordering::Relaxed);
                }
            }
        }
    }

    pub fn set_drained(&self, dc: DatacenterId, drained: bool) {
        if let Some(d) = self.drained.get(dc.0) {
            d.store(drained, Ordering::Relaxed);
        }
    }

    pub fn is_drained(&self, dc: DatacenterId) -> bool {
        self.drained
            .get(dc.0)
            .is_some_and(|d| d.load(Ordering::Relaxed))
    }

    /// How long until the earliest ejected upstream of `ups` is tried again
    /// (for `Retry-After`); the check interval when they are down by checks.
    pub fn retry_after(&self, ups: impl Iterator<Item = UpstreamId>) -> Duration {
        let now = self.now_ms();
        let soonest = ups
            .filter_map(|u| self.upstreams.get(u.0))
            .map(|x| {
                let ejected = x.ejected_until.load(Ordering::Relaxed).saturating_sub(now);
                if x.active_up.load(Ordering::Relaxed) {
                    ejected
                } else {
                    ejected
                        .max(u64::try_from(self.settings.interval.as_millis()).unwrap_or(u64::MAX))
                }
            })
            .min()
            .unwrap_or(0);
        Duration::from_millis(soonest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn health() -> (Health, Policy) {
        // One directory per test thread: tests run in parallel and each
        // removes its directory when done.
        let dir = std::env::temp_dir().join(format!(
            "rp-health-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["c.pem", "c.key", "g.mmdb"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let toml = r#"
[[listeners]]
address = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "c.pem", key = "c.key" }]
[geoip]
database = "g.mmdb"
[jurisdictions.ch]
countries = ["CH"]
[datacenters.zurich]
jurisdiction = "ch"
upstreams = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
[datacenters.geneva]
jurisdiction = "ch"
priority = 2
upstreams = ["http://127.0.0.1:3"]
[health]
healthy_threshold = 2
unhealthy_threshold = 3
passive_failures = 2
down_for = "10s"
"#;
        let config = Config::from_toml(toml, &dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (Health::new(&config.policy, config.health), config.policy)
    }

    #[tokio::test(start_paused = true)]
    async fn down_after_n_failed_probes_up_after_m_successes() {
        let (h, _) = health();
        let u = UpstreamId(0);
        assert!(h.is_up(u), "upstreams start up");
        assert_eq!(h.record_probe(u, false), None);
        assert_eq!(h.record_probe(u, false), None);
        assert!(h.is_up(u));
        assert_eq!(h.record_probe(u, false), Some(Transition::WentDown));
        assert!(!h.is_up(u));
        assert_eq!(h.record_probe(u, false), None, "already down");
        assert_eq!(h.record_probe(u, true), None);
        assert!(!h.is_up(u));
        assert_eq!(
            h.record_probe(u, false),
            None,
            "a failure resets the success run"
        );
        assert_eq!(h.record_probe(u, true), None);
        assert_eq!(h.record_probe(u, true), Some(Transition::CameUp));
        assert!(h.is_up(u));
        assert!(h.is_up(UpstreamId(1)), "other upstreams unaffected");
    }

    #[tokio::test(start_paused = true)]
    async fn passive_ejection_lasts_down_for() {
        let (h, _) = health();
        let u = UpstreamId(1);
        assert!(!h.record_failure(u, h.now_ms()));
        h.record_success(u);
        assert!(
            !h.record_failure(u, h.now_ms()),
            "success resets the failure run"
        );
        assert!(h.record_failure(u, h.now_ms()), "two in a row eject");
        assert!(!h.is_up(u));
        assert_eq!(h.retry_after([u].into_iter()), Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!h.is_up(u));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h.is_up(u));
        h.eject(u);
        assert!(!h.is_up(u), "a failed connection ejects at once");
        assert!(!h.is_up(UpstreamId(9)), "unknown upstreams are never up");
    }

    /// zurich's two upstreams and geneva's one are CH's three: 5xx answers
    /// eject the first two, never the third while it is the last in
    /// rotation; a failed connection still does.
    #[tokio::test(start_paused = true)]
    async fn server_errors_never_eject_a_jurisdiction_s_last_upstream() {
        let (h, _) = health();
        let [a, b, last] = [0, 1, 2].map(UpstreamId);
        for u in [a, b] {
            assert!(!h.record_server_error(u, h.now_ms()));
            assert!(h.record_server_error(u, h.now_ms()), "two in a row eject");
        }
        for _ in 0..5 {
            assert!(!h.record_server_error(last, h.now_ms()));
        }
        assert!(h.is_up(last), "the jurisdiction's last upstream stays");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(h.is_up(a), "down_for ran out");
        h.eject(b);
        assert!(
            h.record_server_error(last, h.now_ms()),
            "its run stayed counted: ejected once another is back"
        );
        assert!(!h.record_server_error(a, h.now_ms()));
        assert!(!h.record_server_error(a, h.now_ms()), "now a is the last");
        assert!(h.is_up(a));
        h.eject(a);
        assert!(!h.is_up(a), "a failed connection ejects even the last");
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_probe_readmits_what_connections_or_a_whole_hang_ejected() {
        let (h, _) = health();
        let u = UpstreamId(0);
        // A refused connection: the next passing probe readmits at once.
        h.eject(u);
        assert!(h.recovering(u));
        assert_eq!(h.record_probe(u, true), Some(Transition::Readmitted));
        assert!(h.is_up(u));

        // Failing requests: a passing health check proves nothing.
        assert!(!h.record_failure(u, h.now_ms()));
        assert!(h.record_failure(u, h.now_ms()));
        assert_eq!(h.record_probe(u, true), None);
        assert!(!h.is_up(u), "down_for runs");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(h.is_up(u));

        // Uploads hang while the health endpoint answers: not readmitted.
        assert!(h.eject_hung(u));
        assert!(!h.eject_hung(u), "already ejected");
        assert_eq!(h.record_probe(u, true), None);
        assert!(!h.is_up(u));
        tokio::time::advance(Duration::from_secs(10)).await;

        // The whole upstream hangs: checks go down too; once they pass
        // again (healthy_threshold), the hang ejection ends with them.
        let held = h.now_ms();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h.eject_hung(u));
        h.record_probe(u, false);
        h.record_probe(u, false);
        assert_eq!(h.record_probe(u, false), Some(Transition::WentDown));
        assert_eq!(h.record_probe(u, true), None);
        assert_eq!(h.record_probe(u, true), Some(Transition::CameUp));
        assert!(h.is_up(u), "readmitted with the checks");
        // The requests it held fail together as it comes back: they were
        // sent before the ejection and do not eject it again.
        for _ in 0..5 {
            assert!(!h.record_failure(u, held));
        }
        assert!(h.is_up(u));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_since_a_mark() {
        let (h, _) = health();
        let u = UpstreamId(0);
        h.record_answer(u);
        let mark = h.answers(u);
        assert!(!h.answered_since(u, mark));
        h.record_answer(u);
        assert!(h.answered_since(u, mark));
        assert!(!h.answered_since(UpstreamId(1), h.answers(UpstreamId(1))));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_and_undrain() {
        let (h, policy) = health();
        let zurich = DatacenterId(
            policy
                .datacenters
                .iter()
                .position(|d| d.name == "zurich")
                .unwrap(),
        );
        let zurich_ups = policy.datacenter(zurich).upstreams.clone();
        h.set_drained(zurich, true);
        assert!(h.is_drained(zurich));
        for u in &zurich_ups {
            assert!(!h.is_up(*u), "drained: no new requests");
            assert!(h.is_healthy(*u), "but still healthy");
        }
        let ch = residency_core::policy::JurisdictionId(0);
        let picked = policy.pick(ch, 0, |u| h.is_up(u)).unwrap();
        assert_eq!(
            policy.datacenter_of(picked).name,
            "geneva",
            "traffic spills to priority 2"
        );
        h.set_drained(zurich, false);
        let picked = policy.pick(ch, 0, |u| h.is_up(u)).unwrap();
        assert_eq!(policy.datacenter_of(picked).name, "zurich");
    }
}
