//! The lock table: a sans-I/O state machine over keyed leases, driven the way quinn-proto's
//! `Connection` is.
//!
//! Its own crate (lockbroker-core) so that two drivers share it: the broker (which names it
//! `lockbroker::table`, a re-export) and the SDK's embedded backend, in-process. It depends on
//! `lockbroker-proto` only for `wire.rs` (the conversions between table and wire types, shared
//! by both drivers), and otherwise on `bytes`, `hashbrown`, `thiserror` and `tracing`.
//!
//! # Driver contract
//!
//! [`Table`] owns no clock, socket, task or lock (the server keeps one table behind a mutex).
//! Whoever drives it — the server's `Broker::with_table`, the mirror's restore, the benches —
//! does four things:
//!
//! 1. **Passes time in.** Every operation that can start, end or time something takes
//!    `now: Instant`; the table never reads a clock. `now` is the current time and does not go
//!    backwards from one call to the next.
//! 2. **Dispatches effects.** Mutations append [`Effect`]s to the caller's `out` vector (the
//!    table never clears it). The return value answers the request being made; effects are the
//!    consequences for everybody else, and the caller must dispatch all of them, in order:
//!    - `Granted` / `AcquireFailed`: resolves an acquire that was queued earlier (the return
//!      value was `Ok(None)`), addressed by (session, request id);
//!    - `GrantedAll` / `AcquireFailed`: resolves an `acquire_all` that was queued earlier: every
//!      key's lease at once, in the order the request named the keys (their `Acquired` events
//!      come first in the same batch), or none;
//!    - `Unlocked` / `WaitFailed`: resolves a `wait_until_unlocked` that was queued earlier;
//!    - `Event(LockEvent)`: a lease started, ended or was renewed — the ordered stream the mirror
//!      replicates. An immediate grant pushes only its `Acquired` event (one per key for
//!      `acquire_all`). `TableConfig::lease_events = false` turns off `Acquired`, `Released`
//!      and `Extended` for a driver that does not read them (the embedded engine); `Expired`
//!      is always pushed.
//! 3. **Drives time.** After any call, `next_deadline()` is the earliest instant at which
//!    `expire(now)` may have work (possibly early, never late). The driver sleeps until then —
//!    re-arming when a call moves it earlier — and calls `expire(now)`, which processes
//!    everything due at or before `now`: lease expiries, queue timeouts, lock-delay ends.
//!    Nothing ends by itself between calls; queries report state as stored.
//! 4. **Ends sessions.** Session ids are the driver's (0 is reserved for restored leases); the
//!    table creates a session's record on first use and forgets it in `close_session`, which the
//!    driver calls when a connection ends, clean or not. A driver with authenticated sessions
//!    names each one's principal first (`set_principal`): leases record it, and `reclaim`
//!    never moves a lease to another principal.
//!
//! # Method groups
//!
//! - construction (here): [`Table::new`];
//! - client requests (`mutations.rs`): [`Table::acquire`], [`Table::release`], `extend`,
//!   `reclaim`, `wait_until_unlocked`, `cancel`, `close_session`;
//! - multi-key requests (`groups.rs`): [`Table::acquire_all`] — N distinct keys, exclusive,
//!   all granted in one step or none held; strict FIFO per key across single- and multi-key
//!   requests, which makes opposite key orders deadlock-free (`core/MULTI_KEY.md`). Each lease
//!   of the group is then released, extended and expires on its own; `cancel` and
//!   `close_session` take a queued group out of all its queues at once;
//! - time (`time.rs`): `next_deadline`, `expire`;
//! - queries (`queries.rs`): `inspect`, `holds` (the mirror's resync snapshot);
//! - listings (`listing.rs`): `list_keys`, `totals` (the admin API);
//! - start-up (`restore.rs`): `restore`, `raise_fence_floor`.
//!
//! Only construction, `acquire`, `acquire_all` and `release` are public beyond the crate
//! (benches, tests).
//!
//! # Layout below the facade
//!
//! - `types.rs`: the vocabulary (ids, modes, requests, grants, effects, errors, config);
//! - `entry.rs`: per-key state, the mode rules and the lock-delay timer;
//! - `lease.rs`: holders, the one grant path, lease end and the lease-expiry timer;
//! - `queue.rs`: queued acquires and watchers, grants from the queue head, queue timeouts;
//! - `groups.rs`: queued multi-key acquires, granted across entries by the table
//!   (`settle_groups`) once a key's grant loop finds one at its head;
//! - `sessions.rs`: per-session index (held leases by entry, pending requests, limits) and the
//!   table-wide count of pending requests; `owners.rs`: owner labels by fence; `quotas.rs`:
//!   what each principal uses of leases and queues, and its caps (live keys per principal are
//!   counted in `keys.rs`);
//! - `keys.rs`: key → entry slab (`stored_key.rs`: keys inline when short); `deadlines.rs`:
//!   deadline heap; `fences.rs`: fencing tokens;
//! - `faults.rs`: broken internal invariants, logged and skipped instead of reaching clients;
//! - `serve/`: the broker side of the protocol without I/O, run by both drivers; `wire.rs`:
//!   table ↔ wire conversions.
//!
//! # Memory
//!
//! The goal: a million held locks must cost less than Redis's. An `Entry` (at most 96 bytes)
//! sits in a slab slot and keeps only the key (inline up to 22 bytes, `stored_key.rs`), its ids
//! and its holders inline; queues and lock delay live in a boxed part allocated only while in
//! use. Entries do not store their hash. A lease's expiry is a 24-byte timer naming the entry
//! (which ends every lease due at that instant); queue timeouts live in a heap of their own. A
//! session lists the entries it holds leases on (4 bytes a lease, pruned lazily) instead of a
//! map by fence. Keys in grants and events are copies (or the request's own `Bytes`), so a held
//! lock never pins a request buffer.

