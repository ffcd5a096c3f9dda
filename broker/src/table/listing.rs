//! Read-only listings for operators (the admin API and status page): live keys under a
//! prefix with their holders and queue lengths, table-wide totals, and per-session counts.
//! Like `queries.rs`, nothing here expires anything: state is reported as stored. Every
//! listing is O(live keys); the admin API calls them, the lock path never does.

use std::collections::HashMap;

use super::types::{Holder, Key};
use super::{SessionId, Table};

/// One live key as an operator sees it.
#[derive(Clone, Debug)]
pub(crate) struct KeyListing {
    pub(crate) key: Key,
    pub(crate) holders: Vec<Holder>,
    /// Queued acquires.
    pub(crate) waiters: usize,
    /// Queued `wait_until_unlocked` watchers.
    pub(crate) watchers: usize,
}

/// Table-wide counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableTotals {
    pub(crate) keys: usize,
    pub(crate) leases: usize,
    pub(crate) waiters: usize,
    pub(crate) watchers: usize,
}

impl Table {
    /// Live keys starting with `prefix` and sorting after `after` (a page's cursor), in key
    /// order, at most `limit` of them; true when more follow.
    pub(crate) fn list_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<KeyListing>, bool) {
        let mut entries: Vec<_> = self
            .keys
            .iter()
            .filter(|e| e.key.starts_with(prefix))
            .filter(|e| after.is_none_or(|a| &e.key[..] > a))
            .collect();
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let more = entries.len() > limit;
        let page = entries
            .into_iter()
            .take(limit)
            .map(|e| KeyListing {
                key: e.key.clone(),
                holders: e
                    .holders
                    .as_slice()
                    .iter()
                    .map(|h| Holder {
                        session: h.session,
                        fence: h.fence,
                        mode: h.mode,
                        deadline: h.deadline,
                    })
                    .collect(),
                waiters: e.waiters.len(),
                watchers: e.watchers.len(),
            })
            .collect();
        (page, more)
    }

    /// Counts over the whole table.
    pub(crate) fn totals(&self) -> TableTotals {
        let mut t = TableTotals::default();
        for e in self.keys.iter() {
            t.keys += 1;
            t.leases += e.holders.as_slice().len();
            t.waiters += e.waiters.len();
            t.watchers += e.watchers.len();
        }
        t
    }

    /// Held leases per session (sessions holding none are absent).
    pub(crate) fn leases_by_session(&self) -> HashMap<SessionId, usize> {
        let mut m = HashMap::new();
        for e in self.keys.iter() {
            for h in e.holders.as_slice() {
                *m.entry(h.session).or_insert(0) += 1;
            }
        }
        m
    }

    /// Fences of every lease on `key` (none when idle).
    pub(crate) fn fences_of(&self, key: &[u8]) -> Vec<super::Fence> {
        self.keys
            .iter()
            .filter(|e| &e.key[..] == key)
            .flat_map(|e| e.holders.as_slice().iter().map(|h| h.fence))
            .collect()
    }
}
