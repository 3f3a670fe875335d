//! Retry back-off between attempts on one deployment (RUN-10).

use std::time::Duration;

use rand::Rng;

/// Upper bound of one back-off sleep before jitter.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Base used when `retry_after` is unset or zero.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);

/// Exponential back-off with jitter: `min(base·2^attempt, 30 s)·U[0.5, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Base delay (`retry_after`, or 1 s when that is 0).
    pub base: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: DEFAULT_RETRY_BASE }
    }
}

impl Backoff {
    /// From the `router_settings.retry_after` seconds; 0, negative or
    /// non-finite values give the 1 s default.
    pub fn from_retry_after_secs(retry_after: f64) -> Self {
        let base = Duration::try_from_secs_f64(retry_after).ok().filter(|d| !d.is_zero()).unwrap_or(DEFAULT_RETRY_BASE);
        Self { base }
    }

    /// Sleep before retry number `attempt` (0-based).
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        retry_delay(self.base, attempt, rng)
    }
}

/// `min(base·2^attempt, 30 s)·U[0.5, 1)` (RUN-10). A zero `base` means 1 s.
pub fn retry_delay<R: Rng + ?Sized>(base: Duration, attempt: u32, rng: &mut R) -> Duration {
    let base = if base.is_zero() { DEFAULT_RETRY_BASE } else { base };
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    let capped = base.saturating_mul(factor).min(MAX_RETRY_DELAY);
    capped.mul_f64(rng.random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn grows_then_caps_with_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..70 {
            let full = Duration::from_secs(1u64 << attempt.min(5)).min(MAX_RETRY_DELAY);
            for _ in 0..100 {
                let d = retry_delay(Duration::from_secs(1), attempt, &mut rng);
                assert!(d >= full / 2 && d < full, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn zero_base_means_one_second() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = retry_delay(Duration::ZERO, 0, &mut rng);
        assert!(d >= Duration::from_millis(500) && d < Duration::from_secs(1));
        assert_eq!(Backoff::from_retry_after_secs(0.0).base, DEFAULT_RETRY_BASE);
        assert_eq!(Backoff::from_retry_after_secs(f64::NAN).base, DEFAULT_RETRY_BASE);
        assert_eq!(Backoff::from_retry_after_secs(2.5).base, Duration::from_millis(2500));
        let d = Backoff::from_retry_after_secs(2.0).delay(1, &mut rng);
        assert!(d >= Duration::from_secs(2) && d < Duration::from_secs(4));
    }
}
