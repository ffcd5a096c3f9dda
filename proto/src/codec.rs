//! Encoding and bounded decoding of frames.
//!
//! Layout: `len: u32 LE | version: u8 | kind: u8 | body`. `len` counts version, kind and body.
//! Bodies are the frame's fields in declaration order; `Option<T>` is a `u8` tag (0/1) then T;
//! `Mode` is a tag (0 exclusive, 1 shared, 2 semaphore + u32); `WaitSpec` is a tag (0 no wait,
//! 1 millis + u64, 2 forever); a `LeaseSecret` is its 16 bytes. A list is a `u32` count then
//! its items.
//!
//! `LockInfo` (since protocol version 3): `id: u64 | key | holders | holders_total: u32 |
//! waiters: u32 | blocked_ms: u64 | position: u32` (position since version 4), each holder
//! `session: u64 | fence: u64 | mode | remaining_ms: u64 | owner | cached: u8` (the owner
//! label since version 4, empty for none; `cached`, 0 or 1, since version 6). A sender keeps the frame within the peer's `max_frame` with
//! [`LockInfo::truncate_to`]; a decoder refuses a `holders_total` below the holders listed.
//!
//! A reader that meets a frame it cannot decode may step over it with [`frame_head`] (its
//! length, and the request it answers) instead of giving up on the whole stream.

use crate::frame::*;
use crate::wire::{Reader, put_bytes, put_u8, put_u16, put_u32, put_u64};
use crate::{DecodeError, ErrorCode, Limits, PROTOCOL_VERSION};

/// Bytes before the body: length prefix, version, kind.
pub const HEADER_LEN: usize = 6;

mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const ACQUIRE: u8 = 3;
    pub const GRANTED: u8 = 4;
    pub const RELEASE: u8 = 5;
    pub const EXTEND: u8 = 6;
    pub const EXTENDED: u8 = 7;
    pub const RECLAIM: u8 = 8;
    pub const OK: u8 = 9;
    pub const INSPECT: u8 = 10;
    pub const LOCK_INFO: u8 = 11;
    pub const WAIT_UNLOCKED: u8 = 12;
    pub const UNLOCKED: u8 = 13;
    pub const CANCEL: u8 = 14;
    pub const PING: u8 = 15;
    pub const PONG: u8 = 16;
    pub const ERROR: u8 = 17;
    pub const LEASE_ENDED: u8 = 18;
    pub const SHARD_MAP: u8 = 19;
    pub const ACQUIRE_ALL: u8 = 20;
    pub const GRANTED_ALL: u8 = 21;
    pub const RECALL: u8 = 22;
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    put_u32(out, 0);
    put_u8(out, PROTOCOL_VERSION);
    match frame {
        Frame::Hello(h) => {
            put_u8(out, kind::HELLO);
            put_opt_str(out, h.token.as_deref());
            put_bytes(out, h.client.as_bytes());
        }
        Frame::Welcome(w) => {
            put_u8(out, kind::WELCOME);
            put_u64(out, w.session);
            put_u64(out, w.broker_id);
            put_u64(out, w.epoch);
            put_u32(out, w.max_frame);
            put_u32(out, w.max_key);
            put_u64(out, w.default_ttl_ms);
            put_bytes(out, w.principal.as_bytes());
        }
        Frame::Acquire(a) => {
            put_u8(out, kind::ACQUIRE);
            put_u64(out, a.id);
            put_bytes(out, &a.key);
            put_mode(out, a.mode);
            put_u64(out, a.ttl_ms);
            put_wait(out, a.wait);
            put_bytes(out, &a.owner);
            put_u64(out, a.ticket);
            put_u32(out, a.fence_block);
        }
        Frame::AcquireAll(a) => {
            put_u8(out, kind::ACQUIRE_ALL);
            put_u64(out, a.id);
            put_u32(out, u32::try_from(a.keys.len()).unwrap_or(u32::MAX));
            for k in &a.keys {
                put_bytes(out, k);
            }
            put_u64(out, a.ttl_ms);
            put_wait(out, a.wait);
            put_bytes(out, &a.owner);
        }
        Frame::GrantedAll(g) => {
            put_u8(out, kind::GRANTED_ALL);
            put_u64(out, g.id);
            put_u32(out, u32::try_from(g.leases.len()).unwrap_or(u32::MAX));
            for l in &g.leases {
                put_bytes(out, &l.key);
                put_u64(out, l.fence);
                put_u64(out, l.ttl_ms);
                out.extend_from_slice(&l.secret.0);
            }
        }
        Frame::Granted(g) => {
            put_u8(out, kind::GRANTED);
            put_u64(out, g.id);
            put_u64(out, g.fence);
            put_u64(out, g.ttl_ms);
            match &g.rewritten {
                None => put_u8(out, 0),
                Some(k) => {
                    put_u8(out, 1);
                    put_bytes(out, k);
                }
            }
            out.extend_from_slice(&g.secret.0);
            put_u32(out, g.fence_block);
        }
        Frame::Release(r) => {
            put_u8(out, kind::RELEASE);
            put_u64(out, r.id);
            put_bytes(out, &r.key);
            put_u64(out, r.fence);
            put_u8(out, u8::from(r.ack));
            out.extend_from_slice(&r.secret.0);
        }
        Frame::Extend(e) => {
            put_u8(out, kind::EXTEND);
            put_u64(out, e.id);
            put_bytes(out, &e.key);
            put_u64(out, e.fence);
            put_u64(out, e.ttl_ms);
            out.extend_from_slice(&e.secret.0);
        }
        Frame::Extended { id, ttl_ms } => {
            put_u8(out, kind::EXTENDED);
            put_u64(out, *id);
            put_u64(out, *ttl_ms);
        }
        Frame::Reclaim(r) => {
            put_u8(out, kind::RECLAIM);
            put_u64(out, r.id);
            put_bytes(out, &r.key);
            put_u64(out, r.fence);
            put_mode(out, r.mode);
            put_u64(out, r.ttl_ms);
            out.extend_from_slice(&r.secret.0);
            put_bytes(out, &r.owner);
        }
        Frame::Ok { id } => {
            put_u8(out, kind::OK);
            put_u64(out, *id);
        }
        Frame::Inspect { id, key } => {
            put_u8(out, kind::INSPECT);
            put_u64(out, *id);
            put_bytes(out, key);
        }
        Frame::LockInfo(i) => {
            put_u8(out, kind::LOCK_INFO);
            put_u64(out, i.id);
            put_bytes(out, &i.key);
            put_u32(out, u32::try_from(i.holders.len()).unwrap_or(u32::MAX));
            for h in &i.holders {
                put_u64(out, h.session);
                put_u64(out, h.fence);
                put_mode(out, h.mode);
                put_u64(out, h.remaining_ms);
                put_bytes(out, &h.owner);
                put_u8(out, u8::from(h.cached));
            }
            put_u32(out, i.holders_total);
            put_u32(out, i.waiters);
            put_u64(out, i.blocked_ms);
            put_u32(out, i.position);
        }
        Frame::WaitUnlocked { id, key, wait } => {
            put_u8(out, kind::WAIT_UNLOCKED);
            put_u64(out, *id);
            put_bytes(out, key);
            put_wait(out, *wait);
        }
        Frame::Unlocked { id, outcome } => {
            put_u8(out, kind::UNLOCKED);
            put_u64(out, *id);
            put_u8(out, matches!(outcome, UnlockOutcome::Expired).into());
        }
        Frame::Cancel { id } => {
            put_u8(out, kind::CANCEL);
            put_u64(out, *id);
        }
        Frame::Ping { id } => {
            put_u8(out, kind::PING);
            put_u64(out, *id);
        }
        Frame::Pong { id } => {
            put_u8(out, kind::PONG);
            put_u64(out, *id);
        }
        Frame::Recall { key, fence } => {
            put_u8(out, kind::RECALL);
            put_bytes(out, key);
            put_u64(out, *fence);
        }
        Frame::LeaseEnded {
            key,
            fence,
            reason,
            message,
        } => {
            put_u8(out, kind::LEASE_ENDED);
            put_bytes(out, key);
            put_u64(out, *fence);
            put_u8(
                out,
                match reason {
                    EndReason::Expired => 0,
                    EndReason::Mirror => 1,
                    EndReason::Moved => 2,
                    EndReason::Revoked => 3,
                },
            );
            put_bytes(out, message.as_bytes());
        }
        Frame::ShardMap(m) => {
            put_u8(out, kind::SHARD_MAP);
            put_u64(out, m.version);
            put_u32(out, m.shards);
            put_u32(out, u32::try_from(m.owners.len()).unwrap_or(u32::MAX));
            for o in &m.owners {
                put_u32(out, o.shard);
                put_bytes(out, o.url.as_bytes());
            }
        }
        Frame::Error { id, code, message } => {
            put_u8(out, kind::ERROR);
            put_u64(out, *id);
            put_u16(out, code.to_u16());
            put_bytes(out, message.as_bytes());
        }
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, `Ok(Some((frame, n)))` when the
/// first `n` bytes were one frame. A frame whose announced length exceeds `limits.max_frame` is
/// refused as soon as its length prefix is read, before buffering it.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let total = len.saturating_add(4);
    if total > limits.max_frame {
        return Err(DecodeError::FrameTooLarge {
            size: total,
            limit: limits.max_frame,
        });
    }
    if len < 2 {
        return Err(DecodeError::Malformed("frame shorter than its header"));
    }
    // The version is checked as soon as it is there, so a peer speaking another version is
    // told so even if it never sends a whole frame.
    if let Some(&version) = buf.get(4)
        && version != PROTOCOL_VERSION
    {
        return Err(DecodeError::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let Some(body) = buf.get(5..total) else {
        return Ok(None);
    };
    let mut r = Reader::new(&body[1..]);
    let frame = decode_body(body[0], &mut r, limits)?;
    r.finish()?;
    Ok(Some((frame, total)))
}

/// What can be read of the frame at the front of `buf` without decoding it: what a reader
/// needs to step over a frame that does not decode (too large, malformed, unknown kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The frame's length as its prefix announces it, prefix included.
    pub total: usize,
    /// The request the frame answers, when it is of this protocol version, of a kind that
    /// carries a request id (every kind but `Hello`, `Welcome`, `LeaseEnded` and `ShardMap`)
    /// and long enough to hold one. `Some(0)` is a frame addressed to no request.
    pub id: Option<u64>,
}

/// The head of the frame at the front of `buf`, read without checking limits or the body.
///
/// `None` until the bytes it needs are buffered: the length prefix, and — for a frame that
/// announces room for them — the version, kind and id (at most [`FRAME_HEAD_LEN`] bytes).
/// Never reads past the frame's announced length.
pub fn frame_head(buf: &[u8]) -> Option<FrameHead> {
    let prefix = buf.get(..4)?;
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let total = len.saturating_add(4);
    let head = buf.get(..total.min(FRAME_HEAD_LEN))?;
    let id = match head {
        [_, _, _, _, PROTOCOL_VERSION, kind, id @ ..] if id.len() == 8 && has_id(*kind) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(id);
            Some(u64::from_le_bytes(a))
        }
        _ => None,
    };
    Some(FrameHead { total, id })
}

