//! Warnings any client can cause, said at most once a minute each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Whether a minute has passed since `last` (seconds on the process's
/// monotonic clock, from 1; 0: never), which it then records: a warning
/// any client can cause, logged each time, would let one flood the log.
/// Monotonic: on the wall clock, a step back silenced the warnings until
/// it caught up again (time audit, stop 65).
pub fn minute_passed(last: &AtomicU64) -> bool {
    static START: OnceLock<Instant> = OnceLock::new();
    passed_at(
        last,
        START.get_or_init(Instant::now).elapsed().as_secs() + 1,
    )
}

fn passed_at(last: &AtomicU64, now: u64) -> bool {
    let was = last.load(Ordering::Relaxed);
    (was == 0 || now >= was + 60)
        && last
            .compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    #[test]
    fn once_a_minute() {
        let last = AtomicU64::new(0);
        assert!(super::minute_passed(&last));
        assert!(!super::minute_passed(&last));
        let last = AtomicU64::new(0);
        assert!(super::passed_at(&last, 5));
        assert!(!super::passed_at(&last, 64));
        assert!(super::passed_at(&last, 65));
        assert!(!super::passed_at(&last, 100));
    }
}
