//! Unit tests of multi-key acquires (`groups.rs`): all or none, FIFO per key across single- and
//! multi-key requests, no deadlock between opposite key orders, no starvation, leaving queues
//! (timeout, cancel, close, evict), limits. The table's invariants are checked after every call.

use super::harness::{H, key, ms};
use crate::*;

#[test]
fn free_keys_are_granted_at_once_one_lease_and_fence_per_key_in_order() {
    let mut m = H::new();
    let now = m.now;
    let grants =
        m.t.acquire_all(
            now,
            AcquireAllRequest {
                session: 1,
                req: 1,
                keys: vec![key(b"b"), key(b"a"), key(b"c")],
                ttl: ms(100),
                wait: Wait::No,
                owner: Some(key(b"transfer@host")),
            },
            &mut m.out,
        )
        .expect("granted")
        .expect("at once");
    m.t.check_invariants();
    let keys: Vec<&[u8]> = grants.iter().map(|g| &g.key[..]).collect();
    assert_eq!(keys, [&b"b"[..], b"a", b"c"], "in the order given");
    let fences: Vec<Fence> = grants.iter().map(|g| g.fence).collect();
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "one fresh fence per key"
    );
    for g in &grants {
        assert_eq!(
            (g.mode, g.ttl, g.deadline),
            (Mode::Exclusive, ms(100), m.at(100))
        );
    }
    // Only the leases' Acquired events, in key order.
    let out = m.take();
    let acquired: Vec<(Key, Fence)> = out
        .iter()
        .map(|e| match e {
            Effect::Event(LockEvent::Acquired {
                key,
                session: 1,
                fence,
                mode: Mode::Exclusive,
                ..
            }) => (key.clone(), *fence),
            e => panic!("unexpected {e:?}"),
        })
        .collect();
    let expected: Vec<(Key, Fence)> = grants.iter().map(|g| (g.key.clone(), g.fence)).collect();
    assert_eq!(acquired, expected);
    assert_eq!(m.t.session_counts(1), (3, 0));
    for k in [b"a", b"b", b"c"] {
        let info = m.t.inspect(k).expect("held");
        assert_eq!(
            info.holders[0].owner,
            Some(key(b"transfer@host")),
            "label on every lease"
        );
    }
    // Each lease is released on its own.
    m.release(1, b"a", grants[1].fence).unwrap();
    assert!(!m.t.is_locked(b"a"));
    assert!(m.t.is_locked(b"b") && m.t.is_locked(b"c"));
    m.release(1, b"b", grants[0].fence).unwrap();
    m.release(1, b"c", grants[2].fence).unwrap();
    assert_eq!(m.t.key_count(), 0);
    assert_eq!(m.t.owners.fences().count(), 0);
}

