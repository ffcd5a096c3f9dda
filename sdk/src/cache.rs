//! Lock caching (issue 25), the client's part: a client built with
//! [`ClientBuilder::cache_locks`](crate::ClientBuilder::cache_locks) keeps an exclusive lease
//! after its local holder unlocks, and grants the key again in the process — no frame, no
//! round trip — until another client asks for it.
//!
//! The broker lease is asked for with a fence block (`Acquire::fence_block`): its fencing
//! tokens `[f, f + n)` are this client's, every later grant of the key is above them. The
//! first local holder gets `f`, each next one the next token, so fences at a resource still
//! strictly grow. The lease itself is an ordinary guard kept here, renewed by its watchdog
//! while cached; local guards share its lease (its clock, `lost()`, `extend`).
//!
//! Local lockers of one key are served FIFO: an unlock hands the key to the next local waiter
//! directly. When the broker pushes `Recall` (another client asks), no new local grant is
//! made; the lease is given back as soon as no local guard holds it, and local waiters then ask
//! the broker like anyone (queueing behind the client that caused the recall). The lease is
//! also given back when its block is used up, when it is lost, and after `idle` without a
//! local holder.
//!
//! A key whose lease was recalled is *contended* for `idle` (Lustre's contended locks): its
//! locks ask the broker for ordinary leases meanwhile, so clients that take a key in turn do
//! not pay a recall each turn — caching pays only for keys one client takes again and again. One ask per key at a time: while this client's acquire of a key is on its way,
//! its other local lockers of the key wait for it instead of queueing behind it at the broker
//! (which would recall the lease just granted).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::guard::{Guard, Unhold};
use crate::shards::Recalls;

/// A client's cached leases.
pub(crate) struct LockCache {
    /// This cache (for the pushes and guards that reach it by reference).
    me: Weak<LockCache>,
    /// Fencing tokens asked for with each lease: local grants per broker grant.
    pub(crate) block: u32,
    /// How long a cached lease is kept without a local holder.
    idle: Duration,
    entries: Mutex<HashMap<Bytes, Entry>>,
    /// Keys recalled lately, until when they are not cached ([`MAX_CONTENDED`] at most).
    contended: Mutex<HashMap<Bytes, Instant>>,
    /// The idle sweep, started with the first cached lease.
    sweeper: OnceLock<()>,
}

/// What a local waiter is handed: the key with its next local fence (it holds the key from
/// now on; dropped unused, the hold passes on), or `None`: look again (the lease was given
/// back, or the ask failed).
pub(crate) struct Handoff {
    cache: Arc<LockCache>,
    key: Bytes,
    fence: Option<u64>,
}

enum Entry {
    /// This client's acquire of the key is on its way: its other local lockers wait for it.
    /// `recalled`: a `Recall` that came before the grant (the lease's fence).
    Asking {
        waiters: VecDeque<oneshot::Sender<Handoff>>,
        recalled: Option<u64>,
    },
    Cached(Box<Cached>),
}

struct Cached {
    /// The broker lease; dropped (released, fire-and-forget) when given back.
    lease: Guard,
    /// The next local fence, and the end of the block.
    next: u64,
    end: u64,
    /// A local guard holds the key.
    held: bool,
    /// The broker asked for the lease back.
    recalled: bool,
    waiters: VecDeque<oneshot::Sender<Handoff>>,
    idle_since: Instant,
}

impl Cached {
    /// No more local grants: its block is used up, or it must go back.
    fn spent(&self) -> bool {
        self.next >= self.end || self.must_go()
    }

    /// Given back as soon as no local guard holds it: recalled, lost, or moved to another
    /// broker (which does not know the lease is cached, and so would not recall it). A lease
    /// that only used up its block waits for this client's next lock of the key, which gives
    /// it back before asking anew (or for the idle sweep).
    fn must_go(&self) -> bool {
        self.recalled || self.lease.is_lost() || self.lease.relocated()
    }
}

/// Contended keys remembered at once (past it, a recalled key may be cached again at once:
/// it costs a recall, nothing else).
const MAX_CONTENDED: usize = 4096;

