//! The `residency-proxy` binary: parse the command line and run it.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-thread free lists without glibc's arena locks and chunk
/// consolidation (malloc/free were ~8% of a new connection's CPU); its v2
/// line (Cargo.toml says why). The `system-alloc` feature leaves the
/// system's, for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = residency_proxy::cli::Cli::parse();
    residency_proxy::cli::run(cli)
}