#[test]
fn a_held_key_queues_the_whole_request_which_holds_nothing_meanwhile() {
    let mut m = H::new();
    let fb = m.lock_one(1, 1, b"b");
    m.take();
    let before = m.snapshot();
    // Try-lock: busy, nothing changed (no key created, nothing held, nothing queued).
    assert_eq!(m.all(2, 1, &[b"a", b"b"], Wait::No), Err(TableError::Busy));
    let until = m.now;
    assert_eq!(
        m.all(2, 2, &[b"a", b"b"], Wait::Until(until)),
        Err(TableError::Busy)
    );
    assert_eq!(m.snapshot(), before);
    assert!(m.take().is_empty());
    // Waiting: queued on both keys; "a" is free but not held by the request.
    m.queue_all(2, 3, &[b"a", b"b"], Wait::Forever);
    assert!(m.take().is_empty());
    assert!(!m.t.is_locked(b"a"));
    assert_eq!(m.t.inspect(b"a").map(|i| i.waiters), Some(1));
    assert_eq!(m.t.inspect(b"b").map(|i| i.waiters), Some(1));
    assert_eq!(
        m.t.session_counts(2),
        (0, 1),
        "one pending request, no lease"
    );
    // FIFO per key: a later single-key request on the free key waits behind the group.
    assert_eq!(m.one(3, 1, b"a", Wait::No), Err(TableError::Busy));
    m.queue_one(3, 2, b"a");
    assert!(!m.t.is_locked(b"a"));
    // The held key is released: the group gets both keys in one step, "a" first as given.
    m.release(1, b"b", fb).unwrap();
    let out = m.take();
    let fences: Vec<Fence> = match &out[..] {
        [
            Effect::Event(LockEvent::Released { .. }),
            Effect::Event(LockEvent::Acquired {
                key: ka,
                session: 2,
                fence: fa,
                ..
            }),
            Effect::Event(LockEvent::Acquired {
                key: kb,
                session: 2,
                fence: fb,
                ..
            }),
            Effect::GrantedAll {
                session: 2,
                req: 3,
                grants,
            },
        ] => {
            assert_eq!((&ka[..], &kb[..]), (&b"a"[..], &b"b"[..]));
            assert_eq!(
                grants.iter().map(|g| g.fence).collect::<Vec<_>>(),
                [*fa, *fb]
            );
            vec![*fa, *fb]
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(m.t.session_counts(2), (2, 0));
    // The single-key request still waits for "a".
    assert_eq!(m.holder(b"a"), Some(2));
    m.release(2, b"a", fences[0]).unwrap();
    assert_eq!(
        m.grants(),
        vec![(3, 2, vec![key(b"a")], vec![fences[1] + 1])]
    );
}

#[test]
fn a_one_key_list_is_a_single_exclusive_acquire_answered_as_a_group() {
    let mut m = H::new();
    let f = m.lock_all(1, 1, &[b"a"]);
    assert_eq!(f.len(), 1);
    m.queue_all(2, 1, &[b"a"], Wait::Forever);
    m.release(1, b"a", f[0]).unwrap();
    let g = m.grants();
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].0, g[0].1, &g[0].2[..]), (2, 1, &[key(b"a")][..]));
}

#[test]
fn duplicate_empty_and_oversized_key_lists_are_refused_with_nothing_changed() {
    let mut m = H::new();
    m.lock_one(1, 1, b"a");
    let before = m.snapshot();
    assert_eq!(
        m.all(2, 1, &[b"a", b"b", b"a"], Wait::Forever),
        Err(TableError::InvalidKeys("a key is named twice"))
    );
    assert_eq!(
        m.all(2, 2, &[], Wait::Forever),
        Err(TableError::InvalidKeys("no key named"))
    );
    let many: Vec<&'static [u8]> = (0..=MAX_KEYS_PER_REQUEST)
        .map(|i| &*format!("k{i}").into_bytes().leak())
        .collect();
    assert_eq!(
        m.all(2, 3, &many, Wait::Forever),
        Err(TableError::LimitExceeded("keys in one request"))
    );
    // The most a request may name is fine.
    let fences = m.lock_all(3, 1, &many[..MAX_KEYS_PER_REQUEST]);
    assert_eq!(fences.len(), MAX_KEYS_PER_REQUEST);
    m.close(3, true);
    assert_eq!(m.snapshot(), before);
    assert_eq!(m.t.session_counts(2), (0, 0));
    assert_eq!(
        TableError::InvalidKeys("a key is named twice").to_string(),
        "invalid key list: a key is named twice"
    );
}

#[test]
fn a_semaphore_key_refuses_the_whole_request() {
    let mut m = H::new();
    let now = m.now;
    m.t.acquire(
        now,
        AcquireRequest {
            session: 1,
            req: 1,
            key: key(b"s"),
            mode: Mode::Semaphore(2),
            ttl: ms(100),
            wait: Wait::No,
            owner: None,
            ticket: 0,
            fence_block: 1,
        },
        &mut m.out,
    )
    .expect("held");
    let before = m.snapshot();
    assert!(matches!(
        m.all(2, 1, &[b"a", b"s"], Wait::Forever),
        Err(TableError::InvalidMode(_))
    ));
    assert_eq!(m.snapshot(), before);
    assert_eq!(m.t.key_count(), 1, "no key created for the refused request");
}

