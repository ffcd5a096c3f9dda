//! The owner's side of one shard's replication (issue 24; protocol: `tests/src/replica_model.rs`):
//! the changes of the shard's table, numbered in order within the owner's term, kept until
//! the backup acknowledges them, and the answers that wait for those acknowledgements.
//! Sans-I/O: the grant gate records changes under the table lock and asks for a wait per
//! grant or renewal; the link takes batches to send and reports acknowledgements.
//!
//! While the backup is in sync, a grant or renewal is answered only once the backup has
//! acknowledged its change. When the backup stops acknowledging, the driver first takes it
//! out of the in-sync set in etcd, then calls [`Feed::out_of_sync`]: every waiting answer is
//! released, and from then on answers wait for nothing until a snapshot brings the backup
//! back ([`Feed::snapshot_sent`], then [`Feed::in_sync`] for that snapshot's generation once
//! etcd names the backup: an older snapshot's acknowledgement cannot put a feed in sync whose
//! stream restarted since).

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

use super::replica::Change;

/// The replication state of one shard at its owner.
#[derive(Debug)]
pub(super) struct Feed {
    epoch: u64,
    /// The number the next recorded change gets.
    next_seq: u64,
    /// Changes recorded and not yet acknowledged, oldest first, with their numbers.
    unacked: VecDeque<(u64, Change)>,
    /// The first change not sent yet.
    send_from: u64,
    /// The number of the last change of each lease (by fence) not yet acknowledged.
    last_change: HashMap<u64, u64>,
    /// Answers waiting for an acknowledgement, by the change's number.
    waiting: Vec<(u64, oneshot::Sender<()>)>,
    /// A snapshot was sent: changes since are kept and streamed.
    streaming: bool,
    /// Snapshots sent in this term.
    generation: u64,
    in_sync: bool,
    /// The takeover grace the owner serves the shard under (a snapshot carries it).
    grace_until: Option<std::time::Instant>,
}

