//! Integration tests: one binary, real sockets, real TLS, real mmdb files,
//! real upstream servers. See `support` for the harness.

mod support;

mod abuse;
mod cli;
mod drill;
mod early_answers;
mod fleet;
mod framing;
mod health;
mod lifecycle;
mod metrics;
mod page;
mod pool;
mod refusals;
mod reload;
mod retries;
mod routing;
mod streaming;
mod tenants;
mod tiles;
mod tls;
mod transparency;
mod upstream_tls;
mod witness;
