//! residency-proxy: a TLS-terminating reverse proxy that forwards each upload
//! only to a data centre in a jurisdiction where the origin's data may be
//! stored, and refuses (fails closed) when it cannot.
//!
//! The request's path, in module order: [`server`] accepts and terminates TLS
//! (after [`proxy_protocol`] where required), [`proxy`] handles each request:
//! [`origin`] finds the client address, [`decision`] runs [`geo`] and
//! [`policy`], and [`proxy::forward`] streams the upload to an [`upstream`].
//! [`state`] holds the loaded world as a swappable snapshot built from
//! [`config`]; [`metrics`] and [`admin`] expose it. See ARCHITECTURE.md.

pub mod admin;
pub mod cli;
pub mod config;
pub mod country;
pub mod decision;
pub mod demo;
pub mod drill;
pub mod geo;
pub mod hex;
pub mod loadtest;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod sink;
pub mod state;
pub mod tls;
pub mod transparency;
pub mod upstream;
