//! Unit tests of the lock table, driving time by hand: one test per rule or error case.

use std::time::Duration;

use bytes::Bytes;

use super::harness::{H, K, events, ms};
use crate::types::{MAX_TTL, RESTORED_SESSION};
use crate::*;

#[test]
fn immediate_grant_pushes_only_acquired_event() {
    let mut h = H::new();
    let g = h
        .acq(1, 1, K, Mode::Exclusive, 100, Wait::No)
        .unwrap()
        .unwrap();
    assert_eq!(g.key, Bytes::from_static(K));
    assert_eq!(g.mode, Mode::Exclusive);
    assert_eq!(g.ttl, ms(100));
    assert_eq!(g.deadline, h.at(100));
    assert_eq!(
        h.take(),
        vec![Effect::Event(LockEvent::Acquired {
            key: Bytes::from_static(K),
            session: 1,
            fence: g.fence,
            mode: Mode::Exclusive,
            deadline: h.at(100),
        })]
    );
    assert!(h.t.is_locked(K));
    assert_eq!(h.t.key_count(), 1);
    assert_eq!(h.t.session_counts(1), (1, 0));
}

#[test]
fn without_lease_events_only_expiry_is_told_and_grants_still_flow() {
    let mut h = H::with(TableConfig {
        lease_events: false,
        ..TableConfig::default()
    });
    let f = h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 7, K, Mode::Exclusive, Wait::Forever);
    h.t.extend(h.now, 1, &Bytes::from_static(K), f, ms(100), &mut h.out)
        .unwrap();
    assert!(h.take().is_empty(), "no Acquired or Extended event");
    h.release(1, K, f).unwrap();
    // The waiter is granted; no Released or Acquired event comes with it.
    let out = h.take();
    assert!(events(&out).is_empty());
    let g = match &out[..] {
        [
            Effect::Granted {
                session: 2,
                req: 7,
                grant,
                ..
            },
        ] => grant.fence,
        other => panic!("expected one grant, got {other:?}"),
    };
    h.advance_to(1_000);
    assert_eq!(
        events(&h.take()),
        vec![&LockEvent::Expired {
            key: Bytes::from_static(K),
            session: 2,
            fence: g,
        }]
    );
}

#[test]
fn fences_are_epoch_shifted_and_increase_across_keys() {
    let mut h = H::with(TableConfig {
        epoch: 3,
        ..TableConfig::default()
    });
    let a = h.lock(1, b"a", Mode::Exclusive, 10);
    let b = h.lock(1, b"b", Mode::Exclusive, 10);
    assert_eq!(a, (3 << COUNTER_BITS) | 1);
    assert_eq!(b, a + 1);
    h.release(1, b"a", a).unwrap();
    let a2 = h.lock(2, b"a", Mode::Exclusive, 10);
    assert!(a2 > b);
}

#[test]
fn busy_when_not_grantable_and_no_wait() {
    let mut h = H::new();
    h.lock(1, K, Mode::Exclusive, 100);
    assert_eq!(
        h.acq(2, 1, K, Mode::Exclusive, 100, Wait::No),
        Err(TableError::Busy)
    );
    // A deadline at or before now behaves like Wait::No.
    let now = h.now;
    assert_eq!(
        h.acq(2, 2, K, Mode::Shared, 100, Wait::Until(now)),
        Err(TableError::Busy)
    );
    assert_eq!(h.t.session_counts(2), (0, 0));
}

#[test]
fn a_session_may_hold_and_queue_on_one_key_many_times() {
    // Ownership is per lease: a second shared lease of the same session is its own lease.
    let mut h = H::new();
    let f1 = h.lock(1, K, Mode::Shared, 100);
    let f2 = h.lock(1, K, Mode::Shared, 100);
    assert_ne!(f1, f2);
    assert_eq!(h.t.session_counts(1), (2, 0));
    h.t.check_invariants();
    // Not re-entrant: an exclusive acquire of a key the session holds is merely busy, and
    // queues FIFO with everyone else's.
    let fx = h.lock(1, b"x2", Mode::Exclusive, 100);
    assert_eq!(
        h.acq(1, 4, b"x2", Mode::Exclusive, 100, Wait::No),
        Err(TableError::Busy)
    );
    h.queue(1, 5, b"x2", Mode::Exclusive, Wait::Forever);
    h.queue(2, 6, b"x2", Mode::Exclusive, Wait::Forever);
    h.queue(1, 7, b"x2", Mode::Exclusive, Wait::Forever);
    h.t.check_invariants();
    h.take();
    h.release(1, b"x2", fx).unwrap();
    let g = h.granted();
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].0, g[0].1), (1, 5));
    assert_ne!(g[0].2, fx);
    // Cancelling one of the session's queued acquires leaves the others queued.
    assert!(h.t.cancel(h.now, 1, 7, &mut h.out));
    h.t.check_invariants();
    assert_eq!(h.t.session_counts(1), (3, 0));
    assert_eq!(h.t.session_counts(2), (0, 1));
}

#[test]
fn duplicate_pending_request_id() {
    let mut h = H::new();
    h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 7, K, Mode::Exclusive, Wait::Forever);
    assert_eq!(
        h.acq(2, 7, b"other", Mode::Exclusive, 100, Wait::No),
        Err(TableError::DuplicateRequest)
    );
    let now = h.now;
    assert_eq!(
        h.t.wait_until_unlocked(now, 2, 7, K, Wait::Forever, &mut h.out),
        Err(TableError::DuplicateRequest)
    );
    // Once resolved, the id may be reused.
    assert!(h.t.cancel(now, 2, 7, &mut h.out));
    assert!(
        h.acq(2, 7, b"other", Mode::Exclusive, 100, Wait::No)
            .is_ok()
    );
}

