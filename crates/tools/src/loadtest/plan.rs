//! [`Plan`]: everything one load-test run needs, built from the command line
//! ([`Plan::from_args`]) or directly in code (the in-process drill), and
//! checked as a whole by [`Plan::validate`] before anything is sent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use http::Uri;

use super::args::LoadtestArgs;
use super::spec::{ChaosAction, ChaosEvent, Convey, MixEntry};
use residency_core::policy::{JurisdictionId, Policy};
use residency_core::report::ConfigReport;

/// Largest accepted body, so a typo cannot exhaust memory.
pub const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;
/// Smallest body: the upload id is written into it to make it unique.
pub const MIN_BODY_SIZE: usize = 64;
/// Largest accepted in-flight cap.
pub const MAX_IN_FLIGHT: usize = 1_000_000;
/// Most uploads one run may schedule (each keeps ~200 bytes of outcome).
pub const MAX_UPLOADS: u64 = 20_000_000;
/// Longest accepted run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// How the proxy's certificate is checked.
#[derive(Clone)]
pub enum Trust {
    /// The system's root certificates.
    System,
    /// Only the certificates of this PEM bundle.
    CaPem(Vec<u8>),
    /// Any certificate at all (testing only; see `client::InsecureAcceptAnyCertificate`).
    InsecureAcceptAnyCertificate,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::System => f.write_str("System"),
            Trust::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            Trust::InsecureAcceptAnyCertificate => f.write_str("InsecureAcceptAnyCertificate"),
        }
    }
}

/// One load-test run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `https://` URL every upload is POSTed to.
    pub target: Uri,
    /// Uploads per second; upload `i` is scheduled at `i / rate`.
    pub rate: f64,
    /// Uploads are scheduled in `[0, duration)`.
    pub duration: Duration,
    pub max_in_flight: usize,
    pub body_size: usize,
    /// Send the upload id as `Idempotency-Key` too.
    pub idempotency_key: bool,
    pub trust: Trust,
    /// Jurisdictions and their weights.
    pub mix: Vec<MixEntry>,
    /// Client addresses per jurisdiction (every mix entry needs at least one).
    pub origins: BTreeMap<String, Vec<IpAddr>>,
    pub convey: Convey,
    /// The proxy's residency policy (`Config::load(..).policy`).
    pub policy: Policy,
    /// Sorted by time by [`Plan::validate`].
    pub chaos: Vec<ChaosEvent>,
    /// How long after a data centre is repaired the proxy under test may
    /// still skip it (its `health.down_for` and active checks' recovery):
    /// one repaired less than this before a fault is no alternative to
    /// fail over to.
    pub recovery: Duration,
    /// How long after an upload was sent the proxy under test may still
    /// deliver it, though its client gave up (its
    /// `Timeouts::late_delivery`): uploads that got no answer are
    /// reconciled only after that.
    pub late_delivery: Duration,
    /// The `hash` of `residency_policy_info` a proxy running `--config`
    /// exports (its policy and tenant pins): with `proxy_admin`, a proxy
    /// exporting another is running another policy than the one uploads
    /// are judged by, and the report warns.
    pub routing_hash: Option<String>,
    /// Sink admin base URLs (`/datacenters/{name}/mode`, `/records`).
    pub sink_admin: Vec<Uri>,
    /// Proxy admin base URL (`/datacenters/{name}/drain|undrain`).
    pub proxy_admin: Option<Uri>,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    pub allow_remote: bool,
    /// Set data centres back to normal (and undrain them) before reconciling.
    pub restore_after: bool,
    /// Also prove the run from the proxy's transparency log.
    pub log: Option<LogTarget>,
    /// Set to `true` to end the run early (Ctrl-C): no upload or chaos
    /// event more; the rest (waiting for answers, undoing the chaos,
    /// reconciling, the report, which fails) as ever.
    pub interrupt: super::chaos::Interrupt,
}

/// What a plan takes from the configuration of the proxy under test.
#[derive(Debug, Clone, Default)]
pub struct FromConfig {
    /// [`Plan::recovery`].
    pub recovery: Duration,
    /// [`Plan::late_delivery`].
    pub late_delivery: Duration,
    /// [`Plan::routing_hash`].
    pub routing_hash: Option<String>,
}

