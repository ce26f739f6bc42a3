//! `residency-proxy loadtest`: an open-loop failover drill (being written).

/// Command-line arguments of `residency-proxy loadtest`.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {}

/// Runs a load test and prints its report.
pub async fn run(_args: LoadtestArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
