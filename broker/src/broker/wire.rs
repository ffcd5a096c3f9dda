//! The broker's milliseconds helpers; the conversions between the table's types and the wire
//! protocol's live with the table (`lockbroker_core::wire`), re-exported here.

pub use crate::table::wire::{millis, millis_until, wait_from};

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        let now = Instant::now();
        assert_eq!(millis_until(now, now + Duration::from_secs(1)), 0);
    }
}