/// Many sessions lock [a, b], [b, a], [a, b, c], [c, a] or one key, in a loop, waiting forever,
/// scheduled by a deterministic pseudo-random sequence; holders release after a few steps. With
/// FIFO over one global sequence no request can wait on another forever: every round finishes
/// within a bounded number of steps, and at no step are requests waiting while nothing is held.
#[test]
fn opposite_key_orders_from_many_sessions_never_deadlock() {
    const SESSIONS: u64 = 8;
    const ROUNDS: u32 = 60;
    const LISTS: [&[&[u8]]; 7] = [
        &[b"a", b"b"],
        &[b"b", b"a"],
        &[b"a", b"b", b"c"],
        &[b"c", b"a"],
        &[b"a"],
        &[b"b"],
        &[b"c"],
    ];
    #[derive(Clone, Debug)]
    enum S {
        Idle,
        Waiting(ReqId),
        Holding(Vec<(Key, Fence)>, u32),
    }
    let mut m = H::new();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut state = vec![S::Idle; SESSIONS as usize];
    let mut done = [0u32; SESSIONS as usize];
    let mut req = 0;
    let mut steps = 0;
    let (mut queued, mut group_grants) = (0, 0);
    while done.iter().any(|&d| d < ROUNDS) {
        steps += 1;
        assert!(steps < 200_000, "no progress: {state:?}");
        let s = (next() % SESSIONS) as usize;
        let session = s as SessionId + 1;
        match state[s].clone() {
            S::Idle if done[s] < ROUNDS => {
                req += 1;
                let list = LISTS[(next() % LISTS.len() as u64) as usize];
                let hold = (next() % 4) as u32;
                let r = if list.len() == 1 && next() % 2 == 0 {
                    m.one(session, req, list[0], Wait::Forever)
                        .map(|g| g.map(|g| vec![g]))
                } else {
                    m.all(session, req, list, Wait::Forever)
                };
                state[s] = match r.expect("accepted") {
                    Some(gs) => {
                        S::Holding(gs.into_iter().map(|g| (g.key, g.fence)).collect(), hold)
                    }
                    None => {
                        queued += 1;
                        S::Waiting(req)
                    }
                };
            }
            S::Idle | S::Waiting(_) => {}
            S::Holding(leases, 0) => {
                for (k, f) in leases {
                    let r = m.t.release(m.now, session, &k, f, &mut m.out);
                    assert_eq!(r, Ok(()));
                    m.t.check_invariants();
                }
                done[s] += 1;
                state[s] = S::Idle;
            }
            S::Holding(leases, n) => state[s] = S::Holding(leases, n - 1),
        }
        for e in m.take() {
            let (session, r, leases) = match e {
                Effect::Granted {
                    session,
                    req,
                    grant,
                    ..
                } => (session, req, vec![(grant.key, grant.fence)]),
                Effect::GrantedAll {
                    session,
                    req,
                    grants,
                } => {
                    group_grants += 1;
                    (
                        session,
                        req,
                        grants.into_iter().map(|g| (g.key, g.fence)).collect(),
                    )
                }
                Effect::Event(_) => continue,
                e => panic!("unexpected {e:?}"),
            };
            let i = (session - 1) as usize;
            assert!(
                matches!(state[i], S::Waiting(w) if w == r),
                "grant of a request not waiting"
            );
            state[i] = S::Holding(leases, (next() % 4) as u32);
        }
        // Deadlock check: someone waits, yet nothing is held (keys are never blocked here).
        let waiting = state.iter().any(|s| matches!(s, S::Waiting(_)));
        let holding = state.iter().any(|s| matches!(s, S::Holding(..)));
        assert!(!waiting || holding, "requests wait on free keys: {state:?}");
        for k in [b"a", b"b", b"c"] {
            m.holder(k);
        }
    }
    assert_eq!(m.t.key_count(), 0, "everything released at the end");
    assert!(
        queued > 100 && group_grants > 50,
        "contention exercised: {queued}, {group_grants}"
    );
    eprintln!("{steps} steps, {queued} queued, {group_grants} queued groups granted");
}

