//! The broker-to-broker replication link's messages (issue 24): an owner streams its shards'
//! changes to their backup, the backup acknowledges. Pure functions.
//!
//! Each message is a frame: its length (u32, the tag and body), a tag (u8), the body; all
//! integers big-endian, byte strings as a u32 length and the bytes. A frame is at most
//! [`MAX_FRAME`] bytes: a snapshot larger than that is not sent (the backup stays out of
//! sync, and the shard's next owner after a crash waits the grace, as without replicas).
//!
//! * `Hello` (0): the sender's member name and its proof that it holds the cluster key (an
//!   HMAC over the TLS session's exporter, so it cannot be replayed on another connection).
//! * `Snapshot` (1): shard, owner's term, the next change's number, and a hand-over record
//!   (`handover.rs`) of the shard's leases and grace.
//! * `Changes` (2): shard, term, the first change's number, the changes.
//! * `Ack` (3): shard, term, the next change expected (every earlier one is applied).
//! * `Refused` (4): shard, term, why (the owner must send a snapshot again).

use std::time::Duration;

use bytes::Bytes;

use super::handover::{self, Handover};
use super::replica::Change;
use crate::broker::wire::millis;
use crate::table::Mode;

/// Largest frame sent or accepted.
pub(super) const MAX_FRAME: usize = 2 << 20;

/// One message of the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PeerMsg {
    Hello {
        name: String,
        proof: Vec<u8>,
    },
    Snapshot {
        shard: u32,
        epoch: u64,
        next_seq: u64,
        record: Handover,
    },
    Changes {
        shard: u32,
        epoch: u64,
        seq: u64,
        changes: Vec<Change>,
    },
    Ack {
        shard: u32,
        epoch: u64,
        next_seq: u64,
    },
    Refused {
        shard: u32,
        epoch: u64,
        why: String,
    },
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum WireError {
    #[error("a frame of {0} bytes, more than the link allows")]
    TooLarge(usize),
    #[error("a malformed frame")]
    Malformed,
}

/// The frame of `msg`; `None` when it would pass [`MAX_FRAME`].
pub(super) fn encode(msg: &PeerMsg) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let tag = match msg {
        PeerMsg::Hello { name, proof } => {
            put_bytes(&mut body, name.as_bytes())?;
            put_bytes(&mut body, proof)?;
            0
        }
        PeerMsg::Snapshot {
            shard,
            epoch,
            next_seq,
            record,
        } => {
            put_head(&mut body, *shard, *epoch, *next_seq);
            body.extend_from_slice(&handover::encode(record)?);
            1
        }
        PeerMsg::Changes {
            shard,
            epoch,
            seq,
            changes,
        } => {
            put_head(&mut body, *shard, *epoch, *seq);
            body.extend_from_slice(&u32::try_from(changes.len()).ok()?.to_be_bytes());
            for c in changes {
                put_change(&mut body, c)?;
            }
            2
        }
        PeerMsg::Ack {
            shard,
            epoch,
            next_seq,
        } => {
            put_head(&mut body, *shard, *epoch, *next_seq);
            3
        }
        PeerMsg::Refused { shard, epoch, why } => {
            put_head(&mut body, *shard, *epoch, 0);
            put_bytes(&mut body, why.as_bytes())?;
            4
        }
    };
    let len = body.len() + 1;
    if len + 4 > MAX_FRAME {
        return None;
    }
    let mut out = Vec::with_capacity(len + 4);
    out.extend_from_slice(&u32::try_from(len).ok()?.to_be_bytes());
    out.push(tag);
    out.extend_from_slice(&body);
    Some(out)
}

/// The length of the frame that starts `prefix` (its first 4 bytes), checked against
/// [`MAX_FRAME`]: how many bytes to read after them.
pub(super) fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len + 4 > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if len == 0 {
        return Err(WireError::Malformed);
    }
    Ok(len)
}

/// The message in `frame` (what follows the length: tag and body).
pub(super) fn decode(frame: &[u8]) -> Result<PeerMsg, WireError> {
    let (&tag, body) = frame.split_first().ok_or(WireError::Malformed)?;
    let mut r = Reader(body);
    let msg = match tag {
        0 => PeerMsg::Hello {
            name: r.string()?,
            proof: r.bytes()?.to_vec(),
        },
        1 => {
            let (shard, epoch, next_seq) = r.head()?;
            let record = handover::decode(r.rest()).ok_or(WireError::Malformed)?;
            PeerMsg::Snapshot {
                shard,
                epoch,
                next_seq,
                record,
            }
        }
        2 => {
            let (shard, epoch, seq) = r.head()?;
            let count = r.u32()? as usize;
            // Each change takes at least 13 bytes: a count beyond that is a lie.
            let mut changes = Vec::with_capacity(count.min(body.len() / 13));
            for _ in 0..count {
                changes.push(r.change()?);
            }
            PeerMsg::Changes {
                shard,
                epoch,
                seq,
                changes,
            }
        }
        3 => {
            let (shard, epoch, next_seq) = r.head()?;
            PeerMsg::Ack {
                shard,
                epoch,
                next_seq,
            }
        }
        4 => {
            let (shard, epoch, _) = r.head()?;
            PeerMsg::Refused {
                shard,
                epoch,
                why: r.string()?,
            }
        }
        _ => return Err(WireError::Malformed),
    };
    if r.0.is_empty() {
        Ok(msg)
    } else {
        Err(WireError::Malformed)
    }
}

