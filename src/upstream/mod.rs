//! Upstreams: the connection pool, the probe client and whether each
//! upstream is up.
//!
//! Forwarded requests go through [`pool::Pool`]: pooled HTTP/1.1
//! connections per upstream, `http` and `https` alike; `https` is verified
//! against the system roots or the configured `[upstream] ca`. Requests go
//! upstream as HTTP/1.1 only: the proxy re-frames every body itself, which
//! closes the request-smuggling gaps of mixed-version forwarding.
//!
//! [`health`] keeps whether each upstream may receive traffic; [`check`]
//! probes them actively, through hyper-util's client.

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Timeouts, UpstreamSettings};
use residency_core::policy::Policy;
use residency_tls::TlsError;

pub mod check;
pub mod health;
pub mod pool;

pub use health::Health;

/// The client of the active health checks (its own small pool, empty bodies).
pub type ProbeClient = Client<HttpsConnector<HttpConnector>, http_body_util::Empty<bytes::Bytes>>;

/// Why the upstream clients could not be built: the config key and why.
pub type ClientError = (&'static str, String);

/// Builds the request pool and the probe client, sharing one TLS
/// configuration. `ca_pem` replaces the system roots.
pub fn clients(
    policy: &Policy,
    settings: &UpstreamSettings,
    timeouts: &Timeouts,
    ca_pem: Option<&[u8]>,
) -> Result<(pool::Pool, ProbeClient), ClientError> {
    let tls = residency_tls::client_config(ca_pem)
        .map_err(|e: TlsError| ("upstream.ca", e.to_string()))?;
    let pool = pool::Pool::new(
        policy.upstreams.iter().map(|u| u.uri.clone()),
        tls.clone(),
        pool::PoolSettings {
            connect_timeout: timeouts.upstream_connect,
            idle_timeout: settings.pool_idle_timeout,
            max_idle_per_upstream: settings.pool_max_idle_per_host,
        },
    )
    .map_err(|e| ("datacenters", e))?;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeouts.upstream_connect));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let probes = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(1)
        .build(connector);
    Ok((pool, probes))
}
