//! Service-level objectives for a run (`--slo FILE`, TOML): thresholds the
//! report is checked against. Each becomes an [`SloCheck`] in the report —
//! the threshold, what was measured, whether it held — and a failed check
//! fails the run (exit status 1).
//!
//! ```toml
//! max_residency_violations = 0      # the default
//! max_acknowledged_missing = 0      # the default
//! max_time_to_detect_ms = 1500      # each fault: routed elsewhere after
//! max_time_to_failover_ms = 2000    # each fault: first acknowledged elsewhere after
//! max_time_to_recover_ms = 1000     # each repair: acknowledging again after
//! min_availability = 0.5            # per jurisdiction, acknowledged / scheduled during the faults that struck it
//! max_p99_ms = 3000                 # each phase
//! allow_not_exercised = false       # the default: a fault nothing had to fail over from fails
//! ```
//!
//! Without a file the defaults apply: no violation, nothing acknowledged
//! missing, every fault exercised, and every fault failed over when the
//! policy permitted another data centre that the schedule left unbroken
//! meanwhile (with nowhere else to go, no failover is what the proxy must
//! do). A fault is *not exercised* when no
//! upload was going to its data centre when it struck (a drain of a data
//! centre already ejected, say): it tested nothing, and saying PASS for it
//! would be a claim the run cannot back.

pub use super::objectives::{parse_arg, Slo};

use super::report::{Report, SloCheck};

impl Report {
    /// Checks the run against `slo` (replacing the objectives checked so
    /// far; a run is checked against the defaults when it is built).
    pub fn apply_slo(&mut self, slo: &Slo) {
        self.slo = check(self, slo);
    }
}

/// Checks `report` against `slo`.
pub fn check(report: &Report, slo: &Slo) -> Vec<SloCheck> {
    let mut out = Vec::new();
    let mut push = |name: String, threshold: String, measured: String, passed: bool| {
        out.push(SloCheck {
            name,
            threshold,
            measured,
            passed,
        })
    };
    // Not counted (the sinks could not be read): not met.
    let count = |n: Option<u64>| n.map_or_else(|| "not checked".to_string(), |n| n.to_string());
    push(
        "residency violations".into(),
        format!("≤ {}", slo.max_residency_violations),
        count(report.residency_violations),
        report
            .residency_violations
            .is_some_and(|n| n <= slo.max_residency_violations),
    );
    push(
        "acknowledged uploads missing".into(),
        format!("≤ {}", slo.max_acknowledged_missing),
        count(report.acknowledged_missing),
        report
            .acknowledged_missing
            .is_some_and(|n| n <= slo.max_acknowledged_missing),
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "none".to_string(), |v| format!("{v:.0} ms"));
    for c in &report.chaos {
        let event = &c.applied.event;
        // A slowed data centre need not fail over: its span counts for
        // availability only.
        if let Some(f) = c.failover.as_ref().filter(|f| f.must_fail_over) {
            // Listed whether met or not: every report lists the same
            // checks.
            let exercised = !f.jurisdictions.is_empty();
            push(
                format!("{event}: exercised"),
                if slo.allow_not_exercised {
                    "allowed not to be".into()
                } else {
                    "uploads going to the data centre when it struck".into()
                },
                if exercised {
                    format!("exercised ({})", f.jurisdictions.join(", "))
                } else {
                    format!(
                        "not exercised: {}",
                        f.note.as_deref().unwrap_or("nothing to fail over")
                    )
                },
                exercised || slo.allow_not_exercised,
            );
            if !exercised {
                continue;
            }
            if !f.alternatives.is_empty() {
                push(
                    format!("{event}: failed over"),
                    format!("to {}", f.alternatives.join(" or ")),
                    match (&f.answered_by, f.time_to_failover_ms) {
                        (Some(by), Some(ms)) => format!("to {by} after {ms:.0} ms"),
                        _ => "no failover".into(),
                    },
                    f.time_to_failover_ms.is_some(),
                );
            }
            // Nowhere else to go: no failover is no failure, and it has
            // no times to hold to a limit.
            let nowhere = f.time_to_failover_ms.is_none() && f.alternatives.is_empty();
            for (what, limit, value) in [
                (
                    "time to detect",
                    slo.max_time_to_detect_ms,
                    f.time_to_detect_ms,
                ),
                (
                    "time to failover",
                    slo.max_time_to_failover_ms,
                    f.time_to_failover_ms,
                ),
            ] {
                if let Some(limit) = limit.filter(|_| !nowhere) {
                    push(
                        format!("{event}: {what}"),
                        format!("≤ {limit:.0} ms"),
                        ms(value),
                        value.is_some_and(|v| v <= limit),
                    );
                }
            }
        }
        if let (Some(r), Some(limit)) = (&c.recovery, slo.max_time_to_recover_ms) {
            push(
                format!("{event}: time to recover"),
                format!("≤ {limit:.0} ms"),
                ms(r.time_to_recover_ms),
                r.time_to_recover_ms.is_some_and(|v| v <= limit),
            );
        }
    }
    if let Some(min) = slo.min_availability {
        // Each upload by its own scheduled time, against the faults that
        // struck its jurisdiction (counted when the report was built).
        for (j, r) in &report.jurisdictions {
            let (acked, all) = (r.during_faults.acknowledged, r.during_faults.scheduled);
            let measured = (all > 0).then(|| acked as f64 / all as f64);
            push(
                format!("{j}: availability during faults"),
                format!("≥ {min:.3}"),
                measured.map_or_else(
                    || "no upload during a fault that struck it".into(),
                    |a| format!("{a:.3} ({acked} of {all})"),
                ),
                measured.is_none_or(|a| a >= min),
            );
        }
    }
    if let Some(limit) = slo.max_p99_ms {
        for p in &report.phases {
            let p99 = p.latency.p99_us as f64 / 1000.0;
            push(
                format!(
                    "phase {} ({}): p99",
                    p.index,
                    p.started_by.as_deref().unwrap_or("start")
                ),
                format!("≤ {limit:.0} ms"),
                format!("{p99:.1} ms"),
                p99 <= limit,
            );
        }
    }
    out
}