/// Bytes [`frame_head`] reads at most: length prefix, version, kind, request id.
pub const FRAME_HEAD_LEN: usize = HEADER_LEN + 8;

/// Whether a frame of `kind` starts its body with a request id.
fn has_id(kind: u8) -> bool {
    matches!(
        kind,
        kind::ACQUIRE
            | kind::GRANTED
            | kind::ACQUIRE_ALL
            | kind::GRANTED_ALL
            | kind::RELEASE
            | kind::EXTEND
            | kind::EXTENDED
            | kind::RECLAIM
            | kind::OK
            | kind::INSPECT
            | kind::LOCK_INFO
            | kind::WAIT_UNLOCKED
            | kind::UNLOCKED
            | kind::CANCEL
            | kind::PING
            | kind::PONG
            | kind::ERROR
    )
}

/// Encoded size of a `LockInfo` without its key and holders, length prefix included.
const LOCK_INFO_FIXED: usize = HEADER_LEN + 8 + 4 + 4 + 4 + 4 + 8 + 4;

impl HolderInfo {
    /// Bytes this holder takes in a `LockInfo` frame.
    pub fn encoded_len(&self) -> usize {
        8 + 8 + mode_len(self.mode) + 8 + 4 + self.owner.len() + 1
    }
}

impl LockInfo {
    /// Bytes of this frame's encoding, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LOCK_INFO_FIXED
            + self.key.len()
            + self
                .holders
                .iter()
                .map(HolderInfo::encoded_len)
                .sum::<usize>()
    }

    /// Puts `holders` in fence order (the oldest leases first, the ones a truncation keeps)
    /// and sets `holders_total` to their count.
    pub fn order_holders(&mut self) {
        self.holders.sort_unstable_by_key(|h| h.fence);
        self.holders_total = u32::try_from(self.holders.len()).unwrap_or(u32::MAX);
    }

    /// Keeps the longest prefix of `holders` for which the frame's encoding takes at most
    /// `max_frame` bytes, dropping the rest; `holders_total` is left as it is (set it to the
    /// full count first). Returns false when the frame does not fit even without holders (a
    /// key too long for `max_frame`): then `holders` is empty and the frame still too large.
    pub fn truncate_to(&mut self, max_frame: usize) -> bool {
        let Some(mut budget) = max_frame.checked_sub(LOCK_INFO_FIXED + self.key.len()) else {
            self.holders.clear();
            return false;
        };
        let keep = self
            .holders
            .iter()
            .position(|h| match budget.checked_sub(h.encoded_len()) {
                Some(left) => {
                    budget = left;
                    false
                }
                None => true,
            })
            .unwrap_or(self.holders.len());
        self.holders.truncate(keep);
        true
    }
}

