//! `residency-proxy sink`: a reference ingestion server (being written).

/// Command-line arguments of `residency-proxy sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {}

/// Runs the sink until `shutdown` resolves.
pub async fn run(
    _args: SinkArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    shutdown.await;
    anyhow::bail!("not yet available")
}
