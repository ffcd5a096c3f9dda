//! Property tests: random operation sequences against a model that is built only from what the
//! table reports (return values and effects). After every step the model's safety invariants
//! (mode exclusion, semaphore bound, fence monotonicity, deadlines honoured) and the table's
//! internal invariants are checked; at the end, time runs out and every waiter must have been
//! resolved and every key freed.
//!
//! Multi-key acquires (`AcquireAll`, keys in random order, sometimes a key twice) join the mix.
//! The model also checks, from the effects alone: every `Acquired` event of a batch is claimed
//! by exactly one grant (an immediate return, `Granted` or `GrantedAll`) — so no group is ever
//! half granted —; a `GrantedAll` covers exactly the request's keys, in order; and grants are
//! FIFO per key: nothing is granted a key while an acquire queued earlier on that key (single or
//! multi-key) is still pending, and nothing is granted at once while anyone is queued on it.
//!
//! Some acquires ask for a fence block (lock caching, `cache.rs`): the model then checks that
//! no later fence of the key falls inside a granted block, that `Recall` goes only to a live
//! cacheable lease of the key, once, and that every request that conflicts with one — an
//! acquire that queues or is refused, a multi-key acquire that queues, a wait for the key to
//! come free — has recalled every cacheable lease in its way (races: a recall while the lease
//! is renewed, orphaned, reclaimed, released or expiring, and while others queue).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use crate::*;

const KEYS: [&[u8]; 3] = [b"a", b"b", b"c"];
const SLOTS: u8 = 3;
const MAX_LEASES: usize = 3;
const MAX_WAITERS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        slot: u8,
        key: usize,
        mode: Mode,
        ttl: u64,
        wait: W,
        /// Fencing tokens asked for (1: an ordinary lease; more: a cacheable one).
        block: u32,
    },
    AcquireAll {
        slot: u8,
        keys: Vec<usize>,
        ttl: u64,
        wait: W,
    },
    DupAcquire {
        slot: u8,
        key: usize,
    },
    WaitUnlocked {
        slot: u8,
        key: usize,
        wait: W,
    },
    Release {
        pick: usize,
        by: Option<u8>,
    },
    ReleaseIdle {
        slot: u8,
        key: usize,
    },
    Extend {
        pick: usize,
        by: Option<u8>,
        ttl: u64,
    },
    Cancel {
        slot: u8,
        pick: usize,
    },
    Close {
        slot: u8,
        clean: bool,
    },
    Reclaim {
        slot: u8,
        pick: usize,
    },
    Advance {
        ms: u64,
    },
}

#[derive(Clone, Copy, Debug)]
enum W {
    No,
    Until(u64),
    Forever,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::Exclusive),
        3 => Just(Mode::Shared),
        2 => Just(Mode::Semaphore(2)),
        1 => (0u32..4).prop_map(Mode::Semaphore),
    ]
}

/// Mostly ordinary leases, some cacheable ones (a fence block).
fn fence_block() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(1u32),
        1 => Just(4u32),
        1 => Just(16u32),
    ]
}

fn wait() -> impl Strategy<Value = W> {
    prop_oneof![
        1 => Just(W::No),
        2 => (0u64..60).prop_map(W::Until),
        2 => Just(W::Forever),
    ]
}

