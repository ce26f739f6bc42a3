//! The proxy's peers, reached through the `residency-proxy` binary's
//! subcommands: the reference data-centre [`sink`], the failover load
//! generator ([`loadtest`]), the customer's log verifier ([`verify`]) and the
//! GeoIP database builder ([`geoip`]).
//!
//! None of them links the proxy runtime: they talk to a running proxy over
//! its sockets only, as a real data centre, client or auditor would, so a
//! drill's verdict does not depend on sharing the proxy's code. They share
//! the residency core (to know the policy they check against), the log's
//! data structures and the TLS settings.

/// The version, with the commit built from when known: `0.1.0 (abc123def456)`.
pub const VERSION: &str = env!("RESIDENCY_PROXY_VERSION");
/// The commit built from (12 hex digits), when known.
pub const COMMIT: Option<&str> = option_env!("RESIDENCY_PROXY_COMMIT");

pub mod fetch;
pub mod geoip;
pub mod loadtest;
pub mod ports;
pub mod postgres_server;
pub mod sink;
pub mod verify;
