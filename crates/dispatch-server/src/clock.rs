//! The server's clocks: [`now_ms`], fed to the core and stamped on tasks,
//! and [`wall_ms`], the calendar, for cron fires.

use std::time::{SystemTime, UNIX_EPOCH};

use dispatch_core::Millis;

/// Wall-clock milliseconds since the Unix epoch, as the operating system
/// says now: for what follows the calendar (cron fires).
pub(crate) fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// The server's clock, fed to the core and stamped on tasks: the wall
/// clock read once at start, advanced by the monotonic clock. It never goes
/// back and ages at the rate of real time, so a wall clock stepped by the
/// operating system neither stalls leases nor fires a timer twice (leases,
/// timeouts, collection holds, rate limits and retry backoffs are all
/// durations). Delayed tasks (`run_at`) follow it too; cron fires follow
/// the wall clock itself.
pub(crate) fn now_ms() -> Millis {
    static START: std::sync::OnceLock<(Millis, std::time::Instant)> = std::sync::OnceLock::new();
    let (wall, at) = START.get_or_init(|| (wall_ms(), std::time::Instant::now()));
    wall.saturating_add(at.elapsed().as_millis() as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The core's clock starts at the wall clock and never goes back,
    /// whatever the wall clock does afterwards (it is advanced by the
    /// monotonic clock only); the simulation steps the core's time back and
    /// forward to check the core copes with any caller.
    #[test]
    fn the_core_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let first = now_ms();
        assert!(
            first.abs_diff(wall_ms()) < 5_000,
            "{first} vs {}",
            wall_ms()
        );
        let mut last = first;
        for _ in 0..100_000 {
            let t = now_ms();
            assert!(t >= last, "{t} after {last}");
            last = t;
        }
    }
}