/// The log the proxy under test writes to.
#[derive(Debug, Clone)]
pub struct LogTarget {
    /// Its base URL (`transparency.address`).
    pub url: String,
    /// Its verifier key, `name+keyid+base64`.
    pub key: String,
}

impl Plan {
    /// A plan with the command line's defaults for everything but the target
    /// and the policy; fill in `mix`, `origins` (and the rest) before use.
    pub fn new(target: Uri, policy: Policy) -> Plan {
        Plan {
            target,
            rate: 100.0,
            duration: Duration::from_secs(60),
            max_in_flight: 10_000,
            body_size: 1024,
            idempotency_key: false,
            trust: Trust::System,
            mix: Vec::new(),
            origins: BTreeMap::new(),
            convey: Convey::Xff,
            policy,
            chaos: Vec::new(),
            recovery: Duration::ZERO,
            // The proxy's defaults: 2 × (2 × 3 s + 60 s) + 1 s.
            late_delivery: Duration::from_secs(133),
            routing_hash: None,
            sink_admin: vec![Uri::from_static("http://127.0.0.1:9100")],
            proxy_admin: None,
            request_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
            allow_remote: false,
            restore_after: true,
            log: None,
            interrupt: None,
        }
    }

    /// Reads the files the arguments name (CA) and validates the result
    /// against `policy`, the residency policy of the configuration
    /// `--config` names (loaded by the caller, as its `proxy` times).
    pub fn from_args(
        args: &LoadtestArgs,
        policy: Policy,
        proxy: FromConfig,
    ) -> anyhow::Result<Plan> {
        let args = &args.options;
        // Input that cannot be read is listed with the rest (exit 2).
        let mut problems = Vec::new();
        let trust = match (&args.ca, args.insecure) {
            (Some(path), _) => match std::fs::read(path) {
                Ok(pem) => {
                    if let Err(e) = residency_tls::client_config(Some(&pem)) {
                        problems.push(format!("--ca {}: {e}", path.display()));
                    }
                    Trust::CaPem(pem)
                }
                Err(e) => {
                    problems.push(format!("--ca {}: {e}", path.display()));
                    Trust::System
                }
            },
            (None, true) => Trust::InsecureAcceptAnyCertificate,
            (None, false) => Trust::System,
        };
        // A URL that does not parse is listed; a loopback stand-in keeps
        // the other checks from adding to it.
        let mut url = |text: &str, flag: &str, stand_in: &'static str| {
            parse_url(text, flag).unwrap_or_else(|e| {
                problems.push(format!("{e:#}"));
                Uri::from_static(stand_in)
            })
        };
        let target = url(&args.target, "--target", "https://127.0.0.1/");
        let sink_admin = args
            .sink_admin
            .iter()
            .map(|u| url(u, "--sink-admin", "http://127.0.0.1/"))
            .collect();
        let proxy_admin = args
            .proxy_admin
            .as_deref()
            .map(|u| url(u, "--proxy-admin", "http://127.0.0.1/"));
        let mut origins: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for o in &args.origins {
            let list = origins.entry(o.jurisdiction.clone()).or_default();
            if !list.contains(&o.address) {
                list.push(o.address);
            }
        }
        let mut plan = Plan {
            target,
            rate: args.rate,
            duration: args.duration,
            max_in_flight: args.max_in_flight,
            body_size: args.body_size,
            idempotency_key: args.idempotency_key,
            trust,
            mix: args.mix.0.clone(),
            origins,
            convey: args.convey,
            policy,
            chaos: args.chaos.clone(),
            recovery: proxy.recovery,
            late_delivery: proxy.late_delivery,
            routing_hash: proxy.routing_hash,
            sink_admin,
            proxy_admin,
            request_timeout: args.request_timeout,
            drain_timeout: args.drain_timeout,
            allow_remote: args.allow_remote,
            restore_after: !args.leave_chaos,
            log: None,
            interrupt: None,
        };
        // Reports that could not be written at the end would be lost with
        // the run: found now, with the other problems.
        check_outputs(
            &[
                ("--json", args.json.as_deref()),
                ("--html", args.html.as_deref()),
                ("--junit", args.junit.as_deref()),
            ],
            &mut problems,
        );
        plan.check(problems)?;
        Ok(plan)
    }

    /// Checks the plan as a whole (every problem at once) and sorts the
    /// chaos schedule. [`super::execute`] calls it too.
    pub fn validate(&mut self) -> anyhow::Result<()> {
        self.check(Vec::new())
    }

    /// [`Plan::validate`], with `problems` found before.
    fn check(&mut self, mut problems: Vec<String>) -> anyhow::Result<()> {
        let p = &mut problems;
        check_load(self.rate, self.duration, self.body_size, p);
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            p.push(format!(
                "max-in-flight: must be between 1 and {MAX_IN_FLIGHT}"
            ));
        }
        if self.request_timeout.is_zero() || self.drain_timeout.is_zero() {
            p.push("request-timeout and drain-timeout must be > 0".into());
        }
        if self.target.scheme_str() != Some("https") || self.target.host().is_none() {
            p.push(format!("target {}: must be an https:// URL", self.target));
        }
        self.check_host(&self.target.clone(), "target", p);
        if self.sink_admin.is_empty() {
            p.push("sink-admin: at least one is needed to reconcile".into());
        }
        for u in self
            .sink_admin
            .clone()
            .iter()
            .chain(self.proxy_admin.clone().iter())
        {
            if u.scheme_str() != Some("http") || u.host().is_none() {
                p.push(format!("admin URL {u}: must be an http:// URL"));
            }
            self.check_host(u, "admin URL", p);
        }
        self.check_mix(p);
        self.chaos.sort_by_key(|e| e.at);
        let names = self.datacenter_names();
        check_chaos(&self.chaos, self.duration, &names, "the configuration", p);
        for e in &self.chaos {
            let needs_proxy = !matches!(e.action, ChaosAction::Mode { .. });
            if needs_proxy && self.proxy_admin.is_none() {
                p.push(format!("chaos {e}: drain/undrain needs --proxy-admin"));
            }
        }
        Ok(refuse("loadtest", problems)?)
    }

    fn check_mix(&self, p: &mut Vec<String>) {
        if self.mix.is_empty() || self.mix.iter().all(|m| m.weight == 0) {
            p.push("mix: at least one jurisdiction with a weight > 0".into());
        }
        for (i, m) in self.mix.iter().enumerate() {
            if self.mix[..i]
                .iter()
                .any(|o| o.jurisdiction == m.jurisdiction)
            {
                p.push(format!("mix: `{}` appears twice", m.jurisdiction));
            }
            if self.jurisdiction_id(&m.jurisdiction).is_none() {
                let names: Vec<&str> = self
                    .policy
                    .jurisdictions
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect();
                p.push(format!(
                    "mix: the configuration has no jurisdiction `{}` (it has {})",
                    m.jurisdiction,
                    names.join(", ")
                ));
            }
            if m.weight > 0 && self.origins.get(&m.jurisdiction).is_none_or(Vec::is_empty) {
                p.push(format!(
                    "mix: no --origin {}=ADDRESS for jurisdiction `{}`",
                    m.jurisdiction, m.jurisdiction
                ));
            }
        }
    }

    fn check_host(&self, uri: &Uri, what: &str, p: &mut Vec<String>) {
        if self.allow_remote {
            return;
        }
        if !uri.host().is_some_and(is_loopback_host) {
            p.push(format!(
                "{what} {uri}: not a loopback host (127.0.0.0/8, ::1, localhost); pass --allow-remote to load a remote system"
            ));
        }
    }

    /// The policy's id for a jurisdiction name.
    pub fn jurisdiction_id(&self, name: &str) -> Option<JurisdictionId> {
        self.policy
            .jurisdictions
            .iter()
            .position(|j| j.name == name)
            .map(JurisdictionId)
    }

    /// Is data of jurisdiction `origin` allowed in data centre `datacenter`?
    /// `None`: the policy knows no such jurisdiction or data centre.
    pub fn permits(&self, origin: &str, datacenter: &str) -> Option<bool> {
        let j = self.jurisdiction_id(origin)?;
        let d = self
            .policy
            .datacenters
            .iter()
            .position(|d| d.name == datacenter)?;
        Some(
            self.policy
                .permitted(j)
                .iter()
                .any(|g| g.datacenters.iter().any(|id| id.0 == d)),
        )
    }

    /// How many uploads the schedule holds.
    pub fn total_requests(&self) -> u64 {
        super::schedule::Schedule::new(self.rate, self.duration).count()
    }

    fn datacenter_names(&self) -> Vec<&str> {
        self.policy
            .datacenters
            .iter()
            .map(|d| d.name.as_str())
            .collect()
    }
}