/// Key lists for `AcquireAll`: mostly distinct keys in random order, sometimes with repeats.
fn key_list() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        6 => proptest::sample::subsequence((0..KEYS.len()).collect::<Vec<_>>(), 1..=KEYS.len())
            .prop_shuffle(),
        1 => proptest::collection::vec(0..KEYS.len(), 1..=KEYS.len()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let key = 0..KEYS.len();
    prop_oneof![
        8 => (slot.clone(), key.clone(), mode(), 1u64..80, wait(), fence_block())
            .prop_map(|(slot, key, mode, ttl, wait, block)| {
                Op::Acquire { slot, key, mode, ttl, wait, block }
            }),
        5 => (slot.clone(), key_list(), 1u64..80, wait())
            .prop_map(|(slot, keys, ttl, wait)| Op::AcquireAll { slot, keys, ttl, wait }),
        1 => (slot.clone(), key.clone()).prop_map(|(slot, key)| Op::DupAcquire { slot, key }),
        2 => (slot.clone(), key.clone(), wait())
            .prop_map(|(slot, key, wait)| Op::WaitUnlocked { slot, key, wait }),
        4 => (any::<usize>(), proptest::option::weighted(0.2, slot.clone()))
            .prop_map(|(pick, by)| Op::Release { pick, by }),
        1 => (slot.clone(), key.clone()).prop_map(|(slot, key)| Op::ReleaseIdle { slot, key }),
        2 => (any::<usize>(), proptest::option::weighted(0.2, slot.clone()), 1u64..80)
            .prop_map(|(pick, by, ttl)| Op::Extend { pick, by, ttl }),
        2 => (slot.clone(), any::<usize>()).prop_map(|(slot, pick)| Op::Cancel { slot, pick }),
        1 => (slot.clone(), any::<bool>()).prop_map(|(slot, clean)| Op::Close { slot, clean }),
        1 => (slot.clone(), any::<usize>()).prop_map(|(slot, pick)| Op::Reclaim { slot, pick }),
        4 => (0u64..40).prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Clone, Debug)]
struct Lease {
    key: Bytes,
    session: SessionId,
    mode: Mode,
    deadline: Instant,
    orphan: bool,
    /// Fencing tokens the lease reserved (known from its grant; 1 until then).
    block: u32,
    /// The table recalled it.
    recalled: bool,
}

#[derive(Clone, Debug)]
struct Pend {
    /// The key (one), or a multi-key acquire's keys in request order.
    keys: Vec<Bytes>,
    watch: bool,
    group: bool,
    deadline: Option<Instant>,
    /// Queue order (the model's own counter: only the relative order matters).
    order: u64,
}

/// What the table has told us, and the harness around it.
struct Model {
    t: Table,
    now: Instant,
    slots: [SessionId; SLOTS as usize],
    next_session: SessionId,
    next_req: ReqId,
    leases: BTreeMap<Fence, Lease>,
    pending: BTreeMap<(SessionId, ReqId), Pend>,
    last_fence: HashMap<Bytes, Fence>,
    next_order: u64,
}

impl Model {
    fn new(cfg: TableConfig) -> Self {
        Self {
            t: Table::new(cfg),
            now: Instant::now(),
            slots: [1, 2, 3],
            next_session: 4,
            next_req: 0,
            leases: BTreeMap::new(),
            pending: BTreeMap::new(),
            last_fence: HashMap::new(),
            next_order: 0,
        }
    }

    fn instant(&self, w: W) -> Wait {
        match w {
            W::No => Wait::No,
            W::Until(ms) => Wait::Until(self.now + Duration::from_millis(ms)),
            W::Forever => Wait::Forever,
        }
    }

    /// Records a request the table queued.
    fn enqueue(
        &mut self,
        s: SessionId,
        req: ReqId,
        keys: Vec<Bytes>,
        watch: bool,
        group: bool,
        wait: Wait,
    ) {
        let deadline = match wait {
            Wait::Until(t) => Some(t),
            _ => None,
        };
        self.next_order += 1;
        let order = self.next_order;
        let p = Pend {
            keys,
            watch,
            group,
            deadline,
            order,
        };
        assert!(
            self.pending.insert((s, req), p).is_none(),
            "request queued twice"
        );
    }

    /// FIFO per key: no acquire queued on `key` before `order` is still pending.
    fn assert_nobody_ahead(&self, key: &[u8], order: u64) {
        let ahead = self
            .pending
            .values()
            .filter(|p| !p.watch && p.order < order && p.keys.iter().any(|k| k == key))
            .count();
        assert_eq!(ahead, 0, "granted {key:?} past an earlier queued acquire");
    }

    /// Grant `g` reserved its fence block: no other lease of the key has a fence inside it,
    /// and every later fence of the key is above it.
    fn reserve(&mut self, g: &Grant) {
        let end = g.fence + u64::from(g.fence_block);
        assert!(
            !self
                .leases
                .range(g.fence + 1..end)
                .any(|(_, l)| l.key == g.key),
            "a fence inside another lease's block"
        );
        let last = self.last_fence.entry(g.key.clone()).or_insert(end - 1);
        *last = (*last).max(end - 1);
        if let Some(l) = self.leases.get_mut(&g.fence) {
            l.block = g.fence_block;
        }
    }

