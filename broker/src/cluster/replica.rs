//! A backup's replica of one shard another broker owns (issue 24, replicated shards; the
//! protocol is model-checked in `tests/src/replica_model.rs`). Sans-I/O: the link that
//! carries the owner's stream calls it.
//!
//! The owner starts a replica with a snapshot of the shard — a [`Handover`] record: every
//! lease with its time left, and the grace still running at the owner — then streams every
//! change of the shard's table in order, numbered within the owner's term (its claim's etcd
//! revision). The replica applies a change only in sequence: a gap, another term or a change
//! of a lease it does not know is an error, after which the owner must send a snapshot again
//! (and the backup is not in sync meanwhile). A lease's deadline here is the receipt plus the
//! time left the owner sent, so it never ends before the owner's does.
//!
//! A backup that takes the shard over loads [`Replica::into_handover`] exactly as a hand-over
//! record (`driver.rs::take_over`): its leases as orphans their holders renew, its grace left.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::handover::{HandedLease, Handover};
use crate::table::Mode;

/// One change of the owner's table, as streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// A lease started (granted, or adopted during a grace).
    Acquired {
        key: Bytes,
        fence: u64,
        mode: Mode,
        left: Duration,
    },
    /// A lease was renewed: `left` from the owner's renewal.
    Extended {
        key: Bytes,
        fence: u64,
        left: Duration,
    },
    /// A lease ended (released, expired, revoked).
    Ended { key: Bytes, fence: u64 },
}

/// Why a replica refused a change: it must be sent a snapshot again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ReplicaError {
    #[error("change {got} of the owner's stream arrived where {want} was expected")]
    Gap { got: u64, want: u64 },
    #[error("a change of the owner's term {got}, but the replica follows term {want}")]
    Term { got: u64, want: u64 },
    #[error("a renewal of a lease the replica does not have (fence {fence:#x})")]
    Unknown { fence: u64 },
}

#[derive(Clone, Debug)]
struct Held {
    mode: Mode,
    deadline: Instant,
    owner: Bytes,
}

/// The leases of one shard as its owner streamed them.
#[derive(Debug)]
pub(super) struct Replica {
    epoch: u64,
    next_seq: u64,
    grace_until: Option<Instant>,
    leases: HashMap<(Bytes, u64), Held>,
}

impl Replica {
    /// A replica of the owner's term `epoch` from its snapshot, received at `now`; the next
    /// change expected is `next_seq`.
    pub fn from_snapshot(epoch: u64, next_seq: u64, snapshot: Handover, now: Instant) -> Replica {
        let grace_until = (!snapshot.grace_left.is_zero()).then(|| now + snapshot.grace_left);
        let leases = snapshot
            .leases
            .into_iter()
            .map(|l| {
                let held = Held {
                    mode: l.mode,
                    deadline: now + l.left,
                    owner: l.owner,
                };
                ((l.key, l.fence), held)
            })
            .collect();
        Replica {
            epoch,
            next_seq,
            grace_until,
            leases,
        }
    }

    /// The owner's term this replica follows.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Leases held (expired ones included until [`Replica::expire`]).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Applies `changes`, numbered from `seq` in the owner's term `epoch`, received at `now`.
    /// Returns the next change expected: everything before it is acknowledged. A batch that
    /// repeats changes already applied (a resend) applies only the new ones.
    pub fn apply(
        &mut self,
        epoch: u64,
        seq: u64,
        changes: &[Change],
        now: Instant,
    ) -> Result<u64, ReplicaError> {
        if epoch != self.epoch {
            return Err(ReplicaError::Term {
                got: epoch,
                want: self.epoch,
            });
        }
        if seq > self.next_seq {
            return Err(ReplicaError::Gap {
                got: seq,
                want: self.next_seq,
            });
        }
        let skip = usize::try_from(self.next_seq - seq).unwrap_or(usize::MAX);
        for change in changes.iter().skip(skip) {
            match change {
                Change::Acquired {
                    key,
                    fence,
                    mode,
                    left,
                } => {
                    let held = Held {
                        mode: *mode,
                        deadline: now + *left,
                        owner: Bytes::new(),
                    };
                    self.leases.insert((key.clone(), *fence), held);
                }
                Change::Extended { key, fence, left } => {
                    let Some(held) = self.leases.get_mut(&(key.clone(), *fence)) else {
                        return Err(ReplicaError::Unknown { fence: *fence });
                    };
                    // Never earlier than before: a renewal only moves a deadline on.
                    held.deadline = held.deadline.max(now + *left);
                }
                Change::Ended { key, fence } => {
                    self.leases.remove(&(key.clone(), *fence));
                }
            }
            self.next_seq += 1;
        }
        Ok(self.next_seq)
    }

    /// Drops the leases that ended by `now`.
    pub fn expire(&mut self, now: Instant) {
        self.leases.retain(|_, h| h.deadline > now);
    }

