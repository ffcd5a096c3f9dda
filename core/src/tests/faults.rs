//! Tests of the paths that must never be reached while the invariants hold: the state is
//! corrupted by hand, and the table must skip the step, record a fault and keep answering
//! clients truthfully (no made-up error, no panic). Also resource exhaustion on the grant path.

use super::harness::{H, K, key, ms};
use crate::*;

/// A harness where session 1 holds `K` (returned fence) and session 2 queues on it as request 5.
fn held_and_queued() -> (H, Fence) {
    let mut h = H::new();
    let f = h.one(1, 1, K, Wait::No).unwrap().unwrap().fence;
    assert_eq!(h.one(2, 5, K, Wait::Forever), Ok(None));
    h.take();
    (h, f)
}

#[test]
fn a_waiter_whose_session_vanished_is_dropped_not_failed() {
    let (mut h, f) = held_and_queued();
    assert_eq!(h.one(3, 6, K, Wait::Forever), Ok(None));
    h.t.sessions.remove(2);
    h.t.release(h.now, 1, &key(K), f, &mut h.out).unwrap();
    // Session 2's waiter is skipped without a made-up `AcquireFailed { Cancelled }`; the next
    // waiter is granted.
    assert!(
        h.out
            .iter()
            .all(|e| !matches!(e, Effect::AcquireFailed { .. }))
    );
    assert!(matches!(
        h.out.last(),
        Some(Effect::Granted {
            session: 3,
            req: 6,
            ..
        })
    ));
    assert_eq!(h.t.faults.count(), 1);
}

#[test]
fn cancel_answers_even_if_the_request_left_its_queue() {
    let (mut h, _) = held_and_queued();
    h.t.keys.find_mut(K).unwrap().waiters_mut().clear();
    assert!(h.t.cancel(h.now, 2, 5, &mut h.out));
    assert_eq!(
        h.out,
        vec![Effect::AcquireFailed {
            session: 2,
            req: 5,
            error: TableError::Cancelled
        }]
    );
    assert_eq!(h.t.faults.count(), 1);
    assert_eq!(h.t.session_counts(2), (0, 0));
}

#[test]
fn cancel_answers_even_if_the_requests_key_is_gone() {
    let (mut h, _) = held_and_queued();
    let s = h.t.sessions.get_mut(2).unwrap();
    s.pending.get_mut(&5).unwrap().entry = 999;
    assert!(h.t.cancel(h.now, 2, 5, &mut h.out));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.t.faults.count(), 1);
}

#[test]
fn close_session_skips_a_lease_missing_from_its_key() {
    let (mut h, f) = held_and_queued();
    h.t.keys.find_mut(K).unwrap().holders.remove(f);
    h.t.close_session(h.now, 1, true, &mut h.out);
    assert!(
        h.out
            .iter()
            .all(|e| !matches!(e, Effect::Event(LockEvent::Released { .. }))),
        "no event for a lease the key does not have"
    );
    assert_eq!(h.t.faults.count(), 1);
    assert_eq!(h.t.session_counts(1), (0, 0));
}

