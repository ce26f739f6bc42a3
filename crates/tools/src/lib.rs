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

pub mod fetch;
pub mod geoip;
pub mod loadtest;
pub mod ports;
pub mod postgres_server;
pub mod sink;
pub mod verify;