/// A group behind a held key is not starved by single-key requests on its other key: those
/// queued before it are served first, those queued after it wait until it has had both keys.
#[test]
fn a_multi_key_request_is_not_starved_by_a_stream_of_single_key_requests() {
    let mut m = H::new();
    let mut fa = m.lock_one(1, 1, b"a");
    let mut holder_a = 1;
    // Three single-key requests on "a" arrive before the group, many on "b" after it.
    for s in 10..13 {
        m.queue_one(s, 1, b"a");
    }
    m.queue_all(2, 1, &[b"b", b"a"], Wait::Forever);
    for s in 20..40 {
        m.queue_one(s, 1, b"b");
        m.queue_one(s, 2, b"a");
    }
    m.take();
    // "b" is free all along but nobody overtakes the group on it.
    assert!(!m.t.is_locked(b"b"));
    for s in 10..13 {
        m.release(holder_a, b"a", fa).unwrap();
        let g = m.grants();
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].0, &g[0].2[..]), (s, &[key(b"a")][..]));
        (fa, holder_a) = (g[0].3[0], s);
        assert!(!m.t.is_locked(b"b"));
    }
    m.release(holder_a, b"a", fa).unwrap();
    let g = m.grants();
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(
        (g[0].0, g[0].1, &g[0].2[..]),
        (2, 1, &[key(b"b"), key(b"a")][..])
    );
    let (fb, fa) = (g[0].3[0], g[0].3[1]);
    // Then the stream, in arrival order on each key.
    m.release(2, b"b", fb).unwrap();
    assert_eq!(m.grants()[0].0, 20);
    m.release(2, b"a", fa).unwrap();
    assert_eq!(m.grants()[0].0, 20);
}

#[test]
fn two_groups_in_opposite_orders_are_served_in_arrival_order() {
    let mut m = H::new();
    let fa = m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"b"], Wait::Forever);
    m.queue_all(3, 1, &[b"b", b"a"], Wait::Forever);
    m.take();
    m.release(1, b"a", fa).unwrap();
    let g = m.grants();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, 2, "the earlier group first, on both keys");
    let (f2a, f2b) = (g[0].3[0], g[0].3[1]);
    // Releasing one of its keys is not enough for the later group: it takes none meanwhile.
    m.release(2, b"a", f2a).unwrap();
    assert!(m.grants().is_empty());
    assert!(!m.t.is_locked(b"a"));
    assert_eq!(m.t.session_counts(3), (0, 1));
    m.release(2, b"b", f2b).unwrap();
    let g = m.grants();
    assert_eq!((g[0].0, &g[0].2[..]), (3, &[key(b"b"), key(b"a")][..]));
}

/// A queued group leaving by timeout, cancel or session close leaves every queue at once, and
/// whoever was behind it on the keys it blocked is granted in the same step.
#[test]
fn a_group_leaving_its_queues_frees_the_way_for_requests_behind_it() {
    for how in ["timeout", "cancel", "close", "lost"] {
        let mut m = H::new();
        m.lock_one(1, 1, b"a");
        let until = m.at(50);
        m.queue_all(2, 7, &[b"a", b"b"], Wait::Until(until));
        m.queue_one(3, 1, b"b");
        m.queue_one(4, 1, b"a");
        assert!(!m.t.is_locked(b"b"), "{how}: b waits for the group");
        m.take();
        match how {
            "timeout" => {
                m.advance_to(49);
                assert!(m.take().is_empty());
                m.advance_to(50);
            }
            "cancel" => assert!(m.cancel(2, 7)),
            "close" => m.close(2, true),
            _ => m.close(2, false),
        }
        let out = m.take();
        let failed = out.iter().position(|e| {
            matches!(
                e,
                Effect::AcquireFailed {
                    session: 2,
                    req: 7,
                    ..
                }
            )
        });
        let granted = out.iter().position(|e| {
            matches!(
                e,
                Effect::Granted {
                    session: 3,
                    req: 1,
                    ..
                }
            )
        });
        let granted = granted.unwrap_or_else(|| panic!("{how}: b granted behind: {out:?}"));
        match how {
            "timeout" | "cancel" => {
                assert!(failed.is_some_and(|f| f < granted), "{how}: {out:?}");
                let error = if how == "timeout" {
                    TableError::Timeout
                } else {
                    TableError::Cancelled
                };
                assert!(out.contains(&Effect::AcquireFailed {
                    session: 2,
                    req: 7,
                    error
                }));
            }
            _ => assert_eq!(failed, None, "{how}: a closed session is told nothing"),
        }
        assert_eq!(m.holder(b"b"), Some(3), "{how}");
        assert_eq!(m.holder(b"a"), Some(1), "{how}");
        assert_eq!(
            m.t.inspect(b"a").map(|i| i.waiters),
            Some(1),
            "{how}: only 4 waits"
        );
        assert_eq!(m.t.session_counts(2), (0, 0), "{how}");
        assert!(!m.cancel(2, 7), "{how}: nothing pending any more");
    }
}

