//! [`Report::render_html`]: the report as one self-contained HTML file that
//! opens offline — inline CSS and SVG, no script, no request to anything.
//!
//! Top to bottom: the verdict (residency violations, acknowledged uploads
//! missing, other problems), the run's parameters, one chart per
//! jurisdiction of its uploads' outcomes per [`TIMELINE_STEP`] (stacked),
//! latency p50/p99/max over time (log scale, from each upload's scheduled
//! time), fault windows shaded on every chart, and a table per fault: time
//! to detect, to the first acknowledgement elsewhere, to recover, uploads
//! failed. Every chart has a text title and description for screen readers,
//! and the numbers are in tables below it.
//!
//! [`TIMELINE_STEP`]: super::report::TIMELINE_STEP

use std::fmt::Write as _;

use super::report::{ChaosReport, Report, StepCounts};

/// Chart geometry (SVG user units).
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 28.0;

/// The outcome classes, bottom to top, with their colours and names.
const CLASSES: [(&str, &str); 4] = [
    ("#2e7d32", "2xx acknowledged"),
    ("#f9a825", "503 unavailable"),
    ("#c62828", "other 4xx/5xx"),
    ("#616161", "no answer"),
];

/// A fault: from a breaking event until the data centre's next event.
struct Window<'a> {
    chaos: &'a ChaosReport,
    start_s: f64,
    end_s: f64,
    /// The repair that ended it, if any.
    repair: Option<&'a ChaosReport>,
}

impl Report {
    /// The report as a self-contained HTML page (see the module
    /// documentation).
    pub fn render_html(&self) -> String {
        let mut o = String::with_capacity(64 * 1024);
        let passed = self.passed();
        let verdict = if passed { "PASS" } else { "FAIL" };
        let _ = write!(
            o,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{verdict}: failover drill {}</title><style>{STYLE}</style></head><body>\n",
            esc(&self.run_id)
        );
        let _ = write!(
            o,
            "<header><h1 id=\"verdict\" class=\"{}\">{}</h1>",
            if passed { "pass" } else { "fail" },
            esc(&self.verdict())
        );
        let problems = self.problems();
        if !problems.is_empty() {
            o.push_str("<ul id=\"problems\">");
            for p in &problems {
                let _ = write!(o, "<li>{}</li>", esc(p));
            }
            o.push_str("</ul>");
        }
        if !self.violation_samples.is_empty() {
            o.push_str("<p>Violations (samples):</p><ul class=\"violations\">");
            for v in &self.violation_samples {
                let _ = write!(
                    o,
                    "<li>upload <code>{}</code> from {} stored in data centre <strong>{}</strong> (jurisdiction {})</li>",
                    esc(&v.upload_id),
                    esc(&v.origin_jurisdiction),
                    esc(&v.datacenter),
                    esc(v.datacenter_jurisdiction.as_deref().unwrap_or("unknown"))
                );
            }
            o.push_str("</ul>");
        }
        let _ = write!(
            o,
            "<p class=\"run\">run <code>{}</code> → <code>{}</code> (convey {}); {}/s for {:.0} s, {} bytes per upload; \
             sent {}, acknowledged {}, failed {}, not sent {}; took {:.1} s. \
             Seed <code>{}</code>, policy SHA-256 <code>{}</code>, residency-proxy {}.</p></header>",
            esc(&self.run_id),
            esc(&self.target),
            self.convey,
            self.rate_per_s,
            self.duration_s,
            self.body_size,
            self.sent,
            self.acknowledged,
            self.failed,
            self.not_sent_overload,
            self.elapsed_s,
            esc(&self.seed),
            esc(&self.policy_sha256),
            esc(&self.version)
        );
        o.push('\n');
        if let Some(log) = &self.residency_log {
            let _ = write!(
                o,
                "<section id=\"log\"><h2>Proven by the transparency log</h2><p>{}.</p>",
                esc(&log.summary())
            );
            for f in log.failure_samples.iter().chain(&log.error) {
                let _ = write!(o, "<p class=\"fail\">{}</p>", esc(f));
            }
            o.push_str("</section>\n");
        }
        if !self.warnings.is_empty() {
            o.push_str("<section><h2>Warnings</h2><ul>");
            for w in &self.warnings {
                let _ = write!(o, "<li>{}</li>", esc(w));
            }
            o.push_str("</ul></section>\n");
        }
        let windows = self.windows();
        o.push_str("<section><h2>Uploads over time, by origin jurisdiction</h2>");
        legend(&mut o);
        let peak = self
            .timeline
            .jurisdictions
            .values()
            .flat_map(|steps| steps.iter().map(total))
            .max()
            .unwrap_or(0)
            .max(1);
        for (j, steps) in &self.timeline.jurisdictions {
            self.status_chart(&mut o, j, steps, peak, &windows);
        }
        o.push_str("</section>\n<section><h2>Latency over time</h2>");
        self.latency_chart(&mut o, &windows);
        o.push_str("</section>\n");
        self.fault_table(&mut o, &windows);
        self.slo_table(&mut o);
        self.checks_table(&mut o);
        o.push_str("</body></html>\n");
        o
    }

