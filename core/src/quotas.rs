//! Per-principal quotas: what each principal uses of the table (leases held, queue records —
//! a queued multi-key acquire counts one per key — and acquires retrying outside the table)
//! and the caps it may not pass. Indexed by the interned [`PrincipalId`], so a check or an
//! update is an array access (O(1), under the table lock the caller already holds).
//!
//! Live keys are charged to the principal whose request created them (`keys.rs` keeps that
//! count, since only it sees a key go idle); the caps of all three are here.
//!
//! Caps come from [`TableConfig::principal_caps`](super::TableConfig) for every named
//! principal, unless [`Quotas::set_caps`] gave one by name its own (a broker gives the
//! anonymous principal a share of the global limits, so authenticated principals keep room).
//! The unnamed principal (the embedded engine's sessions, restored leases) has no caps.

use super::types::{PrincipalId, UNNAMED_PRINCIPAL};

/// What one principal may use at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrincipalCaps {
    /// Live keys its requests created.
    pub keys: usize,
    /// Leases held by its sessions (lost sessions' leases too, until they end).
    pub leases: usize,
    /// Queue records of its sessions, and its acquires retrying outside the table.
    pub queued: usize,
}

impl PrincipalCaps {
    /// No cap at all.
    pub const UNLIMITED: PrincipalCaps = PrincipalCaps {
        keys: usize::MAX,
        leases: usize::MAX,
        queued: usize::MAX,
    };
}

impl Default for PrincipalCaps {
    fn default() -> Self {
        PrincipalCaps::UNLIMITED
    }
}

/// What a principal is charged with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Leases held.
    Leases,
    /// Queue records and acquires retrying outside the table.
    Queued,
}

impl Counter {
    fn of(self, u: &mut Usage) -> &mut usize {
        match self {
            Counter::Leases => &mut u.leases,
            Counter::Queued => &mut u.queued,
        }
    }
}

/// What one principal uses now.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    leases: usize,
    queued: usize,
}

#[derive(Debug, Default)]
pub struct Quotas {
    /// By principal id: usage and caps (id 0, the unnamed principal, is uncapped).
    by_id: Vec<(Usage, PrincipalCaps)>,
    /// Caps of principals named by [`Quotas::set_caps`] (a few: looked up when interned).
    named: Vec<(Box<[u8]>, PrincipalCaps)>,
}

impl Quotas {
    /// Caps for `name` instead of the default, now (if interned as `id`) and when interned.
    pub fn set_caps(&mut self, name: &[u8], id: Option<PrincipalId>, caps: PrincipalCaps) {
        match self.named.iter_mut().find(|(n, _)| **n == *name) {
            Some((_, c)) => *c = caps,
            None => self.named.push((name.into(), caps)),
        }
        if let Some(id) = id {
            self.slot(id).1 = caps;
        }
    }

    /// Sets the caps of principal `name`, just interned as `id`.
    pub fn interned(&mut self, name: &[u8], id: PrincipalId, default: PrincipalCaps) {
        let caps = self
            .named
            .iter()
            .find(|(n, _)| **n == *name)
            .map_or(default, |(_, c)| *c);
        self.slot(id).1 = caps;
    }

    fn slot(&mut self, id: PrincipalId) -> &mut (Usage, PrincipalCaps) {
        let i = id as usize;
        if i >= self.by_id.len() {
            self.by_id
                .resize(i + 1, (Usage::default(), PrincipalCaps::UNLIMITED));
        }
        &mut self.by_id[i]
    }

    /// The caps of principal `id`.
    #[inline]
    pub fn caps(&self, id: PrincipalId) -> PrincipalCaps {
        if id == UNNAMED_PRINCIPAL {
            return PrincipalCaps::UNLIMITED;
        }
        self.by_id
            .get(id as usize)
            .map_or(PrincipalCaps::UNLIMITED, |s| s.1)
    }

    /// Leases principal `id` holds.
    #[inline]
    pub fn leases(&self, id: PrincipalId) -> usize {
        self.by_id.get(id as usize).map_or(0, |s| s.0.leases)
    }

    /// Queue records (and outside retries) of principal `id`.
    #[inline]
    pub fn queued(&self, id: PrincipalId) -> usize {
        self.by_id.get(id as usize).map_or(0, |s| s.0.queued)
    }

    /// Whether principal `id` may hold `n` more leases.
    #[inline]
    pub fn may_hold(&self, id: PrincipalId, n: usize) -> bool {
        self.leases(id).saturating_add(n) <= self.caps(id).leases
    }

    /// Charges principal `id` with `n` more of `counter`.
    #[inline]
    pub fn add(&mut self, id: PrincipalId, counter: Counter, n: usize) {
        let c = counter.of(&mut self.slot(id).0);
        *c = c.saturating_add(n);
    }

    /// Gives back `n` of `counter` that principal `id` was charged with.
    #[inline]
    pub fn sub(&mut self, id: PrincipalId, counter: Counter, n: usize) {
        if let Some(s) = self.by_id.get_mut(id as usize) {
            let c = counter.of(&mut s.0);
            *c = c.saturating_sub(n);
        }
    }

    /// Every principal's (leases, queued), by id (the invariant checks recount them).
    #[cfg(any(test, fuzzing))]
    pub fn usage(&self) -> impl Iterator<Item = (PrincipalId, usize, usize)> + '_ {
        self.by_id
            .iter()
            .enumerate()
            .map(|(i, (u, _))| (PrincipalId::try_from(i).unwrap_or(0), u.leases, u.queued))
    }
}