/// The group at the head of a free key is what keeps the key free; when it leaves, the whole
/// run of compatible waiters behind it is granted (Shared readers together).
#[test]
fn shared_readers_behind_a_cancelled_group_are_granted_together() {
    let mut m = H::new();
    m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"r"], Wait::Forever);
    for s in 3..6 {
        let now = m.now;
        let r = m.t.acquire(
            now,
            AcquireRequest {
                session: s,
                req: 1,
                key: key(b"r"),
                mode: Mode::Shared,
                ttl: ms(100),
                wait: Wait::Forever,
                owner: None,
                ticket: 0,
                fence_block: 1,
            },
            &mut m.out,
        );
        assert_eq!(r, Ok(None));
    }
    m.take();
    assert!(m.cancel(2, 1));
    let g: Vec<SessionId> = m.grants().iter().map(|g| g.0).collect();
    assert_eq!(g, [3, 4, 5]);
}

#[test]
fn evicting_one_key_fails_the_group_and_frees_its_other_keys() {
    let mut m = H::new();
    let fa = m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"b"], Wait::Forever);
    m.queue_one(3, 1, b"b");
    m.take();
    let now = m.now;
    let ended = m.t.evict(now, b"a", &mut m.out);
    m.t.check_invariants();
    let ended: Vec<_> = ended.iter().map(|l| (l.session, l.fence)).collect();
    assert_eq!(ended, vec![(1, fa)]);
    let out = m.take();
    assert!(out.contains(&Effect::AcquireFailed {
        session: 2,
        req: 1,
        error: TableError::Moved
    }));
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Granted {
            session: 3,
            req: 1,
            ..
        }
    )));
    assert_eq!(m.t.session_counts(2), (0, 0));
}

#[test]
fn a_group_waits_out_lock_delay_and_restart_grace_on_any_of_its_keys() {
    let mut m = H::with(TableConfig {
        lock_delay: ms(50),
        ..TableConfig::default()
    });
    m.lock_one(1, 1, b"a");
    m.close(1, false); // orphaned: lock delay after it expires at 1000
    m.queue_all(2, 1, &[b"a", b"b"], Wait::Forever);
    m.take();
    m.advance_to(1000);
    assert!(m.grants().is_empty(), "a is blocked by lock delay");
    assert!(!m.t.is_locked(b"b"));
    m.advance_to(1050);
    let g = m.grants();
    assert_eq!((g.len(), g[0].0), (1, 2));

    // Restart grace: a try-lock is busy with nothing created; a wait is granted when it ends.
    let mut m = H::with(TableConfig {
        epoch: 3,
        ..TableConfig::default()
    });
    let until = m.at(100);
    m.t.begin_grace(until);
    assert_eq!(m.all(1, 1, &[b"x", b"y"], Wait::No), Err(TableError::Busy));
    assert_eq!(m.t.key_count(), 0);
    m.queue_all(1, 2, &[b"x", b"y"], Wait::Forever);
    m.advance_to(99);
    assert!(m.grants().is_empty());
    m.advance_to(100);
    let g = m.grants();
    assert_eq!((g.len(), &g[0].2[..]), (1, &[key(b"x"), key(b"y")][..]));
}