    /// When faults were in force — (start, end) in seconds from the start —
    /// and the jurisdictions each struck (those its failover names).
    pub(super) fn fault_windows(&self) -> Vec<(f64, f64, Vec<String>)> {
        self.windows()
            .iter()
            .map(|w| {
                let struck = w.chaos.failover.as_ref().map(|f| f.jurisdictions.clone());
                (w.start_s, w.end_s, struck.unwrap_or_default())
            })
            .collect()
    }

    /// The fault windows: each breaking event until the same data centre's
    /// repair (or the end of the run).
    fn windows(&self) -> Vec<Window<'_>> {
        let dc_of = |c: &ChaosReport| {
            c.failover
                .as_ref()
                .map(|f| f.datacenter.clone())
                .or_else(|| c.recovery.as_ref().map(|r| r.datacenter.clone()))
                .or_else(|| {
                    let action = c.applied.event.split_once(':')?.1;
                    let (left, right) = action.split_once('=')?;
                    Some(if left == "drain" || left == "undrain" {
                        right.to_string()
                    } else {
                        left.to_string()
                    })
                })
        };
        let mut out = Vec::new();
        for (k, c) in self.chaos.iter().enumerate() {
            let (Some(_), Some(start_s)) = (&c.failover, c.applied.applied_at_s) else {
                continue;
            };
            let dc = dc_of(c);
            // Until the data centre's repair: an event after which it is
            // neither broken nor drained (an `undrain` of one that still
            // refuses is none), not merely its next event.
            let next = self.chaos[k + 1..]
                .iter()
                .find(|n| dc_of(n) == dc && n.recovery.is_some());
            let end_s = next
                .and_then(|n| n.applied.applied_at_s)
                .unwrap_or(self.duration_s);
            out.push(Window {
                chaos: c,
                start_s,
                end_s,
                repair: next.filter(|n| n.recovery.is_some()),
            });
        }
        out
    }

    fn x(&self, seconds: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (seconds / self.duration_s.max(0.001)).clamp(0.0, 1.0)
    }

    /// The shaded fault windows and the time axis of a chart.
    fn frame(&self, o: &mut String, windows: &[Window<'_>]) {
        for w in windows {
            let (x0, x1) = (self.x(w.start_s), self.x(w.end_s));
            let _ = write!(
                o,
                "<rect class=\"fault\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}</title></rect>\
                 <text class=\"fault-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                (x1 - x0).max(1.0),
                HEIGHT - TOP - BOTTOM,
                esc(&w.chaos.applied.event),
                x0 + 3.0,
                TOP + 11.0,
                esc(w.chaos.applied.event.split_once(':').map_or("", |(_, a)| a))
            );
        }
        let base = HEIGHT - BOTTOM;
        let _ = write!(
            o,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{:.1}\" y2=\"{base}\"/>",
            WIDTH - RIGHT
        );
        let every = tick_every(self.duration_s);
        let mut t = 0.0;
        while t <= self.duration_s + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                o,
                "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{base}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
                 <text class=\"tick-label\" x=\"{x:.1}\" y=\"{:.1}\">{t:.0} s</text>",
                base + 4.0,
                base + 16.0
            );
            t += every;
        }
    }

    fn status_chart(
        &self,
        o: &mut String,
        jurisdiction: &str,
        steps: &[StepCounts],
        peak: u32,
        windows: &[Window<'_>],
    ) {
        let j = esc(jurisdiction);
        let sum = steps.iter().fold(StepCounts::default(), |a, s| StepCounts {
            acknowledged: a.acknowledged + s.acknowledged,
            unavailable: a.unavailable + s.unavailable,
            error: a.error + s.error,
            no_answer: a.no_answer + s.no_answer,
        });
        let _ = write!(
            o,
            "<figure class=\"chart jurisdiction\" data-jurisdiction=\"{j}\"><figcaption>Origin {j}: {} acknowledged, {} 503, {} other errors, {} without answer</figcaption>\
             <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-labelledby=\"t-{j} d-{j}\">\
             <title id=\"t-{j}\">Uploads from {j} per {} ms, stacked by outcome</title>\
             <desc id=\"d-{j}\">Fault windows are shaded; the table below has the numbers.</desc>",
            sum.acknowledged,
            sum.unavailable,
            sum.error,
            sum.no_answer,
            self.timeline.step_ms
        );
        self.frame(o, windows);
        let step_s = self.timeline.step_ms as f64 / 1000.0;
        let scale = (HEIGHT - TOP - BOTTOM) / f64::from(peak);
        for (i, s) in steps.iter().enumerate() {
            let x0 = self.x(i as f64 * step_s);
            let w = (self.x((i + 1) as f64 * step_s) - x0 - 0.5).max(0.5);
            let mut y = HEIGHT - BOTTOM;
            for (n, (colour, name)) in [s.acknowledged, s.unavailable, s.error, s.no_answer]
                .into_iter()
                .zip(CLASSES)
            {
                if n == 0 {
                    continue;
                }
                let h = f64::from(n) * scale;
                y -= h;
                let _ = write!(
                    o,
                    "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{:.2} s: {n} {name}</title></rect>",
                    i as f64 * step_s
                );
            }
        }
        let _ = write!(
            o,
            "<text class=\"y-label\" x=\"{:.1}\" y=\"{:.1}\">{peak}</text></svg></figure>",
            LEFT - 6.0,
            TOP + 8.0
        );
    }

    fn latency_chart(&self, o: &mut String, windows: &[Window<'_>]) {
        let points = &self.timeline.latency;
        let max = points
            .iter()
            .flatten()
            .map(|p| p.max_ms)
            .fold(1.0f64, f64::max);
        let top = 10f64.powf(max.log10().ceil().max(1.0));
        let y = |ms: f64| {
            let f = ms.max(0.1).log10().max(-1.0) + 1.0;
            let span = top.log10() + 1.0;
            HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (f / span).clamp(0.0, 1.0)
        };
        let _ = write!(
            o,
            "<figure class=\"chart latency\"><figcaption>Latency from each upload's scheduled time, every outcome: \
             <span class=\"p50\">p50</span>, <span class=\"p99\">p99</span>, <span class=\"max\">max</span> per {} ms (log scale)</figcaption>\
             <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-labelledby=\"t-latency\">\
             <title id=\"t-latency\">Latency p50, p99 and max over time</title>",
            self.timeline.step_ms
        );
        self.frame(o, windows);
        let mut decade = 0.1f64;
        while decade <= top * 1.001 {
            let yy = y(decade);
            let label = if decade < 1.0 {
                format!("{decade:.1} ms")
            } else {
                format!("{decade:.0} ms")
            };
            let _ = write!(
                o,
                "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\"/>\
                 <text class=\"y-label\" x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
                WIDTH - RIGHT,
                LEFT - 6.0,
                yy + 4.0
            );
            decade *= 10.0;
        }
        let step_s = self.timeline.step_ms as f64 / 1000.0;
        for (class, pick) in [
            (
                "max",
                (|p: &super::report::StepLatency| p.max_ms) as fn(&_) -> f64,
            ),
            ("p99", |p| p.p99_ms),
            ("p50", |p| p.p50_ms),
        ] {
            let mut path = String::new();
            let mut pen_down = false;
            for (i, p) in points.iter().enumerate() {
                match p {
                    Some(p) => {
                        let x = self.x((i as f64 + 0.5) * step_s);
                        let _ = write!(
                            path,
                            "{}{x:.1},{:.1} ",
                            if pen_down { "L" } else { "M" },
                            y(pick(p))
                        );
                        pen_down = true;
                    }
                    None => pen_down = false,
                }
            }
            let _ = write!(o, "<path class=\"{class}\" d=\"{}\"/>", path.trim_end());
        }
        o.push_str("</svg></figure>");
    }

    fn fault_table(&self, o: &mut String, windows: &[Window<'_>]) {
        o.push_str(
            "<section><h2>Faults</h2><table id=\"faults\"><thead><tr><th scope=\"col\">fault</th><th scope=\"col\">applied at</th>\
             <th scope=\"col\">jurisdictions</th><th scope=\"col\">routed elsewhere after</th>\
             <th scope=\"col\">first acknowledged elsewhere after</th><th scope=\"col\">failed before failover</th>\
             <th scope=\"col\">repair</th><th scope=\"col\">acknowledging again after</th></tr></thead><tbody>",
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.0} ms"));
        for w in windows {
            let Some(f) = &w.chaos.failover else { continue };
            let note = f
                .note
                .as_deref()
                .map(|n| format!("<br><small>{}</small>", esc(n)))
                .unwrap_or_default();
            let (repair, recovered) = match w.repair {
                Some(r) => (
                    esc(&r.applied.event),
                    ms(r.recovery.as_ref().and_then(|r| r.time_to_recover_ms)),
                ),
                None => ("—".into(), "—".into()),
            };
            let _ = write!(
                o,
                "<tr><th scope=\"row\">{}{note}</th><td>{:.2} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{repair}</td><td>{recovered}</td></tr>",
                esc(&w.chaos.applied.event),
                w.start_s,
                esc(&f.jurisdictions.join(", ")),
                ms(f.time_to_detect_ms),
                ms(f.time_to_failover_ms),
                f.failed_before_failover
            );
        }
        o.push_str("</tbody></table></section>\n<section><h2>Per jurisdiction</h2><table id=\"jurisdictions\"><thead><tr>\
            <th scope=\"col\">origin</th><th scope=\"col\">sent</th><th scope=\"col\">acknowledged</th><th scope=\"col\">failed</th>\
            <th scope=\"col\">p50</th><th scope=\"col\">p99</th><th scope=\"col\">max</th></tr></thead><tbody>");
        for (j, r) in &self.jurisdictions {
            let _ = write!(
                o,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{:.1} ms</td></tr>",
                esc(j),
                r.counts.sent,
                r.counts.acknowledged,
                r.counts.failed,
                r.latency.p50_us as f64 / 1000.0,
                r.latency.p99_us as f64 / 1000.0,
                r.latency.max_us as f64 / 1000.0
            );
        }
        o.push_str("</tbody></table></section>\n");
    }
}

impl Report {
    fn slo_table(&self, o: &mut String) {
        o.push_str("<section><h2>Objectives</h2><table id=\"slo\"><thead><tr><th scope=\"col\">objective</th>\
            <th scope=\"col\">threshold</th><th scope=\"col\">measured</th><th scope=\"col\">result</th></tr></thead><tbody>");
        for c in &self.slo {
            let _ = write!(
                o,
                "<tr class=\"{}\"><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
                if c.passed { "pass" } else { "fail" },
                esc(&c.name),
                esc(&c.threshold),
                esc(&c.measured),
                if c.passed { "met" } else { "MISSED" }
            );
        }
        o.push_str("</tbody></table></section>\n");
    }
}

impl Report {
    /// Every check, as the text and JUnit reports list them.
    fn checks_table(&self, o: &mut String) {
        o.push_str(
            "<section><h2>Checks</h2><table id=\"checks\"><thead><tr><th scope=\"col\">check</th>\
            <th scope=\"col\">result</th></tr></thead><tbody>",
        );
        for (name, failure) in self.checks() {
            let _ = write!(
                o,
                "<tr class=\"{}\"><th scope=\"row\">{}</th><td>{}</td></tr>",
                if failure.is_none() { "pass" } else { "fail" },
                esc(&name),
                failure.map_or_else(|| "ok".to_string(), |f| format!("FAILED: {}", esc(&f)))
            );
        }
        o.push_str("</tbody></table></section>\n");
    }
}

fn total(s: &StepCounts) -> u32 {
    s.acknowledged + s.unavailable + s.error + s.no_answer
}

fn legend(o: &mut String) {
    o.push_str("<p class=\"legend\">");
    for (colour, name) in CLASSES {
        let _ = write!(
            o,
            "<span><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" height=\"12\" fill=\"{colour}\"/></svg> {name}</span> "
        );
    }
    o.push_str("<span><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" height=\"12\" class=\"fault\"/></svg> fault window</span></p>");
}

/// Seconds between time-axis ticks: about ten ticks.
fn tick_every(duration_s: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|t| duration_s / t <= 12.0)
        .unwrap_or(1200.0)
}

/// Text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:1000px;padding:0 1rem;color:#1a1a1a}\
h1.pass{color:#1b5e20}h1.fail{color:#b71c1c}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.8rem}\
figure{margin:0.8rem 0}figcaption{font-size:0.9rem;color:#333}figure svg{width:100%;height:auto;display:block}.legend svg{vertical-align:middle}\
.fault{fill:#000;fill-opacity:0.08}.fault-label{font-size:10px;fill:#444}.axis,.tick{stroke:#777;stroke-width:1}\
.grid{stroke:#ddd;stroke-width:1}.tick-label{font-size:10px;fill:#555;text-anchor:middle}.y-label{font-size:10px;fill:#555;text-anchor:end}\
path{fill:none;stroke-width:1.5}path.p50{stroke:#1565c0}path.p99{stroke:#8e24aa}path.max{stroke:#9e9e9e;stroke-dasharray:3 2}\
span.p50{color:#1565c0}span.p99{color:#8e24aa}span.max{color:#757575}.legend span{margin-right:1rem;white-space:nowrap}\
table{border-collapse:collapse;width:100%;font-size:0.9rem}th,td{border-bottom:1px solid #ddd;padding:0.3rem 0.5rem;text-align:left;vertical-align:top}\
code{font-size:0.9em}tr.fail td,tr.fail th{color:#b71c1c;font-weight:600}";
