//! Planned hand-over of a shard: the lease record the old owner leaves in etcd for the new one.
//!
//! When a broker gives a shard up on purpose (it leaves at SIGTERM, or a member that joined is
//! preferred for the shard), it first stops serving the shard (no grant or renewal is answered
//! for it from then on), then ends every lease of the shard in its table and writes what they
//! were — key, fence, mode, time left, owner label — to `handover/<shard>`, in the same etcd transaction
//! that deletes its ownership key (guarded by its lease: only the owner can). The next owner
//! reads and deletes the record in the transaction that claims the shard, loads the leases as
//! orphans (each with a deadline of *its* receipt plus the time left, never earlier than the
//! lease really ends) and serves the shard at once: every lease the old owner could still
//! answer for is in its table, so no grace is needed. Holders, told `Moved`, take their leases
//! over at the new owner with the lease secrets they have.
//!
//! A record is used only if it was written after the last claim of the shard (its etcd
//! `mod_revision` above that of `owned/<shard>`): a record nobody consumed — written for a
//! broker that claimed without reading it — cannot vouch for a later owner's leases. A shard
//! whose record would pass [`MAX_RECORD_BYTES`] is handed over without one (the new owner
//! waits the grace, as after a crash). A grace still running at the old owner (earlier
//! owners' leases it did not know) is carried over as its time left.
//!
//! The record is binary: `LBH1`, the grace left (ms, u64), the lease count (u32), then per
//! lease the key (u32 length + bytes), fence (u64), mode (u8: 0 exclusive, 1 shared, 2
//! semaphore + its size as u32), time left (ms, u64) and owner label (u32 length + bytes),
//! all big-endian. `LBH2` (written when acquires were waiting) adds the keys' queues: their
//! count (u32), then per key the key (u32 length + bytes), the ticket count (u32) and the
//! tickets (u64 each) in queue order — the places the next owner keeps for the acquires that
//! waited here (`lockbroker_core`'s `requeue.rs`). Pure functions.
//!
//! The lease's principal is not in the record: the holder's lease secret binds it (and the
//! mode), so only that principal can take the lease over at the new owner.

use std::time::Duration;

use bytes::Bytes;

use crate::broker::wire::millis;
use crate::table::Mode;

/// Largest record written (etcd refuses requests above 1.5 MiB by default).
pub(super) const MAX_RECORD_BYTES: usize = 1 << 20;

const MAGIC: &[u8; 4] = b"LBH1";
/// A record with waiting acquires' queues.
const MAGIC_QUEUES: &[u8; 4] = b"LBH2";

/// One lease carried to the shard's next owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HandedLease {
    pub key: Bytes,
    pub fence: u64,
    pub mode: Mode,
    /// How long it had left when the old owner ended it.
    pub left: Duration,
    /// Its owner label (empty: none).
    pub owner: Bytes,
}

/// What the old owner of a shard leaves its next owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Handover {
    /// The old owner's own takeover grace still running (zero: none).
    pub grace_left: Duration,
    pub leases: Vec<HandedLease>,
    /// Per key, the tickets of the acquires that waited there, in queue order.
    pub queues: Vec<(Bytes, Vec<u64>)>,
}

/// A ticket for a waiting acquire's place at the next owner: random, never 0.
pub(super) fn mint_ticket() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system's randomness failing is not something to go on without; a clock-derived
    // ticket is still unique here (only guessable, and it only orders a queue).
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    u64::from_be_bytes(bytes).max(1)
}

