//! The open-loop arrival schedule.
//!
//! Upload `i` is due at `t0 + i / rate`, computed from `i` (no accumulated
//! drift) and never from earlier responses. [`drive`] sleeps until each due
//! time and hands the tick to the caller, who spawns the upload as its own
//! task; if the driver falls behind (a busy runtime), `sleep_until` returns at
//! once and the late ticks burst out back to back, as
//! `MissedTickBehavior::Burst` would. Latency is measured from
//! [`Tick::scheduled`], so a late start counts against the system (no
//! coordinated omission). An upload that finds every in-flight permit taken
//! is handed over without a permit: the caller counts it as
//! `not_sent_overload`, it is never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A fixed arrival rate over a fixed window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub rate: f64,
    pub duration: Duration,
}

impl Schedule {
    pub fn new(rate: f64, duration: Duration) -> Schedule {
        Schedule { rate, duration }
    }

    /// Number of uploads: those with `i / rate < duration`.
    pub fn count(&self) -> u64 {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return 0;
        }
        // The epsilon keeps 3 s × 100/s at exactly 300 despite rounding.
        let n = (self.duration.as_secs_f64() * self.rate - 1e-9).ceil();
        if n <= 0.0 {
            0
        } else {
            n as u64
        }
    }

    /// When upload `i` is due, from the start of the run.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// One due upload.
#[derive(Debug)]
pub struct Tick {
    pub index: u64,
    /// When it was due; latency is measured from here.
    pub scheduled: Instant,
    /// `None`: `max_in_flight` uploads were already in flight, so this one is
    /// not sent (`not_sent_overload`).
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Calls `on_tick` for every upload of `schedule` at its due time after
/// `t0`. `on_tick` must not wait for the upload: spawn it. The in-flight
/// permits come from `limiter` (one per upload, released when dropped).
pub async fn drive(
    schedule: &Schedule,
    t0: Instant,
    limiter: &Arc<Semaphore>,
    mut on_tick: impl FnMut(Tick),
) {
    for index in 0..schedule.count() {
        let scheduled = t0 + schedule.offset(index);
        tokio::time::sleep_until(scheduled).await;
        let permit = limiter.clone().try_acquire_owned().ok();
        on_tick(Tick {
            index,
            scheduled,
            permit,
        });
    }
}
