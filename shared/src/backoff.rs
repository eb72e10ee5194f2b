//! The one retry policy of the product: exponential backoff with jitter. Broker reconnects, delivery
//! retries through the delay queues and delivery-event publishing all wait by it, each with its own
//! base and cap.
//!
//! The n-th consecutive failure waits `base · 2^(n-1)`, capped at `max`, then scaled by a random
//! factor in [0.5, 1.5) and capped at `max` again: processes that failed together (a broker restart
//! drops every connection at once) do not all come back in the same instant.

use std::time::Duration;

/// Capped exponential backoff with ±50 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The nominal wait after the first failure.
    pub base: Duration,
    /// No wait is longer than this.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait before trying again after `failures` consecutive failures (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, fastrand::f64())
    }

    /// The nominal (unjittered) wait after `failures` consecutive failures.
    pub fn nominal(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(2u32.saturating_pow(doublings)).min(self.max)
    }

    /// [`Backoff::delay`] with the random draw given (`unit` in [0, 1)), for tests.
    fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        self.nominal(failures).mul_f64(0.5 + unit.clamp(0.0, 1.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_and_never_pass_the_cap() {
        let policy = Backoff::new(Duration::from_secs(1), Duration::from_secs(900));
        for failures in 1..40 {
            let nominal = policy.nominal(failures);
            for unit in [0.0, 0.25, 0.5, 0.999] {
                let d = policy.delay_with(failures, unit);
                assert!(d >= nominal / 2 && d <= nominal.mul_f64(1.5), "{failures}: {d:?}");
                assert!(d <= policy.max, "{failures}: {d:?}");
            }
        }
        assert_eq!(policy.nominal(1), Duration::from_secs(1));
        assert_eq!(policy.nominal(4), Duration::from_secs(8));
        assert_eq!(policy.nominal(11), Duration::from_secs(900));
        assert_eq!(policy.nominal(0), Duration::from_secs(1), "zero failures waits like the first");
    }

    #[test]
    fn the_random_draw_spreads_waits() {
        let policy = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| policy.delay(3)).collect();
        assert!(draws.len() > 10, "{draws:?}");
        let late: Duration = (0..50).map(|_| policy.delay(10)).sum();
        let early: Duration = (0..50).map(|_| policy.delay(1)).sum();
        assert!(late > early * 4, "{late:?} vs {early:?}");
    }
}
