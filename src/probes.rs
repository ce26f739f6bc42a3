//! Active health checks: every `health.interval`, a GET of `health.path` on
//! every upstream, concurrently, each bounded by `health.timeout`; upstreams
//! that are down or ejected every `health.recovery_interval`, so one that
//! comes back is seen within a fraction of a second (at most one probe per
//! upstream in flight, and none waits for another's: a blackholed
//! upstream's probe, which takes `health.timeout`, does not slow the
//! others' recovery). A 2xx is a
//! success; anything else (status, error, timeout) a failure. Results feed
//! [`Health::record_probe`]; transitions are logged and the gauges
//! refreshed. The task ends promptly when the shutdown flag is set.
//!
//! The faster probing costs a down upstream `1 / recovery_interval` probes
//! a second from each replica (4 at the default 250 ms; twelve replicas:
//! 48): small next to the uploads it will take, and a blackholed upstream
//! costs each probe `health.timeout`, not a connection per upload.
//!
//! Probes go through the upstream pool ([`crate::upstream::pool`]), like
//! uploads: the same connect path, TLS settings and `upstream_connect`
//! deadline, and a passing probe leaves a warm connection behind. A probe
//! of an upstream that is down or ejected never takes an idle connection:
//! the probe that takes it back must have connected. A probe
//! does not queue for `upstream.max_connections_per_upstream`: with every
//! connection busy it uses one of its own beyond the cap, closed
//! afterwards, so a saturated upstream is not taken for a dead one.
//!
//! [`Health::record_probe`]: crate::upstream::Health::record_probe

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::shutdown::stopped;
use crate::state::{Instance, Snapshot};
use crate::upstream::body::ForwardBody;
use crate::upstream::health::Transition;
use residency_core::policy::UpstreamId;

/// Runs active checks until `stop` is set. Does nothing when checks are off.
pub async fn run(instance: Arc<Instance>, mut stop: watch::Receiver<bool>) {
    let recovery = instance.snapshot().health.settings().recovery_interval;
    let mut tick = tokio::time::interval(recovery);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each upstream (by index) was last probed, and the upstream of
    // each probe still running: one per upstream at a time, but no probe
    // waits for another's (a blackholed upstream's takes `health.timeout`,
    // and must not hold back one that came back).
    let mut last: Vec<Option<tokio::time::Instant>> = Vec::new();
    let mut of_task = std::collections::HashMap::new();
    let mut probes = JoinSet::new();
    loop {
        let done = tokio::select! {
            _ = tick.tick() => None,
            Some(done) = probes.join_next_with_id(), if !probes.is_empty() => Some(done),
            () = stopped(&mut stop) => return,
        };
        let Some(done) = done else {
            start_due(&instance, &mut last, &mut of_task, &mut probes);
            continue;
        };
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        of_task.remove(&id);
        let Ok((_, (u, verdict, state))) = done else {
            continue;
        };
        let Some(ok) = verdict else {
            // No probe was made: the proxy's own socket could not be.
            static SAID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            if crate::throttle::minute_passed(&SAID) {
                let uri = &state.config.policy.upstream(u).uri;
                tracing::warn!(upstream = %uri, "health check not made: the proxy is out of file descriptors (or buffers); the upstream's state is left as it was");
            }
            continue;
        };
        // A reload came while the probe ran: its verdict is the upstream's
        // in the state now in force (the same data centre and URL), whose
        // health the reload copied before the verdict came; recorded on
        // the superseded state it was lost, and with reloads every half
        // second a hung data centre was never taken down (reload audit,
        // stop 68).
        let (state, u) = match instance.snapshot() {
            now if Arc::ptr_eq(&now, &state) => (state, u),
            now => match state.config.policy.same_upstream_in(u, &now.config.policy) {
                Some(u) => (now, u),
                None => continue, // removed by the reload
            },
        };
        if let Some(t) = state.health.record_probe(u, ok) {
            let policy = &state.config.policy;
            let dc = &policy.datacenter_of(u).name;
            let uri = &policy.upstream(u).uri;
            match t {
                Transition::WentDown => {
                    tracing::warn!(datacenter = %dc, upstream = %uri, "upstream down: active checks failing")
                }
                Transition::CameUp => {
                    tracing::info!(datacenter = %dc, upstream = %uri, "upstream up: active checks passing")
                }
                Transition::Readmitted => {
                    tracing::info!(datacenter = %dc, upstream = %uri, "upstream readmitted: it answers probes again")
                }
            }
            instance.refresh_gauges();
        }
    }
}

