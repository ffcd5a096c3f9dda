//! Conversions between the table's types and the wire protocol's (`lockbroker-proto`): one
//! `From` impl per pair, the wire code of every table error, and a wire wait spec as a table
//! wait. Shared by the broker's command layer and the SDK's embedded client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{
    ErrorCode, HolderInfo, LockInfo, Mode as WireMode, UnlockOutcome as WireOutcome, WaitSpec,
};

use crate::{Holder, Mode, SessionId, Table, TableError, UnlockOutcome, Wait};

impl From<WireMode> for Mode {
    fn from(m: WireMode) -> Mode {
        match m {
            WireMode::Exclusive => Mode::Exclusive,
            WireMode::Shared => Mode::Shared,
            WireMode::Semaphore(n) => Mode::Semaphore(n),
        }
    }
}

impl From<Mode> for WireMode {
    fn from(m: Mode) -> WireMode {
        match m {
            Mode::Exclusive => WireMode::Exclusive,
            Mode::Shared => WireMode::Shared,
            Mode::Semaphore(n) => WireMode::Semaphore(n),
        }
    }
}

impl From<UnlockOutcome> for WireOutcome {
    fn from(o: UnlockOutcome) -> WireOutcome {
        match o {
            UnlockOutcome::Released => WireOutcome::Released,
            UnlockOutcome::Expired => WireOutcome::Expired,
        }
    }
}

/// The table's view of a wait spec, relative to `now`. A deadline past the end of time is
/// forever.
pub fn wait_from(w: WaitSpec, now: Instant) -> Wait {
    match w {
        WaitSpec::NoWait => Wait::No,
        WaitSpec::Forever => Wait::Forever,
        WaitSpec::Millis(ms) => match now.checked_add(Duration::from_millis(ms)) {
            Some(at) => Wait::Until(at),
            None => Wait::Forever,
        },
    }
}

impl From<&TableError> for ErrorCode {
    fn from(e: &TableError) -> ErrorCode {
        match e {
            TableError::Busy => ErrorCode::Busy,
            TableError::Timeout => ErrorCode::Timeout,
            TableError::Cancelled => ErrorCode::Cancelled,
            TableError::RestoreConflict => ErrorCode::AlreadyHeld,
            TableError::NotOwner => ErrorCode::NotOwner,
            TableError::NotLocked => ErrorCode::NotLocked,
            TableError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            TableError::InvalidMode(_) => ErrorCode::InvalidMode,
            // An empty key list or a key named twice: the request itself is ill-formed.
            TableError::InvalidKeys(_) => ErrorCode::Malformed,
            TableError::DuplicateRequest => ErrorCode::DuplicateRequest,
            TableError::Moved => ErrorCode::Moved,
            TableError::Requeued(_) => ErrorCode::Requeued,
        }
    }
}

/// The table's owner label of a wire owner label (empty on the wire: none).
pub fn owner_label(wire: Bytes) -> Option<Bytes> {
    (!wire.is_empty()).then_some(wire)
}

/// The `LockInfo` answer to request `id` of `session` about `key` (the key as the table holds
/// it): holders in table order and `holders_total` unset — the driver calls
/// [`LockInfo::order_holders`] (outside its table lock) and cuts the list to its frame limit.
pub fn lock_info(table: &Table, id: u64, key: Bytes, session: SessionId, now: Instant) -> LockInfo {
    let position = table
        .queue_position(&key, session)
        .map_or(0, |p| u32::try_from(p).unwrap_or(u32::MAX));
    let Some(info) = table.inspect(&key) else {
        return LockInfo {
            id,
            key,
            holders: Vec::new(),
            holders_total: 0,
            waiters: 0,
            blocked_ms: 0,
            position,
        };
    };
    LockInfo {
        id,
        key: info.key,
        holders: info.holders.iter().map(|h| holder_info(h, now)).collect(),
        holders_total: 0,
        waiters: u32::try_from(info.waiters).unwrap_or(u32::MAX),
        blocked_ms: info.blocked_until.map_or(0, |b| millis_until(b, now)),
        position,
    }
}

/// Milliseconds of a duration, saturating at `u64::MAX` (the wire carries whole
/// milliseconds). The one such conversion of the broker, the SDK and the embedded engine.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds from `now` until `deadline` (0 once it passed), saturating.
pub fn millis_until(deadline: Instant, now: Instant) -> u64 {
    millis(deadline.saturating_duration_since(now))
}

/// A holder as `LockInfo` reports it, its remaining TTL counted from `now`.
fn holder_info(h: &Holder, now: Instant) -> HolderInfo {
    HolderInfo {
        session: h.session,
        fence: h.fence,
        mode: h.mode.into(),
        remaining_ms: millis_until(h.deadline, now),
        owner: h.owner.clone().unwrap_or_default(),
        cached: h.cached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for m in [
            WireMode::Exclusive,
            WireMode::Shared,
            WireMode::Semaphore(7),
        ] {
            assert_eq!(WireMode::from(Mode::from(m)), m);
        }
    }

    #[test]
    fn wait_specs_map_to_table_waits() {
        let now = Instant::now();
        assert_eq!(wait_from(WaitSpec::Forever, now), Wait::Forever);
        assert_eq!(wait_from(WaitSpec::NoWait, now), Wait::No);
        assert_eq!(
            wait_from(WaitSpec::Millis(1500), now),
            Wait::Until(now + Duration::from_millis(1500))
        );
    }
}