#[test]
fn limits_refuse_the_whole_request_with_nothing_changed() {
    // The session's lease limit counts all N leases.
    let mut m = H::with(TableConfig {
        max_leases_per_session: 3,
        ..TableConfig::default()
    });
    m.lock_one(1, 1, b"held");
    m.lock_one(2, 1, b"b");
    let before = m.snapshot();
    assert_eq!(
        m.all(1, 2, &[b"a", b"b", b"c"], Wait::Forever),
        Err(TableError::LimitExceeded("held leases"))
    );
    assert_eq!(m.snapshot(), before);
    m.queue_all(1, 3, &[b"a", b"b"], Wait::Forever);

    // Live keys: the keys not live yet must all fit.
    let mut m = H::with(TableConfig {
        max_keys: 3,
        ..TableConfig::default()
    });
    m.lock_one(1, 1, b"a");
    m.lock_one(1, 2, b"b");
    let before = m.snapshot();
    assert_eq!(
        m.all(2, 1, &[b"a", b"x", b"y"], Wait::Forever),
        Err(TableError::LimitExceeded("live keys"))
    );
    assert_eq!(m.snapshot(), before);
    m.queue_all(2, 2, &[b"a", b"x"], Wait::Forever);
    assert_eq!(m.t.key_count(), 3);

    // Queue limits: every key's, and the table's total counting one record per key.
    let mut m = H::with(TableConfig {
        max_queued_per_key: 1,
        max_queued_total: 3,
        ..TableConfig::default()
    });
    m.lock_one(1, 1, b"a");
    m.lock_one(1, 2, b"b");
    m.lock_one(1, 3, b"c");
    m.queue_one(2, 1, b"c");
    let before = m.snapshot();
    assert_eq!(
        m.all(3, 1, &[b"a", b"c"], Wait::Forever),
        Err(TableError::LimitExceeded("queued requests on this key"))
    );
    assert_eq!(m.snapshot(), before);
    assert_eq!(m.t.session_counts(3), (0, 0));
    m.queue_all(3, 2, &[b"a", b"b"], Wait::Forever);
    // Three records queued (one single, two for the group): the total is reached.
    assert_eq!(m.t.totals().waiters, 3);
    m.lock_one(1, 4, b"d");
    let before = m.snapshot();
    let total = Err(TableError::LimitExceeded("queued requests in total"));
    assert_eq!(
        m.one(4, 1, b"d", Wait::Forever),
        total.clone().map(|()| None)
    );
    let now = m.now;
    assert_eq!(
        m.t.wait_until_unlocked(now, 4, 2, b"d", Wait::Forever, &mut m.out),
        total.clone().map(|()| None)
    );
    assert_eq!(
        m.all(4, 3, &[b"d", b"e"], Wait::Forever),
        total.map(|()| None)
    );
    assert_eq!(m.snapshot(), before);
    assert_eq!(m.t.session_counts(4), (0, 0));
    // The group leaving gives both its records back.
    assert!(m.cancel(3, 2));
    m.queue_one(4, 4, b"d");
    m.queue_one(4, 5, b"a");

    // A session's pending limit counts a group as one request.
    let mut m = H::with(TableConfig {
        max_waiters_per_session: 1,
        ..TableConfig::default()
    });
    m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"b", b"c"], Wait::Forever);
    assert_eq!(
        m.all(2, 2, &[b"a", b"d"], Wait::Forever),
        Err(TableError::LimitExceeded("pending waiters"))
    );

    // Fences: an immediate grant needs one per key, or none is handed out.
    let mut m = H::new();
    m.t.raise_fence_floor(u64::MAX - 2); // one fence left
    let before = m.snapshot();
    assert_eq!(
        m.all(1, 1, &[b"a", b"b"], Wait::No),
        Err(TableError::LimitExceeded("fencing tokens"))
    );
    assert_eq!(m.snapshot(), before);
    assert_eq!(m.t.key_count(), 0);
    assert_eq!(m.lock_one(1, 2, b"a"), u64::MAX - 1, "no fence was used up");
}

