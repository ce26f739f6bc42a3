//! Time from each fault to the first successful failover, and from each
//! repair to the data centre's first acknowledged upload.
//!
//! For a chaos event that breaks data centre D (refuse, hang, error, drain)
//! or slows it down (`slow`: a failover is measured, not required)
//! applied at T: the jurisdictions "going to D" are those D was storing
//! when the event struck — one of a jurisdiction's last [`RECENT`]
//! acknowledged uploads scheduled before T (and since D's previous chaos
//! event, or the start) was D's. (Any upload of theirs D acknowledged
//! since its previous event would count a data centre the proxy had long
//! stopped sending to: a drain of one already ejected, or of a standby
//! that took traffic for a while.) Faults struck at the same moment are
//! judged together: D was also going to be tested if another data centre
//! struck then had uploads D is permitted to take. The failover is the first upload of one of them, scheduled at
//! or after T, acknowledged by another data centre before D's next event;
//! its time is that upload's completion minus T. Uploads of those
//! jurisdictions scheduled in between that were not acknowledged are
//! counted as failed before failover.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;

use super::chaos::Applied;
use super::generator::Outcome;
use super::plan::Plan;
use super::spec::{ChaosAction, ChaosEvent};

/// How many of a jurisdiction's last acknowledged uploads before a fault
/// tell where it was going when the fault struck.
pub const RECENT: usize = 10;

/// The failover after one breaking event.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub datacenter: String,
    /// The jurisdictions D had been storing just before the event.
    pub jurisdictions: Vec<String>,
    /// When the proxy was already sending those jurisdictions elsewhere:
    /// the scheduled time, from the event, of the earliest upload after it
    /// that another data centre acknowledged *promptly* (within twice the
    /// p99 of those jurisdictions before the event, at least 20 ms — not
    /// after waiting on D and being replayed). Uploads sent to D before
    /// that wait for D's answer (or a timeout); for a hung D this is the
    /// time to detect it, apart from their waiting.
    pub time_to_detect_ms: Option<f64>,
    /// `None` (JSON `null`): no failover was seen; `note` says why.
    pub time_to_failover_ms: Option<f64>,
    /// The data centres those jurisdictions could have failed over to:
    /// permitted for one of them by the policy, and left unbroken by the
    /// schedule from the event until the data centre's next one. With none, no failover is no fault
    /// of the proxy's (the jurisdiction had nowhere else to go); with
    /// some, it fails the run.
    pub alternatives: Vec<String>,
    /// The data centre that acknowledged the first failed-over upload.
    pub answered_by: Option<String>,
    /// Uploads of those jurisdictions scheduled after the event and before
    /// the failover (or D's next event) that were not acknowledged.
    pub failed_before_failover: u64,
    /// Whether the fault breaks its data centre, so that the uploads going
    /// there must fail over (checked); a `slow` one need not: the proxy
    /// may keep it, as its timeouts allow.
    pub must_fail_over: bool,
    pub note: Option<String>,
}

/// One entry per event: `None` for events that put no data centre at fault
/// (`normal`, `undrain`).
pub fn failovers(
    plan: &Plan,
    applied: &[Applied],
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
) -> Vec<Option<Failover>> {
    let events = &plan.chaos;
    events
        .iter()
        .enumerate()
        .map(|(k, event)| {
            let faults = event.action.faults();
            faults.then(|| one(plan, events, applied, k, outcomes, stored_in))
        })
        .collect()
}

/// When event `k` was applied, from the start of the run.
fn applied_at(applied: &[Applied], k: usize) -> Option<Duration> {
    applied
        .get(k)
        .and_then(|a| a.applied_at_s)
        .map(Duration::from_secs_f64)
}

/// The data centre that acknowledged an upload: the response header, else
/// where a sink first recorded it.
fn dc_of<'a>(o: &'a Outcome, stored_in: &'a HashMap<u64, Vec<String>>) -> Option<&'a str> {
    o.datacenter()
        .or_else(|| stored_in.get(&o.index)?.first().map(String::as_str))
}