fn put_head(out: &mut Vec<u8>, shard: u32, epoch: u64, seq: u64) {
    out.extend_from_slice(&shard.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(b.len()).ok()?.to_be_bytes());
    out.extend_from_slice(b);
    Some(())
}

fn put_change(out: &mut Vec<u8>, c: &Change) -> Option<()> {
    match c {
        Change::Acquired {
            key,
            fence,
            mode,
            left,
        } => {
            out.push(0);
            put_bytes(out, key)?;
            out.extend_from_slice(&fence.to_be_bytes());
            match mode {
                Mode::Exclusive => out.push(0),
                Mode::Shared => out.push(1),
                Mode::Semaphore(n) => {
                    out.push(2);
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
            out.extend_from_slice(&millis(*left).to_be_bytes());
        }
        Change::Extended { key, fence, left } => {
            out.push(1);
            put_bytes(out, key)?;
            out.extend_from_slice(&fence.to_be_bytes());
            out.extend_from_slice(&millis(*left).to_be_bytes());
        }
        Change::Ended { key, fence } => {
            out.push(2);
            put_bytes(out, key)?;
            out.extend_from_slice(&fence.to_be_bytes());
        }
    }
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| WireError::Malformed)
    }

    fn head(&mut self) -> Result<(u32, u64, u64), WireError> {
        Ok((self.u32()?, self.u64()?, self.u64()?))
    }

    fn change(&mut self) -> Result<Change, WireError> {
        let tag = self.u8()?;
        let key = Bytes::copy_from_slice(self.bytes()?);
        let fence = self.u64()?;
        Ok(match tag {
            0 => {
                let mode = match self.u8()? {
                    0 => Mode::Exclusive,
                    1 => Mode::Shared,
                    2 => Mode::Semaphore(self.u32()?),
                    _ => return Err(WireError::Malformed),
                };
                let left = Duration::from_millis(self.u64()?);
                Change::Acquired {
                    key,
                    fence,
                    mode,
                    left,
                }
            }
            1 => Change::Extended {
                key,
                fence,
                left: Duration::from_millis(self.u64()?),
            },
            2 => Change::Ended { key, fence },
            _ => return Err(WireError::Malformed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::handover::HandedLease;

    fn roundtrip(msg: PeerMsg) {
        let frame = encode(&msg).expect("fits");
        let len = frame_len([frame[0], frame[1], frame[2], frame[3]]).expect("length");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]), Ok(msg));
    }

    #[test]
    fn every_message_reads_back_as_written() {
        roundtrip(PeerMsg::Hello {
            name: "b2".into(),
            proof: vec![7; 32],
        });
        roundtrip(PeerMsg::Snapshot {
            shard: 3,
            epoch: 41,
            next_seq: 9,
            record: Handover {
                grace_left: Duration::from_millis(1500),
                leases: vec![HandedLease {
                    key: Bytes::from_static(b"job/1"),
                    fence: 0x29_0000_0001,
                    mode: Mode::Semaphore(4),
                    left: Duration::from_millis(2500),
                    owner: Bytes::from_static(b"worker-1"),
                }],
                queues: Vec::new(),
            },
        });
        roundtrip(PeerMsg::Changes {
            shard: 3,
            epoch: 41,
            seq: 9,
            changes: vec![
                Change::Acquired {
                    key: Bytes::from_static(b"a"),
                    fence: 5,
                    mode: Mode::Shared,
                    left: Duration::from_millis(30_000),
                },
                Change::Extended {
                    key: Bytes::from_static(b"a"),
                    fence: 5,
                    left: Duration::from_millis(30_000),
                },
                Change::Ended {
                    key: Bytes::from_static(b"a"),
                    fence: 5,
                },
            ],
        });
        roundtrip(PeerMsg::Ack {
            shard: 3,
            epoch: 41,
            next_seq: 12,
        });
        roundtrip(PeerMsg::Refused {
            shard: 3,
            epoch: 41,
            why: "change 12 arrived where 10 was expected".into(),
        });
    }

    #[test]
    fn bad_frames_are_errors_not_panics_or_allocations() {
        assert_eq!(
            frame_len(u32::MAX.to_be_bytes()),
            Err(WireError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(frame_len([0; 4]), Err(WireError::Malformed));
        assert_eq!(decode(&[]), Err(WireError::Malformed));
        assert_eq!(decode(&[9]), Err(WireError::Malformed));
        // A change count far past the bytes.
        let mut lie = vec![2];
        lie.extend_from_slice(&[0; 20]);
        lie.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&lie), Err(WireError::Malformed));
        // Trailing bytes.
        let mut frame = encode(&PeerMsg::Ack {
            shard: 1,
            epoch: 2,
            next_seq: 3,
        })
        .expect("fits");
        frame.push(0);
        assert_eq!(decode(&frame[4..]), Err(WireError::Malformed));
        // Every truncation of a valid frame.
        let frame = encode(&PeerMsg::Changes {
            shard: 1,
            epoch: 2,
            seq: 3,
            changes: vec![Change::Ended {
                key: Bytes::from_static(b"k"),
                fence: 1,
            }],
        })
        .expect("fits");
        for n in 4..frame.len() {
            assert!(decode(&frame[4..n]).is_err(), "truncated at {n}");
        }
    }
}
