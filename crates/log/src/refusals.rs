//! Refusals cannot exhaust the log. Each is its own record while they
//! arrive within a token bucket (`transparency.refusal_records_per_second`,
//! bursts of `refusal_records_burst`); beyond it, refusals are folded into
//! one summary record per reason and data centres (a refusal after a
//! delivery attempt names where the body may be: `datacenter` and
//! `also_sent_to`, which its summary keeps), written before the next
//! checkpoint: how many, the first and last time, and the SHA-256 of their
//! request ids in order. Every stored upload is still its own record, and a client that is
//! refused 11,000 times a second adds a handful of records, not 11,000.

use std::sync::Mutex;
use std::time::Instant;

use ring::digest;

use crate::record::{Record, Summary};

/// The token bucket and the refusals folded since the last drain.
pub struct RefusalGate {
    per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    at: Instant,
    /// The folded refusals, by reason and data centres (a handful: a
    /// list, searched without allocating a key).
    folded: Vec<Folded>,
    /// Summaries made that the log could not take: written first next time.
    unwritten: Vec<Record<'static>>,
}

/// Summaries kept for the next attempt at most: while the log fails, only
/// the kept ones are tried again ([`RefusalGate::drain_kept`]) and new
/// refusals stay folded by their key, so the kept ones are at most one
/// drain's (one per reason and data centres); beyond it the oldest go,
/// with an error.
const UNWRITTEN_MAX: usize = 1024;

struct Folded {
    count: u64,
    ids: digest::Context,
    first: String,
    last: String,
    /// The first folded refusal: its reason and data centres are the
    /// summary's key, and its policy and database go into the summary
    /// (made once per key and interval).
    template: Record<'static>,
}

impl RefusalGate {
    pub fn new(per_second: u32, burst: u32) -> RefusalGate {
        RefusalGate {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            state: Mutex::new(State {
                tokens: f64::from(burst),
                at: Instant::now(),
                folded: Vec::new(),
                unwritten: Vec::new(),
            }),
        }
    }