    /// What a takeover at `now` loads: the live leases with their time left, and the grace
    /// left of the old owner.
    pub fn into_handover(self, now: Instant) -> Handover {
        let grace_left = self
            .grace_until
            .map_or(Duration::ZERO, |g| g.saturating_duration_since(now));
        let mut leases: Vec<HandedLease> = self
            .leases
            .into_iter()
            .filter(|(_, h)| h.deadline > now)
            .map(|((key, fence), h)| HandedLease {
                key,
                fence,
                mode: h.mode,
                left: h.deadline - now,
                owner: h.owner,
            })
            .collect();
        leases.sort_by_key(|l| l.fence);
        Handover {
            grace_left,
            leases,
            queues: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(key: &str, fence: u64, secs: u64) -> Change {
        Change::Acquired {
            key: Bytes::from(key.to_string()),
            fence,
            mode: Mode::Exclusive,
            left: Duration::from_secs(secs),
        }
    }

    fn snapshot(grace_left: Duration, leases: &[(&str, u64, u64)]) -> Handover {
        Handover {
            grace_left,
            leases: leases
                .iter()
                .map(|(k, f, secs)| HandedLease {
                    key: Bytes::from(k.to_string()),
                    fence: *f,
                    mode: Mode::Exclusive,
                    left: Duration::from_secs(*secs),
                    owner: Bytes::from_static(b"job-7"),
                })
                .collect(),
            queues: Vec::new(),
        }
    }

    #[test]
    fn a_takeover_gets_the_snapshot_and_every_change_after_it() {
        let t0 = Instant::now();
        let mut r = Replica::from_snapshot(9, 1, snapshot(Duration::ZERO, &[("a", 10, 5)]), t0);
        assert_eq!(r.apply(9, 1, &[acquired("b", 11, 5)], t0), Ok(2));
        let renew = Change::Extended {
            key: Bytes::from_static(b"a"),
            fence: 10,
            left: Duration::from_secs(8),
        };
        let end_b = Change::Ended {
            key: Bytes::from_static(b"b"),
            fence: 11,
        };
        assert_eq!(
            r.apply(9, 2, &[renew, end_b, acquired("c", 12, 1)], t0),
            Ok(5)
        );
        let h = r.into_handover(t0 + Duration::from_secs(2));
        assert_eq!(h.grace_left, Duration::ZERO);
        // a renewed (6 s left), b ended, c expired; a keeps its label.
        assert_eq!(h.leases.len(), 1);
        assert_eq!(h.leases[0].fence, 10);
        assert_eq!(h.leases[0].left, Duration::from_secs(6));
        assert_eq!(h.leases[0].owner, Bytes::from_static(b"job-7"));
    }

    #[test]
    fn gaps_other_terms_and_unknown_renewals_are_refused_and_resends_applied_once() {
        let t0 = Instant::now();
        let mut r = Replica::from_snapshot(9, 1, snapshot(Duration::from_secs(3), &[]), t0);
        assert_eq!(
            r.apply(9, 3, &[acquired("a", 10, 5)], t0),
            Err(ReplicaError::Gap { got: 3, want: 1 })
        );
        assert_eq!(
            r.apply(8, 1, &[acquired("a", 10, 5)], t0),
            Err(ReplicaError::Term { got: 8, want: 9 })
        );
        let unknown = Change::Extended {
            key: Bytes::from_static(b"x"),
            fence: 99,
            left: Duration::from_secs(1),
        };
        assert_eq!(
            r.apply(9, 1, &[unknown], t0),
            Err(ReplicaError::Unknown { fence: 99 })
        );
        assert_eq!(r.apply(9, 1, &[acquired("a", 10, 5)], t0), Ok(2));
        // The same batch again, plus one more: only the new change counts.
        let again = [acquired("a", 10, 5), acquired("b", 11, 5)];
        assert_eq!(r.apply(9, 1, &again, t0), Ok(3));
        assert_eq!(r.len(), 2);
        // The old owner's grace travels with the replica.
        let h = r.into_handover(t0 + Duration::from_secs(1));
        assert_eq!(h.grace_left, Duration::from_secs(2));
    }

    #[test]
    fn deadlines_count_from_the_receipt_and_never_move_back() {
        let t0 = Instant::now();
        let mut r = Replica::from_snapshot(1, 1, snapshot(Duration::ZERO, &[]), t0);
        let later = t0 + Duration::from_secs(1);
        r.apply(1, 1, &[acquired("a", 5, 4)], later).ok();
        let shorter = Change::Extended {
            key: Bytes::from_static(b"a"),
            fence: 5,
            left: Duration::from_secs(1),
        };
        r.apply(1, 2, &[shorter], later).ok();
        r.expire(t0 + Duration::from_secs(4));
        assert_eq!(r.len(), 1, "ends 4 s after its receipt, not after t0");
        r.expire(t0 + Duration::from_secs(5));
        assert_eq!(r.len(), 0);
    }
}