mod cache;
mod deadlines;
mod entry;
mod faults;
mod fences;
mod grace;
mod groups;
mod handover;
mod keys;
mod lease;
mod listing;
mod mutations;
mod owners;
mod queries;
mod queue;
mod quotas;
mod requeue;
mod restore;
pub mod serve;
mod sessions;
mod stored_key;
mod time;
mod types;
pub mod wire;

#[cfg(any(test, fuzzing))]
mod invariants;
#[cfg(test)]
mod tests;

pub use handover::{Evicted, PreviousLease};
pub use listing::{KeyListing, QueuedRequest, TableTotals};
pub use mutations::{KEYS_OF_PRINCIPAL, LEASES_OF_PRINCIPAL, QUEUED_OF_PRINCIPAL};
pub use quotas::PrincipalCaps;
pub use requeue::REQUEUE_WINDOW;
pub use types::{
    AcquireAllRequest, AcquireRequest, Effect, Fence, Grant, Key, LockEvent, Mode, ReqId,
    SessionId, TableConfig, TableError, UnlockOutcome, Wait,
};
pub use types::{Holder, LockInfo, MAX_FENCE_BLOCK, MAX_KEYS_PER_REQUEST, MAX_TTL, deadline_after};
pub use types::{PrincipalId, UNNAMED_PRINCIPAL};

use std::time::Instant;

/// Bits of a fencing token below the epoch: fences are `(epoch << COUNTER_BITS) | counter`.
pub const COUNTER_BITS: u32 = 40;

use deadlines::Deadlines;
use faults::Faults;
use fences::FenceGen;
use groups::Groups;
use keys::Keys;
use owners::Owners;
use sessions::Sessions;

/// The lock table. Not thread-safe by itself: the server wraps it in a mutex.
#[derive(Debug)]
pub struct Table {
    cfg: TableConfig,
    keys: Keys,
    sessions: Sessions,
    deadlines: Deadlines,
    fences: FenceGen,
    faults: Faults,
    /// Owner labels of the leases given one.
    owners: Owners,
    /// Queued multi-key acquires (`groups.rs`).
    groups: Groups,
    /// Next queue sequence number (waiters and watchers share it).
    seq: u64,
    /// End of the restart grace (`grace.rs`), while it may still run.
    grace_until: Option<Instant>,
    /// Queue places kept for acquires that waited at a shard's previous owner (`requeue.rs`).
    places: requeue::Places,
}

/// Borrows the parts of `Table` an entry transition needs (an `entry::Cx`), leaving `keys` free.
macro_rules! cx {
    ($t:ident, $now:expr, $out:expr) => {
        $crate::entry::Cx {
            now: $now,
            cfg: &$t.cfg,
            sessions: &mut $t.sessions,
            deadlines: &mut $t.deadlines,
            fences: &mut $t.fences,
            faults: &mut $t.faults,
            owners: &mut $t.owners,
            ready: &mut $t.groups.ready,
            out: $out,
        }
    };
}
use cx;

impl Table {
    pub fn new(cfg: TableConfig) -> Self {
        let keys = Keys::new(cfg.ordered_keys);
        Self {
            fences: FenceGen::new(cfg.epoch),
            cfg,
            keys,
            sessions: Sessions::default(),
            deadlines: Deadlines::default(),
            faults: Faults::default(),
            owners: Owners::default(),
            groups: Groups::default(),
            seq: 0,
            grace_until: None,
            places: requeue::Places::default(),
        }
    }
}
