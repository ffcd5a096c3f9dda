//! Unit tests of cacheable leases (`cache.rs`): a fence block reserved per lease, every later
//! grant above it, and one recall to the holder when a request conflicts with the lease —
//! queued or refused acquires, multi-key acquires and `wait_until_unlocked` alike — never for
//! a compatible request or an ordinary lease.

use super::harness::{H, ms};
use crate::*;

/// Session `session`'s acquire of `k` as request `req`, asking for a fence block of `block`.
fn acquire(
    m: &mut H,
    session: SessionId,
    req: ReqId,
    k: &'static [u8],
    mode: Mode,
    wait: Wait,
    block: u32,
) -> Result<Option<Grant>, TableError> {
    let now = m.now;
    let r = m.t.acquire(
        now,
        AcquireRequest {
            session,
            req,
            key: bytes::Bytes::from_static(k),
            mode,
            ttl: ms(1000),
            wait,
            owner: None,
            ticket: 0,
            fence_block: block,
        },
        &mut m.out,
    );
    m.t.check_invariants();
    r
}

/// The `Recall` effects since the last `take`, as (session, fence).
fn recalls(m: &mut H) -> Vec<(SessionId, Fence)> {
    m.take()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Recall { session, fence, .. } => Some((session, fence)),
            _ => None,
        })
        .collect()
}

fn cached(m: &mut H, session: SessionId, k: &'static [u8], mode: Mode, block: u32) -> Grant {
    acquire(m, session, 1, k, mode, Wait::No, block)
        .expect("granted")
        .expect("at once")
}

#[test]
fn a_cacheable_lease_reserves_its_block_and_later_grants_are_above_it() {
    let mut m = H::new();
    let g = cached(&mut m, 1, b"k", Mode::Exclusive, 8);
    assert_eq!(g.fence_block, 8);
    let info = m.t.inspect(b"k").expect("held");
    assert!(info.holders[0].cached);
    // A try-lock is refused and recalls the lease.
    assert_eq!(
        acquire(&mut m, 2, 1, b"k", Mode::Exclusive, Wait::No, 1),
        Err(TableError::Busy)
    );
    assert_eq!(recalls(&mut m), [(1, g.fence)]);
    m.release(1, b"k", g.fence)
        .expect("the holder gives it back");
    let next = cached(&mut m, 2, b"k", Mode::Exclusive, 1);
    assert!(
        next.fence >= g.fence + 8,
        "{} inside the block of {}",
        next.fence,
        g.fence
    );
    assert_eq!(next.fence_block, 1);
    assert!(!m.t.inspect(b"k").expect("held").holders[0].cached);
    // Another key's grant is above the block too: one counter.
    let other = cached(&mut m, 3, b"j", Mode::Exclusive, 1);
    assert!(other.fence > next.fence);
}

#[test]
fn a_lease_is_recalled_once_and_its_waiters_are_granted_in_order_after_it() {
    let mut m = H::new();
    let g = cached(&mut m, 1, b"k", Mode::Exclusive, 4);
    assert_eq!(
        acquire(&mut m, 2, 1, b"k", Mode::Exclusive, Wait::Forever, 1),
        Ok(None)
    );
    assert_eq!(recalls(&mut m), [(1, g.fence)]);
    assert_eq!(
        acquire(&mut m, 3, 1, b"k", Mode::Exclusive, Wait::Forever, 1),
        Ok(None)
    );
    assert!(recalls(&mut m).is_empty(), "recalled twice");
    m.release(1, b"k", g.fence).expect("given back");
    let granted = m.granted();
    assert_eq!(granted.iter().map(|g| g.0).collect::<Vec<_>>(), [2]);
    assert!(granted[0].2 >= g.fence + 4);
}

#[test]
fn compatible_requests_do_not_recall_and_conflicting_ones_do() {
    let mut m = H::new();
    let r = cached(&mut m, 1, b"k", Mode::Shared, 16);
    // Another reader is admitted beside the cached read lease: nothing to recall.
    let other = cached(&mut m, 2, b"k", Mode::Shared, 1);
    assert!(other.fence >= r.fence + 16);
    assert!(recalls(&mut m).is_empty());
    // A writer conflicts: the cached read lease is recalled (the ordinary one is not).
    assert_eq!(
        acquire(&mut m, 3, 1, b"k", Mode::Exclusive, Wait::Forever, 1),
        Ok(None)
    );
    assert_eq!(recalls(&mut m), [(1, r.fence)]);
}

#[test]
fn watchers_and_multi_key_acquires_recall_too() {
    let mut m = H::new();
    let a = cached(&mut m, 1, b"a", Mode::Exclusive, 2);
    let b = cached(&mut m, 1, b"b", Mode::Exclusive, 2);
    let now = m.now;
    assert_eq!(
        m.t.wait_until_unlocked(now, 2, 1, b"a", Wait::Forever, &mut m.out),
        Ok(None)
    );
    assert_eq!(recalls(&mut m), [(1, a.fence)]);
    m.queue_all(3, 1, &[b"a", b"b"], Wait::Forever);
    assert_eq!(
        recalls(&mut m),
        [(1, b.fence)],
        "only the lease not recalled yet"
    );
}

#[test]
fn ordinary_leases_are_never_recalled() {
    let mut m = H::new();
    let g = cached(&mut m, 1, b"k", Mode::Exclusive, 1);
    assert_eq!(g.fence_block, 1);
    assert_eq!(
        acquire(&mut m, 2, 1, b"k", Mode::Exclusive, Wait::Forever, 1),
        Ok(None)
    );
    assert_eq!(
        acquire(&mut m, 3, 1, b"k", Mode::Exclusive, Wait::No, 0),
        Err(TableError::Busy)
    );
    assert!(recalls(&mut m).is_empty());
}

#[test]
fn a_block_is_capped() {
    let mut m = H::new();
    let g = cached(&mut m, 1, b"k", Mode::Exclusive, u32::MAX);
    assert_eq!(g.fence_block, MAX_FENCE_BLOCK);
    let next = cached(&mut m, 2, b"j", Mode::Exclusive, 1);
    assert_eq!(next.fence, g.fence + u64::from(MAX_FENCE_BLOCK));
}