#[test]
fn exhausted_fences_fail_a_new_key_and_leave_nothing_behind() {
    let mut h = H::new();
    h.t.raise_fence_floor(u64::MAX - 1);
    assert_eq!(
        h.one(1, 1, K, Wait::Forever),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
    assert!(h.out.is_empty());
    assert_eq!(h.t.key_count(), 0);
    assert_eq!(h.t.next_deadline(), None);
    assert_eq!(h.t.session_counts(1), (0, 0));
}

#[test]
fn exhausted_fences_fail_a_queued_acquire_at_grant_time() {
    let (mut h, f) = held_and_queued();
    h.t.raise_fence_floor(u64::MAX - 1);
    h.release(1, K, f).unwrap();
    assert_eq!(
        h.out.last(),
        Some(&Effect::AcquireFailed {
            session: 2,
            req: 5,
            error: TableError::LimitExceeded("fencing tokens")
        })
    );
    assert_eq!(h.t.key_count(), 0);
}

/// Cluster mode: fences stop at the ceiling (the newest etcd revision known) rather than run
/// into the range a later owner of a shard will start from; a higher ceiling lets them go on.
#[test]
fn fences_stop_at_the_ceiling_until_it_is_raised() {
    let mut h = H::with(TableConfig {
        epoch: 0,
        ..TableConfig::default()
    });
    h.t.bound_fences();
    assert_eq!(h.t.fence_headroom(), 0);
    assert_eq!(
        h.one(1, 1, K, Wait::Forever),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
    // A claim at revision 7: floor 7 << 32, ceiling the last fence of epoch 7.
    h.t.raise_fence_floor(7 << 32);
    h.t.raise_fence_ceiling((8 << 32) - 1);
    h.t.raise_fence_ceiling(5); // never lowers
    assert_eq!(h.t.fence_headroom(), (1 << 32) - 1);
    h.one(1, 2, K, Wait::Forever)
        .expect("granted under the ceiling");
    assert_eq!(h.t.fence_headroom(), (1 << 32) - 2);
    h.t.raise_fence_floor((8 << 32) - 1);
    assert_eq!(h.t.fence_headroom(), 0);
    assert_eq!(
        h.one(1, 3, b"other", Wait::Forever),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
}

/// The table-wide limits (issue 13): live keys, queued requests per key and in total — each
/// refused with its own named error, nothing left behind.
#[test]
fn keys_and_queues_are_bounded_per_key_and_in_total() {
    let mut h = H::with(TableConfig {
        max_keys: 2,
        max_queued_per_key: 2,
        max_queued_total: 3,
        ..TableConfig::default()
    });
    h.one(1, 1, b"a", Wait::Forever).expect("a");
    h.one(1, 2, b"b", Wait::Forever).expect("b");
    assert_eq!(
        h.one(1, 3, b"c", Wait::Forever),
        Err(TableError::LimitExceeded("live keys"))
    );
    assert_eq!(h.t.key_count(), 2);
    // Two queue on "a" (one an acquire, one a watcher), a third is refused for the key.
    assert_eq!(h.one(2, 1, b"a", Wait::Forever), Ok(None));
    let now = h.now;
    assert_eq!(
        h.t.wait_until_unlocked(now, 3, 1, b"a", Wait::Forever, &mut h.out),
        Ok(None)
    );
    assert_eq!(
        h.one(4, 1, b"a", Wait::Forever),
        Err(TableError::LimitExceeded("queued requests on this key"))
    );
    // One more on "b" reaches the total of 3; the next anywhere is refused.
    assert_eq!(h.one(2, 2, b"b", Wait::Forever), Ok(None));
    assert_eq!(
        h.t.wait_until_unlocked(now, 4, 2, b"b", Wait::Forever, &mut h.out),
        Err(TableError::LimitExceeded("queued requests in total"))
    );
    h.t.check_invariants();
    // A session closing frees its queue slots.
    h.close(2, true);
    assert_eq!(h.one(4, 3, b"a", Wait::Forever), Ok(None));
}

/// A storm of 20k watchers timing out at once is handled in bounded slices (the driver lets
/// other requests take the table in between), and each timeout leaves its queue in O(log n):
/// the queue is a sequence-ordered map, not a vector shifted on every removal.
#[test]
fn a_watcher_timeout_storm_is_expired_in_bounded_slices() {
    let mut h = H::with(TableConfig {
        max_waiters_per_session: usize::MAX,
        ..TableConfig::default()
    });
    h.acq(1, 1, K, Mode::Exclusive, 60_000, Wait::Forever)
        .expect("held");
    let now = h.now;
    let due = now + ms(10);
    for r in 0..20_000u64 {
        assert_eq!(
            h.t.wait_until_unlocked(now, 2, r + 10, K, Wait::Until(due), &mut h.out),
            Ok(None)
        );
    }
    h.take();
    let later = due + ms(1);
    let started = std::time::Instant::now();
    let mut slices = 0;
    while h.t.expire_some(later, 1024, &mut h.out) {
        slices += 1;
        assert!(
            h.out.len() <= 1024 * slices,
            "a slice did more than its share"
        );
    }
    eprintln!(
        "20k watcher timeouts in {} slices, {:?}",
        slices + 1,
        started.elapsed()
    );
    assert_eq!(slices + 1, 20, "20 slices of at most 1024");
    assert_eq!(h.out.len(), 20_000);
    assert_eq!(h.t.session_counts(2), (0, 0));
    h.t.check_invariants();
}
