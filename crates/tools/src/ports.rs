//! Loopback ports for servers that must be named before they start (a
//! child process given `--port`, a config file, PostgreSQL's `-p`).
//!
//! A port found by binding port 0 and letting it go comes from the kernel's
//! ephemeral range, the range every outgoing connection's source port and
//! every other `bind(0)` draws from too: by the time the server binds it, a
//! test's client connection may hold it ("Address already in use"). These
//! ports come from just below that range instead, handed out in turn by a
//! counter shared by the process, so only another process naming ports the
//! same way could take one in between.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are used (at most).
const SPAN: u32 = 8192;

/// A loopback port that was free a moment ago, below the ephemeral range.
pub fn free_port() -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().min(65536);
    // Above the privileged ports (a range starting low leaves fewer).
    let span = SPAN.min(low.saturating_sub(1024)).max(1);
    let base = low.saturating_sub(span);
    // Processes running side by side start at different places: pids up
    // to 200 apart start at least 29 ports apart (7919, used before, put
    // pids 30 apart two ports apart).
    let start = std::process::id().wrapping_mul(4999) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(base + (start + n) % span) else {
            break;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (Linux's default 32768
/// where it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_not_repeated() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        for p in &ports {
            assert!(u32::from(*p) < low && u32::from(*p) >= low - SPAN, "{p}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}
