//! Warnings any client can cause, said at most once a minute each.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a minute has passed since `last` (Unix seconds; 0: never),
/// which it then records: a warning any client can cause, logged each
/// time, would let one flood the log.
pub fn minute_passed(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let was = last.load(Ordering::Relaxed);
    (was == 0 || now >= was + 60)
        && last
            .compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