/// Each probe's upstream, its verdict (`None`: no probe could be made,
/// see [`probe`]) and the snapshot it ran on.
type Probes = JoinSet<(UpstreamId, Option<bool>, Arc<Snapshot>)>;

/// Starts a probe of every upstream that is due (its `interval` passed, or
/// it is down or ejected) and has none running, on the current snapshot.
fn start_due(
    instance: &Instance,
    last: &mut Vec<Option<tokio::time::Instant>>,
    of_task: &mut std::collections::HashMap<tokio::task::Id, usize>,
    probes: &mut Probes,
) {
    let state = instance.snapshot();
    let Some(path) = state.health.settings().path.clone() else {
        return; // checks are off; a reload could turn them on
    };
    let interval = state.health.settings().interval;
    let now = tokio::time::Instant::now();
    let count = state.config.policy.upstreams.len();
    last.resize(count, None);
    let mut running = vec![false; count];
    for &i in of_task.values() {
        if let Some(slot) = running.get_mut(i) {
            *slot = true;
        }
    }
    for i in 0..count {
        let due = last[i].is_none_or(|t| now.duration_since(t) >= interval)
            || state.health.recovering(UpstreamId(i));
        if running[i] || !due {
            continue;
        }
        last[i] = Some(now);
        let (state, path) = (state.clone(), path.clone());
        let task = probes.spawn(async move {
            let u = UpstreamId(i);
            let ok = probe(&state, u, &path).await;
            (u, ok, state)
        });
        of_task.insert(task.id(), i);
    }
}

/// The most of a probe's answer body that is read (and held).
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// One probe: true on a 2xx within the timeout (the answer's body is read,
/// within the same timeout, so the connection can serve the next request);
/// `None` when the proxy could not make its own socket (out of file
/// descriptors): no verdict on the upstream, which was marked down with
/// every other for the proxy's own shortage (exhaustion audit, stop 65).
async fn probe(state: &Snapshot, u: UpstreamId, path: &str) -> Option<bool> {
    let prefix = state
        .config
        .policy
        .upstream(u)
        .uri
        .path()
        .trim_end_matches('/');
    let mut req = Request::new(ForwardBody::empty());
    *req.method_mut() = Method::GET;
    match format!("{prefix}{path}").parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => {
            // The configuration refuses such a path (`health.path`).
            tracing::error!(path, error = %e, "health check path is not a request path");
            return Some(false);
        }
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("residency-proxy-health"),
    );
    let exchange = async {
        // One that is down or ejected is taken back only over a new
        // connection.
        let fresh = state.health.recovering(u);
        let resp = match state.pool.probe(u, req, fresh).await {
            Ok(resp) => resp,
            Err(e) if e.is_local_exhaustion() => return None,
            Err(_) => return Some(false),
        };
        let ok = resp.status().is_success();
        // Read to its end so the connection can serve again, but only so
        // far: a data centre's endless (or huge) answer would else be
        // gathered in memory until the timeout, at every probe. One longer
        // is left unread and its connection closed; the status decides.
        let body = http_body_util::Limited::new(resp.into_body(), PROBE_BODY_LIMIT);
        match body.collect().await {
            Ok(_) => {}
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {}
            Err(_) => return Some(false),
        }
        Some(ok)
    };
    let timeout = state.health.settings().timeout;
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Some(false))
}