    /// A request that conflicts with the cacheable leases of `keys` recalled every one.
    fn assert_recalled(&self, keys: &[Bytes]) {
        for (fence, l) in &self.leases {
            assert!(
                l.block == 1 || l.recalled || !keys.contains(&l.key),
                "cacheable lease {fence} of {:?} in a request's way was not recalled",
                l.key
            );
        }
    }

    fn locked(&self, key: &[u8]) -> bool {
        self.leases.values().any(|l| l.key == key)
    }

    fn held_by(&self, session: SessionId) -> usize {
        self.leases
            .values()
            .filter(|l| l.session == session && !l.orphan)
            .count()
    }

    fn pending_of(&self, session: SessionId) -> Vec<ReqId> {
        self.pending
            .keys()
            .filter(|(s, _)| *s == session)
            .map(|(_, r)| *r)
            .collect()
    }

    fn nth_lease(&self, pick: usize) -> Option<(Fence, Lease)> {
        if self.leases.is_empty() {
            return None;
        }
        self.leases
            .iter()
            .nth(pick % self.leases.len())
            .map(|(f, l)| (*f, l.clone()))
    }

    /// Folds the table's effects into the model, checking each against what we know. `claimed`:
    /// the fences the call's own return value granted (an immediate grant).
    fn apply(&mut self, out: Vec<Effect>, claimed: &[Fence]) {
        // Fences of this batch's `Acquired` events not claimed by a grant yet.
        let mut unclaimed = BTreeSet::new();
        for e in out {
            match e {
                Effect::Event(LockEvent::Acquired {
                    key,
                    session,
                    fence,
                    mode,
                    deadline,
                }) => {
                    let last = self.last_fence.insert(key.clone(), fence);
                    assert!(
                        last.is_none_or(|l| l < fence),
                        "fence not increasing on {key:?}"
                    );
                    assert!(deadline >= self.now);
                    let prev = self.leases.insert(
                        fence,
                        Lease {
                            key,
                            session,
                            mode,
                            deadline,
                            orphan: false,
                            block: 1,
                            recalled: false,
                        },
                    );
                    assert!(prev.is_none(), "fence reused");
                    unclaimed.insert(fence);
                }
                Effect::Event(LockEvent::Released {
                    key,
                    session,
                    fence,
                }) => {
                    let l = self.leases.remove(&fence).expect("released lease was held");
                    assert_eq!((l.key, l.session), (key, session));
                }
                Effect::Event(LockEvent::Expired {
                    key,
                    session,
                    fence,
                }) => {
                    let l = self.leases.remove(&fence).expect("expired lease was held");
                    assert_eq!((l.key, l.session), (key, session));
                    assert!(l.deadline <= self.now, "expired early");
                }
                Effect::Event(LockEvent::Extended {
                    key,
                    session,
                    fence,
                    deadline,
                }) => {
                    let l = self.leases.get_mut(&fence).expect("extended lease is held");
                    assert_eq!((&l.key, l.session), (&key, session));
                    l.deadline = deadline;
                }
                Effect::Granted {
                    session,
                    req,
                    grant,
                    ..
                } => {
                    let p = self
                        .pending
                        .remove(&(session, req))
                        .expect("granted pending");
                    assert!(!p.watch && !p.group);
                    assert_eq!(p.keys, std::slice::from_ref(&grant.key));
                    let l = self.leases.get(&grant.fence).expect("Acquired came first");
                    assert_eq!((l.session, l.mode), (session, grant.mode));
                    assert!(unclaimed.remove(&grant.fence), "grant without its Acquired");
                    self.assert_nobody_ahead(&grant.key, p.order);
                    self.reserve(&grant);
                }
                Effect::GrantedAll {
                    session,
                    req,
                    grants,
                } => {
                    let p = self
                        .pending
                        .remove(&(session, req))
                        .expect("granted pending group");
                    assert!(p.group && !p.watch);
                    let keys: Vec<Bytes> = grants.iter().map(|g| g.key.clone()).collect();
                    assert_eq!(keys, p.keys, "a group is granted all its keys, in order");
                    for g in &grants {
                        let l = self.leases.get(&g.fence).expect("Acquired came first");
                        assert_eq!((l.session, l.mode), (session, Mode::Exclusive));
                        assert_eq!(g.mode, Mode::Exclusive);
                        assert!(unclaimed.remove(&g.fence), "grant without its Acquired");
                        self.assert_nobody_ahead(&g.key, p.order);
                    }
                }
                Effect::AcquireFailed {
                    session,
                    req,
                    error,
                } => {
                    let p = self
                        .pending
                        .remove(&(session, req))
                        .expect("failed pending");
                    assert!(!p.watch);
                    assert!(matches!(
                        error,
                        TableError::Timeout
                            | TableError::Cancelled
                            | TableError::LimitExceeded("held leases")
                    ));
                    if error == TableError::Timeout {
                        assert!(p.deadline.is_some_and(|d| d <= self.now));
                    }
                }
                Effect::Unlocked { session, req, .. } => {
                    let p = self
                        .pending
                        .remove(&(session, req))
                        .expect("unlocked pending");
                    assert!(p.watch);
                    assert!(!self.locked(&p.keys[0]), "Unlocked while a lease is held");
                }
                Effect::Recall {
                    session,
                    key,
                    fence,
                } => {
                    let l = self.leases.get_mut(&fence).expect("recalled lease is held");
                    assert_eq!((&l.key, l.session), (&key, session));
                    assert!(l.block > 1, "recalled an ordinary lease");
                    assert!(!l.recalled, "recalled twice");
                    l.recalled = true;
                }
                Effect::WaitFailed {
                    session,
                    req,
                    error,
                } => {
                    let p = self.pending.remove(&(session, req)).expect("wait pending");
                    assert!(p.watch);
                    if error == TableError::Timeout {
                        assert!(p.deadline.is_some_and(|d| d <= self.now));
                    } else {
                        assert_eq!(error, TableError::Cancelled);
                    }
                }
            }
        }
        for f in claimed {
            assert!(unclaimed.remove(f), "immediate grant without its Acquired");
        }
        assert!(
            unclaimed.is_empty(),
            "leases started without a grant (a half-granted group?): {unclaimed:?}"
        );
    }

