//! Monotonic deadlines and the poll(2) timeouts that wait for them.
//!
//! Deadlines are [`Instant`]s (CLOCK_MONOTONIC), so a wall-clock jump never
//! shortens or stretches a limit. A timeout is rounded *up* to whole
//! milliseconds: poll never wakes before the deadline, and at most about a
//! millisecond plus scheduling latency after it.

use std::time::{Duration, Instant};

/// `start + d`, or `None` ("never") when that is beyond what the clock can
/// represent.
pub fn after(start: Instant, d: Duration) -> Option<Instant> {
    start.checked_add(d)
}

/// Whether `deadline` has come.
pub fn reached(now: Instant, deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| now >= d)
}

/// poll(2) timeout in milliseconds until `deadline`: -1 (wait forever) for
/// none, 0 when it has passed, otherwise the remaining time rounded up and
/// capped at `i32::MAX`.
pub fn poll_timeout_ms(now: Instant, deadline: Option<Instant>) -> i32 {
    let Some(deadline) = deadline else {
        return -1;
    };
    let left = deadline.saturating_duration_since(now);
    let nanos = left.as_nanos();
    let ms = nanos.div_ceil(1_000_000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_milliseconds() {
        let now = Instant::now();
        let t = |d: Duration| poll_timeout_ms(now, Some(now + d));
        assert_eq!(t(Duration::ZERO), 0);
        assert_eq!(t(Duration::from_nanos(1)), 1);
        assert_eq!(t(Duration::from_millis(1)), 1);
        assert_eq!(t(Duration::from_nanos(1_000_001)), 2);
        assert_eq!(t(Duration::from_micros(199_999)), 200);
        assert_eq!(t(Duration::from_secs(3)), 3000);
    }

    #[test]
    fn past_none_and_huge() {
        let now = Instant::now();
        assert_eq!(poll_timeout_ms(now + Duration::from_secs(1), Some(now)), 0);
        assert_eq!(poll_timeout_ms(now, None), -1);
        let far = now + Duration::from_secs(60 * 60 * 24 * 365);
        assert_eq!(poll_timeout_ms(now, Some(far)), i32::MAX);
    }

    #[test]
    fn overflow_means_never() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), None);
        assert!(after(now, Duration::from_millis(5)).is_some());
    }

    #[test]
    fn reached_at_the_deadline() {
        let now = Instant::now();
        let a = Some(now + Duration::from_millis(5));
        assert!(!reached(now, a));
        assert!(reached(now + Duration::from_millis(5), a));
        assert!(!reached(now, None));
    }
}
