//! The reconnect delay: exponential with jitter, so that many senders restarted together (after
//! a receiver's reboot, say) do not reconnect in step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First reconnect delay; doubled per failure up to [`BACKOFF_MAX`], with ±25 % jitter.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Consecutive connection failures, and the delay before the next attempt.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts a failure and returns the delay before the next attempt.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        delay(self.failures)
    }

    /// A connection succeeded: the next failure starts again at [`BACKOFF_START`].
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The delay before reconnect attempt `failures` (1-based): doubling from [`BACKOFF_START`] up to
/// [`BACKOFF_MAX`], times a jitter factor in [0.75, 1.25).
pub fn delay(failures: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    // The wall clock's nanoseconds are random enough to spread senders apart, and differ from
    // one failure to the next.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    base.mul_f64(0.75 + 0.5 * f64::from(nanos) / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for (failures, base) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = delay(failures).as_secs_f64();
            assert!(
                d >= 0.75 * base as f64 && d < 1.25 * base as f64,
                "{failures}: {d}"
            );
        }
    }

    #[test]
    fn reset_starts_again_at_one_second() {
        let mut backoff = Backoff::default();
        for _ in 0..10 {
            backoff.fail();
        }
        assert!(backoff.fail() >= BACKOFF_MAX.mul_f64(0.75));
        backoff.reset();
        assert!(backoff.fail() < BACKOFF_START.mul_f64(1.25));
    }
}
