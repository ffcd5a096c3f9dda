//! Public vocabulary of the lock table: ids, modes, requests, grants, effects, errors and config.
//!
//! Nothing here has behaviour beyond small helpers; the state machine is [`super::Table`].

use std::time::{Duration, Instant};

/// A client session (one QUIC connection). Session 0 is reserved for restored leases.
pub type SessionId = u64;
/// Client-chosen request id, unique per session while the request is pending.
pub type ReqId = u64;
/// A lock key (opaque bytes).
pub type Key = bytes::Bytes;
/// Fencing token == lease id: `(epoch << 40) | counter`, strictly increasing for the broker's life.
pub type Fence = u64;

/// The session id owning leases loaded by `Table::restore`.
pub const RESTORED_SESSION: SessionId = 0;

/// Who a session acts for, as the table records it on each lease (`Table::set_principal`
/// interns the driver's principal names): a reclaim never moves a lease to another principal.
pub type PrincipalId = u32;

/// The principal of sessions no driver named (the embedded engine's) and of restored leases:
/// a lease recorded with it may be reclaimed by any principal whose secret checks out.
pub const UNNAMED_PRINCIPAL: PrincipalId = 0;

/// How a lease shares its key with other leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One holder at a time.
    Exclusive,
    /// Many readers; excludes `Exclusive` (readers–writer, writers are not starved).
    Shared,
    /// Up to `n` concurrent holders (`n >= 1`); all holders of a key use the same `n`.
    Semaphore(u32),
}

/// How long an acquire (or `wait_until_unlocked`) may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Try once; fail with `Busy` if not grantable now.
    No,
    /// Queue until this instant at most (an instant `<= now` behaves like `No`).
    Until(Instant),
    /// Queue until granted or cancelled.
    Forever,
}

/// An acquire request as the table sees it (after policy plugins ran).
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    pub session: SessionId,
    pub req: ReqId,
    pub key: Key,
    pub mode: Mode,
    pub ttl: Duration,
    pub wait: Wait,
    /// The owner label the lease is shown with (`None`: none).
    pub owner: Option<Key>,
    /// The ticket of a place kept in the key's queue across a planned move (`requeue.rs`);
    /// 0: none.
    pub ticket: u64,
    /// Lock caching (`cache.rs`): fencing tokens the lease reserves for its holder's local
    /// re-grants; 0 or 1 an ordinary lease, more a cacheable one (at most
    /// [`MAX_FENCE_BLOCK`]).
    pub fence_block: u32,
}

/// Most fencing tokens one cacheable lease reserves (larger requests get this many).
pub const MAX_FENCE_BLOCK: u32 = 1 << 16;

/// Most keys one [`AcquireAllRequest`] may name.
pub const MAX_KEYS_PER_REQUEST: usize = 64;

/// An all-or-none acquire of several keys, exclusive on each (`Table::acquire_all`).
///
/// The keys must be distinct, at least one and at most [`MAX_KEYS_PER_REQUEST`]. Every key
/// gets its own lease (own fence, the same `ttl` and owner label), all in one table step.
#[derive(Clone, Debug)]
pub struct AcquireAllRequest {
    pub session: SessionId,
    pub req: ReqId,
    /// The keys, in the order the grants are reported.
    pub keys: Vec<Key>,
    pub ttl: Duration,
    pub wait: Wait,
    /// The owner label every lease of the request is shown with (`None`: none).
    pub owner: Option<Key>,
}

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub key: Key,
    pub fence: Fence,
    pub mode: Mode,
    pub ttl: Duration,
    pub deadline: Instant,
    /// The fencing tokens reserved for the lease, `[fence, fence + fence_block)`: 1 for an
    /// ordinary lease, more for a cacheable one (`cache.rs`).
    pub fence_block: u32,
}

/// How a `wait_until_unlocked` resolved: the last holder released, or its lease expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    Released,
    Expired,
}

/// Ordered lock transitions, for the mirror. Emitted for every lease that starts, ends or is renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockEvent {
    Acquired {
        key: Key,
        session: SessionId,
        fence: Fence,
        mode: Mode,
        deadline: Instant,
    },
    Released {
        key: Key,
        session: SessionId,
        fence: Fence,
    },
    Expired {
        key: Key,
        session: SessionId,
        fence: Fence,
    },
    Extended {
        key: Key,
        session: SessionId,
        fence: Fence,
        deadline: Instant,
    },
}

