//! Tests of the paths that must never be reached while the invariants hold: the state is
//! corrupted by hand, and the table must skip the step, record a fault and keep answering
//! clients truthfully (no made-up error, no panic). Also resource exhaustion on the grant path.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

const K: &[u8] = b"k";

fn req(session: SessionId, req: ReqId, wait: Wait) -> AcquireRequest {
    AcquireRequest {
        session,
        req,
        key: Bytes::from_static(K),
        mode: Mode::Exclusive,
        ttl: Duration::from_millis(100),
        wait,
        owner: None,
    }
}

/// A table where session 1 holds `K` (returned fence) and session 2 queues on it as request 5.
fn held_and_queued(now: Instant, out: &mut Vec<Effect>) -> (Table, Fence) {
    let mut t = Table::new(TableConfig::default());
    let f = t
        .acquire(now, req(1, 1, Wait::No), out)
        .unwrap()
        .unwrap()
        .fence;
    assert_eq!(t.acquire(now, req(2, 5, Wait::Forever), out), Ok(None));
    out.clear();
    t.check_invariants();
    (t, f)
}

#[test]
fn a_waiter_whose_session_vanished_is_dropped_not_failed() {
    let now = Instant::now();
    let mut out = Vec::new();
    let (mut t, f) = held_and_queued(now, &mut out);
    assert_eq!(t.acquire(now, req(3, 6, Wait::Forever), &mut out), Ok(None));
    t.sessions.remove(2);
    t.release(now, 1, &Key::from_static(K), f, &mut out)
        .unwrap();
    // Session 2's waiter is skipped without a made-up `AcquireFailed { Cancelled }`; the next
    // waiter is granted.
    assert!(
        out.iter()
            .all(|e| !matches!(e, Effect::AcquireFailed { .. }))
    );
    assert!(matches!(
        out.last(),
        Some(Effect::Granted {
            session: 3,
            req: 6,
            ..
        })
    ));
    assert_eq!(t.faults.count(), 1);
}

#[test]
fn cancel_answers_even_if_the_request_left_its_queue() {
    let now = Instant::now();
    let mut out = Vec::new();
    let (mut t, _) = held_and_queued(now, &mut out);
    t.keys.find_mut(K).unwrap().waiters_mut().clear();
    assert!(t.cancel(now, 2, 5, &mut out));
    assert_eq!(
        out,
        vec![Effect::AcquireFailed {
            session: 2,
            req: 5,
            error: TableError::Cancelled
        }]
    );
    assert_eq!(t.faults.count(), 1);
    assert_eq!(t.session_counts(2), (0, 0));
}

#[test]
fn cancel_answers_even_if_the_requests_key_is_gone() {
    let now = Instant::now();
    let mut out = Vec::new();
    let (mut t, _) = held_and_queued(now, &mut out);
    let s = t.sessions.get_mut(2).unwrap();
    s.pending.get_mut(&5).unwrap().entry = 999;
    assert!(t.cancel(now, 2, 5, &mut out));
    assert_eq!(out.len(), 1);
    assert_eq!(t.faults.count(), 1);
}

#[test]
fn close_session_skips_a_lease_missing_from_its_key() {
    let now = Instant::now();
    let mut out = Vec::new();
    let (mut t, f) = held_and_queued(now, &mut out);
    t.keys.find_mut(K).unwrap().holders.remove(f);
    t.close_session(now, 1, true, &mut out);
    assert!(
        out.iter()
            .all(|e| !matches!(e, Effect::Event(LockEvent::Released { .. }))),
        "no event for a lease the key does not have"
    );
    assert_eq!(t.faults.count(), 1);
    assert_eq!(t.session_counts(1), (0, 0));
}

#[test]
fn exhausted_fences_fail_a_new_key_and_leave_nothing_behind() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut t = Table::new(TableConfig::default());
    t.raise_fence_floor(u64::MAX - 1);
    assert_eq!(
        t.acquire(now, req(1, 1, Wait::Forever), &mut out),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
    assert!(out.is_empty());
    assert_eq!(t.key_count(), 0);
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.session_counts(1), (0, 0));
    t.check_invariants();
}

#[test]
fn exhausted_fences_fail_a_queued_acquire_at_grant_time() {
    let now = Instant::now();
    let mut out = Vec::new();
    let (mut t, f) = held_and_queued(now, &mut out);
    t.raise_fence_floor(u64::MAX - 1);
    t.release(now, 1, &Key::from_static(K), f, &mut out)
        .unwrap();
    assert_eq!(
        out.last(),
        Some(&Effect::AcquireFailed {
            session: 2,
            req: 5,
            error: TableError::LimitExceeded("fencing tokens")
        })
    );
    assert_eq!(t.key_count(), 0);
    t.check_invariants();
}