/// `localhost`, 127.0.0.0/8, ::1 (and its IPv4-mapped form).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn parse_url(text: &str, flag: &str) -> anyhow::Result<Uri> {
    let uri: Uri = text
        .trim()
        .parse()
        .with_context(|| format!("{flag} {text}: not a URL"))?;
    if uri.scheme().is_none() || uri.host().is_none() {
        bail!(
            "{flag} {text}: expected an absolute URL such as https://127.0.0.1:8443/v1/telemetry"
        );
    }
    Ok(uri)
}

/// What is wrong with a run's load, whatever it runs against (`drill`
/// checks it before it starts anything): its rate, duration and body size,
/// and the uploads they make. Each problem is `key: message`.
pub fn check_load(rate: f64, duration: Duration, body_size: usize, p: &mut Vec<String>) {
    if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
        p.push(format!("rate {rate}: must be > 0 and at most 1000000"));
    }
    if duration.is_zero() || duration > MAX_DURATION {
        p.push("duration: must be > 0 and at most 24h".into());
    }
    let total = super::schedule::Schedule::new(rate, duration).count();
    if total > MAX_UPLOADS {
        p.push(format!(
            "rate × duration: {total} uploads; at most {MAX_UPLOADS} per run"
        ));
    }
    if total == 0 && rate.is_finite() && rate > 0.0 && !duration.is_zero() {
        p.push(format!(
            "rate × duration: no upload due in {duration:?} at {rate}/s; raise either"
        ));
    }
    if !(MIN_BODY_SIZE..=MAX_BODY_SIZE).contains(&body_size) {
        p.push(format!(
            "body-size {body_size}: must be between {MIN_BODY_SIZE} and {MAX_BODY_SIZE}"
        ));
    }
}

