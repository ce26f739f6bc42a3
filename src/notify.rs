//! systemd's service notification (`sd_notify(3)`), for `Type=notify`:
//! `READY=1` once every listener is bound — systemd counts the service
//! started only then, so a `systemctl reload` (SIGHUP) or a unit ordered
//! after it waits for a proxy that serves — and `STOPPING=1` when shutdown
//! begins. A datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace); without that variable, nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells systemd `state` (e.g. `READY=1`), if it asked; a failure is
/// logged, never fatal: the proxy serves either way.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let bytes = socket.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&socket)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %socket.to_string_lossy(), state, "could not notify systemd (NOTIFY_SOCKET)");
    }
}
