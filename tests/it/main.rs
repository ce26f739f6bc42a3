//! Integration tests: one binary, real sockets, real TLS, real mmdb files,
//! real upstream servers. See `support` for the harness.

mod support;

mod routing;
mod refusals;
mod streaming;
mod tls;
mod cli;
mod upstream_tls;