fn one(
    plan: &Plan,
    events: &[ChaosEvent],
    applied: &[Applied],
    k: usize,
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
) -> Failover {
    let event = &events[k];
    let dc = event.action.datacenter().to_string();
    let mut result = Failover {
        datacenter: dc.clone(),
        jurisdictions: Vec::new(),
        time_to_detect_ms: None,
        time_to_failover_ms: None,
        alternatives: Vec::new(),
        answered_by: None,
        failed_before_failover: 0,
        must_fail_over: event.action.breaks(),
        note: None,
    };
    let Some(t) = applied_at(applied, k) else {
        result.note = Some("the event was not applied".into());
        return result;
    };
    let same_dc = |e: &&ChaosEvent| e.action.datacenter() == dc;
    let start = events[..k]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, e)| same_dc(e))
        .map(|(i, e)| applied_at(applied, i).unwrap_or(e.at))
        .unwrap_or(Duration::ZERO);
    let end = events[k + 1..].iter().find(same_dc).map(|e| e.at);

    let mut going = going_to(outcomes, stored_in, &dc, start, t);
    // Faults struck together are judged together: a data centre that had
    // nothing when it struck was still tested if another one struck at the
    // same moment had uploads it is permitted to take (both CH data centres
    // killed at once: the standby's fault is what leaves CH nowhere to go).
    for (j, other) in events.iter().enumerate() {
        let other_dc = other.action.datacenter();
        if j == k || other.at != event.at || !other.action.breaks() || other_dc == dc {
            continue;
        }
        let other_start = events[..j]
            .iter()
            .enumerate()
            .rev()
            .find(|(_, e)| e.action.datacenter() == other_dc)
            .map(|(i, e)| applied_at(applied, i).unwrap_or(e.at))
            .unwrap_or(Duration::ZERO);
        let other_t = applied_at(applied, j).unwrap_or(other.at);
        going.extend(
            going_to(outcomes, stored_in, other_dc, other_start, other_t)
                .into_iter()
                .filter(|j| permits(plan, *j, &dc)),
        );
    }
    result.jurisdictions = going
        .iter()
        .map(|j| plan.mix[*j].jurisdiction.clone())
        .collect();
    if going.is_empty() {
        result.note = Some(format!(
            "{dc} acknowledged none of the last uploads before the event (since {:.1}s): nothing had to fail over",
            start.as_secs_f64()
        ));
        return result;
    }

    result.alternatives = alternatives(plan, k, end, &dc, &result.jurisdictions);
    let before_end = |f: Duration| end.is_none_or(|e| f < e);
    let relevant = || {
        outcomes
            .iter()
            .filter(|o| o.scheduled >= t && going.contains(&o.jurisdiction))
    };
    let first = relevant()
        .filter(|o| o.acknowledged())
        .filter_map(|o| Some((o.finished()?, dc_of(o, stored_in)?)))
        .filter(|(f, other)| *other != dc && before_end(*f))
        .min_by_key(|(f, _)| *f);
    // Uploads that went elsewhere straight away: no slower than twice the
    // p99 of those jurisdictions' acknowledgements before the event
    // (at least 20 ms). One that waited on D first (and was replayed) is
    // not evidence that the proxy had noticed.
    let mut before: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.acknowledged() && going.contains(&o.jurisdiction))
        .filter(|o| o.scheduled >= start && o.scheduled < t)
        .filter_map(|o| Some(o.finished()?.saturating_sub(o.scheduled)))
        .collect();
    before.sort_unstable();
    // Nearest rank: the smallest value at least 99 % of them do not pass.
    let p99 = before
        .get((before.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let prompt = (p99 * 2).max(Duration::from_millis(20));
    result.time_to_detect_ms = relevant()
        .filter(|o| o.acknowledged())
        .filter(|o| {
            o.finished()
                .is_some_and(|f| before_end(f) && f.saturating_sub(o.scheduled) <= prompt)
                && dc_of(o, stored_in).is_some_and(|other| other != dc)
        })
        .map(|o| o.scheduled)
        .min()
        .map(|s| s.saturating_sub(t).as_secs_f64() * 1000.0);
    let until = first.as_ref().map(|(f, _)| *f).or(end);
    result.failed_before_failover = relevant()
        .filter(|o| !o.acknowledged())
        .filter(|o| until.is_none_or(|u| o.scheduled < u))
        .count() as u64;
    match first {
        Some((finished, other)) => {
            result.time_to_failover_ms = Some(finished.saturating_sub(t).as_secs_f64() * 1000.0);
            result.answered_by = Some(other.to_string());
        }
        None => {
            let until = match end {
                Some(e) => format!(" before {dc}'s next event at {:.1}s", e.as_secs_f64()),
                None => " until the end of the run".into(),
            };
            let elsewhere = if !result.must_fail_over {
                String::from(" (slowed down, not broken: no failover was required)")
            } else if result.alternatives.is_empty() {
                String::from(" (none other is permitted and up)")
            } else {
                format!(
                    ", though {} could take them",
                    result.alternatives.join(", ")
                )
            };
            result.note = Some(format!(
                "no upload of {} was acknowledged by another data centre{until}{elsewhere}",
                result.jurisdictions.join(", ")
            ));
        }
    }
    result
}

/// The jurisdictions (indexes into `Plan::mix`) whose uploads were going to
/// `dc` at `t`: one of each one's last [`RECENT`] acknowledged uploads
/// scheduled in `[start, t)` was `dc`'s. Outcomes are in scheduled order:
/// read backwards from `t`.
fn going_to(
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
    dc: &str,
    start: Duration,
    t: Duration,
) -> BTreeSet<usize> {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    outcomes
        .iter()
        .rev()
        .filter(|o| o.scheduled >= start && o.scheduled < t && o.acknowledged())
        .filter(|o| {
            let n = seen.entry(o.jurisdiction).or_default();
            *n += 1;
            *n <= RECENT
        })
        .filter(|o| dc_of(o, stored_in) == Some(dc))
        .map(|o| o.jurisdiction)
        .collect()
}

/// Whether the policy lets `dc` store the uploads of mix entry `j`.
fn permits(plan: &Plan, j: usize, dc: &str) -> bool {
    let policy = &plan.policy;
    let Some(name) = plan.mix.get(j).map(|m| m.jurisdiction.as_str()) else {
        return false;
    };
    policy
        .jurisdictions
        .iter()
        .position(|x| x.name == name)
        .is_some_and(|i| {
            policy
                .permitted(residency_core::policy::JurisdictionId(i))
                .iter()
                .flat_map(|group| group.datacenters.iter())
                .any(|d| policy.datacenter(*d).name == dc)
        })
}

/// The data centres other than `dc` that the policy permits for one of
/// `jurisdictions` and that the schedule left unbroken from event `k` until
/// `end` (`dc`'s next event; `None`: the end of the run): not broken by the
/// events up to event `k`'s time (those at the same time included), nor by
/// any later one before `end`, nor repaired less than [`Plan::recovery`]
/// before event `k` (the proxy may still be skipping it then).
fn alternatives(
    plan: &Plan,
    k: usize,
    end: Option<Duration>,
    dc: &str,
    jurisdictions: &[String],
) -> Vec<String> {
    let policy = &plan.policy;
    let at = plan.chaos[k].at;
    // Broken at `at`, or made broken again before `end`.
    let broken = |name: &str| {
        let mut state = State::default();
        let mut broken = false;
        // When its mode was last repaired, up to `at`: ejected by the
        // proxy's health checks, it may not be taken back yet.
        let mut repaired = None;
        for e in plan.chaos.iter().filter(|e| e.action.datacenter() == name) {
            if e.at > at && end.is_some_and(|end| e.at >= end) {
                break;
            }
            let mode_broke = state.mode_breaks;
            state.apply(&e.action);
            broken |= e.at > at && state.broken();
            if e.at <= at {
                if mode_broke && !state.mode_breaks {
                    repaired = Some(e.at);
                }
                broken = state.broken();
            }
        }
        broken || repaired.is_some_and(|r| at < r.saturating_add(plan.recovery))
    };
    let mut names: Vec<String> = policy
        .jurisdictions
        .iter()
        .enumerate()
        .filter(|(_, j)| jurisdictions.contains(&j.name))
        .flat_map(|(j, _)| policy.permitted(residency_core::policy::JurisdictionId(j)))
        .flat_map(|group| group.datacenters.iter())
        .map(|d| policy.datacenter(*d).name.as_str())
        .filter(|name| *name != dc && !broken(name))
        .map(String::from)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// What the schedule has done to one data centre so far: its sink's mode
/// and its drain are separate, and either puts it at fault (an `undrain`
/// does not repair a data centre that still refuses; `normal` repairs a
/// slowed one too).
#[derive(Default)]
struct State {
    mode_breaks: bool,
    /// The mode breaks or slows it (`slow`).
    mode_faults: bool,
    drained: bool,
}

impl State {
    fn apply(&mut self, action: &ChaosAction) {
        match action {
            ChaosAction::Mode { .. } => {
                self.mode_breaks = action.breaks();
                self.mode_faults = action.faults();
            }
            ChaosAction::Drain { .. } => self.drained = true,
            ChaosAction::Undrain { .. } => self.drained = false,
        }
    }

    /// It cannot take uploads (a slowed one still can: it stays an
    /// alternative for another's fault).
    fn broken(&self) -> bool {
        self.mode_breaks || self.drained
    }

    /// It is at fault, slowed included: what a repair ends.
    fn at_fault(&self) -> bool {
        self.mode_faults || self.drained
    }
}

/// A repaired data centre getting uploads again.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub datacenter: String,
    /// From the event to the completion of the first upload D acknowledged
    /// that was scheduled at or after it; `None`: none before D's next event.
    pub time_to_recover_ms: Option<f64>,
    pub note: Option<String>,
}

/// One entry per event: `Some` for events that repair a data centre the
/// events applied before had broken (`normal` after `refuse`/`hang`/`error`,
/// `undrain` after `drain`, unless the other still holds: an `undrain` of a
/// data centre that refuses repairs nothing). An event that was not applied
/// changed nothing: a repair that failed is no recovery, and the next one
/// that succeeded is (it was taken as repairing nothing, and its recovery
/// went unmeasured).
pub fn recoveries(
    events: &[ChaosEvent],
    applied: &[Applied],
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
) -> Vec<Option<Recovery>> {
    let took = |k: usize| applied.get(k).is_some_and(|a| a.ok);
    let mut states: HashMap<&str, State> = HashMap::new();
    events
        .iter()
        .enumerate()
        .map(|(k, event)| {
            let dc = event.action.datacenter();
            if !took(k) {
                return None;
            }
            let state = states.entry(dc).or_default();
            // At fault before the event, and not after it.
            let before = state.at_fault();
            state.apply(&event.action);
            (before && !state.at_fault()).then(|| recovery(events, applied, k, outcomes, stored_in))
        })
        .collect()
}

fn recovery(
    events: &[ChaosEvent],
    applied: &[Applied],
    k: usize,
    outcomes: &[Outcome],
    stored_in: &HashMap<u64, Vec<String>>,
) -> Recovery {
    let dc = events[k].action.datacenter().to_string();
    let mut result = Recovery {
        datacenter: dc.clone(),
        time_to_recover_ms: None,
        note: None,
    };
    let Some(t) = applied_at(applied, k) else {
        result.note = Some("the event was not applied".into());
        return result;
    };
    let end = events[k + 1..]
        .iter()
        .find(|e| e.action.datacenter() == dc)
        .map(|e| e.at);
    let first = outcomes
        .iter()
        .filter(|o| o.scheduled >= t && o.acknowledged())
        .filter(|o| dc_of(o, stored_in) == Some(dc.as_str()))
        .filter_map(|o| o.finished())
        .filter(|f| end.is_none_or(|e| *f < e))
        .min();
    match first {
        Some(f) => result.time_to_recover_ms = Some(f.saturating_sub(t).as_secs_f64() * 1000.0),
        None => result.note = Some(format!("{dc} acknowledged nothing after the event")),
    }
    result
}
