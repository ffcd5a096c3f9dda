//! Cluster routing: the shard map brokers push (`ShardMap`, cluster mode only), corrected by
//! `Moved` answers, and what a connection hands to the client when the broker pushes something
//! (`Pushes`). With no map — a single broker — every key goes to the client's one connection.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};

use lockbroker_proto::{EndReason, ShardMap, ShardOwner, shard_of};
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

/// The newest shard map seen, with corrections learnt from `Moved` answers, and a counter of
/// its changes that requests in flight watch (`moved_away`).
pub(crate) struct Routes {
    map: Mutex<Option<ShardMap>>,
    /// Whether a map was ever received (read on every request without the lock).
    known: AtomicBool,
    changed: watch::Sender<u64>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            map: Mutex::new(None),
            known: AtomicBool::new(false),
            changed: watch::channel(0).0,
        }
    }
}

impl Routes {
    /// Tells the watchers that the map changed.
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// A pushed map: kept if it is at least as new as the one we have.
    pub(crate) fn update(&self, m: ShardMap) {
        let kept = {
            let mut map = self.map.lock();
            let newer = map.as_ref().is_none_or(|old| old.version <= m.version);
            if newer {
                *map = Some(m);
                self.known.store(true, Ordering::Release);
            }
            newer
        };
        if kept {
            self.bump();
        }
    }

    /// Whether a shard map was ever received (cluster mode).
    pub(crate) fn is_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    /// A receiver of the map's changes (for [`Routes::moved_away`]).
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves once the map names an owner of `key`'s shard other than `before` (a request
    /// sent to `before` will not be answered there any more); never while it stays.
    pub(crate) async fn moved_away(
        &self,
        changes: &mut watch::Receiver<u64>,
        key: &[u8],
        before: Option<&str>,
    ) {
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Some(now) = self.owner(key)
                && Some(now.as_str()) != before
            {
                return;
            }
        }
    }

    /// The URL of the broker that serves `key`, if the map names one.
    pub(crate) fn owner(&self, key: &[u8]) -> Option<String> {
        if !self.is_known() {
            return None;
        }
        let map = self.map.lock();
        let m = map.as_ref()?;
        let shard = shard_of(key, m.shards);
        m.owners
            .iter()
            .find(|o| o.shard == shard)
            .map(|o| o.url.clone())
    }

    /// A broker answered `Moved` for `key`: its shard is served at `url` (empty: by nobody
    /// right now). Corrects the map until the next push.
    pub(crate) fn moved(&self, key: &[u8], url: &str) {
        let mut map = self.map.lock();
        let Some(m) = map.as_mut() else {
            return;
        };
        let shard = shard_of(key, m.shards);
        m.owners.retain(|o| o.shard != shard);
        if !url.is_empty() {
            m.owners.push(ShardOwner {
                shard,
                url: url.to_string(),
            });
        }
        drop(map);
        self.bump();
    }
}

/// A broker's word that a lease ended (`LeaseEnded`), as a connection passes it on.
#[derive(Clone, Debug)]
pub(crate) struct LeaseEnd {
    /// The connection it came on (its `Conn::id`): only the connection whose
    /// session holds the lease speaks for it (a broker that lost the shard may still say its
    /// copy ended after the lease moved on).
    pub(crate) conn: u64,
    pub(crate) fence: u64,
    pub(crate) reason: EndReason,
    pub(crate) why: String,
}

/// What a connection passes on when its broker pushes something.
#[derive(Clone)]
pub(crate) struct Pushes {
    /// `LeaseEnded`, to the guards' watchdogs.
    pub(crate) lease_ended: broadcast::Sender<LeaseEnd>,
    /// `ShardMap`.
    pub(crate) routes: Arc<Routes>,
    /// `Recall`, to the client's cached leases (`cache.rs`; `None`: it caches none). Weak:
    /// the client owns its cache, and the cache's leases hold the pushes.
    pub(crate) recalls: Option<Weak<dyn Recalls>>,
}

/// Where `Recall` pushes go: the client's lock cache.
pub(crate) trait Recalls: Send + Sync {
    /// The broker asks for cached lease (`key`, `fence`) back.
    fn recall(&self, key: &Bytes, fence: u64);
}

impl Pushes {
    /// A client's pushes, before any connection: no shard map known yet.
    pub(crate) fn new(recalls: Option<Weak<dyn Recalls>>) -> Pushes {
        Pushes {
            lease_ended: broadcast::channel(256).0,
            routes: Arc::new(Routes::default()),
            recalls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_map_wins_and_moved_corrects_it() {
        let r = Routes::default();
        assert_eq!(r.owner(b"k"), None);
        let shard = shard_of(b"k", 4);
        let map = |version, url: &str| ShardMap {
            version,
            shards: 4,
            owners: vec![ShardOwner {
                shard,
                url: url.into(),
            }],
        };
        r.update(map(5, "quic://a"));
        assert_eq!(r.owner(b"k").as_deref(), Some("quic://a"));
        r.update(map(3, "quic://old"));
        assert_eq!(r.owner(b"k").as_deref(), Some("quic://a"));
        r.moved(b"k", "quic://b");
        assert_eq!(r.owner(b"k").as_deref(), Some("quic://b"));
        r.moved(b"k", "");
        assert_eq!(r.owner(b"k"), None);
        r.update(map(6, "quic://c"));
        assert_eq!(r.owner(b"k").as_deref(), Some("quic://c"));
    }
}
