//! The human-readable summary of a [`Report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::{Counts, LatencySummary, Report};

impl Report {
    /// A summary for people: totals, the residency checks, chaos and
    /// failover, and latency per phase and per jurisdiction.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        let _ = writeln!(
            o,
            "loadtest {} -> {} (convey {})",
            self.run_id, self.target, self.convey
        );
        let _ = writeln!(
            o,
            "schedule: {}/s for {}s = {} uploads of {} bytes; run took {:.1}s",
            self.rate_per_s, self.duration_s, self.scheduled, self.body_size, self.elapsed_s
        );
        let _ = writeln!(
            o,
            "seed {}, policy sha256 {}, residency-proxy {}",
            self.seed, self.policy_sha256, self.version
        );
        let _ = writeln!(
            o,
            "sent {}  acknowledged {}  failed {}  not sent (overload) {}",
            self.sent, self.acknowledged, self.failed, self.not_sent_overload
        );
        let statuses: BTreeMap<String, u64> = self
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        line(o, "by status", &statuses);
        line(o, "failed by reason", &self.failed_by_reason);
        for (reason, example) in &self.failure_examples {
            let _ = writeln!(o, "  {reason}, e.g.: {example}");
        }
        line(
            o,
            "acknowledged by data centre (header)",
            &self.acknowledged_by_datacenter,
        );
        line(
            o,
            "stored by data centre (sink records)",
            &self.stored_by_datacenter,
        );
        let _ = writeln!(o);
        if let Some(e) = &self.reconcile_error {
            let _ = writeln!(o, "RECONCILIATION FAILED: {e}");
        }
        let count = |n: Option<u64>| n.map_or_else(|| "not checked".to_string(), |n| n.to_string());
        let _ = writeln!(
            o,
            "residency violations:       {}",
            count(self.residency_violations)
        );
        for v in &self.violation_samples {
            let _ = writeln!(
                o,
                "  {} from {} stored in {} ({})",
                v.upload_id,
                v.origin_jurisdiction,
                v.datacenter,
                v.datacenter_jurisdiction
                    .as_deref()
                    .unwrap_or("not in the policy")
            );
        }
        let _ = writeln!(
            o,
            "acknowledged but missing:   {}",
            count(self.acknowledged_missing)
        );
        for id in &self.missing_samples {
            let _ = writeln!(o, "  {id}");
        }
        let _ = writeln!(
            o,
            "duplicates {}  checksum mismatches {}  stored but not acknowledged {}  jurisdiction mismatches {}  unknown ids {}",
            count(self.duplicates),
            count(self.checksum_mismatches),
            count(self.stored_not_acknowledged),
            count(self.jurisdiction_mismatches),
            count(self.unknown_uploads)
        );
        if !self.chaos.is_empty() {
            let _ = writeln!(o, "\nchaos:");
        }
        for c in &self.chaos {
            let a = &c.applied;
            let when = match a.applied_at_s {
                Some(t) => format!("applied at {t:.2}s"),
                None => format!(
                    "NOT APPLIED: {}",
                    a.detail.as_deref().unwrap_or("unknown error")
                ),
            };
            let _ = writeln!(o, "  {:<24} {when}", a.event);
            if let Some(f) = &c.failover {
                let text = match (f.time_to_failover_ms, &f.answered_by) {
                    (Some(ms), Some(by)) => format!(
                        "failover of {} to {by}: {}, first acknowledged after {ms:.1} ms ({} failed before)",
                        f.jurisdictions.join(", "),
                        match f.time_to_detect_ms {
                            Some(detect) => format!("routed elsewhere after {detect:.1} ms"),
                            None => "none routed elsewhere promptly".into(),
                        },
                        f.failed_before_failover
                    ),
                    _ => format!(
                        "failover: none ({})",
                        f.note.as_deref().unwrap_or("not observed")
                    ),
                };
                let _ = writeln!(o, "  {:<24} {text}", "");
            }
            if let Some(r) = &c.recovery {
                let text = match r.time_to_recover_ms {
                    Some(ms) => format!("{} acknowledging again after {ms:.1} ms", r.datacenter),
                    None => format!(
                        "recovery: none ({})",
                        r.note.as_deref().unwrap_or("not observed")
                    ),
                };
                let _ = writeln!(o, "  {:<24} {text}", "");
            }
        }
        for r in &self.restored {
            let state = if r.ok { "ok" } else { "FAILED" };
            let detail = r.detail.as_deref().unwrap_or("");
            let _ = writeln!(o, "  {:<24} {state} {detail}", r.event);
        }
        let all = Counts {
            scheduled: self.scheduled,
            sent: self.sent,
            acknowledged: self.acknowledged,
            failed: self.failed,
            not_sent_overload: self.not_sent_overload,
        };
        let mut rows: Vec<(String, &Counts, &LatencySummary)> = Vec::new();
        for p in &self.phases {
            let label = match &p.started_by {
                Some(e) => format!("phase {} {e}", p.index),
                None => format!("phase {} start", p.index),
            };
            rows.push((label, &p.counts, &p.latency));
        }
        for (name, j) in &self.jurisdictions {
            rows.push((format!("jurisdiction {name}"), &j.counts, &j.latency));
        }
        rows.push(("all".into(), &all, &self.latency));
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let _ = writeln!(
            o,
            "\nlatency from scheduled time, every outcome (ms):\n  {:<width$} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "", "sent", "acked", "failed", "no-send", "p50", "p99", "p99.9", "max"
        );
        for (label, counts, latency) in rows {
            row(o, &label, width, counts, latency);
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(o);
        }
        for w in &self.warnings {
            let _ = writeln!(o, "WARNING: {w}");
        }
        if let Some(log) = &self.residency_log {
            let _ = writeln!(o, "\ntransparency log: {}", log.summary());
            for f in &log.failure_samples {
                let _ = writeln!(o, "  {f}");
            }
            if let Some(e) = &log.error {
                let _ = writeln!(o, "  LOG NOT CHECKED: {e}");
            }
        }
        if self.slo.len() > 2 {
            let _ = writeln!(o, "\nobjectives:");
            for c in &self.slo {
                let mark = if c.passed { "met" } else { "MISSED" };
                let _ = writeln!(
                    o,
                    "  {mark:<6} {}: {} (objective {})",
                    c.name, c.measured, c.threshold
                );
            }
        }
        // The checks, as the HTML and JUnit reports list them.
        let _ = writeln!(o, "\nchecks:");
        for (name, failure) in self.checks() {
            match failure {
                None => {
                    let _ = writeln!(o, "  ok     {name}");
                }
                Some(why) => {
                    let _ = writeln!(o, "  FAILED {name}: {why}");
                }
            }
        }
        // The verdict as the HTML heading states it, then (as the HTML
        // lists them) why it failed.
        let _ = writeln!(o, "\n{}", self.verdict());
        for p in self.problems() {
            let _ = writeln!(o, "  - {p}");
        }
        out
    }
}

