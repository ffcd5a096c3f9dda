//! What the admin API shows and does: pages of live keys (holders with fence, mode,
//! remaining TTL and principal; queue lengths), pages of live sessions, table-wide totals,
//! the forced release of every lease on a key (each holder told at once), and the operator's
//! two ways to unblock a queue: cancel one queued request, or end a session (its leases
//! revoked, its holders told, its connection closed). Reads take the
//! table lock once per call, for O(log n + page) work (the table's ordered key index; the
//! page's sessions' counts), and look principals up after releasing it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lockbroker_proto::EndReason;

use super::Broker;
use crate::table::{Fence, Mode, QueuedRequest, ReqId, SessionId};

/// One lease on a listed key.
#[derive(Clone, Debug)]
pub struct HolderView {
    pub session: SessionId,
    pub fence: Fence,
    pub mode: Mode,
    /// Time left until its deadline (zero when past it but not yet expired).
    pub remaining: Duration,
    /// Its session's principal while that session is connected.
    pub principal: Option<String>,
    /// The owner label given with the acquire.
    pub owner: Option<String>,
    /// A cacheable lease (lock caching: its holder grants the key again locally until the
    /// broker recalls it).
    pub cached: bool,
}

/// One live key.
#[derive(Clone, Debug)]
pub struct LockView {
    pub key: Bytes,
    pub holders: Vec<HolderView>,
    pub waiters: usize,
    pub watchers: usize,
    /// The head of the key's queue (what a key without holders is waiting for).
    pub next_in_line: Option<QueuedRequest>,
}

/// A page of live keys, in key order; `next` is the cursor of the following page.
#[derive(Clone, Debug)]
pub struct LockPage {
    pub locks: Vec<LockView>,
    pub next: Option<Bytes>,
}

/// One live session.
#[derive(Clone, Debug)]
pub struct SessionView {
    pub id: SessionId,
    pub principal: String,
    pub peer: Option<SocketAddr>,
    pub since: SystemTime,
    /// Leases it holds.
    pub leases: usize,
    /// Its queued acquires and watchers.
    pub waiting: usize,
}

/// A page of live sessions by id; `next` is the cursor of the following page.
#[derive(Clone, Debug)]
pub struct SessionPage {
    pub sessions: Vec<SessionView>,
    pub next: Option<SessionId>,
}

/// Table-wide gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub keys: usize,
    pub leases: usize,
    pub waiters: usize,
    pub watchers: usize,
    pub sessions: usize,
}

/// A lease ended by [`Broker::revoke_key`].
#[derive(Clone, Debug)]
pub struct Revoked {
    pub key: Bytes,
    pub fence: Fence,
    pub session: SessionId,
    pub principal: Option<String>,
}

impl Broker {
    /// The table's totals: counted a slice at a time, and for a table above
    /// [`TOTALS_CACHED_ABOVE`] keys at most once per [`TOTALS_MAX_AGE`] (gauges of a big
    /// table may then be up to a second old; a small table's are exact).
    fn table_totals(&self) -> crate::table::TableTotals {
        let large = self.read_table(|t, _| t.key_count()) > TOTALS_CACHED_ABOVE;
        let mut cache = self.totals_cache.lock();
        if large
            && let Some((at, t)) = *cache
            && at.elapsed() < TOTALS_MAX_AGE
        {
            return t;
        }
        let mut t = crate::table::TableTotals::default();
        let mut from = Some(0);
        // Bounded: each slice moves `from` forward by TOTALS_SLICE slots; the slab is finite.
        while let Some(f) = from {
            let (part, next) = self.read_table(|t, _| t.totals_slice(f, TOTALS_SLICE));
            t.add(part);
            from = next;
        }
        *cache = large.then(|| (Instant::now(), t));
        t
    }
}

/// Slab slots per table-lock hold when `/metrics` counts the table.
const TOTALS_SLICE: usize = 4096;
/// Keys per table-lock hold when a page of keys is read.
const PAGE_SLICE: usize = 100;
/// Above this many live keys, table totals are counted at most once per
/// [`TOTALS_MAX_AGE`]: scrapers then share one count.
const TOTALS_CACHED_ABOVE: usize = 65_536;
const TOTALS_MAX_AGE: Duration = Duration::from_secs(1);

impl Broker {
    fn principal_of(&self, session: SessionId) -> Option<String> {
        self.sessions.get(&session).map(|h| h.principal.clone())
    }

