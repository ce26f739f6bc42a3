//! residency-proxy: a TLS-terminating reverse proxy that forwards each upload
//! only to a data centre in a jurisdiction where the origin's data may be
//! stored, and refuses (fails closed) when it cannot.
//!
//! This crate is the runtime. The decision itself — client address, country,
//! jurisdiction, permitted data centres — is the pure `residency_core`; the
//! proof-of-residency log's data structures and storage are `residency_log`;
//! rustls settings are `residency_tls`; the sink, load generator, verifier
//! and GeoIP builder are `residency_tools`. See ARCHITECTURE.md.
//!
//! The request's path, in module order: [`server`] accepts and terminates TLS
//! (after [`proxy_protocol`] where required), [`proxy`] handles each request
//! (resolving the origin and deciding with the core) and streams the upload
//! to an [`upstream`]. [`state`] holds the loaded world as a swappable
//! snapshot built from [`config`]; [`metrics`], [`admin`] and [`log_api`]
//! expose it; [`reload`] replaces it; [`cli`] is the command line.

pub mod admin;
pub mod cli;
pub mod client_limit;
pub mod config;
pub mod config_source;
pub mod explain;
pub mod files;
pub mod lazy;
pub mod log_api;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod plain_http;
pub mod probes;
pub mod proxy;
pub mod proxy_protocol;
pub mod query;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod tenancy;
pub mod throttle;
pub mod upstream;
pub mod witness;
pub mod witnesses;
