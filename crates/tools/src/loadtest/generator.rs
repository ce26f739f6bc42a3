//! The open-loop generator: drives the [`schedule`](super::schedule),
//! spawns every upload as its own task, keeps one [`Outcome`] per scheduled
//! upload, prints progress, and drains in-flight uploads within
//! `drain_timeout` (those still running then are stopped and counted as
//! unfinished).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::chaos::unless_interrupted;
use super::client::Clients;
use super::plan::Plan;
use super::schedule::{drive, Schedule, Tick};
use super::upload::{self, Answer, RunId, Upload};

/// How long stopped uploads get to record themselves after the drain timeout.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What became of one scheduled upload.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub index: u64,
    /// Index into `Plan::mix`.
    pub jurisdiction: usize,
    pub origin: IpAddr,
    /// When it was due, from the start of the run.
    pub scheduled: Duration,
    pub result: Sent,
}

#[derive(Debug, Clone)]
pub enum Sent {
    /// `max_in_flight` was reached: never sent (`not_sent_overload`).
    NotSent,
    /// Still running when the drain timeout ended the run.
    Unfinished,
    /// Answered, or failed in transport, or timed out.
    Done {
        answer: Answer,
        /// When the outcome was known, from the start of the run.
        finished: Duration,
        sha256: [u8; 32],
    },
}

impl Outcome {
    pub fn acknowledged(&self) -> bool {
        matches!(&self.result, Sent::Done { answer, .. } if answer.failure.is_none())
    }

    /// The data centre that answered (response header), if any.
    pub fn datacenter(&self) -> Option<&str> {
        match &self.result {
            Sent::Done { answer, .. } => answer.datacenter.as_deref(),
            _ => None,
        }
    }

    pub fn finished(&self) -> Option<Duration> {
        match &self.result {
            Sent::Done { finished, .. } => Some(*finished),
            _ => None,
        }
    }
}

/// Live counters, for the progress line.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    not_sent: AtomicU64,
}

struct Ctx {
    plan: Arc<Plan>,
    clients: Clients,
    run: RunId,
    t0: Instant,
    counters: Counters,
    outcomes: Mutex<Vec<Outcome>>,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    fn outcomes(&self) -> MutexGuard<'_, Vec<Outcome>> {
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, index: u64, result: Sent) {
        let mut outcomes = self.outcomes();
        if let Ok(i) = outcomes.binary_search_by_key(&index, |o| o.index) {
            outcomes[i].result = result;
        }
    }
}

/// The outcomes of a run, in schedule order.
#[derive(Debug)]
pub struct Generated {
    pub outcomes: Vec<Outcome>,
    /// From the start of the run until the drain ended.
    pub elapsed: Duration,
    /// When the run was interrupted (Ctrl-C): no upload was sent after.
    pub interrupted_at: Option<Duration>,
}

