//! Restore at start: asks the mirror plugin for the leases it holds (retrying until
//! `restore_timeout_ms` while Redis is unreachable), installs them in the table as orphaned
//! leases of session 0 with their fence and remaining TTL, and raises the fence floor above the
//! largest fence ever handed out. Runs before the first client is served.
//!
//! What the plugin returns comes from Redis, which anyone can write to, so it is validated
//! before it touches the table (fences are `(epoch << 40) | counter`; `E` is the broker's own
//! epoch, bumped at this start):
//!
//! * A lease is skipped (warn log naming key and fence) when its key is empty or longer than
//!   `limits.max_key_bytes`, or its fence's epoch part is 0 (this includes fence 0: every broker
//!   epoch is at least 1, so no broker hands out a fence below 2^40), or its epoch part is above
//!   [`epoch_ceiling`]`(E)` = `min(E + EPOCH_LEAD, MAX_RESTORED_EPOCH)`.
//!   A lease whose fence is above the plugin's `max-fence` contradicts it: it is honoured (the
//!   fence floor then rises past it, as for every restored lease) and the contradiction logged.
//! * The `max-fence` is refused (error log "mirror restore: refusing max-fence N: ...") when its
//!   epoch part is above `epoch_ceiling(max(E, newest epoch among the accepted leases))`. It is
//!   then not applied: fences continue from the broker's own floor (its epoch and the accepted
//!   leases), so the broker keeps granting. Accepted leases are honoured either way.
//!
//! `EPOCH_LEAD` (2^22 epochs) is how far above what the broker knows of a restored fence may
//! lie: a mirror written by this data dir's earlier lives has epochs below `E`, and a mirror
//! that outlived its data dir (a fresh data dir draws its first epoch from `1..=2^21`) is
//! accepted up to two million restarts ahead. `MAX_RESTORED_EPOCH` keeps the top 2^20 epochs
//! (2^60 tokens) free, so an
//! accepted floor always leaves the broker at least 2^60 fences to hand out. A stored
//! `max-fence` of `u64::MAX - 2` (epoch part 2^24 - 1) is refused by both rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MirrorError;
use super::convert::Modes;
use crate::broker::Broker;
use crate::epoch::COUNTER_BITS;
use crate::plugins::{MirrorPlugin, wit};
use crate::table::{Fence, Mode};

/// How many epochs above the newest epoch the broker knows of a restored fence may lie (twice
/// the range a fresh data dir draws its first epoch from, so a mirror that outlived its data
/// dir is still accepted).
pub const EPOCH_LEAD: u64 = 2 * crate::epoch::FIRST_EPOCH_RANGE;

/// The largest epoch part a fence has (`u64::MAX >> 40`).
const MAX_EPOCH: u64 = u64::MAX >> COUNTER_BITS;

/// The largest epoch part a restored fence may have: the top 2^20 epochs (2^60 tokens) stay
/// free, so a restored fence floor never leaves the broker short of fences.
pub const MAX_RESTORED_EPOCH: u64 = MAX_EPOCH - (1 << 20);

/// The epoch part of a fence.
fn epoch_of(fence: Fence) -> u64 {
    fence >> COUNTER_BITS
}

/// The largest epoch part a restored fence may have when the newest epoch the broker knows of
/// is `known`.
pub fn epoch_ceiling(known: u64) -> u64 {
    known.saturating_add(EPOCH_LEAD).min(MAX_RESTORED_EPOCH)
}

/// Why a restored lease is not installed, or `Ok` if it may be (the table may still refuse it).
fn check_lease(epoch: u64, max_key: usize, l: &wit::HeldLock) -> Result<(), String> {
    if l.key.is_empty() {
        return Err("empty key".into());
    }
    if l.key.len() > max_key {
        return Err(format!(
            "key of {} bytes, longer than limits.max_key_bytes ({max_key})",
            l.key.len()
        ));
    }
    let e = epoch_of(l.fence);
    if e == 0 {
        return Err(format!(
            "fence {} has epoch part 0; no broker hands out a fence below 2^40",
            l.fence
        ));
    }
    let ceiling = epoch_ceiling(epoch);
    if e > ceiling {
        return Err(format!(
            "fence {} has epoch part {e}, above {ceiling} (the broker's epoch {epoch} + \
             {EPOCH_LEAD}, at most {MAX_RESTORED_EPOCH})",
            l.fence
        ));
    }
    Ok(())
}

/// Why `max_fence` must not become the fence floor, or `Ok` if it may. `newest_lease` is the
/// largest fence among the accepted leases (0 if none).
fn check_max_fence(max_fence: Fence, epoch: u64, newest_lease: Fence) -> Result<(), String> {
    let known = epoch.max(epoch_of(newest_lease));
    let ceiling = epoch_ceiling(known);
    let e = epoch_of(max_fence);
    if e <= ceiling {
        return Ok(());
    }
    Err(if ceiling == MAX_RESTORED_EPOCH {
        format!(
            "its epoch part {e} is above {MAX_RESTORED_EPOCH}: it would leave fewer than 2^60 \
             fencing tokens"
        )
    } else {
        format!(
            "its epoch part {e} is more than {EPOCH_LEAD} epochs above the newest epoch the \
             broker knows of ({known}), far above anything granted"
        )
    })
}

