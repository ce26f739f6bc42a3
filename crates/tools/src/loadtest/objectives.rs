//! The objectives file (`--slo FILE`, TOML), read and checked while the
//! command line is parsed; [`super::slo`] checks a run against it.

use residency_core::report::ConfigReport;
use serde::Deserialize;

/// The objectives (see [`super::slo`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default)]
    pub max_residency_violations: u64,
    #[serde(default)]
    pub max_acknowledged_missing: u64,
    pub max_time_to_detect_ms: Option<f64>,
    pub max_time_to_failover_ms: Option<f64>,
    pub max_time_to_recover_ms: Option<f64>,
    pub min_availability: Option<f64>,
    pub max_p99_ms: Option<f64>,
    #[serde(default)]
    pub allow_not_exercised: bool,
}

impl Slo {
    /// Reads and checks an SLO file. A file that cannot be read or does
    /// not hold objectives is invalid input: the error is a
    /// [`ConfigReport`], so the command exits 2 before anything starts.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Slo> {
        let invalid = |message: String| {
            let mut report = ConfigReport::new(path.display().to_string());
            report.push("--slo", message);
            anyhow::Error::new(report)
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let slo: Slo = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            match line {
                Some(n) => invalid(format!("line {n}: {}", e.message())),
                None => invalid(e.message().to_string()),
            }
        })?;
        if let Some(a) = slo.min_availability {
            if !(0.0..=1.0).contains(&a) {
                return Err(invalid(format!(
                    "min_availability = {a}: a fraction from 0 to 1"
                )));
            }
        }
        Ok(slo)
    }
}

/// `--slo FILE`: the file read and checked while the command line is
/// parsed, so that a bad one exits 2 before anything starts.
pub fn parse_arg(path: &str) -> Result<Slo, String> {
    Slo::load(std::path::Path::new(path)).map_err(|e| e.to_string())
}
