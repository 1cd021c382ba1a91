//! Retry and resync delays.
//!
//! The original agent retried a failing pod in a tight loop, burning CPU and flooding the
//! plugin. Here the n-th consecutive failure waits `base * 2^(n-1)`, capped, with "equal
//! jitter" (a random point in the upper half of the delay) so that pods failing for a shared
//! reason (a plugin restarting, the runtime down) do not retry in lockstep. A plugin that
//! answers CNI code 11 ("try again later") said the condition is transient: it is retried at
//! the base delay, still jittered. Both functions take the random number as input so they are
//! plain arithmetic to test.

use std::time::Duration;

/// The delay before retry number `failures` (1 for the first failure); `random` in [0, 1).
pub(crate) fn retry_delay(
    failures: u32,
    retry_later: bool,
    base: Duration,
    cap: Duration,
    random: f64,
) -> Duration {
    let full = if retry_later {
        base.min(cap)
    } else {
        let doublings = failures.saturating_sub(1).min(32);
        base.saturating_mul(1u32 << doublings.min(31)).min(cap)
    };
    let half = full / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// A resync period spread over its last quarter, so pods listed together do not all resync
/// in the same instant.
pub(crate) fn jittered(period: Duration, random: f64) -> Duration {
    let quarter = period / 4;
    period - quarter + quarter.mul_f64(random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_spacing_grows_and_caps() {
        let upper: Vec<Duration> = (1..=8)
            .map(|n| retry_delay(n, false, BASE, CAP, 1.0))
            .collect();
        let secs: Vec<u64> = upper.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        for n in 1..=8 {
            let low = retry_delay(n, false, BASE, CAP, 0.0);
            assert_eq!(
                low * 2,
                upper[n as usize - 1],
                "lower bound is half the delay"
            );
        }
        assert_eq!(
            retry_delay(u32::MAX, false, BASE, CAP, 0.5),
            CAP / 2 + CAP / 4,
            "huge failure counts stay at the cap"
        );
    }

    #[test]
    fn retry_later_stays_at_the_base() {
        for n in [1, 5, 50] {
            let d = retry_delay(n, true, BASE, CAP, 0.99);
            assert!(d <= BASE && d >= BASE / 2, "{d:?}");
        }
    }

    #[test]
    fn jitter_never_reaches_zero() {
        assert!(retry_delay(1, false, BASE, CAP, 0.0) >= Duration::from_millis(500));
        let resync = Duration::from_secs(300);
        assert_eq!(jittered(resync, 0.0), Duration::from_secs(225));
        assert_eq!(jittered(resync, 1.0), resync);
    }
}