    /// `true`: write `record` on its own. `false`: it was folded into its
    /// summary.
    pub fn admit(&self, record: &Record<'_>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(state.at).as_secs_f64() * self.per_second;
        state.tokens = (state.tokens + refill).min(self.burst);
        state.at = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return true;
        }
        Self::fold_into(&mut state, record);
        false
    }

    /// Folds `record` into its summary without spending a token
    /// (the log cannot take records now; the summary is written later).
    pub fn fold(&self, record: &Record<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::fold_into(&mut state, record);
    }

    fn fold_into(state: &mut State, record: &Record<'_>) {
        let same = |f: &Folded| {
            let t = &f.template;
            t.reason == record.reason
                && t.datacenter == record.datacenter
                && t.also_sent_to == record.also_sent_to
        };
        let at = match state.folded.iter().position(same) {
            Some(at) => at,
            None => {
                let template = Record::from_bytes(&record.to_bytes()).ok();
                let Some(template) = template else {
                    return; // never: a record parses back from its bytes
                };
                state.folded.push(Folded {
                    count: 0,
                    ids: digest::Context::new(&digest::SHA256),
                    first: record.time.to_string(),
                    last: String::new(),
                    template,
                });
                state.folded.len() - 1
            }
        };
        let folded = &mut state.folded[at];
        folded.count += 1;
        folded.ids.update(record.request_id.as_bytes());
        folded.ids.update(b"\n");
        // The earliest and latest time (RFC 3339 UTC of one width: they
        // sort as text), whatever order they are folded in: requests cut
        // together at shutdown end in no particular order.
        let time: &str = &record.time;
        if time < folded.first.as_str() {
            folded.first = time.to_string();
        }
        if time > folded.last.as_str() {
            folded.last.clear();
            folded.last.push_str(time);
        }
    }

    /// The summary records of everything folded since the last drain, one
    /// per reason and data centres, in that order.
    /// Summaries given back by [`RefusalGate::keep`] come first.
    pub fn drain(&self) -> Vec<Record<'static>> {
        let (unwritten, folded) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                std::mem::take(&mut state.unwritten),
                std::mem::take(&mut state.folded),
            )
        };
        let mut folded = folded;
        folded.sort_by(|a, b| {
            let (a, b) = (&a.template, &b.template);
            (&a.reason, &a.datacenter, &a.also_sent_to).cmp(&(
                &b.reason,
                &b.datacenter,
                &b.also_sent_to,
            ))
        });
        let made = folded.into_iter().map(|f| {
            let ids = residency_core::hex::encode(f.ids.finish().as_ref());
            let mut r = f.template;
            r.request_id = format!("summary-{}", &ids[..32]).into();
            r.time = f.last.clone().into();
            r.reason
                .get_or_insert(std::borrow::Cow::Borrowed("refused"));
            // What differs between the folded refusals is not kept; where
            // their bodies may be (`datacenter`, `also_sent_to`) is their
            // summary's key.
            r.client.source = None;
            r.client.address = None;
            r.country = None;
            r.jurisdiction = None;
            r.upstream_status = None;
            r.body = None;
            // The tenant (and the jurisdiction GeoIP gave that client)
            // was the first folded refusal's, not every one's.
            r.tenant = None;
            r.summary = Some(Summary {
                count: f.count,
                request_ids_sha256: ids.into(),
                first: f.first.into(),
                last: f.last.into(),
            });
            r
        });
        unwritten.into_iter().chain(made).collect()
    }

    /// The summaries given back by [`RefusalGate::keep`] alone, to try
    /// again while the log fails: what is folded meanwhile stays folded,
    /// each refusal into its key's summary, so a log that fails for long
    /// adds no summary per attempt (static audit, stop 63: a log failing
    /// with a full disk made one per key and checkpoint, and dropped the
    /// oldest past 1024). Empty if none are kept.
    pub fn drain_kept(&self) -> Vec<Record<'static>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut state.unwritten)
    }

    /// Gives back a summary [`RefusalGate::drain`] made that the log could
    /// not take, for the next drain: its refusals stay counted and their
    /// ids hashed until it is written.
    pub fn keep(&self, summary: Record<'static>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.unwritten.len() >= UNWRITTEN_MAX {
            let lost = state.unwritten.remove(0);
            tracing::error!(
                request_id = %lost.request_id,
                "a summary of folded refusals could not be written and is dropped: {UNWRITTEN_MAX} wait already"
            );
        }
        state.unwritten.push(summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Client, Database, Outcome};

    fn refusal(i: u32, reason: &'static str) -> Record<'static> {
        Record {
            v: 1,
            request_id: format!("{i:032x}").into(),
            time: format!("2026-12-02T10:00:{:02}.000Z", i % 60).into(),
            outcome: Outcome::Refused,
            reason: Some(reason.into()),
            client: Client {
                source: Some("peer".into()),
                address: Some("203.0.113.0/24".into()),
            },
            country: None,
            jurisdiction: None,
            datacenter: None,
            also_sent_to: Vec::new(),
            upstream_status: None,
            body: None,
            policy_sha256: "00".repeat(32).into(),
            geoip: Database {
                build_epoch: 1,
                sha256: "11".repeat(32).into(),
            },
            tenant: Some(crate::record::TenantRecord {
                name: format!("tenant-{i}").into(),
                source: "sni".into(),
                origin_jurisdiction: Some("us".into()),
            }),
            summary: None,
        }
    }

    /// A summary the log could not take is given back and comes first at
    /// the next drain, unchanged; refusals folded since get their own.
    #[test]
    fn a_summary_not_written_is_written_next_time() {
        let gate = RefusalGate::new(1, 1);
        for i in 0..6 {
            gate.fold(&refusal(
                i,
                if i < 4 {
                    "origin_unknown"
                } else {
                    "bad_request"
                },
            ));
        }
        let first = gate.drain();
        assert_eq!(first.len(), 2);
        for summary in first.clone() {
            gate.keep(summary);
        }
        gate.fold(&refusal(9, "origin_unknown"));
        let second = gate.drain();
        assert_eq!(second.len(), 3, "{second:?}");
        assert_eq!(second[..2], first[..], "the kept ones first, as they were");
        let count = |r: &Record<'_>| r.summary.as_ref().unwrap().count;
        assert_eq!(count(&second[2]), 1);
        assert_eq!(second.iter().map(count).sum::<u64>(), 7, "no refusal lost");
        assert!(gate.drain().is_empty());
    }

    /// A log that keeps failing (a full disk) is tried with the kept
    /// summaries alone: the refusals folded meanwhile wait in their key's
    /// summary, and none is dropped however long it fails.
    #[test]
    fn a_log_that_keeps_failing_keeps_one_summary_per_key() {
        let gate = RefusalGate::new(1, 1);
        let reasons = ["origin_unknown", "bad_request"];
        let mut folded = 0;
        for attempt in 0..3000u32 {
            gate.fold(&refusal(attempt, reasons[attempt as usize % 2]));
            folded += 1;
            // write_summaries while the last append failed: the kept ones
            // if there are, else a drain; none is written.
            let tried = match gate.drain_kept() {
                kept if kept.is_empty() => gate.drain(),
                kept => kept,
            };
            assert!(tried.len() <= reasons.len(), "{}", tried.len());
            for summary in tried {
                gate.keep(summary);
            }
        }
        // The log takes writes again: everything, once.
        let written = gate.drain();
        let count = |r: &Record<'_>| r.summary.as_ref().unwrap().count;
        assert_eq!(
            written.iter().map(count).sum::<u64>(),
            folded,
            "no refusal lost"
        );
        // The ones kept from the first failed attempt, and one per key
        // folded since.
        assert!(written.len() <= 2 * reasons.len(), "{written:?}");
    }

    /// Refusals after a delivery attempt name where the body may be: folded,
    /// they keep it, one summary per reason and data centres.
    /// A summary's `first` and `last` are the earliest and latest times,
    /// in whatever order the refusals were folded (requests cut together
    /// at shutdown end in no particular order: the first folded was taken
    /// as the first).
    #[test]
    fn a_summary_spans_its_earliest_to_its_latest_refusal() {
        let gate = RefusalGate::new(1, 1);
        for i in [30, 10, 50, 20] {
            gate.fold(&refusal(i, "shutdown"));
        }
        let summaries = gate.drain();
        let s = summaries[0].summary.as_ref().unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(
            (s.first.as_ref(), s.last.as_ref()),
            ("2026-12-02T10:00:10.000Z", "2026-12-02T10:00:50.000Z")
        );
    }

    #[test]
    fn summaries_keep_where_bodies_may_be() {
        let gate = RefusalGate::new(1, 1);
        let attempted = |i: u32, dc: Option<&'static str>, earlier: &[&'static str]| {
            let mut r = refusal(i, "upstream_error");
            r.datacenter = dc.map(Into::into);
            r.also_sent_to = earlier.iter().map(|&d| d.into()).collect();
            r
        };
        gate.fold(&attempted(0, Some("geneva"), &["zurich"]));
        gate.fold(&attempted(1, Some("geneva"), &[]));
        gate.fold(&attempted(2, Some("geneva"), &["zurich"]));
        gate.fold(&attempted(3, None, &["zurich"]));
        gate.fold(&refusal(4, "origin_unknown"));
        let summaries = gate.drain();
        let seen: Vec<_> = summaries
            .iter()
            .map(|s| {
                (
                    s.reason.as_deref().unwrap(),
                    s.datacenter.as_deref(),
                    s.also_sent_to
                        .iter()
                        .map(|d| d.as_ref())
                        .collect::<Vec<_>>(),
                    s.summary.as_ref().unwrap().count,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("origin_unknown", None, vec![], 1),
                ("upstream_error", None, vec!["zurich"], 1),
                ("upstream_error", Some("geneva"), vec![], 1),
                ("upstream_error", Some("geneva"), vec!["zurich"], 2),
            ]
        );
    }

    #[test]
    fn a_burst_then_summaries_per_reason() {
        // No refill to speak of: 10 per second, a burst of 5.
        let gate = RefusalGate::new(10, 5);
        let admitted: Vec<bool> = (0..20)
            .map(|i| {
                gate.admit(&refusal(
                    i,
                    if i % 2 == 0 {
                        "origin_unknown"
                    } else {
                        "bad_request"
                    },
                ))
            })
            .collect();
        let first = admitted.iter().take_while(|a| **a).count();
        assert!(first >= 5, "the burst is recorded one by one");
        let folded = admitted.iter().filter(|a| !**a).count();
        assert!(folded >= 13, "{folded} folded");
        let summaries = gate.drain();
        assert_eq!(summaries.len(), 2, "one per reason");
        let total: u64 = summaries
            .iter()
            .map(|s| s.summary.as_ref().unwrap().count)
            .sum();
        assert_eq!(total as usize, folded);
        for s in &summaries {
            let summary = s.summary.as_ref().unwrap();
            // The ids of exactly the folded refusals of that reason, in order.
            let mut ids = digest::Context::new(&digest::SHA256);
            for i in 0..20u32 {
                let r = refusal(i, "");
                let reason = if i % 2 == 0 {
                    "origin_unknown"
                } else {
                    "bad_request"
                };
                if !admitted[i as usize] && s.reason.as_deref() == Some(reason) {
                    ids.update(r.request_id.as_bytes());
                    ids.update(b"\n");
                }
            }
            let want = residency_core::hex::encode(ids.finish().as_ref());
            assert_eq!(summary.request_ids_sha256, want);
            assert!(s.request_id.starts_with("summary-"));
            assert_eq!(s.client.address, None, "nothing of one client is kept");
            assert_eq!(s.tenant, None, "nor its tenant");
            // It round-trips as a record.
            assert_eq!(&Record::from_bytes(&s.to_bytes()).unwrap(), s);
        }
        assert!(gate.drain().is_empty(), "drained");
    }
}
