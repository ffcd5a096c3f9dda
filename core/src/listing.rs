//! Read-only listings for operators (the admin API and status page): live keys under a
//! prefix with their holders and queue lengths, table-wide totals, and per-session counts.
//! Like `queries.rs`, nothing here expires anything: state is reported as stored. A page of
//! keys is O(log n + page) with the ordered key index (`TableConfig::ordered_keys`, a
//! broker's), else O(live keys); totals are O(live keys), also a slice at a time
//! ([`Table::totals_slice`]). The lock path never calls them.

use std::ops::Bound;

use super::Table;
use super::entry::Entry;
use super::types::{Holder, Key, ReqId, SessionId};

/// One live key as an operator sees it.
#[derive(Clone, Debug)]
pub struct KeyListing {
    pub key: Key,
    pub holders: Vec<Holder>,
    /// Queued acquires.
    pub waiters: usize,
    /// Queued `wait_until_unlocked` watchers.
    pub watchers: usize,
    /// The request at the head of the key's queue: the next to be granted, and what a key
    /// without holders waits for when its head is a multi-key group still waiting elsewhere.
    pub next_in_line: Option<QueuedRequest>,
}

/// A queued request as an operator sees it (what to cancel to unblock a queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedRequest {
    pub session: SessionId,
    pub req: ReqId,
    /// Keys the request names: 1, or a multi-key group's count.
    pub keys: usize,
}

/// Table-wide counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableTotals {
    pub keys: usize,
    pub leases: usize,
    pub waiters: usize,
    pub watchers: usize,
}

impl TableTotals {
    /// Adds another slice's counts.
    pub fn add(&mut self, o: TableTotals) {
        self.keys += o.keys;
        self.leases += o.leases;
        self.waiters += o.waiters;
        self.watchers += o.watchers;
    }
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
            next_in_line: e.waiters().front().map(|w| QueuedRequest {
                session: w.session,
                req: w.req,
                keys: if w.group {
                    self.groups.get(w.seq).map_or(1, |g| g.members.len())
                } else {
                    1
                },
            }),
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
        let mut from = Some(0);
        while let Some(f) = from {
            let (part, next) = self.totals_slice(f, usize::MAX);
            t.add(part);
            from = next;
        }
        t
    }

    /// Counts over one slice of the key slab (`n` slots from `from`), and where the next
    /// slice starts (`None`: done). A caller that must not hold the table for a whole scan
    /// sums slices, releasing the table between them (the sum is then a fuzzy snapshot).
    pub fn totals_slice(&self, from: usize, n: usize) -> (TableTotals, Option<usize>) {
        let mut t = TableTotals::default();
        let (entries, next) = self.keys.slice(from, n);
        for e in entries {
            t.keys += 1;
            t.leases += e.holders.as_slice().len();
            t.waiters += e.waiters().len();
            t.watchers += e.watchers().len();
        }
        (t, next)
    }

    /// Fences of every lease on `key` (none when idle): one index lookup.
    pub fn fences_of(&self, key: &[u8]) -> Vec<super::Fence> {
        self.keys
            .find(key)
            .map(|e| e.holders.as_slice().iter().map(|h| h.fence).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{AcquireAllRequest, AcquireRequest, Mode, TableConfig, Wait};
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
                ticket: 0,
                fence_block: 1,
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
        let mut held: Vec<_> = t.session_leases(1).into_iter().map(|(k, _)| k).collect();
        held.sort();
        assert_eq!(held, [&b"jobs/a"[..], b"jobs/b", b"other/x"]);
        assert!(t.session_leases(2).is_empty());
        assert_eq!(t.fences_of(b"jobs/a").len(), 1);
        assert!(t.fences_of(b"nope").is_empty());
    }

    #[test]
    fn a_free_key_waiting_for_a_group_names_the_group_as_next_in_line() {
        let mut t = Table::new(TableConfig::default());
        let now = Instant::now();
        lock(&mut t, now, 1, 1, b"a");
        let mut out = Vec::new();
        let queued = t.acquire_all(
            now,
            AcquireAllRequest {
                session: 2,
                req: 7,
                keys: vec![Key::from_static(b"a"), Key::from_static(b"b")],
                ttl: Duration::from_secs(10),
                wait: Wait::Forever,
                owner: None,
            },
            &mut out,
        );
        assert!(matches!(queued, Ok(None)));
        let (page, _) = t.list_keys(b"", None, 10);
        let b = page.iter().find(|k| &k.key[..] == b"b").expect("b is live");
        assert!(b.holders.is_empty());
        let head = QueuedRequest {
            session: 2,
            req: 7,
            keys: 2,
        };
        assert_eq!(b.next_in_line, Some(head));
        assert_eq!(page[0].next_in_line, Some(head));
    }
}
