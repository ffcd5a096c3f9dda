//! Unit tests of queue places kept across a planned move (`requeue.rs`): the old owner's
//! waiting acquires leave with tickets in queue order; at the new owner they take their places
//! back ahead of anyone who asked there first, the key opens when the last ticket is back or
//! the window ends, and a ticket only works once, for its own key, within the window.

use super::harness::{H, ms};
use crate::*;

/// Session `session`'s acquire of `k` (request 1, exclusive, 1 s, waiting forever) with
/// `ticket`.
fn acquire_with(m: &mut H, session: SessionId, k: &'static [u8], ticket: u64) -> Option<Grant> {
    let now = m.now;
    let r = m.t.acquire(
        now,
        AcquireRequest {
            session,
            req: 1,
            key: bytes::Bytes::from_static(k),
            mode: Mode::Exclusive,
            ttl: ms(1000),
            wait: Wait::Forever,
            owner: None,
            ticket,
            fence_block: 1,
        },
        &mut m.out,
    );
    m.t.check_invariants();
    r.expect("admitted")
}

/// Releases each grant in turn and returns the sessions granted, in order.
fn drain_grants(m: &mut H, k: &'static [u8]) -> Vec<SessionId> {
    let mut order = Vec::new();
    while let Some((session, _, fence)) = m.granted().first().copied() {
        order.push(session);
        m.release(session, k, fence).expect("holder releases");
    }
    order
}

/// The old owner's queue (2, 3, 4 behind holder 1) leaves with tickets, in order.
fn moved_queue(k: &'static [u8]) -> Vec<u64> {
    let mut old = H::new();
    old.lock_one(1, 1, k);
    for s in 2..5 {
        old.queue_one(s, 1, k);
    }
    old.take();
    let mut next = 100;
    let now = old.now;
    let (ended, tickets) = old.t.evict_keeping_places(now, k, &mut old.out, &mut || {
        next += 1;
        next
    });
    old.t.check_invariants();
    assert_eq!(ended.len(), 1, "the holder's lease is handed over");
    assert_eq!(tickets, [101, 102, 103]);
    let answers: Vec<_> = old
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Effect::AcquireFailed { session, error, .. } => Some((session, error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [
            (2, TableError::Requeued(101)),
            (3, TableError::Requeued(102)),
            (4, TableError::Requeued(103)),
        ]
    );
    tickets
}

#[test]
fn waiting_acquires_keep_their_order_across_a_planned_move() {
    let tickets = moved_queue(b"k");
    let mut new = H::new();
    let now = new.now;
    new.t.reserve_places(now, b"k", &tickets).expect("reserved");
    // Someone asks the new owner first; the moved waiters come back in another order.
    assert_eq!(acquire_with(&mut new, 9, b"k", 0), None);
    assert_eq!(acquire_with(&mut new, 4, b"k", 103), None);
    assert_eq!(acquire_with(&mut new, 2, b"k", 101), None);
    assert!(
        new.granted().is_empty(),
        "the key waits for the last ticket"
    );
    assert_eq!(acquire_with(&mut new, 3, b"k", 102), None);
    assert_eq!(drain_grants(&mut new, b"k"), [2, 3, 4, 9]);
}

#[test]
fn a_ticket_not_back_within_the_window_loses_its_place_and_the_key_waits_no_longer() {
    let tickets = moved_queue(b"k");
    let mut new = H::new();
    let now = new.now;
    new.t.reserve_places(now, b"k", &tickets).expect("reserved");
    assert_eq!(acquire_with(&mut new, 3, b"k", 102), None);
    assert_eq!(acquire_with(&mut new, 9, b"k", 0), None);
    new.advance_to(REQUEUE_WINDOW.as_millis() as u64 - 1);
    assert!(
        new.granted().is_empty(),
        "tickets 101 and 103 may still come back"
    );
    new.advance_to(REQUEUE_WINDOW.as_millis() as u64);
    // The window ended: the queue goes on in its order; a late ticket is a newcomer.
    let first = new.granted();
    assert_eq!(first.iter().map(|g| g.0).collect::<Vec<_>>(), [3]);
    assert_eq!(acquire_with(&mut new, 2, b"k", 101), None);
    new.release(3, b"k", first[0].2).expect("3 releases");
    assert_eq!(drain_grants(&mut new, b"k"), [9, 2]);
}

#[test]
fn a_ticket_works_once_and_only_for_its_key() {
    let tickets = moved_queue(b"k");
    let mut new = H::new();
    let now = new.now;
    new.t.reserve_places(now, b"k", &tickets).expect("reserved");
    // Another key's acquire presenting the ticket is an ordinary one (granted: "j" is free).
    assert!(acquire_with(&mut new, 5, b"j", 101).is_some());
    assert_eq!(acquire_with(&mut new, 2, b"k", 101), None);
    // Replayed by another session: no place, a newcomer behind the reserved ones.
    assert_eq!(acquire_with(&mut new, 6, b"k", 101), None);
    assert_eq!(acquire_with(&mut new, 4, b"k", 103), None);
    assert_eq!(acquire_with(&mut new, 3, b"k", 102), None);
    assert_eq!(drain_grants(&mut new, b"k"), [2, 3, 4, 6]);
}

#[test]
fn a_plain_eviction_answers_moved_without_tickets() {
    let mut old = H::new();
    old.lock_one(1, 1, b"k");
    old.queue_one(2, 1, b"k");
    old.take();
    let now = old.now;
    old.t.evict(now, b"k", &mut old.out);
    assert!(old.take().contains(&Effect::AcquireFailed {
        session: 2,
        req: 1,
        error: TableError::Moved
    }));
}
