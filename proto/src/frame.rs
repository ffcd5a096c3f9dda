//! The frames of the protocol: what a client asks and what the broker answers or pushes.
//!
//! Requests carry a client-chosen `id` (unique among the session's pending requests); every
//! answer, including a pushed grant for a queued acquire, carries the same `id`.

use bytes::Bytes;

use crate::ErrorCode;

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One holder.
    Exclusive,
    /// Many readers, no writer (readers–writer lock; waiting writers are not starved).
    Shared,
    /// Up to N holders.
    Semaphore(u32),
}

/// How long an acquire (or a wait for unlock) may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitSpec {
    /// Fail at once with `Busy` if not grantable (try-lock).
    NoWait,
    /// Wait up to this many milliseconds, then fail with `Timeout`.
    Millis(u64),
    /// Wait until granted or cancelled.
    Forever,
}

/// How a `WaitUnlocked` resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// The last holder released the lock.
    Released,
    /// The last holder's lease expired.
    Expired,
}

/// Why a lease ended without its holder releasing it (pushed in [`Frame::LeaseEnded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its TTL ran out before a renewal reached the broker.
    Expired,
    /// The sync mirror could not keep it in Redis (the key is held there by someone else, or
    /// Redis did not confirm a renewal): the broker ended it so that both sides stay exclusive.
    Mirror,
    /// Cluster mode: the broker no longer serves the key's shard (it lost its etcd lease, or
    /// another broker owns the shard now). The lease may be adopted at the new owner.
    Moved,
    /// An operator released it by force (`lockbroker release --force`, the admin API).
    Revoked,
}

/// The unguessable secret of one lease, bound by the broker to (key, fence, principal).
/// `Release`, `Extend` and `Reclaim` of the lease must present it. Its `Debug` never shows the
/// bytes, so it does not end up in logs.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseSecret(pub [u8; 16]);

impl std::fmt::Debug for LeaseSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseSecret(..)")
    }
}

/// Client → broker, first frame on the control stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Auth token, if the broker requires one.
    pub token: Option<String>,
    /// Free-form client name, for logs.
    pub client: String,
}

/// Broker → client, answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub session: u64,
    /// The broker's persistent identity (kept in its data dir): a client never carries a lease
    /// over to a broker with another identity.
    pub broker_id: u64,
    /// Broker epoch: the high bits of every fencing token issued by this broker run.
    pub epoch: u64,
    pub max_frame: u32,
    pub max_key: u32,
    /// TTL used when an acquire asks for 0.
    pub default_ttl_ms: u64,
    /// The principal the broker identified this session as (certificate subject, token name, or `anonymous`).
    pub principal: String,
}

/// Ask for a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquire {
    pub id: u64,
    pub key: Bytes,
    pub mode: Mode,
    /// Requested lease TTL; 0 asks for the broker default. Policy may change it: the grant says what was given.
    pub ttl_ms: u64,
    pub wait: WaitSpec,
    /// The owner label the lease is shown with (inspect, admin API, status page): who holds
    /// it in the caller's own words, e.g. `worker-7@host-3`. Empty: none. At most
    /// [`MAX_OWNER_LABEL`] bytes of UTF-8.
    pub owner: Bytes,
    /// A place in the key's queue kept by the shard's new owner: the ticket of a
    /// [`ErrorCode::Requeued`](crate::ErrorCode::Requeued) answer to this acquire at the old
    /// owner. 0: none.
    pub ticket: u64,
    /// Lock caching: how many fencing tokens the lease reserves, so that its holder can grant
    /// the key again locally after its own unlock, each local grant with the next token of
    /// `[fence, fence + fence_block)`. 0 or 1: an ordinary lease. A cacheable lease is recalled
    /// ([`Frame::Recall`]) when another request conflicts with it. The broker may grant fewer
    /// (`Granted::fence_block`).
    pub fence_block: u32,
}

/// Lock several keys at once, exclusively: all are granted together (one `GrantedAll`) or
/// none. At most [`MAX_KEYS_PER_ACQUIRE`] distinct keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireAll {
    pub id: u64,
    pub keys: Vec<Bytes>,
    /// Requested TTL of every lease; 0 asks for the broker default.
    pub ttl_ms: u64,
    pub wait: WaitSpec,
    /// The owner label of every lease (empty: none).
    pub owner: Bytes,
}

/// Most keys one `AcquireAll` may name.
pub const MAX_KEYS_PER_ACQUIRE: usize = 64;

/// One lease of a `GrantedAll`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedLease {
    /// The key held (after any policy rewrite).
    pub key: Bytes,
    pub fence: u64,
    pub ttl_ms: u64,
    pub secret: LeaseSecret,
}

/// Every key of an `AcquireAll` was granted, in the order they were named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedAll {
    pub id: u64,
    pub leases: Vec<GrantedLease>,
}

/// Longest owner label accepted, in bytes.
pub const MAX_OWNER_LABEL: usize = 128;

/// A lease was granted (answer to `Acquire` or `Reclaim`, possibly pushed long after it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub id: u64,
    /// The fencing token, which is also the lease id.
    pub fence: u64,
    /// The TTL granted (after TTL policy).
    pub ttl_ms: u64,
    /// Set when a key policy rewrote the key: the key the lock is actually held on.
    pub rewritten: Option<Bytes>,
    /// The lease's secret: needed to release, extend or reclaim it.
    pub secret: LeaseSecret,
    /// The fencing tokens reserved for the lease (`Acquire::fence_block`): `[fence, fence +
    /// fence_block)` are its holder's, every later grant of the key is above them. 1: an
    /// ordinary lease.
    pub fence_block: u32,
}

