//! The owner's side of replicated shards (issue 24): the cluster's grant gate. It sees every
//! table change under the table lock (`GrantGate::record`), files each change of a
//! replicated shard in that shard's [`Feed`], and holds the answer to a grant or renewal
//! until the shard's in-sync backup acknowledged it (`hold`, `hold_renewal`). The link
//! (`link.rs`) takes the feeds' batches to the backups and reports their acknowledgements;
//! the driver starts and ends feeds as shards are claimed and lost, and moves them in and
//! out of sync as etcd's in-sync set changes.
//!
//! A feed that ends while answers wait (the shard was handed over or lost, or etcd could not
//! record that its backup fell out of sync) answers them `Moved` (`Confirmation::Moved`): a
//! grant's lease is released, a renewal is asked again where the shard is now — an answer the
//! backup may not have is never given.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use lockbroker_proto::shard_of;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::feed::Feed;
use super::replica::Change;
use crate::broker::{Confirmation, GrantGate, Pending};
use crate::table::{Effect, Fence, Grant, LockEvent};

/// What `/metrics` shows of the replication of the shards this broker owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Shards served here and replicated (each has a feed).
    pub shards: u32,
    /// Of them, shards with a backup etcd may name in sync (their failover needs no grace).
    pub in_sync: u32,
    /// Changes sent or waiting to be sent that no backup acknowledged yet, over all shards.
    pub lag: u64,
}

/// The feeds of the shards this broker owns and replicates.
pub(super) struct Replicator {
    shards: u32,
    feeds: Mutex<HashMap<u32, Feed>>,
    /// Woken when a change is filed (the links send it).
    recorded: Arc<Notify>,
}

impl Replicator {
    /// A replicator for a cluster of `shards` shards, feeding none yet.
    pub fn new(shards: u32) -> Replicator {
        Replicator {
            shards,
            feeds: Mutex::new(HashMap::new()),
            recorded: Arc::new(Notify::new()),
        }
    }

    /// What the links wait on for changes to send.
    pub fn recorded(&self) -> Arc<Notify> {
        self.recorded.clone()
    }

    /// Starts `shard`'s feed for the owner's term `epoch` (the shard was claimed), served in
    /// a grace until `grace_until` if any.
    pub fn start(&self, shard: u32, epoch: u64, grace_until: Option<Instant>) {
        self.feeds
            .lock()
            .insert(shard, Feed::new(epoch, grace_until));
    }

    /// Ends `shard`'s feed (the shard is no longer served here): answers still waiting fail.
    pub fn stop(&self, shard: u32) {
        self.feeds.lock().remove(&shard);
    }

    /// Runs `op` on `shard`'s feed, if it has one.
    pub fn with_feed<R>(&self, shard: u32, op: impl FnOnce(&mut Feed) -> R) -> Option<R> {
        self.feeds.lock().get_mut(&shard).map(op)
    }

    /// The replication of the shards fed here, now.
    pub fn stats(&self) -> ReplicationStats {
        let feeds = self.feeds.lock();
        let mut stats = ReplicationStats::default();
        for feed in feeds.values() {
            stats.shards += 1;
            stats.in_sync += u32::from(feed.is_named());
            stats.lag += feed.lag() as u64;
        }
        stats
    }

    /// The change a lock event makes, and the shard it belongs to.
    fn change_of(&self, event: &LockEvent, now: Instant) -> (u32, Change) {
        let (key, change) = match event {
            LockEvent::Acquired {
                key,
                fence,
                mode,
                deadline,
                ..
            } => (
                key,
                Change::Acquired {
                    key: key.clone(),
                    fence: *fence,
                    mode: *mode,
                    left: deadline.saturating_duration_since(now),
                },
            ),
            LockEvent::Extended {
                key,
                fence,
                deadline,
                ..
            } => (
                key,
                Change::Extended {
                    key: key.clone(),
                    fence: *fence,
                    left: deadline.saturating_duration_since(now),
                },
            ),
            LockEvent::Released { key, fence, .. } | LockEvent::Expired { key, fence, .. } => (
                key,
                Change::Ended {
                    key: key.clone(),
                    fence: *fence,
                },
            ),
        };
        (shard_of(key, self.shards), change)
    }

