//! Test-only consistency check of the table's internal state (entries ↔ session index ↔
//! deadline heap ↔ queued multi-key groups, and no internal fault recorded). Called after every
//! step of the property tests.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::Table;
use super::deadlines::Due;
use super::keys::EntryId;
use super::queue::PendingKind;
use super::types::{Fence, Mode};

impl Table {
    /// Panics with a description of the first broken internal invariant.
    pub fn check_invariants(&self) {
        assert_eq!(self.faults.count(), 0, "internal faults were recorded");
        assert!(
            self.groups.ready.is_empty(),
            "groups noted as ready were left unsettled"
        );
        let mut records = 0;
        // Deadline items of live entries only: a stale item (of an entry since gone) is
        // dropped by a slab lookup here, not hashed — the heap keeps up to ~1,000 of them.
        let items: HashSet<(Instant, EntryId, u32, Due)> = self
            .deadlines
            .items()
            .filter(|i| {
                self.keys
                    .get(i.id)
                    .is_some_and(|e| e.generation == i.generation)
            })
            .map(|i| (i.at, i.id, i.generation, i.due))
            .collect();
        if let Some(ordered) = self.keys.ordered_from(std::ops::Bound::Unbounded) {
            let keys: Vec<&[u8]> = ordered.map(|e| e.key.as_bytes()).collect();
            assert_eq!(
                keys.len(),
                self.keys.len(),
                "the ordered index misses live keys"
            );
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "the ordered index is out of order"
            );
        }
        let mut live = 0;
        let mut held: HashMap<u64, usize> = HashMap::new();
        // Each session's entry list as a set, built once per check (not a scan per holder).
        let mut held_on: HashMap<u64, HashSet<EntryId>> = HashMap::new();
        for e in self.keys.iter() {
            live += 1;
            let k = &e.key;
            let id = e.id;
            assert_eq!(
                self.keys.find(k).map(|e| e.id),
                Some(id),
                "key index points at {k:?}"
            );
            let at = |t: Instant, d: Due| (t, id, e.generation, d);
            assert!(!e.is_idle(), "idle entry kept for {k:?}");
            let hs = e.holders.as_slice();
            let fam = hs
                .first()
                .map(|h| h.mode)
                .or(e.waiters().front().map(|w| w.mode));
            let modes = hs
                .iter()
                .map(|h| h.mode)
                .chain(e.waiters().iter().map(|w| w.mode));
            for m in modes {
                match (fam, m) {
                    (Some(Mode::Semaphore(a)), Mode::Semaphore(b)) => assert_eq!(a, b, "{k:?}"),
                    (Some(Mode::Semaphore(_)), _) | (_, Mode::Semaphore(_)) => {
                        panic!("mode family mix on {k:?}")
                    }
                    _ => {}
                }
            }
            if hs.iter().any(|h| h.mode == Mode::Exclusive) {
                assert_eq!(hs.len(), 1, "exclusive holder not alone on {k:?}");
            }
            if let Some(Mode::Semaphore(n)) = hs.first().map(|h| h.mode) {
                assert!(hs.len() <= n as usize, "semaphore over {n} on {k:?}");
            }
            let fences: HashSet<Fence> = hs.iter().map(|h| h.fence).collect();
            assert_eq!(fences.len(), hs.len(), "duplicate fence on {k:?}");
            // A head the key admits would have been granted — unless it is a multi-key group
            // member, whose other keys do not all admit it yet (checked per group below).
            if e.blocked_until().is_none()
                && let Some(w) = e.waiters().front()
            {
                assert!(
                    !e.admits(w.mode) || w.group,
                    "grantable head left queued on {k:?}"
                );
            }
            records += e.waiters().len() + e.watchers().len();
            assert!(
                e.waiters().len() + e.watchers().len() <= self.cfg.max_queued_per_key,
                "queue limit passed on {k:?}"
            );
            if !e.watchers().is_empty() {
                assert!(!hs.is_empty(), "watchers on unheld key {k:?}");
            }
            assert!(
                e.waiters()
                    .iter()
                    .zip(e.waiters().iter().skip(1))
                    .all(|(a, b)| a.seq < b.seq)
            );
            assert!(
                e.watchers()
                    .iter()
                    .zip(e.watchers().iter().skip(1))
                    .all(|(a, b)| a.seq < b.seq)
            );
            // Every live deadline is in the heap.
            for h in hs {
                assert!(items.contains(&at(h.deadline, Due::Lease)));
                if !h.orphan {
                    let s = self.sessions.get(h.session).expect("holder session exists");
                    let listed = held_on
                        .entry(h.session)
                        .or_insert_with(|| s.held_on().iter().copied().collect());
                    assert!(listed.contains(&id), "{k:?}");
                    *held.entry(h.session).or_default() += 1;
                }
            }
            if let Some(t) = e.blocked_until() {
                assert!(items.contains(&at(t, Due::Unblock)));
            }
            for w in e.waiters() {
                if let Some(t) = w.deadline {
                    assert!(items.contains(&at(t, Due::Queued(w.kind(), w.seq))));
                }
                let s = self.sessions.get(w.session).expect("waiter session exists");
                let p = s.pending.get(&w.req).expect("waiter pending");
                assert!(p.kind == w.kind() && p.seq == w.seq);
                if w.group {
                    // A member of a queued group: the group lists this key.
                    let g = self
                        .groups
                        .get(w.seq)
                        .expect("group member of a queued group");
                    assert_eq!(
                        (g.session, g.req, g.deadline),
                        (w.session, w.req, w.deadline)
                    );
                    assert!(g.members.contains(&id), "group does not list {k:?}");
                    assert_eq!(w.mode, Mode::Exclusive);
                    assert_eq!(p.entry, g.members[0]);
                } else {
                    assert_eq!(p.entry, id);
                }
            }
            for w in e.watchers() {
                if let Some(t) = w.deadline {
                    assert!(items.contains(&at(t, Due::Queued(PendingKind::Watch, w.seq))));
                }
                let s = self
                    .sessions
                    .get(w.session)
                    .expect("watcher session exists");
                let p = s.pending.get(&w.req).expect("watcher pending");
                assert!(p.kind == PendingKind::Watch && p.seq == w.seq && p.entry == id);
            }
        }
        assert_eq!(live, self.keys.len(), "slab and key index agree");
        assert_eq!(records, self.queued_total(), "queue records counted");
        assert!(records <= self.cfg.max_queued_total, "queue total passed");
        // Every queued group waits in the queue of each key it names (none half granted, none
        // half gone), and is not grantable while left waiting.
        for (&seq, g) in self.groups.iter() {
            let distinct: HashSet<EntryId> = g.members.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                g.members.len(),
                "group {seq} names a key twice"
            );
            assert!(!g.members.is_empty() && g.members.len() <= crate::MAX_KEYS_PER_REQUEST);
            let mut ready = true;
            for &id in &g.members {
                let e = self.keys.get(id).expect("group member key live");
                let w = e
                    .waiters()
                    .get(seq)
                    .expect("group member queued on each key");
                assert!(w.group && w.session == g.session && w.req == g.req);
                ready &= e.admits_group(seq);
            }
            assert!(
                !ready,
                "group {seq} is grantable on all its keys but left waiting"
            );
            let s = self.sessions.get(g.session).expect("group session exists");
            let p = s.pending.get(&g.req).expect("group pending in its session");
            assert!(p.kind == PendingKind::Group && p.seq == seq);
        }
        // Owner labels belong to live leases only (a lease end forgets its label).
        let fences: HashSet<u64> = self
            .keys
            .iter()
            .flat_map(|e| e.holders.as_slice().iter().map(|h| h.fence))
            .collect();
        for f in self.owners.fences() {
            assert!(fences.contains(&f), "owner label kept for ended lease {f}");
        }
        // Per-principal usage (`quotas.rs`) matches a recount of leases and queue records.
        let mut leases_of: std::collections::HashMap<u32, usize> = Default::default();
        for e in self.keys.iter() {
            for h in e.holders.as_slice() {
                *leases_of.entry(h.principal).or_default() += 1;
            }
        }
        let mut queued_of: std::collections::HashMap<u32, usize> = Default::default();
        for (_, s) in self.sessions.iter() {
            let records: usize = s.pending.values().map(|p| usize::from(p.records)).sum();
            *queued_of.entry(s.principal()).or_default() += records;
        }
        for (p, leases, queued) in self.sessions.quotas.usage() {
            assert_eq!(
                leases,
                leases_of.get(&p).copied().unwrap_or(0),
                "leases of {p}"
            );
            assert_eq!(
                queued,
                queued_of.get(&p).copied().unwrap_or(0),
                "queued of {p}"
            );
        }
        let pending: usize = self.sessions.iter().map(|(_, s)| s.pending.len()).sum();
        assert_eq!(pending, self.sessions.pending_total(), "pending total");
        assert!(self.keys.len() <= self.cfg.max_keys);
        for (sid, s) in self.sessions.iter() {
            assert_eq!(
                s.lease_count(),
                held.get(sid).copied().unwrap_or(0),
                "lease count of session {sid}"
            );
            assert!(s.lease_count() <= self.cfg.max_leases_per_session);
            assert!(s.pending.len() <= self.cfg.max_waiters_per_session);
            for (req, p) in &s.pending {
                let e = self.keys.get(p.entry).expect("pending on live key");
                match p.kind {
                    PendingKind::Watch => {
                        let w = e.watchers().get(p.seq).expect("watcher queued");
                        assert_eq!(w.req, *req);
                    }
                    PendingKind::Acquire => {
                        let w = e.waiters().get(p.seq).expect("waiter queued");
                        assert_eq!(w.req, *req);
                        assert!(!w.group);
                    }
                    PendingKind::Group => {
                        let g = self.groups.get(p.seq).expect("group queued");
                        assert_eq!((g.session, g.req), (*sid, *req));
                        let w = e.waiters().get(p.seq).expect("group member queued");
                        assert!(w.group);
                    }
                }
            }
        }
    }
}
