//! `residency-proxy drill`: a ready-made regional-failover drill in one
//! command.
//!
//! Starts, in one process, a sink with four data centres (zurich = ch
//! priority 1, geneva = ch priority 2, frankfurt = eu, virginia = us), the
//! proxy in front of them (fast health checks, PROXY v2 or X-Forwarded-For
//! from the load generator), and the load generator with an origin mix of
//! ch=40, eu=40, us=20 and a chaos schedule that kills, blackholes and drains
//! the preferred CH data centre. Then it prints the load generator's report:
//! residency violations and acknowledged-but-missing uploads must be 0.
//!
//! The files it generates (certificate, GeoIP database, `drill.toml`) stay in
//! `--dir` so the same setup can be rerun as separate processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::demo::{write_files, Site, SiteDatacenter};
use crate::cli::workdir::{log_key, WorkDir};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{Instance, Snapshot};
use residency_core::report::{parse_duration, ConfigReport};
use residency_tools::loadtest::{self, Convey, Plan, Report};
use residency_tools::sink::Sink;

/// Command-line arguments of `residency-proxy drill`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// How long uploads are generated.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    pub duration: Duration,
    /// Uploads per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Body size of each upload in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// How the load generator names the client: `proxy-v2` or `xff`.
    #[arg(long, default_value = "proxy-v2")]
    pub convey: Convey,
    /// Send each upload's id as `Idempotency-Key` (enables replay retries);
    /// on unless `--idempotency-key false`. A bare `--idempotency-key` is
    /// taken as `true`, as `loadtest`'s flag.
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub idempotency_key: bool,
    /// Override the chaos schedule (`TIME:ACTION`, as for `loadtest`); the
    /// default kills, blackholes and drains zurich at fixed fractions of the run.
    #[arg(long, value_name = "TIME:ACTION")]
    pub chaos: Vec<loadtest::ChaosEvent>,
    /// Directory for the generated files (default: a new temporary one).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the report as one self-contained HTML file (charts of
    /// outcomes and latency over time, fault windows, a table per fault).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Also write the checks as JUnit XML, for CI systems.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Service-level objectives (TOML) the run must meet; the exit status
    /// reflects them (default: no violation, nothing missing, every fault
    /// exercised).
    #[arg(long, value_name = "FILE", value_parser = loadtest::slo::parse_arg)]
    pub slo: Option<loadtest::slo::Slo>,
    /// No progress line every second.
    #[arg(long)]
    pub no_progress: bool,
    /// Run the proxy without its transparency log (by default the drill
    /// also proves every acknowledged upload from the log: receipt
    /// signature, inclusion, request id, data centre, body; checkpoints
    /// consistent).
    #[arg(long)]
    pub no_log: bool,
    /// `dir` is a temporary directory the command line made (no `--dir`),
    /// removed when the drill ends: the report must not send anyone to a
    /// file in it. Not an option.
    #[arg(skip)]
    pub dir_is_temporary: bool,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}` is not a duration such as \"20s\""))
}

impl Default for DrillArgs {
    fn default() -> Self {
        DrillArgs {
            duration: Duration::from_secs(60),
            rate: 200.0,
            body_size: 1024,
            convey: Convey::ProxyV2,
            idempotency_key: true,
            chaos: Vec::new(),
            dir: None,
            json: None,
            html: None,
            junit: None,
            slo: None,
            no_progress: false,
            no_log: false,
            dir_is_temporary: false,
        }
    }
}

/// The default schedule, as fractions of the run: kill zurich (connections
/// refused), restore it, blackhole it (accepts, never answers), restore,
/// drain it through the proxy's admin API, undrain.
const SCHEDULE: [(f64, &str); 6] = [
    (0.20, "zurich=refuse"),
    (0.35, "zurich=normal"),
    (0.50, "zurich=hang"),
    (0.65, "zurich=normal"),
    (0.75, "drain=zurich"),
    (0.90, "undrain=zurich"),
];

/// The shortest run the default schedule ([`SCHEDULE`]) can pass in: the
/// drain (at 0.75 of the run) must come after zurich, hung at 0.5, is
/// found (`hung_after` 1 s, health every 250 ms), held down (`down_for`
/// 2 s) and taken back (`healthy_threshold` 2 × 100 ms): 0.25 of the run
/// over about 3.5 s, so 14 s, and a second to spare.
const DEFAULT_SCHEDULE_MIN: std::time::Duration = std::time::Duration::from_secs(15);

/// The drill's data centres (the sinks it starts).
const DATACENTERS: [&str; 4] = ["zurich", "geneva", "frankfurt", "virginia"];

/// The drill's log name (`transparency.origin`).
const DRILL_LOG_ORIGIN: &str = "drill.residency-proxy.local/log";

/// Health and timeouts that make failover quick and visible in a drill.
const DRILL_TUNING: &str = r#"
[health]
path = "/healthz"
interval = "250ms"
timeout = "200ms"
unhealthy_threshold = 2
healthy_threshold = 2
passive_failures = 3
down_for = "2s"
recovery_interval = "100ms"
hung_after = "1s"

[timeouts]
upstream_connect = "500ms"
upstream_response = "3s"

# The generator's six origin addresses stand for a whole population of
# clients: a high --rate must not meet the per-client limits.
[limits]
max_requests_per_client = 0
max_connections_per_client = 0
"#;

/// The load's own arguments, checked before anything is set up (the
/// command line checks them before it makes the run's directory), as
/// `loadtest` checks them: what cannot run, listed (exit 2).
pub fn check_load(args: &DrillArgs) -> Result<(), ConfigReport> {
    let mut problems = Vec::new();
    loadtest::plan::check_load(args.rate, args.duration, args.body_size, &mut problems);
    loadtest::plan::check_chaos(
        &args.chaos,
        args.duration,
        &DATACENTERS,
        "the drill",
        &mut problems,
    );
    // The default schedule's faults are 0.1-0.15 of the run apart: in a
    // shorter run the hang ends before the proxy can find it (`hung_after`
    // 1 s, health every 250 ms) and a repaired zurich is still held down
    // (`down_for` 2 s) when it is drained, so the drill fails whatever the
    // proxy does.
    if args.chaos.is_empty() && args.duration < DEFAULT_SCHEDULE_MIN {
        problems.push(format!(
            "--duration {}: the default schedule needs at least {} (its faults would come faster than failover can show); give --chaos events for a shorter run",
            humantime::format_duration(args.duration),
            humantime::format_duration(DEFAULT_SCHEDULE_MIN)
        ));
    }
    // A report that could not be written at the end would be lost with
    // the run.
    loadtest::plan::check_outputs(
        &[
            ("--json", args.json.as_deref()),
            ("--html", args.html.as_deref()),
            ("--junit", args.junit.as_deref()),
        ],
        &mut problems,
    );
    loadtest::plan::refuse("drill", problems)
}

/// Runs the drill, prints the report, fails if the report does.
pub async fn run(mut args: DrillArgs) -> anyhow::Result<()> {
    let (json, html, junit) = (args.json.clone(), args.html.clone(), args.junit.clone());
    let slo = args.slo.take();
    let dir = args.dir.clone();
    let kept = !args.dir_is_temporary;
    // From the start, so that Ctrl-C during the setup ends the run as
    // during it; a second one removes the temporary directory (its keys)
    // before it exits.
    let interrupt = crate::cli::interrupt_on_signal(dir.clone().filter(|_| !kept));
    let mut report = drill(args, Some(interrupt)).await?;
    if let Some(slo) = &slo {
        report.apply_slo(slo);
    }
    if let Some(w) = dir.and_then(|d| logged_warnings(&d.join(PROXY_LOG), kept)) {
        report.warnings.push(w);
    }
    println!("{}", report.render_text());
    let written = report.write_files(json.as_deref(), html.as_deref(), junit.as_deref());
    loadtest::failed("drill", &report, written)
}

/// The proxy's log in the run directory (`residency-proxy drill`).
pub const PROXY_LOG: &str = "proxy.log";

/// Warnings and errors the proxy logged to `log`, in either log format,
/// summarised by message (most frequent first, at most five). `kept`:
/// `log` outlives the drill (`--dir`), so the summary may point at it.
pub fn logged_warnings(log: &std::path::Path, kept: bool) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut by_message: std::collections::BTreeMap<String, usize> = Default::default();
    let mut total = 0;
    for line in text.lines() {
        let Some(message) = warning(line) else {
            continue;
        };
        total += 1;
        *by_message.entry(message).or_default() += 1;
    }
    if total == 0 {
        return None;
    }
    let mut top: Vec<(String, usize)> = by_message.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    let list: Vec<String> = top
        .iter()
        .take(5)
        .map(|(m, n)| format!("{n}× \"{m}\""))
        .collect();
    Some(if kept {
        format!(
            "the proxy logged {total} warning(s) ({}): {}",
            log.display(),
            list.join(", ")
        )
    } else {
        // The temporary directory is gone by the time anyone reads this.
        format!(
            "the proxy logged {total} warning(s): {} (its log was in the drill's temporary directory, removed when the drill ended; give --dir DIR to keep it as DIR/{PROXY_LOG})",
            list.join(", ")
        )
    })
}

/// The message of a warning or error line of the proxy's log, text
/// (`… WARN target: message key=value …`) or JSON (`"level":"WARN"`,
/// `--log-format json`); `None` for any other line.
fn warning(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        if !matches!(event["level"].as_str(), Some("WARN" | "ERROR")) {
            return None;
        }
        // Flattened (as `--log-format json` writes it), or under `fields`.
        let message = event["message"]
            .as_str()
            .or_else(|| event["fields"]["message"].as_str())
            .unwrap_or("(no message)");
        return Some(message.to_string());
    }
    let (_, rest) = line
        .split_once(" WARN ")
        .or_else(|| line.split_once(" ERROR "))?;
    // `target: message key=value …`: the message.
    let rest = rest.split_once(": ").map_or(rest, |(_, m)| m);
    let message: Vec<&str> = rest.split(' ').take_while(|w| !w.contains('=')).collect();
    Some(message.join(" "))
}

/// Sets up sink and proxy, runs the load, tears everything down.
pub async fn drill(args: DrillArgs, interrupt: loadtest::Interrupt) -> anyhow::Result<Report> {
    check_load(&args)?;
    // `--dir` (kept), or a private temporary directory removed at the end.
    let work = WorkDir::new(args.dir.as_deref(), "residency-proxy-drill")
        .context("creating the drill's directory")?;
    let dir = work.path().to_path_buf();

    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let specs: Vec<(String, SocketAddr)> =
        DATACENTERS.iter().map(|n| (n.to_string(), any)).collect();
    let sink = Sink::start(&specs, any).await?;
    let dcs: Vec<SiteDatacenter> = [
        ("zurich", "ch", 1),
        ("geneva", "ch", 2),
        ("frankfurt", "eu", 1),
        ("virginia", "us", 1),
    ]
    .into_iter()
    .map(|(name, jurisdiction, priority)| {
        let addr = sink.datacenter_addr(name).context("sink data centre")?;
        Ok(SiteDatacenter {
            name,
            jurisdiction,
            priority,
            addr,
        })
    })
    .collect::<anyhow::Result<_>>()?;
    let listener = match args.convey {
        Convey::ProxyV2 => "proxy_protocol = \"required\"\ntrusted_proxies = [\"127.0.0.1\"]",
        Convey::Xff => "trusted_proxies = [\"127.0.0.1\"]",
    };
    // The transparency log, in the run directory, with a key of its own
    // (kept with it, so a rerun in the same --dir extends the same log).
    let mut extra = DRILL_TUNING.to_string();
    let log_key = if args.no_log {
        None
    } else {
        let signer = log_key(&dir.join("drill-log.key"), DRILL_LOG_ORIGIN)?;
        extra.push_str(&format!(
            "\n[transparency]\ndirectory = \"log\"\norigin = \"{DRILL_LOG_ORIGIN}\"\nsigning_key = \"drill-log.key\"\n\
             address = \"127.0.0.1:0\"\ncheckpoint_interval = \"250ms\"\nreceipts = \"signed\"\n"
        ));
        Some(signer.verifier_key())
    };
    let site = Site {
        generator: "drill",
        port: 0,
        admin_port: 0,
        listener,
        datacenters: &dcs,
        extra: &extra,
    };
    let config_path = write_files(&dir, &site)?;
    let config = Config::load(&config_path)?;
    let policy = config.policy.clone();
    let recovery = config.health.recovery();
    let late_delivery = config.timeouts.late_delivery(args.body_size);
    let cert = std::fs::read(dir.join("drill.pem"))?;

    let instance = Instance::new(Snapshot::build(config)?, Metrics::new()?)?;
    let bound = crate::server::bind(instance).await?;
    let proxy = *bound.addresses().first().context("proxy listener")?;
    let admin = bound.admin_address().context("admin listener")?;
    let log_address = bound.transparency_address();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));
    tracing::info!(%proxy, %admin, sink = %sink.admin_addr(), dir = %dir.display(), "drill: proxy and sinks up");

    let mut plan = Plan::new(format!("https://{proxy}/v1/telemetry").parse()?, policy);
    plan.rate = args.rate;
    plan.duration = args.duration;
    plan.recovery = recovery;
    plan.late_delivery = late_delivery;
    plan.body_size = args.body_size;
    plan.idempotency_key = args.idempotency_key;
    plan.trust = loadtest::Trust::CaPem(cert);
    plan.convey = args.convey;
    plan.mix = "ch=40,eu=40,us=20"
        .parse::<loadtest::Mix>()
        .map_err(anyhow::Error::msg)?
        .0;
    plan.origins = [
        ("ch", vec!["192.0.2.10", "192.0.2.11", "192.0.2.130"]),
        ("eu", vec!["198.51.100.20", "198.51.100.140"]),
        ("us", vec!["203.0.113.30"]),
    ]
    .into_iter()
    .map(|(j, ips)| {
        Ok((
            j.to_string(),
            ips.into_iter()
                .map(str::parse)
                .collect::<Result<Vec<_>, _>>()?,
        ))
    })
    .collect::<anyhow::Result<_>>()?;
    plan.sink_admin = vec![format!("http://{}", sink.admin_addr()).parse()?];
    plan.proxy_admin = Some(format!("http://{admin}").parse()?);
    plan.log = match (log_key, log_address) {
        (Some(key), Some(addr)) => Some(loadtest::plan::LogTarget {
            url: format!("http://{addr}"),
            key,
        }),
        _ => None,
    };
    // (A `--chaos` value was parsed, and refused if bad, with the other
    // arguments: before anything was started.)
    plan.chaos = if args.chaos.is_empty() {
        let secs = args.duration.as_secs_f64();
        SCHEDULE
            .iter()
            .map(|(at, action)| {
                let event = format!("{}ms:{action}", (secs * at * 1000.0).round());
                event
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("the default schedule's {event}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        args.chaos.clone()
    };

    plan.interrupt = interrupt;
    let report = loadtest::execute(plan, !args.no_progress).await;
    let _ = stop.send(());
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), server).await {
        tracing::error!(error = %e, "the proxy did not stop cleanly");
    }
    sink.stop().await;
    report
}