    /// What the answer about lease `fence` of `key` waits for.
    fn wait(&self, key: &[u8], fence: Fence) -> Option<Pending> {
        let shard = shard_of(key, self.shards);
        let rx = self.with_feed(shard, |f| f.wait_for(fence))??;
        Some(Box::pin(async move {
            match rx.await {
                Ok(()) => Confirmation::Ok,
                Err(_) => Confirmation::Moved(
                    "the shard's replication ended before its backup confirmed the lease".into(),
                ),
            }
        }))
    }
}

impl GrantGate for Replicator {
    fn record(&self, effects: &[Effect]) {
        let now = Instant::now();
        let mut feeds = self.feeds.lock();
        if feeds.is_empty() {
            return;
        }
        let mut filed = false;
        for e in effects {
            if let Effect::Event(event) = e {
                let (shard, change) = self.change_of(event, now);
                if let Some(feed) = feeds.get_mut(&shard) {
                    feed.record(change);
                    filed = true;
                }
            }
        }
        if filed {
            self.recorded.notify_waiters();
        }
    }

    fn hold(&self, grant: &Grant) -> Option<Pending> {
        self.wait(&grant.key, grant.fence)
    }

    fn holds_multi_key(&self) -> bool {
        true
    }

    fn hold_renewal(&self, fence: Fence) -> Option<Pending> {
        // The renewal's key is not given: the feed that has the fence waits for it.
        let mut feeds = self.feeds.lock();
        let rx = feeds.values_mut().find_map(|f| f.wait_for(fence))?;
        Some(Box::pin(async move {
            match rx.await {
                Ok(()) => Confirmation::Ok,
                Err(_) => Confirmation::Moved(
                    "the shard's replication ended before its backup confirmed the renewal".into(),
                ),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::table::{Mode, SessionId};

    fn acquired(key: &'static [u8], fence: u64, now: Instant) -> Effect {
        Effect::Event(LockEvent::Acquired {
            key: Bytes::from_static(key),
            session: 1 as SessionId,
            fence,
            mode: Mode::Exclusive,
            deadline: now + Duration::from_secs(5),
        })
    }

    fn grant(key: &'static [u8], fence: u64, now: Instant) -> Grant {
        Grant {
            key: Bytes::from_static(key),
            fence,
            mode: Mode::Exclusive,
            ttl: Duration::from_secs(5),
            deadline: now + Duration::from_secs(5),
            fence_block: 1,
        }
    }

    #[test]
    fn grants_of_an_in_sync_shard_wait_for_the_backup_and_others_do_not() {
        let r = Replicator::new(8);
        let now = Instant::now();
        let shard = shard_of(b"a", 8);
        r.start(shard, 3, None);
        // Not in sync yet: recorded, answered at once.
        r.record(&[acquired(b"a", 1, now)]);
        assert!(r.hold(&grant(b"a", 1, now)).is_none());
        r.with_feed(shard, |f| {
            let (next, generation) = f.snapshot_sent("b2");
            f.acked("b2", next);
            f.naming(generation);
        });
        r.record(&[acquired(b"a", 2, now)]);
        let mut held = r.hold(&grant(b"a", 2, now)).expect("waits for the backup");
        let waker = futures_task_noop();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(held.as_mut().poll(&mut cx).is_pending());
        let batch = r.with_feed(shard, |f| f.next_batch("b2", 16)).flatten();
        let (seq, changes) = batch.expect("the change is sent");
        assert_eq!(changes.len(), 1);
        r.with_feed(shard, |f| f.acked("b2", seq + 1));
        assert_eq!(
            held.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Confirmation::Ok)
        );
        // A key of another shard (no feed) waits for nothing.
        let other = (0u8..=255)
            .map(|b| Bytes::from(vec![b]))
            .find(|k| shard_of(k, 8) != shard)
            .expect("a key of another shard");
        let g = Grant {
            key: other,
            ..grant(b"a", 9, now)
        };
        assert!(r.hold(&g).is_none());
    }

    #[test]
    fn a_feed_that_ends_fails_the_answers_waiting_on_it() {
        let r = Replicator::new(8);
        let now = Instant::now();
        let shard = shard_of(b"a", 8);
        r.start(shard, 3, None);
        r.with_feed(shard, |f| {
            let (_, generation) = f.snapshot_sent("b2");
            f.naming(generation);
        });
        r.record(&[acquired(b"a", 1, now)]);
        let mut held = r.hold_renewal(1).expect("waits");
        r.stop(shard);
        let waker = futures_task_noop();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(matches!(
            held.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Confirmation::Moved(_))
        ));
    }

    fn futures_task_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