/// The record's bytes; `None` when it would pass [`MAX_RECORD_BYTES`].
pub(super) fn encode(h: &Handover) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(16 + h.leases.len() * 32);
    out.extend_from_slice(if h.queues.is_empty() {
        MAGIC
    } else {
        MAGIC_QUEUES
    });
    out.extend_from_slice(&millis(h.grace_left).to_be_bytes());
    out.extend_from_slice(&u32::try_from(h.leases.len()).ok()?.to_be_bytes());
    for l in &h.leases {
        out.extend_from_slice(&u32::try_from(l.key.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&l.key);
        out.extend_from_slice(&l.fence.to_be_bytes());
        match l.mode {
            Mode::Exclusive => out.push(0),
            Mode::Shared => out.push(1),
            Mode::Semaphore(n) => {
                out.push(2);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        out.extend_from_slice(&millis(l.left).to_be_bytes());
        out.extend_from_slice(&u32::try_from(l.owner.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&l.owner);
        if out.len() > MAX_RECORD_BYTES {
            return None;
        }
    }
    if !h.queues.is_empty() {
        out.extend_from_slice(&u32::try_from(h.queues.len()).ok()?.to_be_bytes());
        for (key, tickets) in &h.queues {
            out.extend_from_slice(&u32::try_from(key.len()).ok()?.to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&u32::try_from(tickets.len()).ok()?.to_be_bytes());
            for t in tickets {
                out.extend_from_slice(&t.to_be_bytes());
            }
            if out.len() > MAX_RECORD_BYTES {
                return None;
            }
        }
    }
    Some(out)
}

/// The record in `bytes`; `None` if it is not one (the claim then waits the grace).
pub(super) fn decode(bytes: &[u8]) -> Option<Handover> {
    let mut r = Reader(bytes);
    let with_queues = match r.take(4)? {
        m if m == MAGIC => false,
        m if m == MAGIC_QUEUES => true,
        _ => return None,
    };
    let grace_left = Duration::from_millis(r.u64()?);
    let count = r.u32()?;
    // Each lease takes at least 25 bytes: a count beyond that is a lie, not an allocation.
    let mut leases = Vec::with_capacity((count as usize).min(bytes.len() / 25));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let key = Bytes::copy_from_slice(r.take(len)?);
        let fence = r.u64()?;
        let mode = match r.take(1)?[0] {
            0 => Mode::Exclusive,
            1 => Mode::Shared,
            2 => Mode::Semaphore(r.u32()?),
            _ => return None,
        };
        let left = Duration::from_millis(r.u64()?);
        let len = r.u32()? as usize;
        let owner = Bytes::copy_from_slice(r.take(len)?);
        leases.push(HandedLease {
            key,
            fence,
            mode,
            left,
            owner,
        });
    }
    let mut queues = Vec::new();
    if with_queues {
        let count = r.u32()?;
        for _ in 0..count.min(bytes.len() as u32 / 8) {
            let len = r.u32()? as usize;
            let key = Bytes::copy_from_slice(r.take(len)?);
            let n = r.u32()? as usize;
            let mut tickets = Vec::with_capacity(n.min(r.0.len() / 8));
            for _ in 0..n {
                tickets.push(r.u64()?);
            }
            queues.push((key, tickets));
        }
        if queues.len() != count as usize {
            return None;
        }
    }
    r.0.is_empty().then_some(Handover {
        grace_left,
        leases,
        queues,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, fence: u64, mode: Mode, left_ms: u64) -> HandedLease {
        HandedLease {
            key: Bytes::copy_from_slice(key.as_bytes()),
            fence,
            mode,
            left: Duration::from_millis(left_ms),
            owner: Bytes::from_static(b"worker-7@host-3"),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let h = Handover {
            grace_left: Duration::from_millis(1500),
            leases: vec![
                lease("a", 7 << 32, Mode::Exclusive, 9000),
                lease("", 3, Mode::Shared, 1),
                lease("sem", 12, Mode::Semaphore(4), 0),
            ],
            queues: vec![
                (Bytes::from_static(b"a"), vec![5, u64::MAX, 1]),
                (Bytes::new(), vec![]),
            ],
        };
        let bytes = encode(&h).expect("small");
        assert_eq!(&bytes[..4], b"LBH2");
        assert_eq!(decode(&bytes), Some(h));
        assert_eq!(
            decode(&encode(&Handover::default()).expect("empty")),
            Some(Handover::default())
        );
    }

    #[test]
    fn anything_else_is_no_record() {
        let bytes = encode(&Handover {
            grace_left: Duration::ZERO,
            leases: vec![lease("a", 1, Mode::Semaphore(2), 5)],
            queues: vec![(Bytes::from_static(b"a"), vec![9, 8])],
        })
        .expect("small");
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let mut bad_mode = bytes.clone();
        bad_mode[4 + 8 + 4 + 4 + 1 + 8] = 9;
        assert_eq!(decode(&bad_mode), None);
        assert_eq!(decode(b"LBH1\0\0\0\0\0\0\0\0\xff\xff\xff\xff"), None);
        assert_eq!(decode(b"nope"), None);
    }

    #[test]
    fn a_record_past_the_limit_is_not_written() {
        let big = "k".repeat(1024);
        let h = Handover {
            grace_left: Duration::ZERO,
            leases: (0..1100)
                .map(|i| lease(&big, i, Mode::Exclusive, 1))
                .collect(),
            queues: Vec::new(),
        };
        assert_eq!(encode(&h), None);
    }
}