fn decode_body(kind: u8, r: &mut Reader<'_>, limits: &Limits) -> Result<Frame, DecodeError> {
    let max_key = limits.max_key;
    Ok(match kind {
        kind::HELLO => Frame::Hello(Hello {
            token: opt_string(r, "token")?,
            client: r.string("client")?,
        }),
        kind::WELCOME => Frame::Welcome(Welcome {
            session: r.u64("session")?,
            broker_id: r.u64("broker_id")?,
            epoch: r.u64("epoch")?,
            max_frame: r.u32("max_frame")?,
            max_key: r.u32("max_key")?,
            default_ttl_ms: r.u64("default_ttl")?,
            principal: r.string("principal")?,
        }),
        kind::ACQUIRE => Frame::Acquire(Acquire {
            id: r.u64("id")?,
            key: r.key(max_key)?,
            mode: mode(r)?,
            ttl_ms: r.u64("ttl")?,
            wait: wait(r)?,
            owner: r.owner_label()?,
            ticket: r.u64("ticket")?,
            fence_block: r.u32("fence block")?,
        }),
        kind::ACQUIRE_ALL => {
            let id = r.u64("id")?;
            let n = r.u32("key count")? as usize;
            // Each key takes at least its 4-byte length: a count beyond that is a lie. (More
            // keys than `MAX_KEYS_PER_ACQUIRE` decode, and are refused for that request alone.)
            if n > r.remaining() / 4 {
                return Err(DecodeError::Malformed("key count"));
            }
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(r.key(max_key)?);
            }
            Frame::AcquireAll(AcquireAll {
                id,
                keys,
                ttl_ms: r.u64("ttl")?,
                wait: wait(r)?,
                owner: r.owner_label()?,
            })
        }
        kind::GRANTED_ALL => {
            let id = r.u64("id")?;
            let n = r.u32("lease count")? as usize;
            // Each lease takes at least 36 bytes: a count beyond that is a lie.
            if n > r.remaining() / 36 {
                return Err(DecodeError::Malformed("lease count"));
            }
            let mut leases = Vec::with_capacity(n);
            for _ in 0..n {
                leases.push(GrantedLease {
                    key: r.key(max_key)?,
                    fence: r.u64("fence")?,
                    ttl_ms: r.u64("ttl")?,
                    secret: r.secret()?,
                });
            }
            Frame::GrantedAll(GrantedAll { id, leases })
        }
        kind::GRANTED => Frame::Granted(Granted {
            id: r.u64("id")?,
            fence: r.u64("fence")?,
            ttl_ms: r.u64("ttl")?,
            rewritten: if r.bool("rewritten")? {
                Some(r.key(max_key)?)
            } else {
                None
            },
            secret: r.secret()?,
            fence_block: r.u32("fence block")?,
        }),
        kind::RELEASE => Frame::Release(Release {
            id: r.u64("id")?,
            key: r.key(max_key)?,
            fence: r.u64("fence")?,
            ack: r.bool("ack")?,
            secret: r.secret()?,
        }),
        kind::EXTEND => Frame::Extend(Extend {
            id: r.u64("id")?,
            key: r.key(max_key)?,
            fence: r.u64("fence")?,
            ttl_ms: r.u64("ttl")?,
            secret: r.secret()?,
        }),
        kind::EXTENDED => Frame::Extended {
            id: r.u64("id")?,
            ttl_ms: r.u64("ttl")?,
        },
        kind::RECLAIM => Frame::Reclaim(Reclaim {
            id: r.u64("id")?,
            key: r.key(max_key)?,
            fence: r.u64("fence")?,
            mode: mode(r)?,
            ttl_ms: r.u64("ttl")?,
            secret: r.secret()?,
            owner: r.owner_label()?,
        }),
        kind::OK => Frame::Ok { id: r.u64("id")? },
        kind::INSPECT => Frame::Inspect {
            id: r.u64("id")?,
            key: r.key(max_key)?,
        },
        kind::LOCK_INFO => {
            let id = r.u64("id")?;
            let key = r.key(max_key)?;
            let count = r.u32("holder count")? as usize;
            // Each holder takes at least 30 bytes: a count beyond what is left is a lie.
            if count > r.remaining() / 30 {
                return Err(DecodeError::Malformed("holder count"));
            }
            let mut holders = Vec::with_capacity(count);
            for _ in 0..count {
                holders.push(HolderInfo {
                    session: r.u64("session")?,
                    fence: r.u64("fence")?,
                    mode: mode(r)?,
                    remaining_ms: r.u64("remaining")?,
                    owner: r.owner_label()?,
                    cached: match r.u8("cached")? {
                        0 => false,
                        1 => true,
                        _ => return Err(DecodeError::Malformed("cached flag")),
                    },
                });
            }
            let holders_total = r.u32("holders total")?;
            if (holders_total as usize) < holders.len() {
                return Err(DecodeError::Malformed(
                    "holders total below the holders listed",
                ));
            }
            Frame::LockInfo(LockInfo {
                id,
                key,
                holders,
                holders_total,
                waiters: r.u32("waiters")?,
                blocked_ms: r.u64("blocked")?,
                position: r.u32("position")?,
            })
        }
        kind::WAIT_UNLOCKED => Frame::WaitUnlocked {
            id: r.u64("id")?,
            key: r.key(max_key)?,
            wait: wait(r)?,
        },
        kind::UNLOCKED => Frame::Unlocked {
            id: r.u64("id")?,
            outcome: if r.bool("outcome")? {
                UnlockOutcome::Expired
            } else {
                UnlockOutcome::Released
            },
        },
        kind::CANCEL => Frame::Cancel { id: r.u64("id")? },
        kind::PING => Frame::Ping { id: r.u64("id")? },
        kind::PONG => Frame::Pong { id: r.u64("id")? },
        kind::ERROR => Frame::Error {
            id: r.u64("id")?,
            code: ErrorCode::from_u16(r.u16("code")?),
            message: r.string("message")?,
        },
        kind::RECALL => Frame::Recall {
            key: r.key(max_key)?,
            fence: r.u64("fence")?,
        },
        kind::LEASE_ENDED => Frame::LeaseEnded {
            key: r.key(max_key)?,
            fence: r.u64("fence")?,
            reason: match r.u8("reason")? {
                0 => EndReason::Expired,
                1 => EndReason::Mirror,
                2 => EndReason::Moved,
                3 => EndReason::Revoked,
                _ => return Err(DecodeError::Malformed("reason")),
            },
            message: r.string("message")?,
        },
        kind::SHARD_MAP => {
            let version = r.u64("version")?;
            let shards = r.u32("shards")?;
            let n = r.u32("owners")?;
            if n > shards {
                return Err(DecodeError::Malformed("more owners than shards"));
            }
            let mut owners = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                owners.push(ShardOwner {
                    shard: r.u32("shard")?,
                    url: r.string("url")?,
                });
            }
            Frame::ShardMap(ShardMap {
                version,
                shards,
                owners,
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_u8(out, 0),
        Some(s) => {
            put_u8(out, 1);
            put_bytes(out, s.as_bytes());
        }
    }
}

fn opt_string(r: &mut Reader<'_>, what: &'static str) -> Result<Option<String>, DecodeError> {
    Ok(if r.bool(what)? {
        Some(r.string(what)?)
    } else {
        None
    })
}

fn put_mode(out: &mut Vec<u8>, m: Mode) {
    match m {
        Mode::Exclusive => put_u8(out, 0),
        Mode::Shared => put_u8(out, 1),
        Mode::Semaphore(n) => {
            put_u8(out, 2);
            put_u32(out, n);
        }
    }
}

fn mode_len(m: Mode) -> usize {
    match m {
        Mode::Exclusive | Mode::Shared => 1,
        Mode::Semaphore(_) => 1 + 4,
    }
}

fn mode(r: &mut Reader<'_>) -> Result<Mode, DecodeError> {
    Ok(match r.u8("mode")? {
        0 => Mode::Exclusive,
        1 => Mode::Shared,
        2 => Mode::Semaphore(r.u32("permits")?),
        _ => return Err(DecodeError::Malformed("mode")),
    })
}

fn put_wait(out: &mut Vec<u8>, w: WaitSpec) {
    match w {
        WaitSpec::NoWait => put_u8(out, 0),
        WaitSpec::Millis(ms) => {
            put_u8(out, 1);
            put_u64(out, ms);
        }
        WaitSpec::Forever => put_u8(out, 2),
    }
}

fn wait(r: &mut Reader<'_>) -> Result<WaitSpec, DecodeError> {
    Ok(match r.u8("wait")? {
        0 => WaitSpec::NoWait,
        1 => WaitSpec::Millis(r.u64("wait ms")?),
        2 => WaitSpec::Forever,
        _ => return Err(DecodeError::Malformed("wait")),
    })
}
