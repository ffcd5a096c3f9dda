//! Read-only listings for operators (the admin API and status page): live keys under a
//! prefix with their holders and queue lengths, table-wide totals, and per-session counts.
//! Like `queries.rs`, nothing here expires anything: state is reported as stored. A page of
//! keys is O(log n + page) with the ordered key index (`TableConfig::ordered_keys`, a
//! broker's), else O(live keys); totals are O(live keys). The lock path never calls them.

use std::ops::Bound;

use super::Table;
use super::entry::Entry;
use super::types::{Holder, Key};

/// One live key as an operator sees it.
#[derive(Clone, Debug)]
pub struct KeyListing {
    pub key: Key,
    pub holders: Vec<Holder>,
    /// Queued acquires.
    pub waiters: usize,
    /// Queued `wait_until_unlocked` watchers.
    pub watchers: usize,
}

/// Table-wide counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableTotals {
    pub keys: usize,
    pub leases: usize,
    pub waiters: usize,
    pub watchers: usize,
}

impl Table {
    /// Live keys starting with `prefix` and sorting after `after` (a page's cursor), in key
    /// order, at most `limit` of them; true when more follow.
    pub fn list_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<KeyListing>, bool) {
        let listing = |e: &Entry| KeyListing {
            key: e.key.to_key(),
            holders: self.holders_of(e),
            waiters: e.waiters().len(),
            watchers: e.watchers().len(),
        };
        let from = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        // With the ordered index: O(log n + limit), from the cursor on.
        if let Some(entries) = self.keys.ordered_from(from) {
            let mut page: Vec<KeyListing> = entries
                .take_while(|e| e.key.starts_with(prefix))
                .take(limit.saturating_add(1))
                .map(listing)
                .collect();
            let more = page.len() > limit;
            page.truncate(limit);
            return (page, more);
        }
        let mut entries: Vec<_> = self
            .keys
            .iter()
            .filter(|e| e.key.starts_with(prefix))
            .filter(|e| after.is_none_or(|a| &e.key[..] > a))
            .collect();
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let more = entries.len() > limit;
        let page = entries.into_iter().take(limit).map(listing).collect();
        (page, more)
    }

    /// Counts over the whole table.
    pub fn totals(&self) -> TableTotals {
        let mut t = TableTotals::default();
        for e in self.keys.iter() {
            t.keys += 1;
            t.leases += e.holders.as_slice().len();
            t.waiters += e.waiters().len();
            t.watchers += e.watchers().len();
        }
        t
    }

    /// Fences of every lease on `key` (none when idle).
    pub fn fences_of(&self, key: &[u8]) -> Vec<super::Fence> {
        self.keys
            .iter()
            .filter(|e| &e.key[..] == key)
            .flat_map(|e| e.holders.as_slice().iter().map(|h| h.fence))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{AcquireRequest, Mode, SessionId, TableConfig, Wait};
    use super::*;

    fn lock(t: &mut Table, now: Instant, session: SessionId, req: u64, key: &'static [u8]) {
        let mut out = Vec::new();
        let _ = t.acquire(
            now,
            AcquireRequest {
                session,
                req,
                key: Key::from_static(key),
                mode: Mode::Exclusive,
                ttl: Duration::from_secs(10),
                wait: Wait::Forever,
                owner: None,
            },
            &mut out,
        );
    }

    #[test]
    fn keys_are_listed_by_prefix_in_order_and_paged() {
        let mut t = Table::new(TableConfig::default());
        let now = Instant::now();
        lock(&mut t, now, 1, 1, b"jobs/b");
        lock(&mut t, now, 1, 2, b"jobs/a");
        lock(&mut t, now, 1, 3, b"other/x");
        lock(&mut t, now, 2, 4, b"jobs/a"); // queued behind session 1
        let (all, more) = t.list_keys(b"jobs/", None, 10);
        assert!(!more);
        let keys: Vec<_> = all.iter().map(|k| &k.key[..]).collect();
        assert_eq!(keys, [&b"jobs/a"[..], b"jobs/b"]);
        assert_eq!(all[0].holders.len(), 1);
        assert_eq!(all[0].holders[0].session, 1);
        assert_eq!(all[0].waiters, 1);
        let (first, more) = t.list_keys(b"jobs/", None, 1);
        assert!(more);
        assert_eq!(&first[0].key[..], b"jobs/a");
        let (second, more) = t.list_keys(b"jobs/", Some(b"jobs/a"), 1);
        assert!(!more);
        assert_eq!(&second[0].key[..], b"jobs/b");
        assert_eq!(
            t.totals(),
            TableTotals {
                keys: 3,
                leases: 3,
                waiters: 1,
                watchers: 0
            }
        );
        assert_eq!(t.session_counts(1).0, 3);
        assert_eq!(t.fences_of(b"jobs/a").len(), 1);
        assert!(t.fences_of(b"nope").is_empty());
    }
}