    fn step(&mut self, op: Op) {
        let mut out = Vec::new();
        let now = self.now;
        match op {
            Op::Acquire {
                slot,
                key,
                mode,
                ttl,
                wait,
                block,
            } => {
                let s = self.slots[slot as usize];
                self.next_req += 1;
                let req = self.next_req;
                let key = Bytes::from_static(KEYS[key]);
                let wait = self.instant(wait);
                let queued_on_key = self
                    .pending
                    .values()
                    .any(|p| !p.watch && p.keys.contains(&key));
                let r = self.t.acquire(
                    now,
                    AcquireRequest {
                        session: s,
                        req,
                        key: key.clone(),
                        mode,
                        ttl: Duration::from_millis(ttl),
                        wait,
                        // Some leases carry an owner label: the labels must follow the leases.
                        owner: req
                            .is_multiple_of(3)
                            .then(|| Bytes::from_static(b"worker@host")),
                        ticket: 0,
                        fence_block: block,
                    },
                    &mut out,
                );
                let claimed: Vec<Fence> = match &r {
                    Ok(Some(g)) => {
                        assert_eq!(out.len(), 1, "immediate grant pushes only Acquired");
                        assert!(!queued_on_key, "granted at once past a queued acquire");
                        vec![g.fence]
                    }
                    _ => Vec::new(),
                };
                self.apply(out, &claimed);
                match &r {
                    Ok(Some(g)) => {
                        let l = &self.leases[&g.fence];
                        assert_eq!((l.session, &l.key), (s, &key));
                        assert_eq!(g.fence_block, block, "the block asked for");
                        self.reserve(g);
                    }
                    Ok(None) => {
                        assert!(!matches!(wait, Wait::No));
                        self.assert_recalled(std::slice::from_ref(&key));
                        self.enqueue(s, req, vec![key.clone()], false, false, wait);
                    }
                    Err(TableError::Busy) => self.assert_recalled(std::slice::from_ref(&key)),
                    Err(TableError::InvalidMode(_)) => {}
                    Err(TableError::LimitExceeded(_)) => {}
                    Err(e) => panic!("unexpected acquire error {e:?}"),
                }
            }
            Op::AcquireAll {
                slot,
                keys,
                ttl,
                wait,
            } => {
                let s = self.slots[slot as usize];
                self.next_req += 1;
                let req = self.next_req;
                let keys: Vec<Bytes> = keys.iter().map(|&k| Bytes::from_static(KEYS[k])).collect();
                let distinct = keys.iter().collect::<BTreeSet<_>>().len() == keys.len();
                let wait = self.instant(wait);
                let queued_on_keys = self
                    .pending
                    .values()
                    .any(|p| !p.watch && p.keys.iter().any(|k| keys.contains(k)));
                let held_before = self.held_by(s);
                let r = self.t.acquire_all(
                    now,
                    AcquireAllRequest {
                        session: s,
                        req,
                        keys: keys.clone(),
                        ttl: Duration::from_millis(ttl),
                        wait,
                        owner: req
                            .is_multiple_of(2)
                            .then(|| Bytes::from_static(b"transfer@host")),
                    },
                    &mut out,
                );
                if !distinct {
                    assert_eq!(r, Err(TableError::InvalidKeys("a key is named twice")));
                } else if held_before + keys.len() > MAX_LEASES {
                    assert_eq!(r, Err(TableError::LimitExceeded("held leases")));
                }
                let claimed: Vec<Fence> = match &r {
                    Ok(Some(grants)) => {
                        assert_eq!(
                            out.len(),
                            keys.len(),
                            "immediate grant pushes only Acquired"
                        );
                        assert!(!queued_on_keys, "granted at once past a queued acquire");
                        assert!(keys.iter().all(|k| !self.locked(k)), "granted a held key");
                        grants.iter().map(|g| g.fence).collect()
                    }
                    _ => {
                        assert!(
                            out.iter().all(|e| matches!(e, Effect::Recall { .. })),
                            "a refused or queued group changes nothing but recalls"
                        );
                        Vec::new()
                    }
                };
                self.apply(out, &claimed);
                match r {
                    Ok(Some(grants)) => {
                        let got: Vec<Bytes> = grants.iter().map(|g| g.key.clone()).collect();
                        assert_eq!(got, keys, "one grant per key, in order");
                        for g in &grants {
                            let l = &self.leases[&g.fence];
                            assert_eq!((l.session, l.mode), (s, Mode::Exclusive));
                        }
                    }
                    Ok(None) => {
                        assert!(!matches!(wait, Wait::No));
                        self.assert_recalled(&keys);
                        self.enqueue(s, req, keys, false, true, wait);
                    }
                    Err(TableError::LimitExceeded("held leases")) => {
                        assert!(held_before + keys.len() > MAX_LEASES)
                    }
                    Err(
                        TableError::InvalidKeys(_)
                        | TableError::InvalidMode(_)
                        | TableError::Busy
                        | TableError::LimitExceeded(_),
                    ) => {}
                    Err(e) => panic!("unexpected acquire_all error {e:?}"),
                }
            }
            Op::DupAcquire { slot, key } => {
                let s = self.slots[slot as usize];
                let Some(&req) = self.pending_of(s).first() else {
                    return;
                };
                let r = self.t.acquire(
                    now,
                    AcquireRequest {
                        session: s,
                        req,
                        key: Bytes::from_static(KEYS[key]),
                        mode: Mode::Exclusive,
                        ttl: Duration::from_millis(10),
                        wait: Wait::Forever,
                        owner: None,
                        ticket: 0,
                        fence_block: 1,
                    },
                    &mut out,
                );
                assert_eq!(r, Err(TableError::DuplicateRequest));
                assert!(out.is_empty());
            }
            Op::WaitUnlocked { slot, key, wait } => {
                let s = self.slots[slot as usize];
                self.next_req += 1;
                let req = self.next_req;
                let key = Bytes::from_static(KEYS[key]);
                let wait = self.instant(wait);
                let mut out = Vec::new();
                let r = self
                    .t
                    .wait_until_unlocked(now, s, req, &key, wait, &mut out);
                assert!(
                    out.iter().all(|e| matches!(e, Effect::Recall { .. })),
                    "a wait for a key to come free changes nothing but recalls"
                );
                self.apply(out, &[]);
                let locked = self.locked(&key);
                match r {
                    Ok(Some(UnlockOutcome::Released)) => assert!(!locked),
                    Ok(None) => {
                        assert!(locked);
                        self.assert_recalled(std::slice::from_ref(&key));
                        self.enqueue(s, req, vec![key], true, false, wait);
                    }
                    Err(TableError::Busy) => assert!(locked),
                    Err(TableError::LimitExceeded("pending waiters")) => {
                        assert!(locked && self.pending_of(s).len() >= MAX_WAITERS)
                    }
                    other => panic!("unexpected wait result {other:?}"),
                }
            }
            Op::Release { pick, by } => {
                let Some((fence, l)) = self.nth_lease(pick) else {
                    return;
                };
                let s = by.map_or(l.session, |b| self.slots[b as usize]);
                let r = self.t.release(now, s, &l.key, fence, &mut out);
                if s == l.session && !l.orphan {
                    assert_eq!(r, Ok(()));
                    assert!(matches!(
                        out.first(),
                        Some(Effect::Event(LockEvent::Released { .. }))
                    ));
                } else {
                    assert_eq!(r, Err(TableError::NotOwner));
                    assert!(out.is_empty());
                }
                self.apply(out, &[]);
            }
            Op::ReleaseIdle { slot, key } => {
                let key = KEYS[key];
                if self.locked(key) {
                    return;
                }
                let s = self.slots[slot as usize];
                let r = self
                    .t
                    .release(now, s, &Key::copy_from_slice(key), 1, &mut out);
                assert_eq!(r, Err(TableError::NotLocked));
                assert!(out.is_empty());
            }
            Op::Extend { pick, by, ttl } => {
                let Some((fence, l)) = self.nth_lease(pick) else {
                    return;
                };
                let s = by.map_or(l.session, |b| self.slots[b as usize]);
                let r = self
                    .t
                    .extend(now, s, &l.key, fence, Duration::from_millis(ttl), &mut out);
                if s == l.session && !l.orphan {
                    assert_eq!(r, Ok(now + Duration::from_millis(ttl)));
                } else {
                    assert_eq!(r, Err(TableError::NotOwner));
                }
                self.apply(out, &[]);
            }
            Op::Cancel { slot, pick } => {
                let s = self.slots[slot as usize];
                let reqs = self.pending_of(s);
                let req = if reqs.is_empty() || pick % 4 == 0 {
                    u64::MAX - 1
                } else {
                    reqs[pick % reqs.len()]
                };
                let expected = self.pending.contains_key(&(s, req));
                let r = self.t.cancel(now, s, req, &mut out);
                assert_eq!(r, expected);
                self.apply(out, &[]);
                assert!(!self.pending.contains_key(&(s, req)));
            }
            Op::Close { slot, clean } => {
                let s = self.slots[slot as usize];
                self.t.close_session(now, s, clean, &mut out);
                self.pending.retain(|(ps, _), _| *ps != s);
                for l in self.leases.values_mut() {
                    if l.session == s && !l.orphan && !clean {
                        l.orphan = true;
                    }
                }
                for e in &out {
                    match e {
                        Effect::Granted { session, .. }
                        | Effect::GrantedAll { session, .. }
                        | Effect::AcquireFailed { session, .. }
                        | Effect::Unlocked { session, .. }
                        | Effect::WaitFailed { session, .. }
                        | Effect::Recall { session, .. } => assert_ne!(*session, s),
                        Effect::Event(_) => {}
                    }
                }
                if !clean {
                    assert!(
                        out.is_empty()
                            || out.iter().all(|e| matches!(
                                e,
                                // Another session's queued acquire reached the head while
                                // that session was at its lease limit: refused, as at any grant.
                                Effect::Granted { .. }
                                    | Effect::GrantedAll { .. }
                                    | Effect::Event(LockEvent::Acquired { .. })
                                    | Effect::AcquireFailed {
                                        error: TableError::LimitExceeded("held leases"),
                                        ..
                                    }
                            )),
                        "{out:?}"
                    );
                }
                self.apply(out, &[]);
                assert_eq!(self.held_by(s), 0, "clean close released everything");
                self.slots[slot as usize] = self.next_session;
                self.next_session += 1;
            }
            Op::Reclaim { slot, pick } => {
                let Some((fence, l)) = self.nth_lease(pick) else {
                    return;
                };
                let s = self.slots[slot as usize];
                let r = self.t.reclaim(s, &l.key, fence, l.mode);
                if l.session == s && !l.orphan {
                    assert!(r.is_ok());
                } else if self.held_by(s) >= MAX_LEASES {
                    assert_eq!(r, Err(TableError::LimitExceeded("held leases")));
                } else {
                    let g = r.expect("reclaim succeeds");
                    assert_eq!((g.fence, g.deadline), (fence, l.deadline));
                    let m = self.leases.get_mut(&fence).expect("lease");
                    m.session = s;
                    m.orphan = false;
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(ms);
                let now = self.now;
                self.t.expire(now, &mut out);
                self.apply(out, &[]);
                for l in self.leases.values() {
                    assert!(l.deadline > now, "lease past its deadline survived expire");
                }
                for p in self.pending.values() {
                    assert!(
                        p.deadline.is_none_or(|d| d > now),
                        "waiter past its deadline"
                    );
                }
            }
        }
        self.check();
    }

    /// Safety invariants over the model, plus agreement with the table's own view.
    fn check(&self) {
        self.t.check_invariants();
        for key in KEYS {
            let hs: Vec<(&Fence, &Lease)> =
                self.leases.iter().filter(|(_, l)| l.key == key).collect();
            let excl = hs.iter().filter(|(_, l)| l.mode == Mode::Exclusive).count();
            let shared = hs.iter().filter(|(_, l)| l.mode == Mode::Shared).count();
            if excl > 0 {
                assert_eq!(hs.len(), 1, "exclusive holder not alone");
            }
            if shared > 0 {
                assert_eq!(shared, hs.len(), "shared mixed with other modes");
            }
            if let Some((_, first)) = hs.first()
                && let Mode::Semaphore(n) = first.mode
            {
                assert!(hs.iter().all(|(_, l)| l.mode == Mode::Semaphore(n)));
                assert!(hs.len() <= n as usize, "semaphore over its permits");
            }
            assert_eq!(self.t.is_locked(key), !hs.is_empty());
            let info = self.t.inspect(key);
            let mut fences: Vec<Fence> = info
                .as_ref()
                .map(|i| i.holders.iter().map(|h| h.fence).collect())
                .unwrap_or_default();
            fences.sort_unstable();
            assert_eq!(fences, hs.iter().map(|(f, _)| **f).collect::<Vec<_>>());
            let pend = self
                .pending
                .values()
                .any(|p| p.keys.iter().any(|k| k == key));
            if hs.is_empty() && !pend {
                assert!(
                    info.is_none_or(|i| i.blocked_until.is_some()),
                    "idle key kept"
                );
            }
        }
        for s in self.slots {
            let expect = (self.held_by(s), self.pending_of(s).len());
            assert_eq!(self.t.session_counts(s), expect, "session {s} counts");
        }
    }

    /// Lets time run until nothing is due: every lease ends, every waiter resolves.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let Some(d) = self.t.next_deadline() else {
                break;
            };
            self.now = self.now.max(d);
            let mut out = Vec::new();
            self.t.expire(self.now, &mut out);
            self.apply(out, &[]);
            self.check();
        }
        assert_eq!(self.t.next_deadline(), None, "drain did not finish");
        assert!(self.leases.is_empty(), "leases left: {:?}", self.leases);
        assert!(self.pending.is_empty(), "waiters left: {:?}", self.pending);
        assert_eq!(self.t.key_count(), 0);
        for slot in 0..SLOTS as usize {
            let mut out = Vec::new();
            let now = self.now;
            self.t.close_session(now, self.slots[slot], true, &mut out);
            assert!(out.is_empty());
        }
        assert_eq!(self.t.key_count(), 0);
        self.t.check_invariants();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_invariants(
        ops in proptest::collection::vec(op(), 1..80),
        lock_delay in prop_oneof![Just(0u64), 1u64..20],
        epoch in 0u64..4,
    ) {
        let mut m = Model::new(TableConfig {
            epoch,
            lock_delay: Duration::from_millis(lock_delay),
            max_leases_per_session: MAX_LEASES,
            max_waiters_per_session: MAX_WAITERS,
            // The ordered key index is checked against the hash index after every step.
            ordered_keys: epoch % 2 == 0,
            ..TableConfig::default()
        });
        for op in ops {
            m.step(op);
        }
        m.drain();
    }
}
