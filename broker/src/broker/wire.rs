//! The broker's milliseconds helpers; the conversions between the table's types and the wire
//! protocol's live with the table (`lockbroker_core::wire`), re-exported here.

use std::time::{Duration, Instant};

pub use crate::table::wire::wait_from;

/// Milliseconds of a duration, saturating at `u64::MAX`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// Milliseconds from `now` until `deadline` (0 once it passed).
pub fn millis_until(deadline: Instant, now: Instant) -> u64 {
    millis(deadline.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        let now = Instant::now();
        assert_eq!(millis_until(now, now + Duration::from_secs(1)), 0);
    }
}
