//! The `residency-proxy loadtest` command line.

use std::path::PathBuf;
use std::time::Duration;

use super::spec::{parse_duration, ChaosEvent, Convey, Mix, OriginSpec};

/// Command-line arguments of `residency-proxy loadtest`. The options are
/// boxed so that `cli::Command` stays small (clippy `large_enum_variant`).
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    #[command(flatten)]
    pub options: Box<LoadtestOptions>,
}

/// The options of `residency-proxy loadtest`.
#[derive(Debug, clap::Args)]
pub struct LoadtestOptions {
    /// HTTPS URL every upload is POSTed to.
    #[arg(long, default_value = "https://127.0.0.1:8443/v1/telemetry")]
    pub target: String,
    /// Arrival rate, uploads per second (open loop: request i starts at i/rate
    /// whatever the earlier ones are doing).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long uploads are started for (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Most uploads in flight at once; one that cannot start is counted as
    /// `not_sent_overload`.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Bytes per upload body (each one unique).
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Also send each upload id as `Idempotency-Key`.
    #[arg(long)]
    pub idempotency_key: bool,
    /// PEM bundle to verify the proxy's certificate against (default: system roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Origin mix: weights by jurisdiction name, e.g. ch=40,eu=40,us=20.
    #[arg(long)]
    pub mix: Mix,
    /// A client address for a jurisdiction's uploads, e.g. ch=192.0.2.10
    /// (repeatable; several per jurisdiction are used in turn at random).
    #[arg(long = "origin", value_name = "JURISDICTION=ADDRESS", required = true)]
    pub origins: Vec<OriginSpec>,
    /// How the origin address reaches the proxy.
    #[arg(long, value_enum, default_value_t = Convey::Xff)]
    pub convey: Convey,
    /// The proxy's configuration file: its policy decides what is a residency
    /// violation.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Chaos event, e.g. 20s:zurich=refuse, 40s:zurich=normal, 45s:drain=geneva,
    /// 50s:undrain=geneva (repeatable; modes: normal refuse hang slow error).
    #[arg(long = "chaos", value_name = "TIME:ACTION")]
    pub chaos: Vec<ChaosEvent>,
    /// Sink admin base URL (repeatable: each is tried until one knows the data
    /// centre; records are read from all of them).
    #[arg(
        long = "sink-admin",
        value_name = "URL",
        default_value = "http://127.0.0.1:9100"
    )]
    pub sink_admin: Vec<String>,
    /// Proxy admin base URL, for drain/undrain events.
    #[arg(long, value_name = "URL")]
    pub proxy_admin: Option<String>,
    /// Longest a single upload may take before it counts as `client_timeout`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// After the last upload is started, how long in-flight ones may finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Allow a target or admin URL that is not on loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Leave data centres in the state the chaos schedule left them (default:
    /// set them back to normal and undrain them before reconciling).
    #[arg(long)]
    pub leave_chaos: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the checks as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Service-level objectives (TOML) the run must meet.
    #[arg(long, value_name = "FILE", value_parser = super::objectives::parse_arg)]
    pub slo: Option<super::objectives::Slo>,
    /// Do not print a progress line every second.
    #[arg(long)]
    pub no_progress: bool,
}