#[test]
fn release_errors() {
    let mut h = H::new();
    assert_eq!(h.release(1, K, 1), Err(TableError::NotLocked));
    let f = h.lock(1, K, Mode::Exclusive, 100);
    assert_eq!(h.release(2, K, f), Err(TableError::NotOwner));
    assert_eq!(h.release(1, K, f + 1), Err(TableError::NotOwner));
    let now = h.now;
    assert_eq!(
        h.t.extend(now, 2, K, f, ms(5), &mut h.out),
        Err(TableError::NotOwner)
    );
    assert_eq!(
        h.t.extend(now, 2, b"nope", f, ms(5), &mut h.out),
        Err(TableError::NotLocked)
    );
    h.release(1, K, f).unwrap();
    assert_eq!(h.release(1, K, f), Err(TableError::NotLocked));
}

#[test]
fn idle_key_is_freed_at_once() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Exclusive, 100);
    assert_eq!(h.t.key_count(), 1);
    h.release(1, K, f).unwrap();
    assert_eq!(h.t.key_count(), 0);
    assert_eq!(h.t.inspect(K), None);
    assert!(!h.t.is_locked(K));
    // Also after expiry, timeout and cancel.
    h.lock(1, K, Mode::Exclusive, 10);
    h.advance_to(10);
    assert_eq!(h.t.key_count(), 0);
    assert_eq!(h.t.session_counts(1), (0, 0));
}

#[test]
fn waiters_are_granted_fifo() {
    let mut h = H::new();
    let mut f = h.lock(1, K, Mode::Exclusive, 1000);
    for s in 2..=4 {
        h.queue(s, 10 + s, K, Mode::Exclusive, Wait::Forever);
    }
    h.take();
    let mut holder = 1;
    for s in 2..=4 {
        h.release(holder, K, f).unwrap();
        let g = h.granted();
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].0, g[0].1), (s, 10 + s));
        assert!(g[0].2 > f, "fence increases");
        f = g[0].2;
        holder = s;
    }
    h.release(holder, K, f).unwrap();
    assert_eq!(h.t.key_count(), 0);
}

#[test]
fn release_grants_in_same_step_with_fresh_deadline() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Exclusive, 1000);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    h.now = h.at(300);
    h.take();
    h.release(1, K, f).unwrap();
    let out = h.take();
    assert!(matches!(
        &out[0],
        Effect::Event(LockEvent::Released { session: 1, .. })
    ));
    assert!(matches!(
        &out[1],
        Effect::Event(LockEvent::Acquired { session: 2, .. })
    ));
    match &out[2] {
        Effect::Granted {
            session: 2,
            req: 1,
            grant,
            ..
        } => {
            assert_eq!(grant.deadline, h.at(1300));
        }
        e => panic!("unexpected {e:?}"),
    }
    assert_eq!(out.len(), 3);
}

#[test]
fn shared_readers_share_and_writer_is_not_starved() {
    let mut h = H::new();
    let r1 = h.lock(1, K, Mode::Shared, 1000);
    let r2 = h.lock(2, K, Mode::Shared, 1000);
    h.queue(3, 1, K, Mode::Exclusive, Wait::Forever);
    // A new reader queues behind the waiting writer.
    h.queue(4, 1, K, Mode::Shared, Wait::Forever);
    assert_eq!(h.t.inspect(K).unwrap().waiters, 2);
    h.take();
    h.release(1, K, r1).unwrap();
    assert!(h.granted().is_empty(), "writer waits for the last reader");
    h.release(2, K, r2).unwrap();
    let g = h.granted();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, 3);
    h.release(3, K, g[0].2).unwrap();
    assert_eq!(h.granted().iter().map(|g| g.0).collect::<Vec<_>>(), vec![4]);
}

#[test]
fn consecutive_shared_waiters_are_granted_together() {
    let mut h = H::new();
    let w = h.lock(1, K, Mode::Exclusive, 1000);
    h.queue(2, 1, K, Mode::Shared, Wait::Forever);
    h.queue(3, 1, K, Mode::Shared, Wait::Forever);
    h.queue(4, 1, K, Mode::Exclusive, Wait::Forever);
    h.queue(5, 1, K, Mode::Shared, Wait::Forever);
    h.take();
    h.release(1, K, w).unwrap();
    let g = h.granted();
    assert_eq!(g.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2, 3]);
    let info = h.t.inspect(K).unwrap();
    assert_eq!(info.holders.len(), 2);
    assert_eq!(info.waiters, 2);
}

#[test]
fn semaphore_admits_n_holders() {
    let mut h = H::new();
    let a = h.lock(1, K, Mode::Semaphore(2), 1000);
    h.lock(2, K, Mode::Semaphore(2), 1000);
    h.queue(3, 1, K, Mode::Semaphore(2), Wait::Forever);
    assert_eq!(
        h.acq(4, 1, K, Mode::Semaphore(3), 100, Wait::Forever),
        Err(TableError::InvalidMode(
            "semaphore permit count differs from the key's holders"
        ))
    );
    assert!(matches!(
        h.acq(4, 2, K, Mode::Exclusive, 100, Wait::Forever),
        Err(TableError::InvalidMode(_))
    ));
    assert!(matches!(
        h.acq(4, 3, K, Mode::Shared, 100, Wait::No),
        Err(TableError::InvalidMode(_))
    ));
    h.take();
    h.release(1, K, a).unwrap();
    assert_eq!(h.granted().iter().map(|g| g.0).collect::<Vec<_>>(), vec![3]);
    assert_eq!(h.t.inspect(K).unwrap().holders.len(), 2);
}

