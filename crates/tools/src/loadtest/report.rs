//! The [`Report`] of a run: counts, reconciliation, chaos and failover,
//! and latency from HDR histograms (microseconds, 3 significant figures)
//! per phase and per jurisdiction. [`Report::render_text`] (in `render.rs`)
//! prints it for people; `serde` for machines.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::chaos::Applied;
use super::failover::{failovers, recoveries, Failover, Recovery};
use super::generator::{Generated, Outcome, Sent};
use super::plan::Plan;
use super::reconcile::{Reconciled, Violation};
use super::spec::Convey;
use super::upload::RunId;

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Upload ids are `lt-{run_id}-{index}`.
    pub run_id: String,
    /// The run's seed (upload bodies and ids derive from it), in hex.
    pub seed: String,
    /// SHA-256 of the routing policy the run checked against, as the
    /// proxy exports it (`residency_policy_info{hash}`, receipts'
    /// `policy_sha256`): with `--config`'s tenant pins (the policy alone
    /// when the plan has no configuration's, [`Plan::routing_hash`]).
    pub policy_sha256: String,
    /// The version of the tool that ran it, and the commit it was built
    /// from when known (`RESIDENCY_PROXY_COMMIT` at build time).
    pub version: String,
    pub target: String,
    pub convey: Convey,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub body_size: usize,
    /// From the start of the run to the end of the drain.
    pub elapsed_s: f64,
    /// When the run was interrupted (Ctrl-C), from its start: no upload
    /// was sent after; the run fails.
    pub interrupted_at_s: Option<f64>,
    pub scheduled: u64,
    pub sent: u64,
    /// 2xx, response read.
    pub acknowledged: u64,
    /// Sent but not acknowledged: non-2xx, transport errors, timeouts,
    /// unfinished at the drain timeout. `sent == acknowledged + failed`.
    pub failed: u64,
    pub not_sent_overload: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub failed_by_reason: BTreeMap<String, u64>,
    /// The first error message seen for each transport-failure reason.
    pub failure_examples: BTreeMap<String, String>,
    /// From the `Residency-Datacenter` header of acknowledged uploads.
    pub acknowledged_by_datacenter: BTreeMap<String, u64>,
    /// From the sinks' records of this run.
    pub stored_by_datacenter: BTreeMap<String, u64>,
    /// Must be 0 (or within its objective); `None` (JSON `null`): not
    /// checked, the sinks' records could not be read.
    pub residency_violations: Option<u64>,
    pub violation_samples: Vec<Violation>,
    /// Must be 0 (or within its objective); `None`: not checked.
    pub acknowledged_missing: Option<u64>,
    pub missing_samples: Vec<String>,
    /// These five, too: `None` when not checked.
    pub duplicates: Option<u64>,
    pub checksum_mismatches: Option<u64>,
    pub stored_not_acknowledged: Option<u64>,
    pub jurisdiction_mismatches: Option<u64>,
    pub unknown_uploads: Option<u64>,
    /// Set when the sinks' records could not be read: nothing was verified.
    pub reconcile_error: Option<String>,
    pub chaos: Vec<ChaosReport>,
    /// Actions that set data centres back to normal after the run.
    pub restored: Vec<Applied>,
    /// Every outcome (2xx, error, timeout), from its scheduled time.
    pub latency: LatencySummary,
    pub phases: Vec<PhaseReport>,
    pub jurisdictions: BTreeMap<String, JurisdictionReport>,
    /// Things that make the run weaker evidence without failing it (nothing
    /// acknowledged, overload, chaos not applied, …).
    pub warnings: Vec<String>,
    /// Outcomes over time, for charts.
    pub timeline: Timeline,
    /// What the proxy's transparency log proved (with `Plan::log`).
    pub residency_log: Option<super::logcheck::LogReport>,
    /// The service-level objectives checked (`--slo`; by default: no
    /// violation, nothing missing, every fault exercised), set by
    /// [`Report::apply_slo`].
    pub slo: Vec<SloCheck>,
}

/// One objective checked against a run (see [`super::slo`]).
#[derive(Debug, Clone, Serialize)]
pub struct SloCheck {
    pub name: String,
    /// The threshold, as written.
    pub threshold: String,
    /// What the run measured.
    pub measured: String,
    pub passed: bool,
}