/// What a local locker does next.
pub(crate) enum Take {
    /// Granted here: the local guard.
    Local(Guard),
    /// Wait for the handoff (FIFO behind the local holder, or for this client's ask).
    Wait(oneshot::Receiver<Handoff>),
    /// The key is contended: ask the broker for an ordinary lease, as without caching.
    Plain,
    /// Ask the broker; the caller is the one asker of the key until [`Asking`] is done, and
    /// first gives back the spent lease it was handed, if any (so that its own acquire does
    /// not find the key held by it: a try-lock would be refused `Busy`).
    Ask(Asking, Option<Guard>),
}

/// The one ask of a key in flight. Dropped without [`Asking::done`] (the acquire was
/// cancelled), it lets the key's local waiters look again.
pub(crate) struct Asking {
    cache: Arc<LockCache>,
    key: Bytes,
    finished: bool,
}

impl LockCache {
    pub(crate) fn new(block: u32, idle: Duration) -> Arc<LockCache> {
        Arc::new_cyclic(|me| LockCache {
            me: me.clone(),
            block: block.max(2),
            idle,
            entries: Mutex::new(HashMap::new()),
            contended: Mutex::new(HashMap::new()),
            sweeper: OnceLock::new(),
        })
    }

    /// Takes `key` locally if this client caches it and it is free here; else says whether to
    /// wait here or ask the broker.
    pub(crate) fn take(self: &Arc<Self>, key: &Bytes) -> Take {
        let mut entries = self.entries.lock();
        match entries.get_mut(key) {
            None if self.is_contended(key) => Take::Plain,
            None => {
                entries.insert(key.clone(), asking());
                Take::Ask(self.asking(key), None)
            }
            Some(Entry::Asking { waiters, .. }) => Take::Wait(enqueue(waiters)),
            Some(Entry::Cached(c)) if c.held => Take::Wait(enqueue(&mut c.waiters)),
            Some(Entry::Cached(c)) if c.spent() => {
                // Free and spent: the asker gives it back, then asks anew.
                let spent = match entries.insert(key.clone(), asking()) {
                    Some(Entry::Cached(c)) => Some(c.lease),
                    _ => None,
                };
                Take::Ask(self.asking(key), spent)
            }
            Some(Entry::Cached(c)) => {
                c.held = true;
                let fence = c.next;
                c.next += 1;
                crate::metrics::cache_hit();
                Take::Local(Guard::local(&c.lease, fence, self.clone()))
            }
        }
    }

