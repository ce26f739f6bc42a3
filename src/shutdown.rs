//! The shutdown flag every long-running task selects on: a `watch` channel
//! set once by `server::Bound::run` (its sender dropping counts as set).

use tokio::sync::watch;

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
