//! Time: the two clocks the daemon reads and the formats documents and sentences print.
//!
//! The kernel stamps its records with CLOCK_MONOTONIC; documents carry wall-clock (unix)
//! times. Formatting goes through the `time` crate; only the choice of format is ours.

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    unix_ns() / 1_000_000
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CLOCK_MONOTONIC in nanoseconds: the kernel's `bpf_ktime_get_ns` clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// "2026-11-23T10:00:00.123Z" (RFC 3339, UTC, milliseconds) from unix nanoseconds.
pub fn rfc3339(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let ms = (ns / 1_000_000) % 1000;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]"
            ))
            .ok()
        })
        .map_or_else(|| ns.to_string(), |s| format!("{s}.{ms:03}Z"))
}

/// "2024-05-01 12:00:00 UTC" from unix seconds (certificate dates in sentences).
pub fn utc_seconds(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_utc_with_fixed_precision() {
        assert_eq!(
            rfc3339(1_763_900_000_123_000_000),
            "2025-11-23T12:13:20.123Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_seconds(1_714_564_800), "2024-05-01 12:00:00 UTC");
        // Out of the representable range: the number, not a panic.
        assert_eq!(utc_seconds(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn clocks_move_forward() {
        let (m, u) = (monotonic_ns(), now_ms());
        assert!(monotonic_ns() >= m);
        assert!(now_ms() >= u && u > 1_700_000_000_000);
    }
}
