//! The objectives file (`--slo FILE`, TOML), read and checked while the
//! command line is parsed; [`super::slo`] checks a run against it.

use residency_core::report::ConfigReport;
use serde::Deserialize;
use toml::Spanned;

/// The objectives (see [`super::slo`]).
#[derive(Debug, Clone, Default)]
pub struct Slo {
    pub max_residency_violations: u64,
    pub max_acknowledged_missing: u64,
    pub max_time_to_detect_ms: Option<f64>,
    pub max_time_to_failover_ms: Option<f64>,
    pub max_time_to_recover_ms: Option<f64>,
    pub min_availability: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub allow_not_exercised: bool,
}

/// The file as written: every number with where it was, so that one out of
/// range is named by its key and line. Counts are read as any TOML value,
/// so that `-1` or `2.5` gets the same message as any other bad count.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    max_residency_violations: Option<Spanned<toml::Value>>,
    max_acknowledged_missing: Option<Spanned<toml::Value>>,
    max_time_to_detect_ms: Option<Spanned<f64>>,
    max_time_to_failover_ms: Option<Spanned<f64>>,
    max_time_to_recover_ms: Option<Spanned<f64>>,
    min_availability: Option<Spanned<f64>>,
    max_p99_ms: Option<Spanned<f64>>,
    #[serde(default)]
    allow_not_exercised: bool,
}

impl Slo {
    /// Reads and checks an SLO file. A file that cannot be read, does not
    /// hold objectives or holds a value out of range (a count that is not a
    /// whole number ≥ 0; a time that is not a finite number ≥ 0 — `nan`
    /// would hold no run to anything, a negative one fail every run; an
    /// availability outside 0 to 1) is invalid input: the error is a
    /// [`ConfigReport`] naming each such key and its line, so the command
    /// exits 2 before anything starts.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Slo> {
        let mut report = ConfigReport::new(path.display().to_string());
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                report.push("--slo", e);
                return Err(report.into());
            }
        };
        let raw: RawSlo = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => {
                // Under the key on the line the parser points at, if it
                // holds one (a value of the wrong type, a number too large).
                match e.span() {
                    Some(s) => report.push(
                        "--slo",
                        format!(
                            "line {}: {}{}",
                            line_of(&text, s.start),
                            key_on_line(&text, s.start)
                                .filter(|k| !e.message().contains(&format!("`{k}`")))
                                .map_or(String::new(), |k| format!("{k}: ")),
                            e.message()
                        ),
                    ),
                    None => report.push("--slo", e.message()),
                }
                return Err(report.into());
            }
        };
        let mut p = Vec::new();
        let slo = Slo {
            max_residency_violations: count(
                &text,
                "max_residency_violations",
                raw.max_residency_violations,
                &mut p,
            ),
            max_acknowledged_missing: count(
                &text,
                "max_acknowledged_missing",
                raw.max_acknowledged_missing,
                &mut p,
            ),
            max_time_to_detect_ms: number(
                &text,
                "max_time_to_detect_ms",
                raw.max_time_to_detect_ms,
                MS,
                &mut p,
            ),
            max_time_to_failover_ms: number(
                &text,
                "max_time_to_failover_ms",
                raw.max_time_to_failover_ms,
                MS,
                &mut p,
            ),
            max_time_to_recover_ms: number(
                &text,
                "max_time_to_recover_ms",
                raw.max_time_to_recover_ms,
                MS,
                &mut p,
            ),
            min_availability: number(
                &text,
                "min_availability",
                raw.min_availability,
                FRACTION,
                &mut p,
            ),
            max_p99_ms: number(&text, "max_p99_ms", raw.max_p99_ms, MS, &mut p),
            allow_not_exercised: raw.allow_not_exercised,
        };
        // In the file's order.
        p.sort_by_key(|(line, _)| *line);
        for (line, problem) in p {
            report.push("--slo", format!("line {line}: {problem}"));
        }
        Ok(report.finish(Some(slo))?)
    }
}

/// The line of byte `offset` of `text`, from 1.
/// The bare key the line holding byte `at` of `text` sets (`key = …`).
fn key_on_line(text: &str, at: usize) -> Option<&str> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    (!key.is_empty() && key.chars().all(bare)).then_some(key)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Problems found in a file: its line, and what is wrong.
type Problems = Vec<(usize, String)>;

/// `key = VALUE` (as written: `nan`, not `NaN`) is not what it must be.
fn out_of_range(
    text: &str,
    key: &str,
    span: std::ops::Range<usize>,
    expected: &str,
) -> (usize, String) {
    let line = line_of(text, span.start);
    let written = text.get(span).unwrap_or("?").trim();
    (line, format!("{key} = {written}: {expected}"))
}

/// A count: a TOML integer, 0 or more (default 0).
fn count(text: &str, key: &str, value: Option<Spanned<toml::Value>>, p: &mut Problems) -> u64 {
    let Some(value) = value else { return 0 };
    match value.get_ref().as_integer().map(u64::try_from) {
        Some(Ok(n)) => n,
        _ => {
            p.push(out_of_range(
                text,
                key,
                value.span(),
                "a count, a whole number 0 or more",
            ));
            0
        }
    }
}

/// What a limit may be: the range of finite numbers, and how to say it.
type Limit = (std::ops::RangeInclusive<f64>, &'static str);
const MS: Limit = (0.0..=f64::MAX, "milliseconds, a finite number 0 or more");
const FRACTION: Limit = (0.0..=1.0, "a fraction from 0 to 1");

/// A limit: a finite number in `range` (`nan` is not, nor `inf`).
fn number(
    text: &str,
    key: &str,
    value: Option<Spanned<f64>>,
    (range, expected): Limit,
    p: &mut Problems,
) -> Option<f64> {
    let value = value?;
    let n = *value.get_ref();
    if n.is_finite() && range.contains(&n) {
        Some(n)
    } else {
        p.push(out_of_range(text, key, value.span(), expected));
        None
    }
}

/// `--slo FILE`: the file read and checked while the command line is
/// parsed, so that a bad one exits 2 before anything starts.
pub fn parse_arg(path: &str) -> Result<Slo, String> {
    Slo::load(std::path::Path::new(path)).map_err(|e| e.to_string())
}
