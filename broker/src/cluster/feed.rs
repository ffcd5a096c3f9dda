//! The owner's side of one shard's replication (issue 24; protocol: `tests/src/replica_model.rs`):
//! the changes of the shard's table, numbered in order within the owner's term, kept until
//! the backup acknowledges them, and the answers that wait for those acknowledgements.
//! Sans-I/O: the grant gate records changes under the table lock and asks for a wait per
//! grant or renewal; the link takes batches to send and reports acknowledgements.
//!
//! The rule that keeps a takeover from the replica safe: **while etcd may name the backup in
//! sync for this term, no grant or renewal is answered before the backup acknowledged it**
//! (or a snapshot that contains it). The driver marks the feed *named* before its transaction
//! that names the backup ([`Feed::naming`]) and unmarks it only after the transaction that
//! removes the name succeeded ([`Feed::out_of_sync`], which releases the waiting answers).
//! Naming is refused for a snapshot older than the feed's latest (its stream restarted since:
//! the backup no longer follows it).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tokio::sync::oneshot;

use super::replica::Change;

/// The replication state of one shard at its owner.
#[derive(Debug)]
pub(super) struct Feed {
    epoch: u64,
    /// The number the next recorded change gets.
    next_seq: u64,
    /// Every change before this is acknowledged (or in an acknowledged snapshot).
    acked_upto: u64,
    /// Changes recorded since the latest snapshot and not yet acknowledged, oldest first.
    unacked: VecDeque<(u64, Change)>,
    /// The first change not sent yet.
    send_from: u64,
    /// The number of the latest change of each live lease (by fence).
    last_change: HashMap<u64, u64>,
    /// Answers waiting for an acknowledgement, by the change's number.
    waiting: Vec<(u64, oneshot::Sender<()>)>,
    /// A snapshot was sent and the stream not restarted since: changes are kept and sent.
    streaming: bool,
    /// Snapshots sent in this term.
    generation: u64,
    /// etcd may name the backup in sync for this term.
    named: bool,
    /// The backup the latest snapshot went to: only its link sends and acknowledges.
    backup: Option<String>,
    /// The takeover grace the owner serves the shard under (a snapshot carries it).
    grace_until: Option<Instant>,
}

