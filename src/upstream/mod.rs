//! Upstreams: the pooled HTTP client and whether each upstream is up.
//!
//! One hyper-util client (connection pool) serves every upstream, `http` and
//! `https` alike; `https` is verified against the system roots or the
//! configured `[upstream] ca`. Requests go upstream as HTTP/1.1 only: the
//! proxy re-frames every body itself, which closes the request-smuggling
//! gaps of mixed-version forwarding.
//!
//! [`health`] keeps whether each upstream may receive traffic; [`check`]
//! probes them actively.

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Timeouts, UpstreamSettings};
use crate::proxy::body::ForwardBody;
use crate::tls::TlsError;

pub mod check;
pub mod health;

pub use health::Health;

/// The client every forwarded request goes through.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ForwardBody>;

/// The client of the active health checks (separate pool, empty bodies).
pub type ProbeClient = Client<HttpsConnector<HttpConnector>, http_body_util::Empty<bytes::Bytes>>;

/// Builds the pooled request client and the probe client, sharing one
/// connector configuration. `ca_pem` replaces the system roots.
pub fn clients(
    settings: &UpstreamSettings,
    timeouts: &Timeouts,
    ca_pem: Option<&[u8]>,
) -> Result<(UpstreamClient, ProbeClient), TlsError> {
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
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host);
    let probes = builder
        .clone()
        .pool_max_idle_per_host(1)
        .build(connector.clone());
    Ok((builder.build(connector), probes))
}
