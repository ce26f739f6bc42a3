//! The shutdown flag every long-running task selects on: a `watch` channel
//! set once by `server::Bound::run` (its sender dropping counts as set), and
//! the accept step every listener shares.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The next connection on `listener`, or `None` once the flag is set. A
/// failed accept (EMFILE and friends) backs off 50 ms instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(stop) => return None,
        }
    }
}
