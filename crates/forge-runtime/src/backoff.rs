//! Retry backoff, shared by jobs (their retries) and workflow steps.

use std::time::Duration;

/// Retry backoff: `base * 2^(attempt-1)`, capped at `max`, with ±25% jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(600),
    };

    /// The delay before the attempt after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        // Jitter spreads retries of jobs that failed together (a database restart, say) so
        // they do not all come back in the same instant.
        raw.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}