/// How long one step of [`Timeline`] is.
pub const TIMELINE_STEP: Duration = Duration::from_millis(250);

/// What happened over the run, step by step ([`TIMELINE_STEP`]), each
/// upload counted in the step it was scheduled in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    pub step_ms: u64,
    /// Per jurisdiction: per step, the uploads by outcome.
    pub jurisdictions: BTreeMap<String, Vec<StepCounts>>,
    /// Per step: latency of the uploads that finished (from their
    /// scheduled time), `None` where none did.
    pub latency: Vec<Option<StepLatency>>,
}

/// Uploads of one step by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepCounts {
    /// 2xx.
    pub acknowledged: u32,
    /// 503 (refused: nothing permitted up, or the log unavailable).
    pub unavailable: u32,
    /// Any other answer (4xx, 5xx).
    pub error: u32,
    /// No answer: transport error, timeout, unfinished, or not sent.
    pub no_answer: u32,
}

/// Latency percentiles of one step, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The timeline of `outcomes` over `duration`.
fn timeline(plan: &Plan, outcomes: &[Outcome], end: Duration) -> Timeline {
    let step = TIMELINE_STEP.as_micros().max(1);
    let steps = plan.duration.as_micros().div_ceil(step).max(1) as usize;
    let mut counts: Vec<Vec<StepCounts>> = plan
        .mix
        .iter()
        .map(|_| vec![StepCounts::default(); steps])
        .collect();
    let mut micros: Vec<Vec<u64>> = vec![Vec::new(); steps];
    for o in outcomes {
        let i = ((o.scheduled.as_micros() / step) as usize).min(steps - 1);
        let Some(c) = counts.get_mut(o.jurisdiction).map(|c| &mut c[i]) else {
            continue;
        };
        if let Some(waited) = waited(o, end) {
            micros[i].push(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
        }
        match &o.result {
            Sent::Done { answer, .. } => match (answer.failure.is_none(), answer.status) {
                (true, _) => c.acknowledged += 1,
                (false, Some(503)) => c.unavailable += 1,
                (false, Some(_)) => c.error += 1,
                (false, None) => c.no_answer += 1,
            },
            Sent::NotSent | Sent::Unfinished => c.no_answer += 1,
        }
    }
    let latency = micros
        .into_iter()
        .map(|mut v| {
            if v.is_empty() {
                return None;
            }
            v.sort_unstable();
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
            Some(StepLatency {
                p50_ms: at(0.5),
                p99_ms: at(0.99),
                max_ms: at(1.0),
            })
        })
        .collect();
    Timeline {
        step_ms: TIMELINE_STEP.as_millis() as u64,
        jurisdictions: plan
            .mix
            .iter()
            .map(|m| m.jurisdiction.clone())
            .zip(counts)
            .collect(),
        latency,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    #[serde(flatten)]
    pub applied: Applied,
    /// For events that break a data centre.
    pub failover: Option<Failover>,
    /// For events that repair one.
    pub recovery: Option<Recovery>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub scheduled: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub not_sent_overload: u64,
}

/// Phase `n` runs from the `n`th chaos event to the next (phase 0 from the
/// start); uploads belong to the phase they were scheduled in.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub index: usize,
    pub start_s: f64,
    pub end_s: f64,
    /// The chaos event that began it (`None` for phase 0).
    pub started_by: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct JurisdictionReport {
    pub weight: u32,
    pub origins: Vec<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub latency: LatencySummary,
    /// Its uploads scheduled while a fault that struck it (one whose
    /// failover names it) was in force, from the fault to its data centre's
    /// repair: what `min_availability` is measured over.
    pub during_faults: Counts,
}

impl Report {
    /// Every check of the run, named, with why it failed (`None`: it
    /// passed): the verdict, the text and HTML reports' problems and the
    /// JUnit test cases all come from here, so they cannot disagree.
    pub fn checks(&self) -> Vec<(String, Option<String>)> {
        // Violations and missing uploads are judged by their objectives
        // (0 unless an SLO file says otherwise).
        // Not counted (the sinks could not be read): not met, whatever
        // the objective.
        let judged = |name: &str, measured: Option<u64>, what: &str| match measured {
            None => Some(format!(
                "{what} not checked: could not reconcile with the sinks"
            )),
            Some(n) => (!self
                .slo
                .iter()
                .find(|c| c.name == name)
                .map_or(n == 0, |c| c.passed))
            .then(|| format!("{n} {what}{}", self.objective(name))),
        };
        let mut cases: Vec<(String, Option<String>)> = vec![
            (
                "no residency violations".into(),
                judged(
                    "residency violations",
                    self.residency_violations,
                    "residency violation(s)",
                ),
            ),
            (
                "no acknowledged upload missing".into(),
                judged(
                    "acknowledged uploads missing",
                    self.acknowledged_missing,
                    "acknowledged upload(s) missing from the sinks",
                ),
            ),
            (
                "reconciled with the sinks".into(),
                self.reconcile_error
                    .as_ref()
                    .map(|e| format!("could not reconcile with the sinks: {e}")),
            ),
            (
                "ran to the end".into(),
                self.interrupted_at_s.map(|at| {
                    format!(
                        "interrupted at {at:.1} s (the schedule: {:.0} s): what was sent by then is counted and reconciled, late stores not waited for",
                        self.duration_s
                    )
                }),
            ),
            (
                "something acknowledged to check".into(),
                (self.acknowledged == 0).then(|| {
                    "no upload was acknowledged: the residency checks had nothing to check".into()
                }),
            ),
        ];
        if let Some(log) = &self.residency_log {
            let problems = log.problems();
            cases.push((
                "residency proven by the transparency log".into(),
                (!problems.is_empty()).then(|| problems.join("; ")),
            ));
        }
        for c in self.slo.iter().filter(|c| {
            c.name != "residency violations" && c.name != "acknowledged uploads missing"
        }) {
            cases.push((
                format!("objective: {} ({})", c.name, c.threshold),
                (!c.passed)
                    .then(|| format!("SLO {}: {} (objective {})", c.name, c.measured, c.threshold)),
            ));
        }
        // A fault that was not applied was not tested; one not undone
        // leaves the data centres as it made them.
        for (what, a) in self
            .chaos
            .iter()
            .map(|c| ("applied", &c.applied))
            .chain(self.restored.iter().map(|a| ("restored", a)))
        {
            cases.push((
                format!("chaos {} {what}", a.event),
                (!a.ok).then(|| {
                    format!(
                        "chaos {} was not {what}: {}",
                        a.event,
                        a.detail.as_deref().unwrap_or("unknown error")
                    )
                }),
            ));
        }
        cases
    }

    /// ` (objective ≤ N)` when objective `name` allows more than 0.
    fn objective(&self, name: &str) -> String {
        self.slo
            .iter()
            .find(|c| c.name == name && c.threshold != "≤ 0")
            .map_or_else(String::new, |c| format!(" (objective {})", c.threshold))
    }

    /// The verdict in one line, as every report states it (text, HTML
    /// heading, JUnit property, JSON): PASS or FAIL with the counts
    /// measured — and the objective they were held to when it allows more
    /// than 0, so that a PASS with violations does not read as a clean one.
    pub fn verdict(&self) -> String {
        let word = if self.passed() { "PASS" } else { "FAIL" };
        if self.reconcile_error.is_some() {
            // Nothing was counted: 0 would be a claim.
            return format!("{word}: residency not checked (could not reconcile with the sinks)");
        }
        format!(
            "{word}: {} residency violation(s){}, {} acknowledged upload(s) missing{}",
            self.residency_violations.unwrap_or_default(),
            self.objective("residency violations"),
            self.acknowledged_missing.unwrap_or_default(),
            self.objective("acknowledged uploads missing")
        )
    }

    /// Why the run failed its checks (empty: passed).
    pub fn problems(&self) -> Vec<String> {
        self.checks()
            .into_iter()
            .filter_map(|(_, why)| why)
            .collect()
    }

    pub fn passed(&self) -> bool {
        self.problems().is_empty()
    }

    /// The report as JSON: every field, with the verdict ([`Report::passed`],
    /// [`Report::verdict`]) as the other reports state it.
    pub fn render_json(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct WithVerdict<'a> {
            passed: bool,
            verdict: String,
            #[serde(flatten)]
            report: &'a Report,
        }
        serde_json::to_vec_pretty(&WithVerdict {
            passed: self.passed(),
            verdict: self.verdict(),
            report: self,
        })
    }

    /// Writes the report as JSON, HTML and JUnit XML to the files given.
    /// One that cannot be written does not keep the others from being
    /// written (the run cannot be repeated for them); the error names each
    /// that failed, by its flag.
    pub fn write_files(
        &self,
        json: Option<&std::path::Path>,
        html: Option<&std::path::Path>,
        junit: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let outputs = [
            (
                "--json",
                json,
                self.render_json().map_err(std::io::Error::from),
            ),
            ("--html", html, Ok(self.render_html().into_bytes())),
            ("--junit", junit, Ok(self.render_junit().into_bytes())),
        ];
        let mut failed = Vec::new();
        for (flag, path, bytes) in outputs {
            let Some(path) = path else { continue };
            if let Err(e) = bytes.and_then(|bytes| std::fs::write(path, bytes)) {
                failed.push(format!("{flag} {}: {e}", path.display()));
            }
        }
        if !failed.is_empty() {
            anyhow::bail!("could not write {}", failed.join("; "));
        }
        Ok(())
    }
}

/// How long an upload waited, from its scheduled time: until its outcome
/// was known; one still running when the run ended (`end`) waited at least
/// until then, and counts so (leaving the slowest out of the percentiles
/// would flatter them). One never sent (the in-flight cap) has none.
fn waited(o: &Outcome, end: Duration) -> Option<Duration> {
    match &o.result {
        Sent::Done { finished, .. } => Some(finished.saturating_sub(o.scheduled)),
        Sent::Unfinished => Some(end.saturating_sub(o.scheduled)),
        Sent::NotSent => None,
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant figures: constant, valid bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn summary(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p99_9_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// One histogram and its counts.
struct Bucket {
    counts: Counts,
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            counts: Counts::default(),
            latency: histogram(),
        }
    }

    /// `end`: when the run stopped waiting for uploads.
    fn add(&mut self, o: &Outcome, end: Duration) {
        self.counts.add(o);
        if let Some(waited) = waited(o, end) {
            let us = waited.as_micros();
            self.latency
                .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
        }
    }
}

impl Counts {
    fn add(&mut self, o: &Outcome) {
        self.scheduled += 1;
        match &o.result {
            Sent::NotSent => self.not_sent_overload += 1,
            Sent::Unfinished => {
                self.sent += 1;
                self.failed += 1;
            }
            Sent::Done { .. } => {
                self.sent += 1;
                if o.acknowledged() {
                    self.acknowledged += 1;
                } else {
                    self.failed += 1;
                }
            }
        }
    }
}

/// Puts a run's pieces together.
pub fn build(
    plan: &Plan,
    run: &RunId,
    generated: &Generated,
    applied: Vec<Applied>,
    restored: Vec<Applied>,
    reconciled: Result<Reconciled, String>,
) -> Report {
    let outcomes = &generated.outcomes;
    let (reconciled, reconcile_error) = match reconciled {
        Ok(r) => (r, None),
        Err(e) => (Reconciled::default(), Some(e)),
    };
    let boundaries: Vec<Duration> = plan.chaos.iter().map(|e| e.at).collect();
    let mut total = Bucket::new();
    let mut phases: Vec<Bucket> = (0..=boundaries.len()).map(|_| Bucket::new()).collect();
    let mut by_j: Vec<Bucket> = plan.mix.iter().map(|_| Bucket::new()).collect();
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut failed_by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut failure_examples: BTreeMap<String, String> = BTreeMap::new();
    let mut acknowledged_by_datacenter: BTreeMap<String, u64> = BTreeMap::new();
    let end = generated.elapsed;
    for o in outcomes {
        total.add(o, end);
        phases[boundaries.partition_point(|b| *b <= o.scheduled)].add(o, end);
        if let Some(b) = by_j.get_mut(o.jurisdiction) {
            b.add(o, end);
        }
        match &o.result {
            Sent::NotSent => {}
            Sent::Unfinished => *failed_by_reason.entry("unfinished".into()).or_default() += 1,
            Sent::Done { answer, .. } => {
                if let Some(s) = answer.status {
                    *by_status.entry(s).or_default() += 1;
                }
                match &answer.failure {
                    Some(reason) => {
                        *failed_by_reason.entry(reason.clone()).or_default() += 1;
                        if let Some(detail) = &answer.detail {
                            failure_examples
                                .entry(reason.clone())
                                .or_insert_with(|| detail.clone());
                        }
                    }
                    None => {
                        let dc = answer.datacenter.as_deref().unwrap_or("(no header)");
                        *acknowledged_by_datacenter
                            .entry(dc.to_string())
                            .or_default() += 1;
                    }
                }
            }
        }
    }
    let fo = failovers(plan, &applied, outcomes, &reconciled.stored_in);
    let rec = recoveries(&plan.chaos, &applied, outcomes, &reconciled.stored_in);
    let chaos = applied
        .into_iter()
        .zip(fo.into_iter().chain(std::iter::repeat(None)))
        .zip(rec.into_iter().chain(std::iter::repeat(None)))
        .map(|((applied, failover), recovery)| ChaosReport {
            applied,
            failover,
            recovery,
        })
        .collect();
    let phases = phases
        .iter()
        .enumerate()
        .map(|(i, b)| PhaseReport {
            index: i,
            start_s: if i == 0 {
                0.0
            } else {
                boundaries[i - 1].as_secs_f64()
            },
            end_s: boundaries
                .get(i)
                .copied()
                .unwrap_or(plan.duration)
                .as_secs_f64(),
            started_by: (i > 0).then(|| plan.chaos[i - 1].to_string()),
            counts: b.counts,
            latency: summary(&b.latency),
        })
        .collect();
    let jurisdictions = plan
        .mix
        .iter()
        .zip(&by_j)
        .map(|(m, b)| {
            let origins = plan
                .origins
                .get(&m.jurisdiction)
                .map(|l| l.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            let report = JurisdictionReport {
                weight: m.weight,
                origins,
                counts: b.counts,
                latency: summary(&b.latency),
                during_faults: Counts::default(),
            };
            (m.jurisdiction.clone(), report)
        })
        .collect();
    let c = total.counts;
    // Counted from the sinks' records: none when they could not be read.
    let checked = |n: u64| reconcile_error.is_none().then_some(n);
    let mut report = Report {
        run_id: run.id.clone(),
        seed: format!("{:016x}", run.seed),
        policy_sha256: plan
            .routing_hash
            .clone()
            .unwrap_or_else(|| plan.policy.hash()),
        version: crate::VERSION.to_string(),
        target: plan.target.to_string(),
        convey: plan.convey,
        rate_per_s: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        body_size: plan.body_size,
        elapsed_s: generated.elapsed.as_secs_f64(),
        interrupted_at_s: generated.interrupted_at.map(|d| d.as_secs_f64()),
        scheduled: c.scheduled,
        sent: c.sent,
        acknowledged: c.acknowledged,
        failed: c.failed,
        not_sent_overload: c.not_sent_overload,
        by_status,
        failed_by_reason,
        failure_examples,
        acknowledged_by_datacenter,
        stored_by_datacenter: reconciled.stored_by_datacenter,
        residency_violations: checked(reconciled.violations),
        violation_samples: reconciled.violation_samples,
        acknowledged_missing: checked(reconciled.acknowledged_missing),
        missing_samples: reconciled.missing_samples,
        duplicates: checked(reconciled.duplicates),
        checksum_mismatches: checked(reconciled.checksum_mismatches),
        stored_not_acknowledged: checked(reconciled.stored_not_acknowledged),
        jurisdiction_mismatches: checked(reconciled.jurisdiction_mismatches),
        unknown_uploads: checked(reconciled.unknown_uploads),
        reconcile_error,
        chaos,
        restored,
        latency: summary(&total.latency),
        phases,
        jurisdictions,
        warnings: Vec::new(),
        timeline: timeline(plan, outcomes, generated.elapsed),
        residency_log: None,
        slo: Vec::new(),
    };
    during_faults(&mut report, plan, outcomes);
    report.warnings = warnings(&report, plan);
    report
}

/// Counts each jurisdiction's uploads scheduled in the window of a fault
/// that struck it, each by its own scheduled time. (Not by the
/// [`Timeline`]'s steps, each in or out by its midpoint: that dropped up to
/// half a step at each end of a fault — at its start, the uploads that
/// failed before the proxy noticed — and all of a shorter fault.)
fn during_faults(report: &mut Report, plan: &Plan, outcomes: &[Outcome]) {
    let windows = report.fault_windows();
    for o in outcomes {
        let Some(name) = plan.mix.get(o.jurisdiction).map(|m| &m.jurisdiction) else {
            continue;
        };
        let t = o.scheduled.as_secs_f64();
        let struck = windows
            .iter()
            .any(|(start, end, js)| (*start..*end).contains(&t) && js.contains(name));
        if let Some(j) = report.jurisdictions.get_mut(name).filter(|_| struck) {
            j.during_faults.add(o);
        }
    }
}

fn warnings(r: &Report, plan: &Plan) -> Vec<String> {
    let mut w = Vec::new();
    if r.not_sent_overload > 0 {
        w.push(format!(
            "{} upload(s) not sent: {} were already in flight (the target, or this generator, could not keep up with {}/s)",
            r.not_sent_overload, plan.max_in_flight, plan.rate
        ));
    }
    if let Some(n) = r.failed_by_reason.get("unfinished") {
        w.push(match r.interrupted_at_s {
            Some(_) => format!("{n} upload(s) still in flight when the run was interrupted"),
            None => format!(
                "{n} upload(s) still in flight at the drain timeout ({:?})",
                plan.drain_timeout
            ),
        });
    }
    if let Some(n) = r.jurisdiction_mismatches.filter(|&n| n > 0) {
        w.push(format!(
            "{n} record(s) name another jurisdiction than the upload was sent for: check the --origin addresses against the proxy's GeoIP database"
        ));
    }
    // Each --origin address is one client to the proxy, whose per-client
    // limits are sized for one device, not a population.
    if let Some(n) = r.failed_by_reason.get("429 too_many_requests") {
        w.push(format!(
            "{n} upload(s) got 429 too_many_requests: each --origin address is one client to the proxy, which lets one client have limits.max_requests_per_client uploads in flight; give more --origin addresses, or set the limit to 0 on the proxy under test"
        ));
    }
    let cut: u64 = ["tls_error", "connection_closed", "connection_reset"]
        .iter()
        .filter_map(|reason| r.failed_by_reason.get(*reason))
        .sum();
    if cut > 0 && plan.convey == super::spec::Convey::ProxyV2 {
        w.push(format!(
            "{cut} upload(s) lost their connection before an answer: over PROXY v2 each --origin address is one client to the proxy, which closes its connections past limits.max_connections_per_client before TLS (counted in residency_connections_rejected_total{{reason=\"client_connection_limit\"}}); if that is the cause, give more --origin addresses, or set the limit to 0 on the proxy under test"
        ));
    }
    // What the schedule did not cause: no objective covers it (availability
    // is measured during faults), but it is not a clean run either.
    let outside: u64 = r
        .jurisdictions
        .values()
        .map(|j| {
            let sent = j.counts.sent.saturating_sub(j.during_faults.sent);
            let acked = j
                .counts
                .acknowledged
                .saturating_sub(j.during_faults.acknowledged);
            sent.saturating_sub(acked)
        })
        .sum();
    if outside > 0 {
        w.push(format!(
            "{outside} upload(s) sent outside every scheduled fault that struck their jurisdiction were not acknowledged: something the schedule did not cause failed, or the proxy had not yet taken back a data centre just repaired (see failed by reason)"
        ));
    }
    if let Some(n) = r.stored_not_acknowledged.filter(|&n| n > 0) {
        w.push(format!(
            "{n} upload(s) stored but not acknowledged: their clients got no success (and no receipt) for data the data centres hold; a retry without an Idempotency-Key stores it twice"
        ));
    }
    w
}