#[test]
fn invalid_modes() {
    let mut h = H::new();
    assert!(matches!(
        h.acq(1, 1, K, Mode::Semaphore(0), 100, Wait::No),
        Err(TableError::InvalidMode(_))
    ));
    h.lock(1, K, Mode::Shared, 100);
    assert!(matches!(
        h.acq(2, 1, K, Mode::Semaphore(1), 100, Wait::No),
        Err(TableError::InvalidMode(_))
    ));
    // Exclusive vs Shared is not a mode error, just the readers–writer rule.
    assert_eq!(
        h.acq(2, 2, K, Mode::Exclusive, 100, Wait::No),
        Err(TableError::Busy)
    );
    assert_eq!(h.t.key_count(), 1);
}

#[test]
fn waiter_times_out() {
    let mut h = H::new();
    h.lock(1, K, Mode::Exclusive, 1000);
    let until = h.at(50);
    h.queue(2, 9, K, Mode::Exclusive, Wait::Until(until));
    assert_eq!(h.t.session_counts(2), (0, 1));
    assert_eq!(h.t.next_deadline(), Some(until));
    h.take();
    h.advance_to(49);
    assert!(h.take().is_empty());
    h.advance_to(50);
    assert_eq!(
        h.take(),
        vec![Effect::AcquireFailed {
            session: 2,
            req: 9,
            error: TableError::Timeout
        }]
    );
    assert_eq!(h.t.session_counts(2), (0, 0));
    assert_eq!(h.t.inspect(K).unwrap().waiters, 0);
}

#[test]
fn waiter_deadline_equal_to_lease_deadline_is_granted() {
    let mut h = H::new();
    h.lock(1, K, Mode::Exclusive, 50);
    let until = h.at(50);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Until(until));
    h.take();
    h.advance_to(50);
    assert_eq!(h.granted().len(), 1);
}

#[test]
fn cancel_pending_acquire() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Exclusive, 1000);
    h.queue(2, 5, K, Mode::Exclusive, Wait::Forever);
    h.take();
    let now = h.now;
    assert!(h.t.cancel(now, 2, 5, &mut h.out));
    assert_eq!(
        h.take(),
        vec![Effect::AcquireFailed {
            session: 2,
            req: 5,
            error: TableError::Cancelled
        }]
    );
    assert!(
        !h.t.cancel(now, 2, 5, &mut h.out),
        "nothing pending any more"
    );
    assert!(!h.t.cancel(now, 99, 5, &mut h.out), "unknown session");
    h.release(1, K, f).unwrap();
    assert!(h.granted().is_empty());
    assert_eq!(h.t.key_count(), 0);
    // Cancelling a request that was already granted is not an error, just false.
    h.lock(1, K, Mode::Exclusive, 1000);
    h.queue(2, 6, K, Mode::Exclusive, Wait::Forever);
    let f = h.t.inspect(K).unwrap().holders[0].fence;
    h.release(1, K, f).unwrap();
    assert!(!h.t.cancel(now, 2, 6, &mut h.out));
}

#[test]
fn cancelling_the_queued_writer_admits_readers_behind_it() {
    let mut h = H::new();
    h.lock(1, K, Mode::Shared, 1000);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    h.queue(3, 1, K, Mode::Shared, Wait::Forever);
    h.take();
    let now = h.now;
    assert!(h.t.cancel(now, 2, 1, &mut h.out));
    let g = h.granted();
    assert_eq!(g.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn lease_expires_and_next_waiter_is_granted() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    h.take();
    h.advance_to(99);
    assert!(h.take().is_empty());
    h.advance_to(120);
    let out = h.take();
    assert_eq!(
        out[0],
        Effect::Event(LockEvent::Expired {
            key: Bytes::from_static(K),
            session: 1,
            fence: f
        })
    );
    match &out[2] {
        Effect::Granted {
            session: 2, grant, ..
        } => assert_eq!(grant.deadline, h.at(1120)),
        e => panic!("unexpected {e:?}"),
    }
    assert_eq!(h.t.session_counts(1), (0, 0));
    assert_eq!(h.release(1, K, f), Err(TableError::NotOwner));
}

#[test]
fn extend_renews_the_lease() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Exclusive, 100);
    h.take();
    h.now = h.at(80);
    let now = h.now;
    let d = h.t.extend(now, 1, K, f, ms(100), &mut h.out).unwrap();
    assert_eq!(d, h.at(180));
    assert_eq!(
        h.take(),
        vec![Effect::Event(LockEvent::Extended {
            key: Bytes::from_static(K),
            session: 1,
            fence: f,
            deadline: d
        })]
    );
    h.advance_to(150);
    assert!(h.take().is_empty(), "old deadline is stale");
    assert!(h.t.is_locked(K));
    h.advance_to(180);
    assert!(matches!(
        h.take()[0],
        Effect::Event(LockEvent::Expired { .. })
    ));
    assert_eq!(h.t.key_count(), 0);
}