    /// Whether `key` was recalled within the last `idle` (an expired mark is dropped).
    fn is_contended(&self, key: &Bytes) -> bool {
        let mut contended = self.contended.lock();
        match contended.get(key) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                contended.remove(key);
                false
            }
            None => false,
        }
    }

    /// `key` was recalled: its locks ask for ordinary leases for the next `idle`.
    fn mark_contended(&self, key: &Bytes) {
        let now = Instant::now();
        let mut contended = self.contended.lock();
        if contended.len() >= MAX_CONTENDED {
            contended.retain(|_, until| now < *until);
        }
        if contended.len() < MAX_CONTENDED {
            contended.insert(key.clone(), now + self.idle);
        }
    }

    fn asking(self: &Arc<Self>, key: &Bytes) -> Asking {
        Asking {
            cache: self.clone(),
            key: key.clone(),
            finished: false,
        }
    }

    /// The local guard of a handoff's fence (the key's cached lease shared).
    fn local_guard(self: &Arc<Self>, key: &[u8], fence: u64) -> Option<Guard> {
        match self.entries.lock().get(key) {
            Some(Entry::Cached(c)) => Some(Guard::local(&c.lease, fence, self.clone())),
            _ => None,
        }
    }

    /// A local guard of `key` unlocked (or was dropped): the next local waiter holds the key,
    /// or — recalled, used up, lost, moved — the lease is given back and the waiters look again.
    fn unhold_key(self: &Arc<Self>, key: &Bytes) {
        {
            let mut entries = self.entries.lock();
            let Some(Entry::Cached(c)) = entries.get_mut(key) else {
                return;
            };
            c.held = false;
            c.idle_since = Instant::now();
            if !c.spent() {
                self.hand_on(key, c);
                return;
            }
            if !c.must_go() {
                // Block used up: the first waiter to look again gives it back and asks.
                let waiters = std::mem::take(&mut c.waiters);
                drop(entries);
                self.look_again(waiters, key);
                return;
            }
        }
        self.give_back_if(key, |c| !c.held && c.must_go());
    }

    /// Hands the free key of `c` to its first local waiter still waiting (FIFO), if any.
    fn hand_on(self: &Arc<Self>, key: &Bytes, c: &mut Cached) {
        while let Some(w) = c.waiters.pop_front() {
            let handoff = Handoff {
                cache: self.clone(),
                key: key.clone(),
                fence: Some(c.next),
            };
            c.held = true;
            c.next += 1;
            match w.send(handoff) {
                Ok(()) => {
                    crate::metrics::cache_hit();
                    return;
                }
                Err(mut unused) => {
                    // That waiter gave up: its fence is skipped, the next waiter tried.
                    unused.fence = None;
                    c.held = false;
                }
            }
        }
    }

    /// The broker pushed `Recall` for lease (`key`, `fence`): no more local grants; given back
    /// now if no local guard holds it, else when the last one unlocks.
    fn recall_lease(self: &Arc<Self>, key: &Bytes, fence: u64) {
        self.mark_contended(key);
        if let Some(Entry::Asking { recalled, .. }) = self.entries.lock().get_mut(key) {
            // Pushed before this client saw the grant (a grant held for a backup's ack).
            *recalled = Some(fence);
            return;
        }
        self.give_back_if(key, |c| {
            if c.lease.lease_fence() != fence {
                return false;
            }
            crate::metrics::cache_recall();
            c.recalled = true;
            !c.held
        });
    }

    /// The cached lease of `key` moved to another broker: given back now if no local guard
    /// holds it, else when the last one unlocks (it is spent: `Cached::spent`).
    fn recall_moved(self: &Arc<Self>, key: &Bytes) {
        self.give_back_if(key, |c| !c.held);
    }

    /// Gives back the cached lease of `key` if `pick` (run under the cache's lock) says so, and
    /// lets its local waiters look again.
    fn give_back_if(self: &Arc<Self>, key: &Bytes, pick: impl FnOnce(&mut Cached) -> bool) {
        let taken = {
            let mut entries = self.entries.lock();
            let picked = match entries.get_mut(key) {
                Some(Entry::Cached(c)) => pick(c),
                _ => false,
            };
            match picked.then(|| entries.remove(key)).flatten() {
                Some(Entry::Cached(c)) => Some(*c),
                _ => None,
            }
        };
        if let Some(mut c) = taken {
            let waiters = std::mem::take(&mut c.waiters);
            if c.recalled && !c.lease.relocated() {
                // Another client waits for it: released at once on the connection the recall
                // came on (the guard's drop: fire-and-forget, no task to wake first).
                drop(c.lease);
            } else {
                give_back(c.lease);
            }
            self.look_again(waiters, key);
        }
    }

    /// Tells `waiters` to look again (no handoff).
    fn look_again(self: &Arc<Self>, waiters: VecDeque<oneshot::Sender<Handoff>>, key: &Bytes) {
        for w in waiters {
            let _ = w.send(Handoff {
                cache: self.clone(),
                key: key.clone(),
                fence: None,
            });
        }
    }

    /// Gives back every lease kept longer than `idle` without a local holder.
    fn sweep(&self, now: Instant) {
        let expired: Vec<Entry> = {
            let mut entries = self.entries.lock();
            let keys: Vec<Bytes> = entries
                .iter()
                .filter(|(_, e)| {
                    matches!(e, Entry::Cached(c)
                        if !c.held && now.duration_since(c.idle_since) >= self.idle)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| entries.remove(k)).collect()
        };
        for e in expired {
            if let Entry::Cached(c) = e {
                give_back(c.lease);
            }
        }
    }

    /// Starts the idle sweep (once): every `idle / 2` while the cache lives.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.get_or_init(|| {
            let cache: Weak<LockCache> = Arc::downgrade(self);
            let every = (self.idle / 2).max(Duration::from_millis(10));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(cache) = cache.upgrade() else {
                        return;
                    };
                    cache.sweep(Instant::now());
                }
            });
        });
    }
}