/// Give a lease back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub id: u64,
    pub key: Bytes,
    pub fence: u64,
    /// Answer with `Ok`/`Error` when true; when false the release is fire-and-forget.
    pub ack: bool,
    /// The lease's secret, from its `Granted`.
    pub secret: LeaseSecret,
}

/// Renew a lease: its deadline becomes now + ttl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extend {
    pub id: u64,
    pub key: Bytes,
    pub fence: u64,
    pub ttl_ms: u64,
    /// The lease's secret, from its `Granted`.
    pub secret: LeaseSecret,
}

/// Take over a lease by id (fence) from a lost session or a restored lock — or, during a
/// restarted broker's grace period, get back a lease its previous run granted (then `mode`
/// says how it was held; otherwise the lease keeps its own mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaim {
    pub id: u64,
    pub key: Bytes,
    pub fence: u64,
    pub mode: Mode,
    pub ttl_ms: u64,
    /// The lease's secret, from its `Granted`.
    pub secret: LeaseSecret,
    /// The lease's owner label (as given with its acquire), so a broker adopting the lease
    /// shows it too. Empty: none.
    pub owner: Bytes,
}

/// One holder of a lock, as reported by `LockInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub session: u64,
    pub fence: u64,
    pub mode: Mode,
    pub remaining_ms: u64,
    /// The owner label given with the acquire (empty: none).
    pub owner: Bytes,
    /// A cached lease (lock caching): its holder's process grants the key again itself
    /// until the lease is recalled.
    pub cached: bool,
}

/// Answer to `Inspect`.
///
/// A key may have more holders than one frame can list (thousands of shared holders): the
/// broker then lists only the first holders in fence order (the oldest leases) and
/// `holders_total` says how many there are. See [`LockInfo::truncate_to`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub id: u64,
    pub key: Bytes,
    /// The holders listed: all of them, or the first ones when the list was truncated.
    pub holders: Vec<HolderInfo>,
    /// How many holders the key has; at least `holders.len()`, more when the list was
    /// truncated to fit the frame limit.
    pub holders_total: u32,
    pub waiters: u32,
    /// Milliseconds the key stays blocked by lock-delay after a lost holder's lease expired.
    pub blocked_ms: u64,
    /// Where the asking session's first queued acquire of the key stands in its queue
    /// (1: next to be granted); 0 when the session has none queued.
    pub position: u32,
}

/// One shard's owner in a [`ShardMap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardOwner {
    pub shard: u32,
    /// The owner's URL (`quic://host:port`).
    pub url: String,
}

/// Cluster mode: which broker owns which shard (see [`crate::shard_of`]). Pushed after
/// `Welcome` and whenever it changes; shards missing from `owners` have no owner right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    /// Grows with every change (an etcd revision): a client keeps the newest map it saw.
    pub version: u64,
    pub shards: u32,
    pub owners: Vec<ShardOwner>,
}

/// Every frame of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Acquire(Acquire),
    Granted(Granted),
    AcquireAll(AcquireAll),
    GrantedAll(GrantedAll),
    Release(Release),
    Extend(Extend),
    /// Answer to `Extend`: the TTL now in force.
    Extended {
        id: u64,
        ttl_ms: u64,
    },
    Reclaim(Reclaim),
    /// Generic success (acknowledged release).
    Ok {
        id: u64,
    },
    Inspect {
        id: u64,
        key: Bytes,
    },
    LockInfo(LockInfo),
    /// Resolve when `key` has no holder, or fail after `wait`.
    WaitUnlocked {
        id: u64,
        key: Bytes,
        wait: WaitSpec,
    },
    Unlocked {
        id: u64,
        outcome: UnlockOutcome,
    },
    /// Cancel the pending `Acquire` or `WaitUnlocked` with this id.
    Cancel {
        id: u64,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
    /// Broker → holder, unsolicited: lease (`key`, `fence`) has ended although its holder did
    /// not release it. The holder must stop at once (the SDK's `Guard::lost` resolves).
    LeaseEnded {
        key: Bytes,
        fence: u64,
        reason: EndReason,
        message: String,
    },
    /// Broker → client, unsolicited, cluster mode only: the shard map.
    ShardMap(ShardMap),
    /// Broker → holder of a cacheable lease (`Granted::fence_block` > 1), unsolicited: another
    /// request waits for the key. The holder grants it no more locally and releases the lease
    /// once its current local holder is done; the lease stays valid until then.
    Recall {
        key: Bytes,
        fence: u64,
    },
    /// A request failed (`id` ≠ 0), or the connection is about to close (`id` = 0, fatal codes).
    Error {
        id: u64,
        code: ErrorCode,
        message: String,
    },
}

impl Frame {
    /// The request id this frame belongs to (0 for `Hello`/`Welcome` and pushes).
    pub fn id(&self) -> u64 {
        match self {
            Frame::Hello(_)
            | Frame::Welcome(_)
            | Frame::LeaseEnded { .. }
            | Frame::ShardMap(_)
            | Frame::Recall { .. } => 0,
            Frame::Acquire(f) => f.id,
            Frame::Granted(f) => f.id,
            Frame::AcquireAll(f) => f.id,
            Frame::GrantedAll(f) => f.id,
            Frame::Release(f) => f.id,
            Frame::Extend(f) => f.id,
            Frame::Reclaim(f) => f.id,
            Frame::LockInfo(f) => f.id,
            Frame::Extended { id, .. }
            | Frame::Ok { id }
            | Frame::Inspect { id, .. }
            | Frame::WaitUnlocked { id, .. }
            | Frame::Unlocked { id, .. }
            | Frame::Cancel { id }
            | Frame::Ping { id }
            | Frame::Pong { id }
            | Frame::Error { id, .. } => *id,
        }
    }

    /// A request-level error frame.
    pub fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error {
            id,
            code,
            message: message.into(),
        }
    }
}