/// Cluster mode: fences stop at the ceiling (the newest etcd revision known) rather than run
/// into the range a later owner of a shard will start from; a higher ceiling lets them go on.
#[test]
fn fences_stop_at_the_ceiling_until_it_is_raised() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut t = Table::new(TableConfig {
        epoch: 0,
        ..TableConfig::default()
    });
    t.bound_fences();
    assert_eq!(t.fence_headroom(), 0);
    assert_eq!(
        t.acquire(now, req(1, 1, Wait::Forever), &mut out),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
    // A claim at revision 7: floor 7 << 32, ceiling the last fence of epoch 7.
    t.raise_fence_floor(7 << 32);
    t.raise_fence_ceiling((8 << 32) - 1);
    t.raise_fence_ceiling(5); // never lowers
    assert_eq!(t.fence_headroom(), (1 << 32) - 1);
    t.acquire(now, req(1, 2, Wait::Forever), &mut out)
        .expect("granted under the ceiling");
    assert_eq!(t.fence_headroom(), (1 << 32) - 2);
    t.raise_fence_floor((8 << 32) - 1);
    assert_eq!(t.fence_headroom(), 0);
    let mut other = req(1, 3, Wait::Forever);
    other.key = Bytes::from_static(b"other");
    assert_eq!(
        t.acquire(now, other, &mut out),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
    t.check_invariants();
}

/// The table-wide limits (issue 13): live keys, queued requests per key and in total — each
/// refused with its own named error, nothing left behind.
#[test]
fn keys_and_queues_are_bounded_per_key_and_in_total() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut t = Table::new(TableConfig {
        max_keys: 2,
        max_queued_per_key: 2,
        max_queued_total: 3,
        ..TableConfig::default()
    });
    let on = |session: SessionId, id: ReqId, key: &'static [u8]| {
        let mut r = req(session, id, Wait::Forever);
        r.key = Bytes::from_static(key);
        r
    };
    t.acquire(now, on(1, 1, b"a"), &mut out).expect("a");
    t.acquire(now, on(1, 2, b"b"), &mut out).expect("b");
    assert_eq!(
        t.acquire(now, on(1, 3, b"c"), &mut out),
        Err(TableError::LimitExceeded("live keys"))
    );
    assert_eq!(t.key_count(), 2);
    // Two queue on "a" (one an acquire, one a watcher), a third is refused for the key.
    assert_eq!(t.acquire(now, on(2, 1, b"a"), &mut out), Ok(None));
    assert_eq!(
        t.wait_until_unlocked(now, 3, 1, b"a", Wait::Forever),
        Ok(None)
    );
    assert_eq!(
        t.acquire(now, on(4, 1, b"a"), &mut out),
        Err(TableError::LimitExceeded("queued requests on this key"))
    );
    // One more on "b" reaches the total of 3; the next anywhere is refused.
    assert_eq!(t.acquire(now, on(2, 2, b"b"), &mut out), Ok(None));
    assert_eq!(
        t.wait_until_unlocked(now, 4, 2, b"b", Wait::Forever),
        Err(TableError::LimitExceeded("queued requests in total"))
    );
    t.check_invariants();
    // A session closing frees its queue slots.
    t.close_session(now, 2, true, &mut out);
    t.check_invariants();
    assert_eq!(t.acquire(now, on(4, 3, b"a"), &mut out), Ok(None));
    t.check_invariants();
}

/// A storm of 20k watchers timing out at once is handled in bounded slices (the driver lets
/// other requests take the table in between), and each timeout leaves its queue in O(log n):
/// the queue is a sequence-ordered map, not a vector shifted on every removal.
#[test]
fn a_watcher_timeout_storm_is_expired_in_bounded_slices() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut t = Table::new(TableConfig {
        max_waiters_per_session: usize::MAX,
        ..TableConfig::default()
    });
    let mut holder = req(1, 1, Wait::Forever);
    holder.ttl = Duration::from_secs(60);
    t.acquire(now, holder, &mut out).expect("held");
    let due = now + Duration::from_millis(10);
    for r in 0..20_000u64 {
        assert_eq!(
            t.wait_until_unlocked(now, 2, r + 10, K, Wait::Until(due)),
            Ok(None)
        );
    }
    out.clear();
    let later = due + Duration::from_millis(1);
    let started = std::time::Instant::now();
    let mut slices = 0;
    while t.expire_some(later, 1024, &mut out) {
        slices += 1;
        assert!(
            out.len() <= 1024 * slices,
            "a slice did more than its share"
        );
    }
    eprintln!(
        "20k watcher timeouts in {} slices, {:?}",
        slices + 1,
        started.elapsed()
    );
    assert_eq!(slices + 1, 20, "20 slices of at most 1024");
    assert_eq!(out.len(), 20_000);
    assert_eq!(t.session_counts(2), (0, 0));
    t.check_invariants();
}