/// Releases a cached lease where it is held now (acknowledged, following a move of its shard:
/// a fire-and-forget release could go to the broker it left, and the lease would linger at
/// the new owner until its TTL). Outside a runtime, the guard's drop releases it.
fn give_back(lease: Guard) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Err(e) = lease.unlock().await {
                    tracing::debug!("giving a cached lease back: {e}");
                }
            });
        }
        Err(_) => drop(lease),
    }
}

fn asking() -> Entry {
    Entry::Asking {
        waiters: VecDeque::new(),
        recalled: None,
    }
}

fn enqueue(waiters: &mut VecDeque<oneshot::Sender<Handoff>>) -> oneshot::Receiver<Handoff> {
    let (tx, rx) = oneshot::channel();
    waiters.push_back(tx);
    rx
}

impl Asking {
    /// The broker's answer to the ask: a lease with a fence block is cached and its first
    /// local guard returned (holding fence `f`); anything else is returned as it is, and the
    /// key's local waiters look again.
    pub(crate) fn done(mut self, result: Result<Guard>) -> Result<Guard> {
        self.finished = true;
        let cache = self.cache.clone();
        let mut entries = cache.entries.lock();
        let (waiters, recalled) = match entries.remove(&self.key) {
            Some(Entry::Asking { waiters, recalled }) => (waiters, recalled),
            Some(other) => {
                entries.insert(self.key.clone(), other);
                (VecDeque::new(), None)
            }
            None => (VecDeque::new(), None),
        };
        match result {
            Ok(lease) if lease.fence_block() > 1 => {
                crate::metrics::cache_miss();
                let fence = lease.lease_fence();
                // Moved to another broker, it is given back at once: that broker does not
                // know it is cached and would never recall it.
                let (weak, key) = (Arc::downgrade(&cache), self.key.clone());
                lease.on_relocated(move || {
                    if let Some(cache) = weak.upgrade() {
                        cache.recall_moved(&key);
                    }
                });
                let local = Guard::local(&lease, fence, cache.clone());
                entries.insert(
                    self.key.clone(),
                    Entry::Cached(Box::new(Cached {
                        next: fence + 1,
                        end: fence + u64::from(lease.fence_block()),
                        lease,
                        held: true,
                        recalled: recalled == Some(fence),
                        waiters,
                        idle_since: Instant::now(),
                    })),
                );
                drop(entries);
                cache.start_sweeper();
                Ok(local)
            }
            other => {
                drop(entries);
                cache.look_again(waiters, &self.key);
                other
            }
        }
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let waiters = {
            let mut entries = self.cache.entries.lock();
            match entries.get_mut(&self.key) {
                Some(Entry::Asking { waiters, .. }) => {
                    let waiters = std::mem::take(waiters);
                    entries.remove(&self.key);
                    waiters
                }
                _ => VecDeque::new(),
            }
        };
        self.cache.look_again(waiters, &self.key);
    }
}

impl Handoff {
    /// The local guard this handoff grants (`None`: look again).
    pub(crate) fn into_guard(mut self) -> Option<Guard> {
        let fence = self.fence.take()?;
        // `None`: the lease went meanwhile (lost and swept): nothing to hold.
        self.cache.local_guard(&self.key, fence)
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // A handoff nobody took: the hold passes on.
        if self.fence.take().is_some() {
            self.cache.unhold_key(&self.key);
        }
    }
}

impl Unhold for LockCache {
    fn unhold(&self, key: &Bytes) {
        if let Some(me) = self.me.upgrade() {
            me.unhold_key(key);
        }
    }
}

impl Recalls for LockCache {
    fn recall(&self, key: &Bytes, fence: u64) {
        if let Some(me) = self.me.upgrade() {
            me.recall_lease(key, fence);
        }
    }
}

/// Waits for a handoff until `until` (`None`: forever): the local guard, `Ok(None)` to look
/// again, or `Err(())` when the wait ran out.
pub(crate) async fn wait_handoff(
    rx: oneshot::Receiver<Handoff>,
    until: Option<Instant>,
) -> std::result::Result<Option<Guard>, ()> {
    let handoff = match until {
        Some(t) => match tokio::time::timeout_at(t.into(), rx).await {
            Ok(h) => h,
            Err(_) => return Err(()),
        },
        None => rx.await,
    };
    Ok(handoff.ok().and_then(Handoff::into_guard))
}
