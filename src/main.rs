//! The `residency-proxy` binary: parse the command line and run it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = residency_proxy::cli::Cli::parse();
    residency_proxy::cli::run(cli)
}
