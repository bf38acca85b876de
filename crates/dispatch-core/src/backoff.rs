//! Exponential retry backoff with jitter.

/// How long to wait before retrying a failed attempt.
///
/// The delay before attempt `n + 1` (after `n` failed attempts) is
/// `initial_ms * multiplier^(n-1)`, capped at `max_ms`, then scaled by a
/// random factor in `[0.5, 1.0]` ("equal jitter") so that tasks which failed
/// together do not retry in lock step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt, before jitter.
    pub initial_ms: u64,
    /// Upper bound on any delay, before jitter.
    pub max_ms: u64,
    /// Growth factor between consecutive delays (>= 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            max_ms: 300_000,
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The un-jittered delay after `failed_attempts` failures (1-based).
    pub fn base_delay(&self, failed_attempts: u32) -> u64 {
        let exp = failed_attempts.saturating_sub(1).min(1_000) as i32;
        let raw = self.initial_ms as f64 * self.multiplier.max(1.0).powi(exp);
        if raw.is_finite() {
            (raw as u64).min(self.max_ms)
        } else {
            self.max_ms
        }
    }

    /// The delay with jitter applied; `unit` is a uniform sample in `[0, 1)`.
    pub fn delay(&self, failed_attempts: u32, unit: f64) -> u64 {
        let base = self.base_delay(failed_attempts);
        let half = base / 2;
        half + ((base - half) as f64 * unit.clamp(0.0, 1.0)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 2.0,
        };
        let delays: Vec<u64> = (1..=6).map(|n| b.base_delay(n)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.base_delay(u32::MAX), 1_000);
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let b = Backoff::default();
        for unit in [0.0, 0.25, 0.999] {
            let d = b.delay(3, unit);
            assert!((2_000..=4_000).contains(&d), "{d}");
        }
    }
}