impl Feed {
    /// The feed of a shard claimed in term `epoch`, served in a grace until `grace_until`
    /// (if any): no backup in sync yet.
    pub fn new(epoch: u64, grace_until: Option<std::time::Instant>) -> Feed {
        Feed {
            epoch,
            next_seq: 1,
            unacked: VecDeque::new(),
            send_from: 1,
            last_change: HashMap::new(),
            waiting: Vec::new(),
            streaming: false,
            generation: 0,
            in_sync: false,
            grace_until,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The grace the shard is served under here.
    pub fn grace_until(&self) -> Option<std::time::Instant> {
        self.grace_until
    }

    /// Records a change of the shard's table (under the table lock, in table order); returns
    /// its number.
    pub fn record(&mut self, change: Change) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.streaming {
            // No backup follows: the next snapshot will carry it.
            self.send_from = self.next_seq;
            return seq;
        }
        match &change {
            Change::Acquired { fence, .. } | Change::Extended { fence, .. } => {
                self.last_change.insert(*fence, seq);
            }
            Change::Ended { fence, .. } => {
                self.last_change.remove(fence);
            }
        }
        self.unacked.push_back((seq, change));
        seq
    }

    /// What the answer for lease `fence`'s latest change (its grant or renewal) must wait
    /// for: `None` when nothing (no backup in sync, or already acknowledged).
    pub fn wait_for(&mut self, fence: u64) -> Option<oneshot::Receiver<()>> {
        if !self.in_sync {
            return None;
        }
        let seq = *self.last_change.get(&fence)?;
        let (tx, rx) = oneshot::channel();
        self.waiting.push((seq, tx));
        Some(rx)
    }

    /// Up to `max` changes not sent yet: the number of the first, and the changes.
    pub fn next_batch(&mut self, max: usize) -> Option<(u64, Vec<Change>)> {
        let first = self.send_from;
        let skip = self
            .unacked
            .iter()
            .take_while(|(seq, _)| *seq < first)
            .count();
        let batch: Vec<Change> = self
            .unacked
            .iter()
            .skip(skip)
            .take(max)
            .map(|(_, c)| c.clone())
            .collect();
        if batch.is_empty() {
            return None;
        }
        self.send_from = first + batch.len() as u64;
        Some((first, batch))
    }

    /// The backup acknowledged every change before `next_seq`: their answers go out.
    pub fn acked(&mut self, next_seq: u64) {
        let next_seq = next_seq.min(self.send_from);
        while self.unacked.front().is_some_and(|(seq, _)| *seq < next_seq) {
            if let Some((seq, change)) = self.unacked.pop_front() {
                if let Change::Acquired { fence, .. } | Change::Extended { fence, .. } = change {
                    if self.last_change.get(&fence) == Some(&seq) {
                        self.last_change.remove(&fence);
                    }
                }
            }
        }
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(seq, _)| *seq < next_seq);
        self.waiting = still;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// The backup was sent a snapshot of the table as of now (taken under the table lock,
    /// with this call): it holds every change so far, which the snapshot's acknowledgement
    /// confirms. Returns the next change's number (the snapshot's `next_seq`) and the
    /// snapshot's generation.
    pub fn snapshot_sent(&mut self) -> (u64, u64) {
        self.unacked.clear();
        self.last_change.clear();
        self.send_from = self.next_seq;
        self.streaming = true;
        self.generation += 1;
        (self.next_seq, self.generation)
    }

    /// Whether changes are streamed (a snapshot was sent and the stream not restarted).
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// The backup refused the stream: the next snapshot starts it again.
    pub fn restart(&mut self) {
        self.streaming = false;
    }

    /// etcd names the backup in sync after it acknowledged snapshot `generation`: answers
    /// wait for it from now on — unless the stream restarted since (then nothing changes;
    /// the newer snapshot's acknowledgement will do it).
    pub fn in_sync(&mut self, generation: u64) {
        if self.streaming && generation == self.generation {
            self.in_sync = true;
        }
    }

    /// etcd no longer names the backup in sync: nothing waits for it any more (the stream
    /// itself goes on; a snapshot restarts it when needed).
    pub fn out_of_sync(&mut self) {
        self.in_sync = false;
        for (_, tx) in std::mem::take(&mut self.waiting) {
            let _ = tx.send(());
        }
    }

    /// Whether etcd names a backup in sync for this feed.
    pub fn is_in_sync(&self) -> bool {
        self.in_sync
    }

    /// Changes recorded and not acknowledged (the replication lag, in changes).
    pub fn lag(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::table::Mode;

    fn acquired(fence: u64) -> Change {
        Change::Acquired {
            key: Bytes::from(format!("k{fence}")),
            fence,
            mode: Mode::Exclusive,
            left: Duration::from_secs(5),
        }
    }

    #[test]
    fn an_answer_waits_for_the_acknowledgement_of_its_change_while_in_sync() {
        let mut f = Feed::new(7, None);
        // Not in sync: nothing waits.
        f.record(acquired(1));
        assert!(f.wait_for(1).is_none());
        let (_, generation) = f.snapshot_sent();
        f.acked(2);
        f.in_sync(generation);
        let seq = f.record(acquired(2));
        let mut rx = f.wait_for(2).expect("waits for the backup");
        assert_eq!(f.next_batch(16), Some((seq, vec![acquired(2)])));
        assert!(f.next_batch(16).is_none(), "sent once");
        assert!(rx.try_recv().is_err(), "not acknowledged yet");
        f.acked(seq + 1);
        assert!(rx.try_recv().is_ok());
        assert_eq!(f.lag(), 0);
    }

    #[test]
    fn an_acknowledgement_releases_only_what_it_covers_and_only_what_was_sent() {
        let mut f = Feed::new(7, None);
        let (_, generation) = f.snapshot_sent();
        f.in_sync(generation);
        let a = f.record(acquired(1));
        let mut ra = f.wait_for(1).expect("waits");
        f.next_batch(1);
        let _b = f.record(acquired(2));
        let mut rb = f.wait_for(2).expect("waits");
        // An acknowledgement past what was sent covers only what was sent.
        f.acked(a + 5);
        assert!(ra.try_recv().is_ok());
        assert!(rb.try_recv().is_err());
        assert_eq!(f.lag(), 1);
    }

    #[test]
    fn taking_the_backup_out_of_sync_releases_every_waiting_answer() {
        let mut f = Feed::new(7, None);
        let (_, generation) = f.snapshot_sent();
        f.in_sync(generation);
        f.record(acquired(1));
        let mut rx = f.wait_for(1).expect("waits");
        f.out_of_sync();
        assert!(rx.try_recv().is_ok());
        assert!(!f.is_in_sync());
        f.record(acquired(2));
        assert!(f.wait_for(2).is_none(), "nothing waits out of sync");
    }

    #[test]
    fn only_the_latest_snapshot_puts_a_feed_in_sync() {
        let mut f = Feed::new(7, None);
        let (_, first) = f.snapshot_sent();
        f.restart();
        let (_, second) = f.snapshot_sent();
        f.in_sync(first);
        assert!(!f.is_in_sync(), "an older snapshot's acknowledgement");
        f.restart();
        f.in_sync(second);
        assert!(!f.is_in_sync(), "a restarted stream");
        let (_, third) = f.snapshot_sent();
        f.in_sync(third);
        assert!(f.is_in_sync());
    }
}