/// Limits reached while the group waited fail it as a whole at grant time, and whoever is
/// behind it on its keys is granted instead.
#[test]
fn limits_reached_while_queued_fail_the_group_as_a_whole() {
    let mut m = H::with(TableConfig {
        max_leases_per_session: 2,
        ..TableConfig::default()
    });
    let fa = m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"b"], Wait::Forever);
    m.queue_one(3, 1, b"b");
    m.lock_one(2, 2, b"x"); // session 2 now holds one lease: two more would pass its limit
    m.take();
    m.release(1, b"a", fa).unwrap();
    let out = m.take();
    assert!(out.contains(&Effect::AcquireFailed {
        session: 2,
        req: 1,
        error: TableError::LimitExceeded("held leases")
    }));
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Granted {
            session: 3,
            req: 1,
            ..
        }
    )));
    assert!(!m.t.is_locked(b"a"));
    assert_eq!(m.t.session_counts(2), (1, 0));

    // Fences running out while queued: the group fails, nothing of it is held.
    let mut m = H::new();
    let fa = m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"b", b"c"], Wait::Forever);
    m.t.raise_fence_floor(u64::MAX - 3); // two fences left
    m.take();
    m.release(1, b"a", fa).unwrap();
    assert_eq!(
        m.take().last(),
        Some(&Effect::AcquireFailed {
            session: 2,
            req: 1,
            error: TableError::LimitExceeded("fencing tokens")
        })
    );
    assert_eq!(m.t.key_count(), 0);
}

#[test]
fn a_group_request_id_is_one_pending_request_of_its_session() {
    let mut m = H::new();
    m.lock_one(1, 1, b"a");
    m.queue_all(2, 5, &[b"a", b"b"], Wait::Forever);
    assert_eq!(
        m.one(2, 5, b"c", Wait::No),
        Err(TableError::DuplicateRequest)
    );
    assert_eq!(
        m.all(2, 5, &[b"c", b"d"], Wait::No),
        Err(TableError::DuplicateRequest)
    );
    assert_eq!(m.t.queue_position(b"b", 2), Some(1));
    assert_eq!(m.t.pending_of(2), 1);
}

/// A group noted as ready whose session has vanished (a broken invariant, made by hand) is
/// dropped from every queue with a recorded fault and no made-up answer; the request behind it
/// is granted.
#[test]
fn a_group_whose_session_vanished_is_dropped_not_failed() {
    let mut m = H::new();
    let fa = m.lock_one(1, 1, b"a");
    m.queue_all(2, 1, &[b"a", b"b"], Wait::Forever);
    m.queue_one(3, 1, b"b");
    m.take();
    m.t.sessions.remove(2);
    let now = m.now;
    m.t.release(now, 1, &key(b"a"), fa, &mut m.out)
        .expect("released");
    let out = m.take();
    assert!(
        out.iter()
            .all(|e| !matches!(e, Effect::AcquireFailed { .. } | Effect::GrantedAll { .. }))
    );
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Granted {
            session: 3,
            req: 1,
            ..
        }
    )));
    assert_eq!(m.t.faults.count(), 1);
    assert!(!m.t.is_locked(b"a"));
    assert_eq!(m.t.inspect(b"a"), None, "a is idle and freed");
}

/// The single-key path keeps its costs when no group is queued: no group state, and an entry
/// that never saw a group looks exactly as before.
#[test]
fn single_key_traffic_leaves_no_group_state() {
    let mut m = H::new();
    let f = m.lock_one(1, 1, b"k");
    m.queue_one(2, 1, b"k");
    m.release(1, b"k", f).unwrap();
    assert_eq!(m.t.groups.iter().count(), 0);
    assert_eq!(m.t.groups.extra_records(), 0);
    assert!(m.t.groups.ready.is_empty() && m.t.groups.ready.capacity() == 0);
}