/// Runs the schedule of `plan` from `t0` and waits (bounded) for the uploads.
pub async fn run(
    plan: Arc<Plan>,
    clients: Clients,
    run: RunId,
    t0: Instant,
    progress: bool,
) -> Generated {
    let schedule = Schedule::new(plan.rate, plan.duration);
    let capacity = usize::try_from(schedule.count().min(1 << 20)).unwrap_or(0);
    let (stop_tx, stop_rx) = watch::channel(false);
    let limiter = Arc::new(Semaphore::new(plan.max_in_flight));
    let addresses: Vec<Vec<IpAddr>> = plan
        .mix
        .iter()
        .map(|m| {
            plan.origins
                .get(&m.jurisdiction)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let ctx = Arc::new(Ctx {
        plan: Arc::clone(&plan),
        clients,
        run,
        t0,
        counters: Counters::default(),
        outcomes: Mutex::new(Vec::with_capacity(capacity)),
        stop: stop_rx,
    });
    let ticker = progress.then(|| {
        tokio::spawn(report_progress(
            Arc::clone(&ctx),
            Arc::clone(&limiter),
            plan.max_in_flight,
        ))
    });

    let mut interrupt = plan.interrupt.clone();
    let driven = drive(&schedule, t0, &limiter, |tick: Tick| {
        let scheduled = tick.scheduled.duration_since(t0);
        let Some((jurisdiction, origin)) =
            upload::choose_origin(&ctx.run, tick.index, &plan.mix, &addresses)
        else {
            return;
        };
        let result = if tick.permit.is_some() {
            Sent::Unfinished
        } else {
            ctx.counters.not_sent.fetch_add(1, Ordering::Relaxed);
            Sent::NotSent
        };
        ctx.outcomes().push(Outcome {
            index: tick.index,
            jurisdiction,
            origin,
            scheduled,
            result,
        });
        if let Some(permit) = tick.permit {
            ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
            let ctx = Arc::clone(&ctx);
            tokio::spawn(one(ctx, tick.index, origin, permit));
        }
    });
    // Interrupted: no upload more (not even one already due); those sent
    // are waited for as ever.
    let mut interrupted_at = unless_interrupted(&mut interrupt, driven)
        .await
        .is_none()
        .then(|| t0.elapsed());

    let all = u32::try_from(plan.max_in_flight).unwrap_or(u32::MAX);
    let drain = tokio::time::timeout(plan.drain_timeout, limiter.acquire_many(all));
    // Interrupted while waiting for the answers (and not before): the wait
    // ends as at the drain timeout.
    let drained = if interrupted_at.is_none() {
        match unless_interrupted(&mut interrupt, drain).await {
            Some(drained) => drained.is_ok(),
            None => {
                interrupted_at = Some(t0.elapsed());
                false
            }
        }
    } else {
        drain.await.is_ok()
    };
    if !drained {
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(STOP_GRACE, limiter.acquire_many(all)).await;
    }
    if let Some(t) = ticker {
        t.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(); // ends the live line
        }
    }
    let elapsed = t0.elapsed();
    let outcomes = std::mem::take(&mut *ctx.outcomes());
    drop(stop_tx);
    Generated {
        outcomes,
        elapsed,
        interrupted_at,
    }
}

/// One upload task: holds its in-flight permit until it has an outcome.
async fn one(ctx: Arc<Ctx>, index: u64, origin: IpAddr, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let plan = &ctx.plan;
    let id = ctx.run.upload_id(index);
    let body = upload::body_for(&ctx.run, index, plan.body_size);
    let sha256 = upload::sha256(&body);
    let Some(client) = ctx.clients.for_origin(origin) else {
        ctx.record(index, done(&ctx, Answer::failed("no_client"), sha256));
        return;
    };
    let request = Upload {
        target: &plan.target,
        id: &id,
        origin,
        convey: plan.convey,
        idempotency_key: plan.idempotency_key,
        body,
    };
    let mut stop = ctx.stop.clone();
    let answer = tokio::select! {
        r = tokio::time::timeout(plan.request_timeout, upload::send(client, request)) => {
            r.unwrap_or_else(|_| Answer::failed("client_timeout"))
        }
        _ = stop.wait_for(|s| *s) => {
            ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
            ctx.record(index, Sent::Unfinished);
            return;
        }
    };
    ctx.record(index, done(&ctx, answer, sha256));
}

fn done(ctx: &Ctx, answer: Answer, sha256: [u8; 32]) -> Sent {
    let counter = if answer.failure.is_none() {
        &ctx.counters.acked
    } else {
        &ctx.counters.failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Sent::Done {
        answer,
        finished: ctx.t0.elapsed(),
        sha256,
    }
}

/// Once a second: elapsed, sent, acked, errors, in flight, current rate.
async fn report_progress(ctx: Arc<Ctx>, limiter: Arc<Semaphore>, max: usize) {
    let mut tick =
        tokio::time::interval_at(ctx.t0 + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_sent = 0;
    // On a terminal, one line rewritten in place; elsewhere (a CI log), a
    // line per second.
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        tick.tick().await;
        let c = &ctx.counters;
        let sent = c.sent.load(Ordering::Relaxed);
        let not_sent = c.not_sent.load(Ordering::Relaxed);
        let in_flight = max.saturating_sub(limiter.available_permits());
        let overload = if not_sent > 0 {
            format!(" not-sent {not_sent}")
        } else {
            String::new()
        };
        let line = format!(
            "[{:>5.1}s] sent {sent} acked {} errors {} in-flight {in_flight} rate {}/s{overload}",
            ctx.t0.elapsed().as_secs_f64(),
            c.acked.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            sent - last_sent,
        );
        if live {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        last_sent = sent;
    }
}