impl Feed {
    /// The feed of a shard claimed in term `epoch`, served in a grace until `grace_until`
    /// (if any): no backup named yet.
    pub fn new(epoch: u64, grace_until: Option<Instant>) -> Feed {
        Feed {
            epoch,
            next_seq: 1,
            acked_upto: 1,
            unacked: VecDeque::new(),
            send_from: 1,
            last_change: HashMap::new(),
            waiting: Vec::new(),
            streaming: false,
            generation: 0,
            named: false,
            backup: None,
            grace_until,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The grace the shard is served under here.
    pub fn grace_until(&self) -> Option<Instant> {
        self.grace_until
    }

    /// Records a change of the shard's table (under the table lock, in table order); returns
    /// its number. Kept for sending only while streaming (else the next snapshot carries it).
    pub fn record(&mut self, change: Change) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        match &change {
            Change::Acquired { fence, .. } | Change::Extended { fence, .. } => {
                self.last_change.insert(*fence, seq);
            }
            Change::Ended { fence, .. } => {
                self.last_change.remove(fence);
            }
        }
        if self.streaming {
            self.unacked.push_back((seq, change));
        } else {
            self.send_from = self.next_seq;
        }
        seq
    }

    /// What the answer for lease `fence`'s latest change (its grant or renewal) must wait
    /// for: `None` when nothing (no backup named, or already acknowledged).
    pub fn wait_for(&mut self, fence: u64) -> Option<oneshot::Receiver<()>> {
        if !self.named {
            return None;
        }
        let seq = *self.last_change.get(&fence)?;
        if seq < self.acked_upto {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.push((seq, tx));
        Some(rx)
    }

    /// Up to `max` changes not sent yet to `backup` (the latest snapshot's): the number of
    /// the first, and the changes.
    pub fn next_batch(&mut self, backup: &str, max: usize) -> Option<(u64, Vec<Change>)> {
        if self.backup.as_deref() != Some(backup) {
            return None;
        }
        let first = self.send_from;
        let batch: Vec<Change> = self
            .unacked
            .iter()
            .skip_while(|(seq, _)| *seq < first)
            .take(max)
            .map(|(_, c)| c.clone())
            .collect();
        if batch.is_empty() {
            return None;
        }
        self.send_from = first + batch.len() as u64;
        Some((first, batch))
    }

    /// `backup` acknowledged every change before `next_seq` (never more than was sent): their
    /// answers go out. Another backup's acknowledgement (the shard's backup changed) counts
    /// for nothing.
    pub fn acked(&mut self, backup: &str, next_seq: u64) {
        if self.backup.as_deref() != Some(backup) {
            return;
        }
        let next_seq = next_seq.min(self.send_from);
        self.acked_upto = self.acked_upto.max(next_seq);
        while self.unacked.front().is_some_and(|(seq, _)| *seq < next_seq) {
            self.unacked.pop_front();
        }
        self.release(|seq| seq < next_seq);
    }

    /// `backup` is sent a snapshot of the table as of now (taken under the table lock, with
    /// this call): its acknowledgement covers every change so far. Returns the next change's
    /// number (the snapshot's `next_seq`) and the snapshot's generation.
    pub fn snapshot_sent(&mut self, backup: &str) -> (u64, u64) {
        self.backup = Some(backup.to_string());
        self.unacked.clear();
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

    /// The driver is about to name the backup in sync, after it acknowledged snapshot
    /// `generation`: from now on answers wait for it. False (and nothing changes) when the
    /// stream restarted since that snapshot.
    pub fn naming(&mut self, generation: u64) -> bool {
        if self.streaming && generation == self.generation {
            self.named = true;
        }
        self.named && generation == self.generation
    }

    /// etcd no longer names the backup (the removal succeeded): nothing waits for it any
    /// more; the stream itself goes on.
    pub fn out_of_sync(&mut self) {
        self.named = false;
        self.release(|_| true);
    }

    /// Whether etcd may name a backup in sync for this feed.
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// Changes recorded and not acknowledged (the replication lag, in changes).
    pub fn lag(&self) -> usize {
        self.unacked.len()
    }

    /// Whether answers wait for an acknowledgement.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    fn release(&mut self, done: impl Fn(u64) -> bool) {
        let (go, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(seq, _)| done(*seq));
        self.waiting = stay;
        for (_, tx) in go {
            let _ = tx.send(());
        }
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

    /// A feed whose backup acknowledged a snapshot and is named.
    fn named() -> Feed {
        let mut f = Feed::new(7, None);
        let (next, generation) = f.snapshot_sent("b2");
        f.acked("b2", next);
        assert!(f.naming(generation));
        f
    }

    #[test]
    fn an_answer_waits_for_the_acknowledgement_of_its_change_while_named() {
        let mut f = Feed::new(7, None);
        // No backup named: nothing waits.
        f.record(acquired(1));
        assert!(f.wait_for(1).is_none());
        let mut f = named();
        let seq = f.record(acquired(2));
        let mut rx = f.wait_for(2).expect("waits for the backup");
        assert_eq!(f.next_batch("b2", 16), Some((seq, vec![acquired(2)])));
        assert!(f.next_batch("b2", 16).is_none(), "sent once");
        assert!(rx.try_recv().is_err(), "not acknowledged yet");
        f.acked("b2", seq + 1);
        assert!(rx.try_recv().is_ok());
        assert_eq!(f.lag(), 0);
        assert!(f.wait_for(2).is_none(), "already acknowledged");
    }

    #[test]
    fn an_acknowledgement_releases_only_what_it_covers_and_only_what_was_sent() {
        let mut f = named();
        let a = f.record(acquired(1));
        let mut ra = f.wait_for(1).expect("waits");
        f.next_batch("b2", 1);
        f.record(acquired(2));
        let mut rb = f.wait_for(2).expect("waits");
        f.acked("b2", a + 5);
        assert!(ra.try_recv().is_ok());
        assert!(rb.try_recv().is_err(), "not sent, so not acknowledged");
        assert_eq!(f.lag(), 1);
    }

    #[test]
    fn a_named_feed_whose_stream_restarted_still_waits_until_the_name_is_removed() {
        let mut f = named();
        f.restart();
        // Not kept for sending (the next snapshot carries it), but etcd may still name the
        // backup: the answer waits.
        f.record(acquired(1));
        let mut rx = f.wait_for(1).expect("waits while named");
        assert!(f.next_batch("b2", 16).is_none());
        // A new snapshot's acknowledgement covers it.
        let (next, _) = f.snapshot_sent("b2");
        f.acked("b2", next);
        assert!(rx.try_recv().is_ok());
        // Or the removal of the name releases what waits.
        f.restart();
        f.record(acquired(2));
        let mut rx = f.wait_for(2).expect("waits while named");
        f.out_of_sync();
        assert!(rx.try_recv().is_ok());
        assert!(!f.is_named());
        f.record(acquired(3));
        assert!(
            f.wait_for(3).is_none(),
            "nothing waits once the name is removed"
        );
    }

    #[test]
    fn only_the_latest_snapshot_may_name_the_backup() {
        let mut f = Feed::new(7, None);
        let (_, first) = f.snapshot_sent("b2");
        f.restart();
        let (_, second) = f.snapshot_sent("b2");
        assert!(!f.naming(first), "an older snapshot's acknowledgement");
        assert!(!f.is_named());
        f.restart();
        assert!(!f.naming(second), "a restarted stream");
        let (_, third) = f.snapshot_sent("b2");
        assert!(f.naming(third));
        assert!(f.is_named());
    }

    #[test]
    fn only_the_latest_snapshots_backup_is_sent_changes_and_counts_its_acknowledgements() {
        let mut f = named();
        let seq = f.record(acquired(1));
        let mut rx = f.wait_for(1).expect("waits");
        // The shard's backup moves to b3: the old link neither takes nor acknowledges.
        f.restart();
        let (next, _) = f.snapshot_sent("b3");
        assert!(f.next_batch("b2", 16).is_none());
        f.acked("b2", next);
        assert!(
            rx.try_recv().is_err(),
            "b2's acknowledgement counts for nothing"
        );
        f.acked("b3", next);
        assert!(rx.try_recv().is_ok());
        assert!(seq < next);
    }
}