    /// Live keys under `prefix` after cursor `after`, at most `limit`: read [`PAGE_SLICE`]
    /// keys per table-lock hold, so a page of 1,000 never holds up a lock request for more
    /// than one slice.
    pub fn list_locks(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> LockPage {
        let mut page = Vec::new();
        let mut more = true;
        let mut cursor: Option<Bytes> = after.map(Bytes::copy_from_slice);
        // Bounded: each slice adds at least one key or ends the page.
        while page.len() < limit && more {
            let want = (limit - page.len()).min(PAGE_SLICE);
            let (part, part_more) =
                self.read_table(|t, _| t.list_keys(prefix, cursor.as_deref(), want));
            more = part_more;
            let Some(last) = part.last() else {
                break;
            };
            cursor = Some(last.key.clone());
            page.extend(part);
        }
        // Taken after the reads: a remaining time is never more than was left at the read.
        let now = Instant::now();
        let next = if more {
            page.last().map(|k| k.key.clone())
        } else {
            None
        };
        let locks = page
            .into_iter()
            .map(|k| LockView {
                holders: k
                    .holders
                    .iter()
                    .map(|h| HolderView {
                        session: h.session,
                        fence: h.fence,
                        mode: h.mode,
                        remaining: h.deadline.saturating_duration_since(now),
                        principal: self.principal_of(h.session),
                        owner: h
                            .owner
                            .as_ref()
                            .map(|o| String::from_utf8_lossy(o).into_owned()),
                        cached: h.cached,
                    })
                    .collect(),
                key: k.key,
                waiters: k.waiters,
                watchers: k.watchers,
                next_in_line: k.next_in_line,
            })
            .collect();
        LockPage { locks, next }
    }

    /// Live sessions with ids above `after`, at most `limit`, by id.
    pub fn list_sessions(&self, after: Option<SessionId>, limit: usize) -> SessionPage {
        let mut ids: Vec<(SessionId, Arc<super::SessionHandle>)> = self
            .sessions
            .iter()
            .filter(|s| after.is_none_or(|a| *s.key() > a))
            .map(|s| (*s.key(), s.value().clone()))
            .collect();
        ids.sort_unstable_by_key(|(id, _)| *id);
        let more = ids.len() > limit;
        ids.truncate(limit);
        // Counts of the page's sessions only: O(page) under the table lock.
        let counts: Vec<(usize, usize)> =
            self.read_table(|t, _| ids.iter().map(|(id, _)| t.session_counts(*id)).collect());
        let sessions: Vec<SessionView> = ids
            .into_iter()
            .zip(counts)
            .map(|((id, h), (leases, waiting))| SessionView {
                id,
                principal: h.principal.clone(),
                peer: h.peer,
                since: h.since,
                leases,
                waiting: waiting + h.polls(),
            })
            .collect();
        let next = if more {
            sessions.last().map(|s| s.id)
        } else {
            None
        };
        SessionPage { sessions, next }
    }

    /// Counts over the table and the session registry. The table's part scans the key slab
    /// [`TOTALS_SLICE`] slots at a time, taking the table lock once per slice, so a scrape of
    /// a million keys never holds up a lock request for more than one slice (~0.1 ms); the
    /// sum is a fuzzy snapshot (each slice as it was when read).
    pub fn totals(&self) -> Totals {
        let t = self.table_totals();
        Totals {
            keys: t.keys,
            leases: t.leases,
            // Acquires retrying outside the table (sync mirror) wait too.
            waiters: t.waiters + self.pollers(),
            watchers: t.watchers,
            sessions: self.session_count(),
        }
    }

    /// Ends every lease on `key` at once (an operator's forced release, `who` did it) and
    /// tells each holder with `LeaseEnded`; the next waiters are granted in the same step.
    /// Returns what was revoked (nothing when the key is not held).
    pub fn revoke_key(self: &Arc<Self>, key: &[u8], who: &str) -> Vec<Revoked> {
        let fences = self.read_table(|t, _| t.fences_of(key));
        let why = format!("released by an operator ({who}) through the admin API");
        let mut revoked = Vec::new();
        for fence in fences {
            if let Some(session) = self.revoke(key, fence, EndReason::Revoked, &why) {
                revoked.push(Revoked {
                    key: Bytes::copy_from_slice(key),
                    fence,
                    session,
                    principal: self.principal_of(session),
                });
            }
        }
        revoked
    }

    /// Cancels the queued acquire (single or multi-key) or watcher `req` of `session`, as the
    /// client's own `Cancel` would: the client is answered `Cancelled` with `who` named, and
    /// requests queued behind it move up. False when nothing is queued under that id.
    pub fn cancel_request(self: &Arc<Self>, session: SessionId, req: ReqId, who: &str) -> bool {
        let in_table = self.with_table(|t, now, out| t.cancel(now, session, req, out));
        // An acquire polling the sync mirror outside the table stops at its next turn.
        let cancelled = in_table
            || self
                .session_handle(session)
                .is_some_and(|h| h.cancel_poll(req));
        if cancelled {
            tracing::info!(
                target: "lockbroker::audit",
                action = "cancel",
                by = %who,
                session,
                req,
                "queued request cancelled by an operator"
            );
        }
        cancelled
    }

    /// Ends `session` as an operator (`who`): every lease it holds is revoked (each holder
    /// told `LeaseEnded`, waiters granted), then its connection is closed, which drops its
    /// queued requests. `None` when no such session is connected.
    pub fn end_session(self: &Arc<Self>, session: SessionId, who: &str) -> Option<Vec<Revoked>> {
        let handle = self.session_handle(session)?;
        let why = format!("session ended by an operator ({who}) through the admin API");
        let leases = self.read_table(|t, _| t.session_leases(session));
        let mut revoked = Vec::new();
        for (key, fence) in leases {
            if self.revoke(&key, fence, EndReason::Revoked, &why).is_some() {
                revoked.push(Revoked {
                    key,
                    fence,
                    session,
                    principal: Some(handle.principal.clone()),
                });
            }
        }
        tracing::info!(
            target: "lockbroker::audit",
            action = "end-session",
            by = %who,
            session,
            revoked = revoked.len(),
            "session ended by an operator"
        );
        handle.request_end(why);
        Some(revoked)
    }
}
