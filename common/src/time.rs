//! Wall-clock helpers: the protocol speaks Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// A wall-clock time in Unix milliseconds (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How far a request's `timestamp_ms` is from `now_ms` (positive: in the future), for any
/// input: a hostile timestamp saturates instead of overflowing.
pub fn skew_ms(timestamp_ms: u64, now_ms: u64) -> i64 {
    (i128::from(timestamp_ms) - i128::from(now_ms)).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// An RFC 3339 rendering of a Unix-millisecond time, for logs and tables.
pub fn format_ms(ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn skew_saturates_on_hostile_timestamps() {
        assert_eq!(super::skew_ms(1_000, 400), 600);
        assert_eq!(super::skew_ms(400, 1_000), -600);
        assert_eq!(super::skew_ms(u64::MAX, 0), i64::MAX);
        assert_eq!(super::skew_ms(0, u64::MAX), i64::MIN);
    }
}