fn line(o: &mut String, label: &str, map: &BTreeMap<String, u64>) {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let items = if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    };
    let _ = writeln!(o, "{label}: {items}");
}

fn row(o: &mut String, label: &str, width: usize, c: &Counts, l: &LatencySummary) {
    let ms = |us: u64| {
        if l.count == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", us as f64 / 1000.0)
        }
    };
    let _ = writeln!(
        o,
        "  {label:<width$} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
        c.sent,
        c.acknowledged,
        c.failed,
        c.not_sent_overload,
        ms(l.p50_us),
        ms(l.p99_us),
        ms(l.p99_9_us),
        ms(l.max_us)
    );
}

impl Report {
    /// The checks as a JUnit XML report (one test case per check,
    /// [`Report::checks`]), for CI systems.
    pub fn render_junit(&self) -> String {
        let cases = self.checks();
        let failures = cases.iter().filter(|(_, f)| f.is_some()).count();
        let mut o = String::new();
        let _ = writeln!(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let _ = writeln!(
            o,
            "<testsuite name=\"residency-proxy load test {}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
            xml(&self.run_id),
            cases.len(),
            self.elapsed_s
        );
        let _ = writeln!(
            o,
            "  <properties><property name=\"verdict\" value=\"{}\"/></properties>",
            xml(&self.verdict())
        );
        for (name, failure) in cases {
            match failure {
                None => {
                    let _ = writeln!(
                        o,
                        "  <testcase classname=\"loadtest\" name=\"{}\"/>",
                        xml(&name)
                    );
                }
                Some(f) => {
                    let _ = writeln!(
                        o,
                        "  <testcase classname=\"loadtest\" name=\"{}\"><failure message=\"{}\"/></testcase>",
                        xml(&name),
                        xml(&f)
                    );
                }
            }
        }
        o.push_str("</testsuite>\n");
        o
    }
}

/// `text` as XML 1.0 attribute or element text: markup escaped, and the
/// characters XML 1.0 cannot carry at all (control characters other than
/// tab, line feed and carriage return — an admin answer quoted in a chaos
/// failure may hold them) shown as U+FFFD, so the report still parses.
fn xml(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