/// Chaos events that cannot happen: at or after the run's end, or for a
/// data centre not among `datacenters` (those `owner`, "the
/// configuration", has).
pub fn check_chaos(
    chaos: &[ChaosEvent],
    duration: Duration,
    datacenters: &[&str],
    owner: &str,
    p: &mut Vec<String>,
) {
    for e in chaos {
        if e.at >= duration {
            p.push(format!(
                "chaos {e}: at or after the end of the run ({duration:?})"
            ));
        }
        let dc = e.action.datacenter();
        if !datacenters.contains(&dc) {
            p.push(format!(
                "chaos {e}: {owner} has no data centre `{dc}` (it has {})",
                datacenters.join(", ")
            ));
        }
    }
}

/// `problems` (each `key: message`) as the `command`'s report (exit 2,
/// invalid input, listing all); `Ok` when there are none.
pub fn refuse(command: &str, problems: Vec<String>) -> Result<(), ConfigReport> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut report = ConfigReport::new(command);
    for problem in problems {
        match problem.split_once(": ") {
            Some((key, message)) => report.push(key, message),
            None => report.push(command, problem),
        }
    }
    Err(report)
}

/// Output files (`--json`, `--html`, `--junit`: flag and path) that could
/// not be written at the end of a run, checked before it starts: the
/// directory must exist and take the file. A file not there before is not
/// left behind.
pub fn check_outputs(outputs: &[(&str, Option<&std::path::Path>)], p: &mut Vec<String>) {
    for (flag, path) in outputs {
        let Some(path) = path else { continue };
        let probe = if path.is_dir() {
            Err(std::io::Error::other("a directory, not a file"))
        } else if path.exists() {
            // Opened to write, not truncated: the run may still fail
            // before the report replaces it.
            std::fs::OpenOptions::new().write(true).open(path).map(drop)
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|_| std::fs::remove_file(path))
        };
        if let Err(e) = probe {
            p.push(format!("{flag} {}: cannot be written: {e}", path.display()));
        }
    }
}