#[test]
fn wait_until_unlocked_outcomes() {
    let mut h = H::new();
    let key = Bytes::from_static(K);
    let now = h.now;
    assert_eq!(
        h.t.wait_until_unlocked(now, 9, 1, &key, Wait::Forever, &mut h.out),
        Ok(Some(UnlockOutcome::Released))
    );
    // Released, even though a queued acquire is granted in the same step.
    let f = h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    assert_eq!(
        h.t.wait_until_unlocked(now, 9, 2, &key, Wait::Forever, &mut h.out),
        Ok(None)
    );
    assert_eq!(h.t.session_counts(9), (0, 1));
    h.take();
    h.release(1, K, f).unwrap();
    let out = h.take();
    assert!(out.contains(&Effect::Unlocked {
        session: 9,
        req: 2,
        outcome: UnlockOutcome::Released
    }));
    assert_eq!(h.t.session_counts(9), (0, 0));
    // Expired: session 2's lease runs out.
    assert_eq!(
        h.t.wait_until_unlocked(now, 9, 3, &key, Wait::Forever, &mut h.out),
        Ok(None)
    );
    h.advance_to(1000);
    assert!(h.take().contains(&Effect::Unlocked {
        session: 9,
        req: 3,
        outcome: UnlockOutcome::Expired
    }));
    assert_eq!(h.t.key_count(), 0);
}

#[test]
fn wait_until_unlocked_timeout_cancel_and_no_wait() {
    let mut h = H::new();
    let key = Bytes::from_static(K);
    h.lock(1, K, Mode::Exclusive, 1000);
    let now = h.now;
    assert_eq!(
        h.t.wait_until_unlocked(now, 9, 1, &key, Wait::No, &mut h.out),
        Err(TableError::Busy)
    );
    let until = h.at(10);
    assert_eq!(
        h.t.wait_until_unlocked(now, 9, 2, &key, Wait::Until(until), &mut h.out),
        Ok(None)
    );
    assert_eq!(
        h.t.wait_until_unlocked(now, 9, 3, &key, Wait::Forever, &mut h.out),
        Ok(None)
    );
    h.take();
    h.advance_to(10);
    assert_eq!(
        h.take(),
        vec![Effect::WaitFailed {
            session: 9,
            req: 2,
            error: TableError::Timeout
        }]
    );
    let now = h.now;
    assert!(h.t.cancel(now, 9, 3, &mut h.out));
    assert_eq!(
        h.take(),
        vec![Effect::WaitFailed {
            session: 9,
            req: 3,
            error: TableError::Cancelled
        }]
    );
    assert_eq!(h.t.session_counts(9), (0, 0));
}

#[test]
fn clean_close_releases_at_once_and_grants_next_waiter() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Exclusive, 1000);
    h.lock(2, b"other", Mode::Exclusive, 1000);
    h.queue(1, 7, b"other", Mode::Exclusive, Wait::Forever);
    h.queue(3, 1, K, Mode::Exclusive, Wait::Forever);
    h.take();
    let now = h.now;
    h.t.close_session(now, 1, true, &mut h.out);
    h.t.check_invariants();
    let out = h.take();
    assert!(out.contains(&Effect::Event(LockEvent::Released {
        key: Bytes::from_static(K),
        session: 1,
        fence: f
    })));
    let granted: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Granted { session, .. } => Some(*session),
            _ => None,
        })
        .collect();
    assert_eq!(granted, vec![3]);
    // Session 1's queued acquire on "other" was dropped silently.
    assert!(
        out.iter()
            .all(|e| !matches!(e, Effect::AcquireFailed { .. }))
    );
    assert_eq!(h.t.inspect(b"other").unwrap().waiters, 0);
    assert_eq!(h.t.session_counts(1), (0, 0));
}

