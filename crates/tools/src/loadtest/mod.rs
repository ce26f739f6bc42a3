//! `residency-proxy loadtest`: an open-loop failover drill.
//!
//! A run sends HTTPS uploads at a fixed arrival rate (open loop, latency from
//! each upload's scheduled time, so free of coordinated omission) from a mix
//! of origin jurisdictions, conveyed by `X-Forwarded-For` or PROXY v2, while
//! a chaos schedule breaks and repairs data centres through the sink and
//! proxy admin APIs. At the end it reconciles with the sinks' records and
//! reports residency violations (uploads stored outside their origin's
//! permitted data centres) and acknowledged-but-missing uploads — both must
//! be 0 — plus failures by reason, time to failover and latency per phase
//! and per jurisdiction.
//!
//! Pieces, in the order a run uses them: [`args`] and [`spec`] (the command
//! line), [`plan`] (what to do, also buildable in code), [`schedule`] (the
//! arrival times), [`client`] and [`upload`] (the HTTPS requests),
//! [`generator`] (spawning, counting, draining), [`chaos`] (admin calls),
//! [`reconcile`], [`failover`] and [`report`] (with `render` for text and
//! `html` for the self-contained HTML report).
//!
//! Safety: targets and admin URLs must be on loopback unless
//! `--allow-remote`; every run ends within its duration plus the drain
//! timeout (plus bounded admin calls).

pub mod args;
pub mod chaos;
pub mod client;
pub mod failover;
pub mod generator;
mod html;
pub mod logcheck;
mod objectives;
pub mod plan;
pub mod reconcile;
mod render;
pub mod report;
pub mod schedule;
pub mod slo;
pub mod spec;
#[cfg(test)]
mod tests;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

pub use args::{LoadtestArgs, LoadtestOptions};
pub use plan::{FromConfig, Plan, Trust};
pub use report::Report;
pub use spec::{ChaosAction, ChaosEvent, Convey, DatacenterMode, Mix, MixEntry, OriginSpec};

pub use chaos::Interrupt;
use chaos::{Admin, Applied};
use upload::RunId;

/// Head start between setting up and the first scheduled upload.
const LEAD: Duration = Duration::from_millis(20);
/// With uploads left unanswered, the sinks' records are read again this
/// often until two reads agree …
const SETTLE_STEP: Duration = Duration::from_secs(1);
/// … for at most this long.
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// Failures of an upload that never reached the proxy: the proxy cannot
/// deliver it late.
/// (Not `tls_error`: it may come after the request was written.)
const NEVER_SENT: [&str; 5] = [
    "no_client",
    "bad_request_built",
    "connect_refused",
    "connect_timeout",
    "connect_error",
];

/// Runs a load test, prints its report (and writes `--json`, `--html`,
/// `--junit`); fails if any upload was stored outside its permitted data
/// centres, an acknowledged upload is missing, the sinks could not be
/// reconciled (or another check failed), or a report could not be written.
/// `policy` is the residency policy of the configuration `--config` names,
/// `proxy` its times; `interrupt` ends the run early ([`Plan::interrupt`]).
pub async fn run(
    args: LoadtestArgs,
    policy: residency_core::policy::Policy,
    proxy: FromConfig,
    interrupt: chaos::Interrupt,
) -> anyhow::Result<()> {
    let mut plan = Plan::from_args(&args, policy, proxy)?;
    plan.interrupt = interrupt;
    let mut report = execute(plan, !args.options.no_progress).await?;
    if let Some(slo) = &args.options.slo {
        report.apply_slo(slo);
    }
    print!("{}", report.render_text());
    let written = report.write_files(
        args.options.json.as_deref(),
        args.options.html.as_deref(),
        args.options.junit.as_deref(),
    );
    failed("load test", &report, written)
}

/// The exit of a run whose report was printed and `written`: an error if
/// the run failed its checks, or a report file could not be written (the
/// others were), saying which.
pub fn failed(what: &str, report: &Report, written: anyhow::Result<()>) -> anyhow::Result<()> {
    let problems = report.problems();
    match written {
        Err(e) if problems.is_empty() => Err(e),
        Err(e) => anyhow::bail!("{what} failed: {} (and {e:#})", problems.join("; ")),
        Ok(()) if problems.is_empty() => Ok(()),
        Ok(()) => anyhow::bail!("{what} failed: {}", problems.join("; ")),
    }
}

