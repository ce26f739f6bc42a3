//! Upstreams: the connection pool, the request body as it travels there,
//! and whether each upstream is up.
//!
//! Every request to an upstream goes through [`pool::Pool`] — forwarded
//! uploads and the active health probes ([`crate::probes`]) alike, so a probe
//! exercises the same connect path (TCP, TLS, ALPN, `upstream_connect`) an
//! upload takes. Pooled HTTP/1.1 connections per upstream, `http` and
//! `https`; `https` is verified against the system roots or the configured
//! `[upstream] ca`. Requests go upstream as HTTP/1.1 only: the proxy
//! re-frames every body itself, which closes the request-smuggling gaps of
//! mixed-version forwarding.
//!
//! [`body`] is what a delivery attempt sends; [`health`] keeps whether each
//! upstream may receive traffic.

use crate::config::{Timeouts, UpstreamSettings};
use residency_core::policy::Policy;
use residency_tls::TlsError;

pub mod body;
pub mod gather;
pub mod health;
pub mod pool;
pub mod progress;

pub use health::Health;

/// Why the upstream pool could not be built: the config key and why.
pub type PoolError = (&'static str, String);

/// Builds the pool of one configuration. `ca_pem` replaces the system roots.
pub fn pool(
    policy: &Policy,
    settings: &UpstreamSettings,
    timeouts: &Timeouts,
    ca_pem: Option<&[u8]>,
) -> Result<pool::Pool, PoolError> {
    let tls = residency_tls::client_config(ca_pem)
        .map_err(|e: TlsError| ("upstream.ca", e.to_string()))?;
    pool::Pool::new(
        policy.upstreams.iter().map(|u| u.uri.clone()),
        tls,
        pool::PoolSettings {
            connect_timeout: timeouts.upstream_connect,
            idle_timeout: settings.pool_idle_timeout,
            max_idle_per_upstream: settings.pool_max_idle_per_host,
            response_idle: timeouts.upstream_response_idle,
            send_idle: timeouts.upstream_send_idle,
            max_connections_per_upstream: settings.max_connections_per_upstream,
        },
    )
    .map_err(|e| ("datacenters", e))
}