#[test]
fn lost_session_keeps_lease_until_ttl_then_lock_delay() {
    let mut h = H::with(TableConfig {
        lock_delay: ms(50),
        ..TableConfig::default()
    });
    let f = h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    let now = h.now;
    h.take();
    h.t.close_session(now, 1, false, &mut h.out);
    h.t.check_invariants();
    assert!(h.take().is_empty());
    assert!(h.t.is_locked(K));
    assert_eq!(h.t.session_counts(1), (0, 0), "orphans count for nobody");
    assert_eq!(h.release(1, K, f), Err(TableError::NotOwner));
    h.advance_to(100);
    let out = h.take();
    assert_eq!(
        events(&out),
        vec![&LockEvent::Expired {
            key: Bytes::from_static(K),
            session: 1,
            fence: f
        }]
    );
    assert_eq!(out.len(), 1, "no grant during lock delay");
    assert!(!h.t.is_locked(K));
    let info = h.t.inspect(K).unwrap();
    assert_eq!(info.blocked_until, Some(h.at(150)));
    assert_eq!(info.waiters, 1);
    assert_eq!(
        h.acq(3, 1, K, Mode::Exclusive, 100, Wait::No),
        Err(TableError::Busy)
    );
    h.advance_to(149);
    assert!(h.granted().is_empty());
    h.advance_to(150);
    assert_eq!(h.granted().iter().map(|g| g.0).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn lock_delay_without_waiters_keeps_key_until_it_ends() {
    let mut h = H::with(TableConfig {
        lock_delay: ms(50),
        ..TableConfig::default()
    });
    h.lock(1, K, Mode::Exclusive, 100);
    let now = h.now;
    h.t.close_session(now, 1, false, &mut h.out);
    h.advance_to(100);
    assert_eq!(h.t.key_count(), 1);
    h.advance_to(150);
    assert_eq!(h.t.key_count(), 0);
    assert_eq!(h.t.next_deadline(), None);
}

#[test]
fn expired_lease_of_live_session_has_no_lock_delay() {
    let mut h = H::with(TableConfig {
        lock_delay: ms(50),
        ..TableConfig::default()
    });
    h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    h.take();
    h.advance_to(100);
    assert_eq!(h.granted().len(), 1);
}

#[test]
fn reclaim_transfers_an_orphaned_lease() {
    let mut h = H::with(TableConfig {
        lock_delay: ms(50),
        ..TableConfig::default()
    });
    let f = h.lock(1, K, Mode::Exclusive, 100);
    let now = h.now;
    h.t.close_session(now, 1, false, &mut h.out);
    assert_eq!(
        h.t.reclaim(5, b"nope", f, Mode::Exclusive),
        Err(TableError::NotLocked)
    );
    assert_eq!(
        h.t.reclaim(5, K, f + 1, Mode::Exclusive),
        Err(TableError::NotOwner)
    );
    let g = h.t.reclaim(5, K, f, Mode::Exclusive).unwrap();
    h.t.check_invariants();
    assert_eq!((g.fence, g.deadline, g.ttl), (f, h.at(100), ms(100)));
    assert_eq!(h.t.session_counts(5), (1, 0));
    // Idempotent for the new owner.
    assert_eq!(h.t.reclaim(5, K, f, Mode::Exclusive), Ok(g.clone()));
    // No lock delay once reclaimed: the lease has a live owner again.
    h.queue(6, 1, K, Mode::Exclusive, Wait::Forever);
    h.take();
    h.advance_to(100);
    assert_eq!(h.granted().len(), 1);
    assert_eq!(h.t.session_counts(5), (0, 0));
}

/// Issue 23 finding 2: a reclaim never moves a lease to another principal — not from a live
/// session, not from a lost one — whatever secret the driver accepted; the same principal on
/// another session may take it (a reconnect).
#[test]
fn reclaim_never_moves_a_lease_to_another_principal() {
    let mut h = H::new();
    h.t.set_principal(1, b"alice");
    h.t.set_principal(2, b"bob");
    h.t.set_principal(3, b"alice");
    let f = h.lock(1, K, Mode::Exclusive, 100);
    assert_eq!(
        h.t.reclaim(2, K, f, Mode::Exclusive),
        Err(TableError::NotOwner),
        "from alice's live session"
    );
    // An unnamed session (no principal) takes nothing named either.
    assert_eq!(
        h.t.reclaim(9, K, f, Mode::Exclusive),
        Err(TableError::NotOwner)
    );
    let now = h.now;
    h.t.close_session(now, 1, false, &mut h.out);
    assert_eq!(
        h.t.reclaim(2, K, f, Mode::Exclusive),
        Err(TableError::NotOwner),
        "from alice's lost session"
    );
    h.t.reclaim(3, K, f, Mode::Exclusive)
        .expect("alice's reconnect");
    h.t.check_invariants();
    assert_eq!(
        h.t.reclaim(2, K, f, Mode::Exclusive),
        Err(TableError::NotOwner)
    );
    h.release(3, K, f).expect("alice releases");
}

/// Issue 23 finding 7: a reclaim names the lease's mode; another mode is refused, so a shared
/// reader cannot turn its lease exclusive (and shut the other readers out).
#[test]
fn reclaim_keeps_the_lease_mode() {
    let mut h = H::new();
    let f = h.lock(1, K, Mode::Shared, 100);
    let other = h.lock(2, K, Mode::Shared, 100);
    assert_eq!(h.t.lease_mode(K, f), Ok(Mode::Shared));
    assert_eq!(h.t.lease_mode(K, f + 100), Err(TableError::NotOwner));
    assert_eq!(h.t.lease_mode(b"idle", f), Err(TableError::NotLocked));
    for mode in [Mode::Exclusive, Mode::Semaphore(2)] {
        assert_eq!(h.t.reclaim(3, K, f, mode), Err(TableError::NotOwner));
    }
    h.t.reclaim(3, K, f, Mode::Shared).expect("as shared");
    h.t.reclaim(2, K, other, Mode::Shared)
        .expect("the other reader keeps its lease");
    h.t.check_invariants();
}

/// A restored lease records no principal: the first principal whose secret the driver
/// accepted takes it, and from then on it is that principal's.
#[test]
fn a_restored_lease_is_reclaimed_once_then_kept_by_its_principal() {
    let mut h = H::new();
    h.t.set_principal(1, b"alice");
    h.t.set_principal(2, b"bob");
    let now = h.now;
    h.t.restore(now, Bytes::from_static(K), 7, Mode::Exclusive, h.at(100))
        .expect("restore");
    h.t.reclaim(1, K, 7, Mode::Exclusive)
        .expect("alice reclaims");
    assert_eq!(
        h.t.reclaim(2, K, 7, Mode::Exclusive),
        Err(TableError::NotOwner)
    );
    h.t.check_invariants();
}

/// A lease records its principal in what was padding: a holder costs what it did.
#[test]
fn a_holder_records_its_principal_in_no_extra_room() {
    assert_eq!(std::mem::size_of::<crate::lease::HolderRec>(), 56);
}

#[test]
fn reclaim_from_live_session_and_conflicts() {
    let mut h = H::with(TableConfig {
        max_leases_per_session: 1,
        ..TableConfig::default()
    });
    let f = h.lock(1, K, Mode::Shared, 100);
    let f2 = h.lock(2, K, Mode::Shared, 100);
    h.lock(3, b"x", Mode::Exclusive, 100);
    assert_eq!(
        h.t.reclaim(3, K, f, Mode::Shared),
        Err(TableError::LimitExceeded("held leases"))
    );
    h.t.reclaim(4, K, f, Mode::Shared).unwrap();
    h.t.check_invariants();
    assert_eq!(h.t.session_counts(1), (0, 0));
    assert_eq!(h.t.session_counts(4), (1, 0));
    assert_eq!(h.release(1, K, f), Err(TableError::NotOwner));
    h.release(4, K, f).unwrap();
    h.release(2, K, f2).unwrap();
}

#[test]
fn restore_and_fence_floor() {
    let mut h = H::with(TableConfig {
        epoch: 2,
        lock_delay: ms(10),
        ..TableConfig::default()
    });
    let now = h.now;
    let restored = (2 << COUNTER_BITS) | 500;
    let dl = h.at(100);
    h.t.restore(now, Bytes::from_static(K), restored, Mode::Exclusive, dl)
        .unwrap();
    h.t.check_invariants();
    assert_eq!(
        h.t.restore(
            now,
            Bytes::from_static(K),
            restored + 1,
            Mode::Exclusive,
            dl
        ),
        Err(TableError::RestoreConflict)
    );
    let info = h.t.inspect(K).unwrap();
    assert_eq!(info.holders[0].session, RESTORED_SESSION);
    assert_eq!(info.holders[0].fence, restored);
    let f = h.lock(1, b"other", Mode::Exclusive, 100);
    assert_eq!(f, restored + 1);
    h.t.raise_fence_floor(restored + 1000);
    let f = h.lock(1, b"third", Mode::Exclusive, 100);
    assert_eq!(f, restored + 1001);
    h.t.raise_fence_floor(5); // never lowers
    assert_eq!(h.lock(1, b"fourth", Mode::Exclusive, 100), restored + 1002);
    // Shared keys restore with several holders.
    h.t.restore(now, Bytes::from_static(b"s"), 7, Mode::Shared, dl)
        .unwrap();
    h.t.restore(now, Bytes::from_static(b"s"), 8, Mode::Shared, dl)
        .unwrap();
    assert!(matches!(
        h.t.restore(now, Bytes::from_static(b"s"), 9, Mode::Semaphore(2), dl),
        Err(TableError::InvalidMode(_))
    ));
    // A restored lease expires like an orphan: lock delay applies.
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    h.take();
    h.advance_to(100);
    assert!(h.granted().is_empty());
    h.advance_to(110);
    assert_eq!(h.granted().len(), 1);
}

#[test]
fn per_session_limits() {
    let mut h = H::with(TableConfig {
        max_leases_per_session: 2,
        max_waiters_per_session: 1,
        ..TableConfig::default()
    });
    h.lock(1, b"a", Mode::Exclusive, 100);
    h.lock(1, b"b", Mode::Exclusive, 100);
    assert_eq!(
        h.acq(1, 1, b"c", Mode::Exclusive, 100, Wait::No),
        Err(TableError::LimitExceeded("held leases"))
    );
    h.queue(2, 1, b"a", Mode::Exclusive, Wait::Forever);
    assert_eq!(
        h.acq(2, 2, b"b", Mode::Exclusive, 100, Wait::Forever),
        Err(TableError::LimitExceeded("pending waiters"))
    );
    let now = h.now;
    assert_eq!(
        h.t.wait_until_unlocked(now, 2, 3, b"b", Wait::Forever, &mut h.out),
        Err(TableError::LimitExceeded("pending waiters"))
    );
}

#[test]
fn lease_limit_reached_while_queued_fails_the_waiter() {
    let mut h = H::with(TableConfig {
        max_leases_per_session: 1,
        ..TableConfig::default()
    });
    let f = h.lock(1, K, Mode::Exclusive, 100);
    h.queue(2, 1, K, Mode::Exclusive, Wait::Forever);
    h.lock(2, b"x", Mode::Exclusive, 100);
    h.take();
    h.release(1, K, f).unwrap();
    assert!(h.take().contains(&Effect::AcquireFailed {
        session: 2,
        req: 1,
        error: TableError::LimitExceeded("held leases")
    }));
    assert_eq!(h.t.key_count(), 1);
}

#[test]
fn deadline_heap_stays_bounded_under_release_churn() {
    let mut h = H::new();
    let now = h.now;
    for req in 0..20_000 {
        let r = AcquireRequest {
            session: 1,
            req,
            key: Bytes::from_static(K),
            mode: Mode::Exclusive,
            ttl: ms(3_600_000),
            wait: Wait::No,
            owner: None,
            ticket: 0,
            fence_block: 1,
        };
        let f = h.t.acquire(now, r, &mut h.out).unwrap().unwrap().fence;
        h.t.release(now, 1, &Bytes::from_static(K), f, &mut h.out)
            .unwrap();
        h.out.clear();
    }
    h.t.check_invariants();
    assert!(
        h.t.deadlines.len() <= 1025,
        "heap len {}",
        h.t.deadlines.len()
    );
    assert_eq!(h.t.key_count(), 0);
}

#[test]
fn next_deadline_tracks_the_earliest() {
    let mut h = H::new();
    assert_eq!(h.t.next_deadline(), None);
    h.lock(1, b"a", Mode::Exclusive, 300);
    h.lock(1, b"b", Mode::Exclusive, 100);
    assert_eq!(h.t.next_deadline(), Some(h.at(100)));
    h.advance_to(100);
    assert_eq!(h.t.next_deadline(), Some(h.at(300)));
    h.advance_to(300);
    assert_eq!(h.t.next_deadline(), None);
}

#[test]
fn huge_ttl_and_deadlines_do_not_panic() {
    let mut h = H::new();
    let now = h.now;
    let g =
        h.t.acquire(
            now,
            AcquireRequest {
                session: 1,
                req: 1,
                key: Bytes::from_static(K),
                mode: Mode::Exclusive,
                ttl: Duration::MAX,
                wait: Wait::No,
                owner: None,
                ticket: 0,
                fence_block: 1,
            },
            &mut h.out,
        )
        .unwrap()
        .unwrap();
    assert_eq!(g.deadline, now + MAX_TTL);
    h.t.extend(now, 1, K, g.fence, Duration::MAX, &mut h.out)
        .unwrap();
    h.advance_to(1);
    assert!(h.t.is_locked(K));
}

#[test]
fn errors_have_messages() {
    assert_eq!(
        TableError::LimitExceeded("held leases").to_string(),
        "limit exceeded: held leases"
    );
    assert_eq!(
        TableError::NotOwner.to_string(),
        "lease is not held by this session"
    );
}

#[test]
fn holds_lists_every_current_lease() {
    let mut h = H::new();
    assert!(h.t.holds().is_empty());
    let a = h.lock(1, b"a", Mode::Exclusive, 100);
    let r1 = h.lock(1, b"r", Mode::Shared, 100);
    let r2 = h.lock(2, b"r", Mode::Shared, 200);
    h.queue(3, 7, b"a", Mode::Exclusive, Wait::Forever);
    let mut holds: Vec<(Bytes, SessionId, Fence, Mode)> =
        h.t.holds()
            .into_iter()
            .map(|(k, hd)| (k, hd.session, hd.fence, hd.mode))
            .collect();
    holds.sort_by_key(|x| x.2);
    assert_eq!(
        holds,
        vec![
            (Bytes::from_static(b"a"), 1, a, Mode::Exclusive),
            (Bytes::from_static(b"r"), 1, r1, Mode::Shared),
            (Bytes::from_static(b"r"), 2, r2, Mode::Shared),
        ]
    );
    h.release(1, b"a", a).unwrap();
    let holders: Vec<SessionId> =
        h.t.holds()
            .into_iter()
            .filter(|(k, _)| k.as_ref() == b"a")
            .map(|(_, hd)| hd.session)
            .collect();
    assert_eq!(holders, vec![3], "the waiter now holds `a`");
}

#[test]
fn restart_grace_holds_new_grants_and_honours_leases_of_the_previous_run() {
    let mut h = H::with(TableConfig {
        epoch: 5,
        ..TableConfig::default()
    });
    let until = h.at(1000);
    h.t.begin_grace(until);
    // Nothing new is granted during the grace: try-locks are busy, waits queue.
    assert_eq!(
        h.acq(1, 1, K, Mode::Exclusive, 100, Wait::No),
        Err(TableError::Busy)
    );
    h.queue(1, 2, K, Mode::Exclusive, Wait::Forever);
    assert!(
        h.t.inspect(b"idle")
            .is_some_and(|i| i.blocked_until == Some(until))
    );
    // A lease of an earlier epoch is re-created for its holder at once, ahead of the queue.
    let old = (4 << COUNTER_BITS) | 17;
    let lease = |fence| PreviousLease {
        key: K,
        fence,
        mode: Mode::Exclusive,
        ttl: ms(500),
        owner: &[],
    };
    let now = h.now;
    let g =
        h.t.reclaim_from_previous_run(now, 2, lease(old), &mut h.out);
    assert_eq!(g.map(|g| g.fence), Ok(old));
    h.t.check_invariants();
    // A second exclusive lease on the key is refused, and so is a fence of this run.
    let other = (4 << COUNTER_BITS) | 18;
    let r =
        h.t.reclaim_from_previous_run(now, 3, lease(other), &mut h.out);
    assert_eq!(r, Err(TableError::NotOwner));
    let mine = (5 << COUNTER_BITS) | 1;
    let r = h.t.reclaim_from_previous_run(
        now,
        3,
        PreviousLease {
            key: b"x",
            ..lease(mine)
        },
        &mut h.out,
    );
    assert_eq!(r, Err(TableError::NotLocked));
    h.take();
    // The holder releases during the grace: the waiter still waits for its end.
    h.release(2, K, old).unwrap();
    assert!(h.granted().is_empty());
    h.advance_to(1000);
    let g = h.granted();
    assert_eq!((g.len(), g[0].0, g[0].1), (1, 1, 2));
    // After the grace, grants are immediate and reclaims of old leases are plain NotLocked.
    let now = h.now;
    let r = h.t.reclaim_from_previous_run(
        now,
        3,
        PreviousLease {
            key: b"y",
            ..lease(other)
        },
        &mut h.out,
    );
    assert_eq!(r, Err(TableError::NotLocked));
    h.lock(3, b"z", Mode::Exclusive, 100);
}

/// Issue 13, finding 8 (351 B per held lock against Redis's 161 B): a held lock on a short key
/// costs one slab slot with the key inline and no allocation of its own, one 24-byte timer and
/// one 4-byte entry in its session's list; the queues and lock delay cost nothing until used,
/// and are given back with the entry when the key goes idle.
#[test]
fn a_held_short_key_costs_a_slot_a_timer_and_no_allocation_of_its_own() {
    use crate::deadlines::Deadlines;
    use crate::entry::Entry;
    assert!(std::mem::size_of::<Option<Entry>>() <= 96);
    const { assert!(Deadlines::TIMER_BYTES <= 24) };
    let mut h = H::new();
    let f = h.lock(1, b"bench/mem/00000001", Mode::Exclusive, 100);
    let e = h.t.keys.find(b"bench/mem/00000001").expect("live");
    assert!(matches!(e.key, crate::stored_key::StoredKey::Inline { .. }));
    assert!(!e.has_rare_part());
    assert_eq!(h.t.sessions.get(1).map(|s| s.held_on().len()), Some(1));
    // A waiter needs the queue; once it is granted the key is held again and keeps its box
    // (a hand-off does not allocate it again); when the key goes idle the entry goes, box and all.
    h.queue(2, 7, b"bench/mem/00000001", Mode::Exclusive, Wait::Forever);
    let key = h.t.keys.find(b"bench/mem/00000001").expect("live");
    assert!(key.has_rare_part());
    h.release(1, b"bench/mem/00000001", f).expect("release");
    let granted = h.take().into_iter().find_map(|e| match e {
        Effect::Granted { grant, .. } => Some(grant.fence),
        _ => None,
    });
    h.release(2, b"bench/mem/00000001", granted.expect("granted"))
        .expect("release");
    assert!(
        h.t.keys.find(b"bench/mem/00000001").is_none(),
        "idle key freed"
    );
}

/// A session that cycles through many keys keeps a short entry list: released leases are
/// pruned from it once it outgrows twice the leases held.
#[test]
fn a_session_cycling_keys_keeps_its_lease_list_short() {
    let mut h = H::new();
    for i in 0..10_000u32 {
        let key: &'static [u8] = format!("cycle/{i}").into_bytes().leak();
        let f = h.lock(1, key, Mode::Exclusive, 100);
        h.release(1, key, f).expect("release");
    }
    let _keep = h.lock(1, b"kept", Mode::Exclusive, 100);
    let listed = h.t.sessions.get(1).map_or(0, |s| s.held_on().len());
    assert!(listed <= 2 + 16 + 1, "{listed} entries listed for 1 lease");
    assert_eq!(h.t.session_counts(1), (1, 0));
}

/// An owner label given with an acquire is shown with its lease — granted at once or from the
/// queue — and forgotten when the lease ends; unlabelled leases report none.
#[test]
fn owner_labels_follow_their_leases() {
    let mut h = H::new();
    let labelled = |session, req, owner: &'static [u8], wait| AcquireRequest {
        session,
        req,
        key: Bytes::from_static(b"k"),
        mode: Mode::Exclusive,
        ttl: ms(1000),
        wait,
        owner: Some(Bytes::from_static(owner)),
        ticket: 0,
        fence_block: 1,
    };
    let now = h.now;
    let g =
        h.t.acquire(
            now,
            labelled(1, 1, b"worker-7@host-3", Wait::No),
            &mut h.out,
        )
        .expect("granted")
        .expect("at once");
    let owners = |h: &H| -> Vec<Option<Bytes>> {
        h.t.inspect(b"k")
            .map(|i| i.holders.into_iter().map(|x| x.owner).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        owners(&h),
        vec![Some(Bytes::from_static(b"worker-7@host-3"))]
    );
    let r = h.t.acquire(
        now,
        labelled(2, 2, b"api@host-9", Wait::Forever),
        &mut h.out,
    );
    assert_eq!(r, Ok(None));
    h.release(1, b"k", g.fence).expect("released");
    assert_eq!(owners(&h), vec![Some(Bytes::from_static(b"api@host-9"))]);
    h.t.check_invariants();
    let next = h.granted();
    let (_, _, fence) = next[0];
    h.release(2, b"k", fence).expect("released");
    let f = h.lock(3, b"k", Mode::Exclusive, 100);
    assert_eq!(owners(&h), vec![None]);
    h.release(3, b"k", f).expect("released");
    assert_eq!(h.t.owners.fences().count(), 0, "every label forgotten");
}

/// A page of keys is the same from the ordered index (a broker's, O(log n + page)) as from a
/// scan and sort: prefix, cursor, page size, and keys that come and go.
#[test]
fn key_pages_from_the_ordered_index_match_a_full_scan() {
    let mut scan = H::new();
    let mut ordered = H::with(TableConfig {
        ordered_keys: true,
        ..TableConfig::default()
    });
    let keys: [&'static [u8]; 9] = [
        b"b/2",
        b"a/3",
        b"a/10",
        b"c",
        b"a/1",
        b"a/2",
        b"a/",
        b"ab",
        b"a/zzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ];
    let mut fences = Vec::new();
    for h in [&mut scan, &mut ordered] {
        fences.clear();
        for k in keys {
            fences.push(h.lock(1, k, Mode::Exclusive, 1000));
        }
        // One key leaves again: the index forgets it.
        h.t.release(h.now, 1, &Bytes::from_static(b"a/2"), fences[5], &mut h.out)
            .expect("release");
    }
    let page = |h: &H, prefix: &[u8], after: Option<&[u8]>, limit| {
        let (items, more) = h.t.list_keys(prefix, after, limit);
        (items.into_iter().map(|l| l.key).collect::<Vec<_>>(), more)
    };
    for (prefix, after, limit) in [
        (&b""[..], None, 100),
        (b"a/", None, 2),
        (b"a/", Some(&b"a/10"[..]), 2),
        (b"a/", Some(&b"a"[..]), 3),
        (b"a/", Some(&b"a/zzzzzzzzzzzzzzzzzzzzzzzzzzzz"[..]), 3),
        (b"a", None, 100),
        (b"z", None, 5),
    ] {
        let expected = page(&scan, prefix, after, limit);
        assert_eq!(
            page(&ordered, prefix, after, limit),
            expected,
            "{prefix:?} after {after:?}"
        );
    }
    let (all, more) = page(&ordered, b"a/", None, 100);
    assert!(!more);
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(!all.iter().any(|k| &k[..] == b"a/2"));
    ordered.t.check_invariants();
}
