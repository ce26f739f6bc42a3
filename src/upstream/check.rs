//! Active health checks: every `health.interval`, a GET of `health.path` on
//! every upstream, concurrently, each bounded by `health.timeout`. A 2xx is a
//! success; anything else (status, error, timeout) a failure. Results feed
//! [`super::Health::record_probe`]; transitions are logged and the gauges
//! refreshed. The task ends promptly when the shutdown flag is set.

use std::sync::Arc;

use http::{Request, Uri};
use http_body_util::Empty;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::health::Transition;
use crate::server::stopped;
use crate::state::{Shared, State};
use residency_core::policy::UpstreamId;

/// Runs active checks until `stop` is set. Does nothing when checks are off.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let interval = shared.state().health.settings().interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut stop) => return,
        }
        let state = shared.state();
        let Some(path) = state.health.settings().path.clone() else {
            // Checks are off; keep the loop so a reload could turn them on.
            continue;
        };
        let mut probes = JoinSet::new();
        for i in 0..state.config.policy.upstreams.len() {
            let state = state.clone();
            let path = path.clone();
            probes.spawn(async move {
                let u = UpstreamId(i);
                (u, probe(&state, u, &path).await)
            });
        }
        let mut changed = false;
        loop {
            let next = tokio::select! {
                next = probes.join_next() => next,
                () = stopped(&mut stop) => return,
            };
            let (u, ok) = match next {
                None => break,
                Some(Ok(result)) => result,
                Some(Err(_)) => continue,
            };
            if let Some(t) = state.health.record_probe(u, ok) {
                changed = true;
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
                }
            }
        }
        if changed {
            shared.refresh_gauges();
        }
    }
}

/// One probe: true on a 2xx within the timeout.
async fn probe(state: &State, u: UpstreamId, path: &str) -> bool {
    let base = &state.config.policy.upstream(u).uri;
    let prefix = base.path().trim_end_matches('/');
    let Ok(uri) = format!(
        "{}://{}{prefix}{path}",
        base.scheme_str().unwrap_or("http"),
        base.authority().map(|a| a.as_str()).unwrap_or_default()
    )
    .parse::<Uri>() else {
        return false;
    };
    let Ok(req) = Request::get(uri)
        .header("user-agent", "residency-proxy-health")
        .body(Empty::new())
    else {
        return false;
    };
    let timeout = state.health.settings().timeout;
    match tokio::time::timeout(timeout, state.probes.request(req)).await {
        Ok(Ok(resp)) => resp.status().is_success(),
        _ => false,
    }
}
