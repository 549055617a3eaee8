//! Retry decisions, kept apart from the mechanism that waits and tries again
//! (as tower keeps `Policy` apart from `Retry`).

use std::time::Duration;

use crate::step::StepError;

/// Decides whether a failed attempt is tried again, and after how long.
pub trait RetryPolicy: Send + Sync {
    /// `attempt` is the number of the attempt that just failed (from 1).
    /// `None`: give up.
    fn delay(&self, attempt: u32, error: &StepError) -> Option<Duration>;
}

/// Exponential backoff with jitter for errors marked retryable: the n-th
/// retry waits between half and all of `initial * 2^(n-1)`, capped at `max`.
/// Jitter keeps runners that failed together from retrying together.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Base delay before the first retry.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl ExponentialBackoff {
    /// `retries` retries starting at `initial`, capped at 30 s.
    pub fn new(retries: u32, initial: Duration) -> Self {
        ExponentialBackoff {
            retries,
            initial,
            max: Duration::from_secs(30),
        }
    }

    fn base(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn delay(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        if !error.is_retryable() || attempt > self.retries {
            return None;
        }
        let base = self.base(attempt);
        let half = base / 2;
        let jitter = Duration::from_nanos(fastrand::u64(
            0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX),
        ));
        Some(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_within_jitter_bounds() {
        let p = ExponentialBackoff::new(3, Duration::from_millis(100));
        let e = StepError::retryable("busy");
        for (attempt, base) in [(1, 100), (2, 200), (3, 400)] {
            let d = p.delay(attempt, &e).unwrap();
            assert!(
                d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base),
                "{attempt}: {d:?}"
            );
        }
        assert_eq!(p.delay(4, &e), None, "retries exhausted");
        assert_eq!(
            p.delay(1, &StepError::fatal("bad input")),
            None,
            "fatal errors are not retried"
        );
    }
}
