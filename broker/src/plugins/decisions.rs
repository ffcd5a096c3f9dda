//! The decision cache of a policy plugin (`decision_cache = N` in its settings): remembered
//! results of successful calls, keyed by everything the plugin sees of a request (operation,
//! mode, TTL, principal, key), replayed without calling the plugin. Only for plugins whose
//! decision is a function of the request and their configuration; the operator declares that.
//!
//! Sharded by thread like the instance pool (a worker thread uses its own shard, so lookups do
//! not contend); a shard that fills up is emptied (bounded memory, no eviction bookkeeping on
//! the hot path). Faults are never stored. A cache belongs to one generation of one plugin, so
//! a reload starts empty.

use std::cell::RefCell;
use std::collections::HashMap;

use parking_lot::{Mutex, MutexGuard};

use super::bindings::types::{LockMode, LockRequest, Operation};
use super::request::KeyDecision;

/// A remembered result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A key policy's verdict.
    Key(KeyDecision),
    /// A TTL policy's grant or refusal.
    Ttl(Result<u64, String>),
}

/// One shard: encoded request → its answer.
type Shard = HashMap<Box<[u8]>, Decision>;

/// The decision cache of one plugin generation.
pub struct DecisionCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl DecisionCache {
    /// A cache of about `entries` decisions over `shards` shards, or `None` when `entries` is 0.
    pub fn new(entries: usize, shards: usize) -> Option<Self> {
        if entries == 0 {
            return None;
        }
        let shards = shards.clamp(1, entries);
        Some(DecisionCache {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: entries.div_ceil(shards),
        })
    }

    /// The remembered result for `req`, if any.
    pub fn get(&self, req: &LockRequest) -> Option<Decision> {
        with_key(req, |key| self.shard().get(key).cloned())
    }

    /// Remembers `decision` for `req`.
    pub fn put(&self, req: &LockRequest, decision: Decision) {
        with_key(req, |key| {
            let mut shard = self.shard();
            if shard.len() >= self.per_shard && !shard.contains_key(key) {
                shard.clear();
            }
            shard.insert(key.into(), decision);
        });
    }

    /// Decisions currently remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self) -> MutexGuard<'_, Shard> {
        self.shards[super::pool::shard_index(self.shards.len())].lock()
    }
}

/// Runs `f` on the cache key of `req` (built in a reused per-thread buffer: no allocation on a
/// hit). Every field is fixed-size or length-prefixed, so two requests share a key only when
/// they are equal.
fn with_key<R>(req: &LockRequest, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut key) => f(encode(req, &mut key)),
        // Re-entrance is impossible (nothing runs while the key is borrowed); be safe anyway
        // and use a fresh buffer rather than panic.
        Err(_) => f(encode(req, &mut Vec::new())),
    })
}

fn encode<'b>(req: &LockRequest, key: &'b mut Vec<u8>) -> &'b [u8] {
    key.clear();
    key.push(match req.operation {
        Operation::Acquire => 0,
        Operation::Inspect => 1,
        Operation::Wait => 2,
    });
    let (mode, permits) = match req.mode {
        LockMode::Exclusive => (0u8, 0u32),
        LockMode::Shared => (1, 0),
        LockMode::Semaphore(n) => (2, n),
    };
    key.push(mode);
    key.extend_from_slice(&permits.to_le_bytes());
    key.extend_from_slice(&req.ttl_ms.to_le_bytes());
    key.extend_from_slice(&(req.principal.len() as u64).to_le_bytes());
    key.extend_from_slice(req.principal.as_bytes());
    key.extend_from_slice(&req.key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &[u8], principal: &str, ttl_ms: u64) -> LockRequest {
        LockRequest {
            key: key.to_vec(),
            mode: LockMode::Exclusive,
            ttl_ms,
            principal: principal.to_string(),
            operation: Operation::Acquire,
        }
    }

    #[test]
    fn remembers_per_request_and_distinguishes_every_field() {
        let cache = DecisionCache::new(100, 1).expect("cache");
        let a = req(b"orders/1", "alice", 5000);
        assert_eq!(cache.get(&a), None);
        cache.put(&a, Decision::Key(KeyDecision::Allow));
        assert_eq!(cache.get(&a), Some(Decision::Key(KeyDecision::Allow)));
        // principal/key boundary, TTL, mode, operation: all part of the key
        assert_eq!(cache.get(&req(b"orders/1", "alic", 5000)), None);
        assert_eq!(cache.get(&req(b"eorders/1", "alic", 5000)), None);
        assert_eq!(cache.get(&req(b"orders/1", "alice", 5001)), None);
        let mut shared = a.clone();
        shared.mode = LockMode::Shared;
        assert_eq!(cache.get(&shared), None);
        let mut sem = a.clone();
        sem.mode = LockMode::Semaphore(3);
        cache.put(&sem, Decision::Ttl(Err("no".into())));
        sem.mode = LockMode::Semaphore(4);
        assert_eq!(cache.get(&sem), None);
        let mut inspect = a.clone();
        inspect.operation = Operation::Inspect;
        assert_eq!(cache.get(&inspect), None);
    }

    #[test]
    fn stays_bounded() {
        let cache = DecisionCache::new(8, 1).expect("cache");
        for i in 0..100u32 {
            cache.put(
                &req(&i.to_le_bytes(), "p", 1),
                Decision::Ttl(Ok(u64::from(i))),
            );
            assert!(cache.len() <= 8);
        }
        assert_eq!(
            cache.get(&req(&99u32.to_le_bytes(), "p", 1)),
            Some(Decision::Ttl(Ok(99)))
        );
        assert!(DecisionCache::new(0, 4).is_none());
    }
}