/// The sinks' records, read until two reads [`SETTLE_STEP`] apart agree
/// (at most [`SETTLE_MAX`]). With uploads the client gave up on (no answer), the
/// proxy may still be delivering them — a replay after a timed-out attempt,
/// or once a hung data centre was restored — and need not know their
/// client left (an HTTP/1.1 client's close is a half close to it): so the
/// records are read only once [`Plan::late_delivery`] has passed since the
/// last of them was sent (its answer's time bounds that), then again
/// every [`SETTLE_STEP`] until two reads agree (at most [`SETTLE_MAX`]); a
/// late store, in a permitted data centre or not, is reconciled too. With
/// `--proxy-admin`, the wait also lasts while its
/// `residency_detached_requests` (requests it knows run on without their
/// client) is above 0.
async fn settled_records(
    admin: &Admin,
    plan: &Plan,
    since: &[Option<u64>],
    last_unanswered: Option<Instant>,
    progress: bool,
) -> Result<Vec<reconcile::SinkRecord>, String> {
    let sinks = &plan.sink_admin;
    let mut interrupt = plan.interrupt.clone();
    let Some(last) = last_unanswered else {
        // Every upload answered; still, a data centre the proxy gave up on
        // (a timeout answered 504, or replayed elsewhere) may store late
        // what it was sent — one stopped and continued stores what waited
        // in its socket right after it answers a read: read until two
        // reads agree.
        let records = reconcile::fetch_records(admin, sinks, since).await?;
        let deadline = Instant::now() + SETTLE_MAX;
        return settle(admin, sinks, since, records, &mut interrupt, deadline).await;
    };
    let late = last + plan.late_delivery;
    // Interrupted (before or during this wait): the records as they are
    // now; the run fails as interrupted, late stores not waited for.
    if interrupt.as_ref().is_some_and(|rx| *rx.borrow()) {
        return reconcile::fetch_records(admin, sinks, since).await;
    }
    if progress && late > Instant::now() {
        eprintln!(
            "waiting {:.0} s for late stores: uploads got no answer, and the proxy may still deliver them until {:.0} s after they were sent (2 × (2 × timeouts.upstream_connect + timeouts.upstream_response) + 1 s, and 2 × timeouts.upstream_send_idle for a body over 16 KiB)",
            late.saturating_duration_since(Instant::now()).as_secs_f64(),
            plan.late_delivery.as_secs_f64()
        );
    }
    if chaos::unless_interrupted(&mut interrupt, tokio::time::sleep_until(late))
        .await
        .is_none()
    {
        return reconcile::fetch_records(admin, sinks, since).await;
    }
    let deadline = Instant::now() + SETTLE_MAX;
    if let Some(metrics) = plan
        .proxy_admin
        .as_ref()
        .and_then(|p| chaos::join(p, "/metrics").ok())
    {
        while Instant::now() < deadline {
            let answer = admin
                .call(http::Method::GET, metrics.clone(), None, SETTLE_STEP)
                .await;
            let detached = answer.ok().and_then(|(_, body)| {
                String::from_utf8_lossy(&body).lines().find_map(|l| {
                    l.strip_prefix("residency_detached_requests ")?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
            });
            match detached {
                Some(n) if n > 0.0 => {
                    let pause = tokio::time::sleep(SETTLE_STEP / 4);
                    if chaos::unless_interrupted(&mut interrupt, pause)
                        .await
                        .is_none()
                    {
                        return reconcile::fetch_records(admin, sinks, since).await;
                    }
                }
                // None left; or not a residency-proxy, or not answering:
                // by the records.
                _ => break,
            }
        }
    }
    let records = reconcile::fetch_records(admin, sinks, since).await?;
    settle(admin, sinks, since, records, &mut interrupt, deadline).await
}

/// The sinks' records read again every [`SETTLE_STEP`] after `records`
/// until two reads agree (at most until `deadline`), unless interrupted.
async fn settle(
    admin: &Admin,
    sinks: &[http::Uri],
    since: &[Option<u64>],
    mut records: Vec<reconcile::SinkRecord>,
    interrupt: &mut Option<tokio::sync::watch::Receiver<bool>>,
    deadline: Instant,
) -> Result<Vec<reconcile::SinkRecord>, String> {
    if interrupt.as_ref().is_some_and(|rx| *rx.borrow()) {
        return Ok(records);
    }
    while Instant::now() < deadline {
        let pause = tokio::time::sleep(SETTLE_STEP);
        if chaos::unless_interrupted(interrupt, pause).await.is_none() {
            return Ok(records);
        }
        let again = reconcile::fetch_records(admin, sinks, since).await?;
        if again.len() == records.len() {
            return Ok(again);
        }
        records = again;
    }
    Ok(records)
}

/// Runs `plan` and returns its report (a failed check is in the report, not
/// an error). With `progress`, prints one line a second to stderr.
pub async fn execute(mut plan: Plan, progress: bool) -> anyhow::Result<Report> {
    plan.validate()?;
    let clients = client::Clients::build(&plan)?;
    if let Some(why) = client::certificate_refused(&plan).await? {
        anyhow::bail!("{}: the TLS handshake failed: {why}", plan.target);
    }
    let plan = Arc::new(plan);
    let run = RunId::new();
    let admin = Admin::new();
    // The log's checkpoint before the load, to prove it only grew.
    let log_before = match &plan.log {
        Some(target) => {
            let fetcher = crate::fetch::Fetcher::new(&target.url, None)?;
            let verifier = residency_log::note::Verifier::parse(&target.key)?;
            Some(logcheck::checkpoint(&fetcher, &verifier).await?.0)
        }
        None => None,
    };
    // The policy the proxy under test runs, against the one uploads are
    // judged by.
    let policy_warning = match (&plan.proxy_admin, &plan.routing_hash) {
        (Some(proxy), Some(ours)) => other_policy(&admin, proxy, ours).await,
        _ => None,
    };
    // When each sink's records began: one that restarts during the run
    // has lost what it held (its records are in memory only).
    let since = reconcile::records_since(&admin, &plan.sink_admin).await;
    // After that setup (root certificates read, a request): the first
    // uploads are not due before the generator can send them.
    let t0 = Instant::now() + LEAD;

    let chaos_task = tokio::spawn(chaos::run_schedule(
        plan.chaos.clone(),
        admin.clone(),
        plan.sink_admin.clone(),
        plan.proxy_admin.clone(),
        t0,
        plan.interrupt.clone(),
    ));
    let generated = generator::run(Arc::clone(&plan), clients, run.clone(), t0, progress).await;
    let applied = chaos_task.await.context("chaos schedule task")?;

    let mut restored = Vec::new();
    if plan.restore_after {
        for action in chaos::restoring(&plan.chaos, &applied) {
            let result =
                chaos::apply(&admin, &action, &plan.sink_admin, plan.proxy_admin.as_ref()).await;
            restored.push(restored_entry(&action, t0, result));
        }
    }

    // When the last upload that got no answer was sent, at the latest:
    // when its client gave up, or now for one still running.
    let last_unanswered = generated
        .outcomes
        .iter()
        .filter_map(|o| match &o.result {
            generator::Sent::Unfinished => Some(Instant::now()),
            // (Not one that never reached the proxy: no connection, no
            // TLS, no request built.)
            generator::Sent::Done {
                answer, finished, ..
            } if answer.status.is_none()
                && !answer
                    .failure
                    .as_deref()
                    .is_some_and(|f| NEVER_SENT.contains(&f)) =>
            {
                Some(t0 + *finished)
            }
            _ => None,
        })
        .max();
    let reconciled = settled_records(&admin, &plan, &since, last_unanswered, progress).await;
    // Interrupted after the schedule (while waiting for answers or late
    // stores): a partial run too.
    let mut generated = generated;
    if generated.interrupted_at.is_none() && plan.interrupt.as_ref().is_some_and(|rx| *rx.borrow())
    {
        generated.interrupted_at = Some(t0.elapsed());
    }
    let reconciled =
        reconciled.map(|records| reconcile::reconcile(&plan, &run, &generated.outcomes, &records));
    let residency_log = match &plan.log {
        Some(target) => {
            let no_records = std::collections::HashMap::new();
            let stored_in = reconciled.as_ref().map_or(&no_records, |r| &r.stored_in);
            Some(logcheck::check(target, log_before, &generated.outcomes, stored_in).await)
        }
        None => None,
    };
    let mut report = report::build(&plan, &run, &generated, applied, restored, reconciled);
    report.residency_log = residency_log;
    report.warnings.extend(policy_warning);
    report.apply_slo(&slo::Slo::default());
    Ok(report)
}

/// A warning when the proxy's admin API (`proxy`) reports another
/// `residency_policy_info` hash than `ours` (the policy and tenant pins of
/// `--config`): its uploads are then judged by a policy it does not run.
async fn other_policy(admin: &Admin, proxy: &http::Uri, ours: &str) -> Option<String> {
    let unread = |why: String| {
        Some(format!(
            "the policy of the proxy under test could not be compared with --config's: {why} (is --proxy-admin its admin listener?)"
        ))
    };
    let metrics = chaos::join(proxy, "/metrics").ok()?;
    let body = match admin
        .call(http::Method::GET, metrics.clone(), None, SETTLE_STEP * 5)
        .await
    {
        Ok((_, body)) => body,
        Err(e) => return unread(e),
    };
    let text = String::from_utf8_lossy(&body);
    let Some(theirs) = text.lines().find_map(|l| {
        l.strip_prefix("residency_policy_info{hash=\"")?
            .split_once('"')
            .map(|(hash, _)| hash.to_string())
    }) else {
        return unread(format!("{metrics} has no residency_policy_info"));
    };
    (theirs != ours).then(|| {
        format!(
            "the proxy under test runs another routing policy than --config: its residency_policy_info hash is {theirs}, --config's {ours}; uploads were judged by --config's policy"
        )
    })
}

fn restored_entry(action: &ChaosAction, t0: Instant, result: Result<String, String>) -> Applied {
    let at = t0.elapsed();
    let (ok, via, detail) = match result {
        Ok(via) => (true, Some(via), None),
        Err(e) => (false, None, Some(e)),
    };
    Applied {
        event: format!("{action} (restore)"),
        at_s: at.as_secs_f64(),
        applied_at_s: ok.then_some(at.as_secs_f64()),
        ok,
        via,
        detail,
    }
}

#[cfg(test)]
mod settling {
    use super::*;

    /// A sink whose `/records` holds one record more from its second read
    /// on: a data centre, stopped while the run ended, that stored what
    /// waited in its socket just after it answered the first read.
    async fn late_storing_sink() -> http::Uri {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut reads = 0;
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if head.starts_with("GET /records") {
                    reads += 1;
                    let record = |id: u32| {
                        format!(
                            r#"{{"datacenter":"zurich","upload_id":"u{id}","sha256":"00","bytes":1}}"#
                        )
                    };
                    let records: Vec<String> = (0..reads.min(2)).map(record).collect();
                    format!("[{}]", records.join(","))
                } else {
                    // `/stats`: its records began at 5 ms.
                    r#"{"records_since_ms":5}"#.to_string()
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}").parse().unwrap()
    }

    /// Every upload answered (no late delivery to wait for), yet a store
    /// that lands after the first read is counted: the records are read
    /// until two reads agree (drill audit, stop 62: a SIGSTOPped sink's
    /// late stores were missed, and with them duplicates).
    #[tokio::test]
    async fn records_are_read_until_two_reads_agree_when_all_were_answered() {
        let mut plan = super::tests::plan();
        plan.sink_admin = vec![late_storing_sink().await];
        let records = settled_records(&Admin::new(), &plan, &[], None, false)
            .await
            .unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
    }

    /// A sink whose first answer to `/records` is a connection closed
    /// unanswered (a kept-alive connection to a sink that was stopped,
    /// reset when it continues), then answers: the records are read.
    #[tokio::test]
    async fn a_records_read_cut_once_is_tried_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let records = String::from_utf8_lossy(&buf[..n]).starts_with("GET /records");
                if records && std::mem::take(&mut first) {
                    drop(tcp);
                    continue;
                }
                let body = if records {
                    r#"[{"datacenter":"zurich","upload_id":"u0","sha256":"00","bytes":1}]"#
                } else {
                    "{}"
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        let sinks = [format!("http://{addr}").parse().unwrap()];
        let records = reconcile::fetch_records(&Admin::new(), &sinks, &[None])
            .await
            .unwrap();
        assert_eq!(records.len(), 1);
    }

    /// A sink whose records began after the run began (it restarted, or
    /// was reset, and keeps records in memory only) cannot rule out
    /// missing uploads: the records are not reconciled (drill audit, stop
    /// 62: a restarted sink's lost records were reported as 207 missing
    /// uploads).
    #[tokio::test]
    async fn a_sink_that_restarted_during_the_run_is_not_reconciled() {
        let sinks = [late_storing_sink().await];
        let admin = Admin::new();
        let err = reconcile::fetch_records(&admin, &sinks, &[Some(4)])
            .await
            .unwrap_err();
        assert!(
            err.contains("restarted or was reset during the run"),
            "{err}"
        );
        assert!(reconcile::fetch_records(&admin, &sinks, &[Some(5)])
            .await
            .is_ok());
        assert_eq!(reconcile::records_since(&admin, &sinks).await, [Some(5)]);
    }
}