/// Something the server must do as a result of a table operation (reply, push, mirror).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A queued acquire was granted. `wait` and `owner` are what the request asked for, so a
    /// driver whose grant gate refuses the grant can keep the request waiting (`wait`: until
    /// its deadline, or forever).
    Granted {
        session: SessionId,
        req: ReqId,
        grant: Grant,
        wait: Wait,
        owner: Option<Key>,
    },
    /// A queued `acquire_all` was granted: one lease per key, in the order the request named
    /// the keys (each key's `Event(Acquired)` precedes this effect in the same batch).
    GrantedAll {
        session: SessionId,
        req: ReqId,
        grants: Vec<Grant>,
    },
    /// A queued acquire (single or multi-key) ended without a grant (`Timeout`, `Cancelled`, or a limit hit at grant time).
    AcquireFailed {
        session: SessionId,
        req: ReqId,
        error: TableError,
    },
    /// A queued `wait_until_unlocked` resolved.
    Unlocked {
        session: SessionId,
        req: ReqId,
        outcome: UnlockOutcome,
    },
    /// A queued `wait_until_unlocked` timed out or was cancelled.
    WaitFailed {
        session: SessionId,
        req: ReqId,
        error: TableError,
    },
    /// A lock transition for the mirror.
    Event(LockEvent),
    /// Another request conflicts with cacheable lease (`key`, `fence`) of `session`: tell the
    /// holder to release it once its current local holder is done (`cache.rs`).
    Recall {
        session: SessionId,
        key: Key,
        fence: Fence,
    },
}

/// Errors of table operations.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    #[error("lock is busy")]
    Busy,
    #[error("timed out waiting")]
    Timeout,
    #[error("request cancelled")]
    Cancelled,
    #[error("the key is already held in a way that does not admit this lease")]
    RestoreConflict,
    #[error("lease is not held by this session")]
    NotOwner,
    #[error("key is not locked")]
    NotLocked,
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    #[error("invalid mode: {0}")]
    InvalidMode(&'static str),
    #[error("invalid key list: {0}")]
    InvalidKeys(&'static str),
    #[error("request id is already pending in this session")]
    DuplicateRequest,
    #[error("the key's shard is served by another broker now")]
    Moved,
    /// A waiting acquire left the queue in a planned move of its key's shard; sent again with
    /// this ticket, it gets its place back at the new owner (`requeue.rs`).
    #[error(
        "the key's shard moved while this acquire waited; its place is kept for ticket {0:016x}"
    )]
    Requeued(u64),
}

/// One current holder of a key, as reported by `inspect` and `holds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub session: SessionId,
    pub fence: Fence,
    pub mode: Mode,
    pub deadline: Instant,
    /// The owner label given with the acquire.
    pub owner: Option<Key>,
    /// A cacheable lease (its holder may grant the key again locally; `cache.rs`).
    pub cached: bool,
}

/// A snapshot of one key, as reported by `inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub key: Key,
    pub holders: Vec<Holder>,
    /// Queued acquires (not counting `wait_until_unlocked` watchers).
    pub waiters: usize,
    /// Set while the key is blocked by `lock_delay` after an orphaned lease expired.
    pub blocked_until: Option<Instant>,
}

/// Table configuration.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// Fencing tokens are `(epoch << 40) | counter`, counter starting at 1. Only the low 24 bits are used.
    pub epoch: u64,
    /// How long a key stays blocked after an orphaned (lost-session or restored) lease expired.
    pub lock_delay: Duration,
    pub max_leases_per_session: usize,
    pub max_waiters_per_session: usize,
    /// Live keys in the table; a new key past it → `LimitExceeded("live keys")`.
    pub max_keys: usize,
    /// Queued acquires and watchers on one key → `LimitExceeded("queued requests on this key")`.
    pub max_queued_per_key: usize,
    /// Queued acquires and watchers in all → `LimitExceeded("queued requests in total")`.
    pub max_queued_total: usize,
    /// Emit `LockEvent::{Acquired, Released, Extended}` (a broker's mirror and metrics read
    /// them). `Expired` is emitted either way: a driver tells the holder. The SDK's embedded
    /// engine reads only `Expired` and turns the rest off (an event per grant and per release
    /// was a key clone and an effect each, on a path measured in nanoseconds).
    pub lease_events: bool,
    /// Keep live keys in key order too (a B-tree beside the hash index), so an operator's
    /// listing is O(log n + page) instead of a scan and sort of the whole table under the
    /// table lock. A broker turns it on; the embedded engine, which lists nothing, does not
    /// pay for it.
    pub ordered_keys: bool,
    /// Caps of every named principal's keys, leases and queue records, unless
    /// `Table::set_principal_caps` gave one its own (`quotas.rs`).
    pub principal_caps: crate::quotas::PrincipalCaps,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            epoch: 0,
            lock_delay: Duration::ZERO,
            max_leases_per_session: 10_000,
            max_waiters_per_session: 10_000,
            max_keys: usize::MAX,
            max_queued_per_key: usize::MAX,
            max_queued_total: usize::MAX,
            lease_events: true,
            ordered_keys: false,
            principal_caps: crate::quotas::PrincipalCaps::UNLIMITED,
        }
    }
}

/// Longest TTL / lock delay the table honours; longer values are clamped (keeps `Instant` math total).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, clamped to [`MAX_TTL`]; never panics.
pub fn deadline_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(MAX_TTL)).unwrap_or(now)
}