/// Fetches the restore state, retrying while the plugin fails.
pub async fn fetch(
    plugin: &MirrorPlugin,
    timeout: Duration,
) -> Result<wit::RestoreState, MirrorError> {
    let started = Instant::now();
    loop {
        match plugin.restore().await {
            Ok(state) => return Ok(state),
            Err(e) if started.elapsed() < timeout => {
                tracing::warn!(target: "lockbroker::mirror", "restore failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(MirrorError::Restore(e.to_string())),
        }
    }
}

/// Validates `state` (see the module docs) and installs what passes in the table; returns the
/// modes of the restored leases by fence.
pub fn install(broker: &Arc<Broker>, state: &wit::RestoreState) -> Modes {
    let mut modes = Modes::default();
    let epoch = broker.epoch;
    let max_key = broker.cfg.limits.max_key_bytes;
    let (restored, skipped, newest, floor_applied) = broker.with_table(|t, now, _out| {
        let (mut restored, mut skipped, mut newest) = (0usize, 0usize, 0);
        for l in &state.locks {
            let key = String::from_utf8_lossy(&l.key);
            let skip = |why: &dyn std::fmt::Display| {
                tracing::warn!(
                    target: "lockbroker::mirror",
                    key = %key,
                    fence = l.fence,
                    "mirror restore: lease {key} (fence {}) skipped: {why}",
                    l.fence
                );
            };
            if let Err(why) = check_lease(epoch, max_key, l) {
                skipped += 1;
                skip(&why);
                continue;
            }
            let mode = Mode::from(l.mode);
            let ttl = Duration::from_millis(l.remaining_ttl_ms).min(crate::table::MAX_TTL);
            let deadline = now.checked_add(ttl).unwrap_or(now);
            match t.restore(
                now,
                bytes::Bytes::from(l.key.clone()),
                l.fence,
                mode,
                deadline,
            ) {
                Ok(()) => {
                    restored += 1;
                    newest = newest.max(l.fence);
                    modes.insert(l.fence, mode);
                    if l.fence > state.max_fence {
                        tracing::warn!(
                            target: "lockbroker::mirror",
                            key = %key,
                            fence = l.fence,
                            max_fence = state.max_fence,
                            "mirror restore: lease {key} has fence {} above the mirror's \
                             max-fence {}; honoured, fences continue above it",
                            l.fence,
                            state.max_fence
                        );
                    }
                }
                Err(e) => {
                    skipped += 1;
                    skip(&e);
                }
            }
        }
        let applied = match check_max_fence(state.max_fence, epoch, newest) {
            Ok(()) => {
                t.raise_fence_floor(state.max_fence);
                true
            }
            Err(why) => {
                tracing::error!(
                    target: "lockbroker::mirror",
                    max_fence = state.max_fence,
                    "mirror restore: refusing max-fence {}: {why}; fences continue from the \
                     broker's own floor (epoch {epoch}, restored leases up to fence {newest}). \
                     Fix or delete the stored value in the mirror; it is refused at every start",
                    state.max_fence
                );
                false
            }
        };
        (restored, skipped, newest, applied)
    });
    tracing::info!(
        target: "lockbroker::mirror",
        restored,
        skipped,
        max_fence = state.max_fence,
        max_fence_applied = floor_applied,
        newest_restored_fence = newest,
        "restored held locks from the mirror"
    );
    modes
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 7;

    fn fence(epoch: u64, counter: u64) -> Fence {
        (epoch << COUNTER_BITS) | counter
    }

    fn lease(key: &[u8], fence: Fence) -> wit::HeldLock {
        wit::HeldLock {
            key: key.to_vec(),
            mode: wit::LockMode::Exclusive,
            owner_session: 0,
            fence,
            remaining_ttl_ms: 1000,
        }
    }

    #[test]
    fn leases_need_a_key_and_a_plausible_epoch() {
        let ok = |f| check_lease(E, 1024, &lease(b"k", f)).is_ok();
        assert!(ok(fence(1, 1)));
        assert!(ok(fence(E - 1, 5)));
        assert!(ok(fence(E, 0)));
        assert!(ok(fence(E + EPOCH_LEAD, (1 << COUNTER_BITS) - 1)));
        assert!(!ok(0));
        assert!(!ok(5));
        assert!(!ok(fence(1, 0) - 1));
        assert!(!ok(fence(E + EPOCH_LEAD + 1, 0)));
        assert!(!ok(u64::MAX - 2));
        assert!(!ok(u64::MAX));
        assert!(check_lease(E, 1024, &lease(b"", fence(1, 1))).is_err());
        assert!(check_lease(E, 3, &lease(b"long", fence(1, 1))).is_err());
    }

    #[test]
    fn max_fence_may_lead_the_known_epochs_by_epoch_lead() {
        assert!(check_max_fence(0, E, 0).is_ok());
        assert!(check_max_fence(fence(E - 1, 99), E, 0).is_ok());
        assert!(check_max_fence(fence(E + EPOCH_LEAD, 99), E, 0).is_ok());
        assert!(check_max_fence(fence(E + EPOCH_LEAD + 1, 0), E, 0).is_err());
        // A restored lease is evidence too.
        let lease = fence(E + 10, 1);
        assert!(check_max_fence(fence(E + 10 + EPOCH_LEAD, 0), E, lease).is_ok());
        // The value: refused, whatever the broker knows.
        for known in [0, 1, E, MAX_RESTORED_EPOCH, MAX_EPOCH] {
            let why = check_max_fence(u64::MAX - 2, known, 0).unwrap_err();
            assert!(why.contains("epoch part"), "{why}");
            assert!(check_max_fence(u64::MAX, known, u64::MAX).is_err());
        }
    }

    #[test]
    fn ceiling_saturates_and_keeps_fence_space_free() {
        assert_eq!(epoch_ceiling(1), 1 + EPOCH_LEAD);
        assert_eq!(epoch_ceiling(u64::MAX), MAX_RESTORED_EPOCH);
        let highest = (MAX_RESTORED_EPOCH << COUNTER_BITS) | ((1 << COUNTER_BITS) - 1);
        assert!(u64::MAX - highest >= 1 << 60);
    }
}
