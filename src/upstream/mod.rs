//! Upstreams: the pooled HTTP client and whether each upstream is up.
//!
//! One hyper-util client (connection pool) serves every upstream, `http` and
//! `https` alike; `https` is verified against the system roots or the
//! configured `[upstream] ca`. Requests go upstream as HTTP/1.1 only: the
//! proxy re-frames every body itself, which closes the request-smuggling
//! gaps of mixed-version forwarding.
//!
//! Health is passive in this version: an upstream that fails to connect is
//! marked down for `upstream.down_for`, after which it is tried again. The
//! table is indexed by [`UpstreamId`] and uses tokio's clock, so tests can
//! drive it with a paused clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::config::{Timeouts, UpstreamSettings};
use crate::policy::UpstreamId;
use crate::proxy::body::ForwardBody;
use crate::tls::TlsError;

/// The client every forwarded request goes through.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ForwardBody>;

/// Builds the pooled client. `ca_pem` replaces the system roots.
pub fn client(
    settings: &UpstreamSettings,
    timeouts: &Timeouts,
    ca_pem: Option<&[u8]>,
) -> Result<UpstreamClient, TlsError> {
    let tls = crate::tls::client_config(ca_pem)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeouts.upstream_connect));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector))
}

/// Passive health: per upstream, the instant until which it is down.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    down_for: Duration,
    /// Milliseconds since `epoch` until which the upstream is down; 0 = up.
    down_until: Vec<AtomicU64>,
}

impl Health {
    pub fn new(upstreams: usize, down_for: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            down_for,
            down_until: (0..upstreams).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_up(&self, u: UpstreamId) -> bool {
        match self.down_until.get(u.0) {
            Some(until) => until.load(Ordering::Relaxed) <= self.now_ms(),
            None => false,
        }
    }

    /// Marks an upstream down for the configured time.
    pub fn mark_down(&self, u: UpstreamId) {
        let down_for = u64::try_from(self.down_for.as_millis()).unwrap_or(u64::MAX);
        if let Some(until) = self.down_until.get(u.0) {
            // Never 0: 0 means "up" even at the epoch.
            until.store(
                self.now_ms().saturating_add(down_for).max(1),
                Ordering::Relaxed,
            );
        }
    }

    /// How long until the earliest of `ups` comes back (for `Retry-After`).
    pub fn retry_after(&self, ups: impl Iterator<Item = UpstreamId>) -> Duration {
        let now = self.now_ms();
        let soonest = ups
            .filter_map(|u| self.down_until.get(u.0))
            .map(|until| until.load(Ordering::Relaxed).saturating_sub(now))
            .min()
            .unwrap_or(0);
        Duration::from_millis(soonest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn down_for_a_while_then_up() {
        let h = Health::new(2, Duration::from_secs(10));
        let (a, b) = (UpstreamId(0), UpstreamId(1));
        assert!(h.is_up(a) && h.is_up(b));
        h.mark_down(a);
        assert!(!h.is_up(a) && h.is_up(b));
        assert_eq!(h.retry_after([a].into_iter()), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!h.is_up(a));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(h.is_up(a));
        assert!(!h.is_up(UpstreamId(7)), "unknown upstreams are never up");
    }
}
