//! The three exports: ship a batch of events, resync to a snapshot, restore at start.

use std::collections::HashSet;

use crate::format::{
    lock_key, looks_like_token, match_pattern, parse_token, redis_key, show, token,
};
use crate::lockbroker::plugin::host::{self, LogLevel};
use crate::lockbroker::plugin::redis::{self, RedisScalar, RedisValue};
use crate::lockbroker::plugin::types::{
    EventOutcome, HeldLock, LockEvent, LockEventKind, LockMode, RestoreState,
};
use crate::scripts::{self, Script, describe, evalsha};

/// The plugin's settings.
pub struct Settings {
    conn: String,
    prefix: Vec<u8>,
    fence_key: Vec<u8>,
    scan_count: String,
}

impl Settings {
    /// Reads `[mirror.config]` through the host.
    pub fn read() -> Settings {
        Settings {
            conn: host::config("connection").unwrap_or_else(|| "main".into()),
            prefix: host::config("prefix").unwrap_or_default().into_bytes(),
            fence_key: host::config("fence_key")
                .unwrap_or_else(|| "lockbroker:max-fence".into())
                .into_bytes(),
            scan_count: host::config("scan_count")
                .filter(|c| c.parse::<u32>().is_ok_and(|n| n > 0))
                .unwrap_or_else(|| "1000".into()),
        }
    }
}

/// Commands per pipeline when writing many holds (resync).
const CHUNK: usize = 1000;

fn claim_cmd(s: &Settings, key: &[u8], fence: u64, mode: LockMode, ttl_ms: u64) -> Vec<Vec<u8>> {
    let tok = token(fence, mode);
    let name = redis_key(&s.prefix, key, &tok, mode);
    let ttl = ttl_ms.max(1).to_string().into_bytes();
    evalsha(
        Script::Claim,
        name,
        vec![tok, ttl, fence.to_string().into_bytes()],
    )
}

fn release_cmd(s: &Settings, key: &[u8], fence: u64, mode: LockMode) -> Vec<Vec<u8>> {
    let tok = token(fence, mode);
    let name = redis_key(&s.prefix, key, &tok, mode);
    evalsha(Script::Release, name, vec![tok])
}

fn fence_cmd(s: &Settings, fence: u64) -> Vec<Vec<u8>> {
    evalsha(
        Script::MaxFence,
        s.fence_key.clone(),
        vec![fence.to_string().into_bytes()],
    )
}

/// The outcome of a claim reply.
fn claim_outcome(r: Result<RedisValue, String>) -> EventOutcome {
    match r {
        Ok(RedisValue::Int(1)) => EventOutcome::Ok,
        Ok(RedisValue::Int(_)) => {
            EventOutcome::Conflict("the key is held in Redis by another client".into())
        }
        Ok(other) => EventOutcome::Failed(format!("unexpected reply {other:?}")),
        Err(e) => EventOutcome::Failed(e),
    }
}

/// Runs `commands` (with one trailing max-fence command) and returns the replies of
/// `commands` only. The outer error is the whole pipeline failing.
fn run(
    s: &Settings,
    mut commands: Vec<Vec<Vec<u8>>>,
    max_fence: u64,
) -> Result<Vec<Result<RedisValue, String>>, String> {
    let n = commands.len();
    if max_fence > 0 {
        commands.push(fence_cmd(s, max_fence));
    }
    let mut replies = scripts::pipeline(&s.conn, &commands).map_err(|e| describe(&e))?;
    if let Some(Err(e)) = replies.get(n) {
        return Err(format!("cannot store the max fence: {e}"));
    }
    replies.truncate(n);
    Ok(replies)
}

pub fn on_events(s: &Settings, events: &[LockEvent]) -> Result<Vec<EventOutcome>, String> {
    let mut commands = Vec::with_capacity(events.len());
    let mut max_fence = 0;
    for e in events {
        commands.push(match e.kind {
            LockEventKind::Acquired | LockEventKind::Extended => {
                max_fence = max_fence.max(e.fence);
                claim_cmd(s, &e.key, e.fence, e.mode, e.ttl_ms)
            }
            LockEventKind::Released | LockEventKind::Expired => {
                release_cmd(s, &e.key, e.fence, e.mode)
            }
        });
    }
    let replies = run(s, commands, max_fence)?;
    Ok(events
        .iter()
        .zip(replies)
        .map(|(e, r)| match e.kind {
            LockEventKind::Acquired | LockEventKind::Extended => claim_outcome(r),
            LockEventKind::Released | LockEventKind::Expired => match r {
                Ok(_) => EventOutcome::Ok,
                Err(e) => EventOutcome::Failed(e),
            },
        })
        .collect())
}

pub fn resync(
    s: &Settings,
    holds: &[HeldLock],
    max_fence: u64,
) -> Result<Vec<EventOutcome>, String> {
    let mut outcomes = Vec::with_capacity(holds.len());
    let mut wanted: HashSet<(Vec<u8>, Vec<u8>)> = HashSet::with_capacity(holds.len());
    for chunk in holds.chunks(CHUNK) {
        let commands = chunk
            .iter()
            .map(|h| claim_cmd(s, &h.key, h.fence, h.mode, h.remaining_ttl_ms))
            .collect();
        let replies = run(s, commands, max_fence)?;
        outcomes.extend(replies.into_iter().map(claim_outcome));
        for h in chunk {
            let tok = token(h.fence, h.mode);
            wanted.insert((redis_key(&s.prefix, &h.key, &tok, h.mode), tok));
        }
    }
    if holds.is_empty() && max_fence > 0 {
        run(s, Vec::new(), max_fence)?;
    }
    // Delete broker tokens that are not in the snapshot (leases whose release was lost).
    let mut stale = Vec::new();
    scan(s, |name, value| {
        if parse_token(value).is_some() && !wanted.contains(&(name.to_vec(), value.to_vec())) {
            stale.push(scripts::evalsha(
                Script::Release,
                name.to_vec(),
                vec![value.to_vec()],
            ));
        }
    })?;
    let removed = stale.len();
    for chunk in stale.chunks(CHUNK) {
        run(s, chunk.to_vec(), 0)?;
    }
    host::log(
        LogLevel::Info,
        &format!(
            "resync: {} holds written, {removed} stale removed",
            holds.len()
        ),
    );
    Ok(outcomes)
}

/// Skipped values named one by one in the log at most; the rest are only counted.
const REPORT_MAX: usize = 20;

/// Values the restore did not re-install, for the log.
#[derive(Default)]
struct Skipped {
    /// Values in the broker's namespace (`lb:...`, or a token in the wrong place) that are not
    /// exactly a lease the mirror writes: reported at `warn`.
    suspicious: usize,
    /// Values of other Redis clients (not starting with `lb:`): reported at `debug`.
    foreign: usize,
}

impl Skipped {
    fn suspicious(&mut self, name: &[u8], value: &[u8], why: &str) {
        self.suspicious += 1;
        if self.suspicious <= REPORT_MAX {
            host::log(
                LogLevel::Warn,
                &format!(
                    "restore: skipped {} = {}: {why}; not restored",
                    show(name),
                    show(value)
                ),
            );
        }
    }

    fn foreign(&mut self, name: &[u8], value: &[u8]) {
        self.foreign += 1;
        if self.foreign <= REPORT_MAX {
            host::log(
                LogLevel::Debug,
                &format!(
                    "restore: skipped {} = {}: not a broker token (another Redis client's value)",
                    show(name),
                    show(value)
                ),
            );
        }
    }
}

/// Scans the prefix and returns the leases held in Redis. Only exact broker tokens (see
/// `parse_token`), stored where the mirror writes them and with an expiry (the mirror always
/// sets one), are restored; every other value under the prefix is skipped and logged (`warn`
/// for values that start like a broker token, `debug` for other clients' values, the first
/// `REPORT_MAX` of each by name, then a count). `max-fence` is the stored maximum (a
/// non-decimal stored value is reported and ignored) or the largest restored fence, whichever
/// is larger. The broker validates fences further (ranges against its epoch).
pub fn restore(s: &Settings) -> Result<RestoreState, String> {
    let mut found = Vec::new();
    scan(s, |name, value| {
        // With an empty prefix the fence key is under it too; it is read below.
        if name != s.fence_key.as_slice() {
            found.push((name.to_vec(), value.to_vec()));
        }
    })?;
    let mut locks = Vec::new();
    let mut max_fence = 0;
    let mut skipped = Skipped::default();
    for chunk in found.chunks(CHUNK) {
        let commands: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|(name, _)| vec![b"PTTL".to_vec(), name.clone()])
            .collect();
        let replies = scripts::pipeline(&s.conn, &commands).map_err(|e| describe(&e))?;
        for ((name, value), ttl) in chunk.iter().zip(replies) {
            let Some((fence, mode)) = parse_token(value) else {
                if looks_like_token(value) {
                    skipped.suspicious(
                        name,
                        value,
                        "not a token the mirror writes (`lb:<fence>`, `lb:<fence>:s` or \
                         `lb:<fence>:n<permits>`, fence >= 2^40, no sign or leading zeros)",
                    );
                } else {
                    skipped.foreign(name, value);
                }
                continue;
            };
            let Some(key) = lock_key(&s.prefix, name, value, mode) else {
                skipped.suspicious(
                    name,
                    value,
                    "a broker token under a key the mirror does not write it to",
                );
                continue;
            };
            let ms = match ttl {
                Ok(RedisValue::Int(ms)) => ms,
                Ok(other) => {
                    skipped.suspicious(name, value, &format!("unexpected PTTL reply {other:?}"));
                    continue;
                }
                Err(e) => {
                    skipped.suspicious(name, value, &format!("PTTL failed: {e}"));
                    continue;
                }
            };
            match ms {
                // Deleted since the scan, or expiring now: not held, but the fence was handed out.
                -2 | 0 => max_fence = max_fence.max(fence),
                -1 => skipped.suspicious(
                    name,
                    value,
                    "the key has no expiry (the mirror always sets one)",
                ),
                ms => match u64::try_from(ms) {
                    Ok(ms) => {
                        max_fence = max_fence.max(fence);
                        locks.push(HeldLock {
                            key: key.to_vec(),
                            mode,
                            owner_session: 0,
                            fence,
                            remaining_ttl_ms: ms,
                        });
                    }
                    Err(_) => skipped.suspicious(name, value, &format!("PTTL {ms}")),
                },
            }
        }
    }
    let stored = match redis::execute(&s.conn, &[b"GET".to_vec(), s.fence_key.clone()]) {
        Ok(RedisValue::Bulk(b)) => match std::str::from_utf8(&b)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
        {
            Some(f) => f,
            None => {
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "restore: stored max fence {} = {} is not a decimal u64; ignored",
                        show(&s.fence_key),
                        show(&b)
                    ),
                );
                0
            }
        },
        Ok(_) => 0,
        Err(e) => return Err(describe(&e)),
    };
    for (n, level, what) in [
        (
            skipped.suspicious,
            LogLevel::Warn,
            "malformed broker values",
        ),
        (skipped.foreign, LogLevel::Debug, "other clients' values"),
    ] {
        if n > REPORT_MAX {
            host::log(
                level,
                &format!("restore: {} more {what} skipped", n - REPORT_MAX),
            );
        }
    }
    let max_fence = stored.max(max_fence);
    host::log(
        LogLevel::Info,
        &format!(
            "restore: {} held locks, max fence {max_fence} (stored {stored}); skipped {} \
             malformed broker values, {} other clients' values",
            locks.len(),
            skipped.suspicious,
            skipped.foreign
        ),
    );
    Ok(RestoreState { locks, max_fence })
}

/// Calls `f(name, value)` for every string key under the prefix (whatever its value).
fn scan(s: &Settings, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), String> {
    let pattern = match_pattern(&s.prefix);
    let mut cursor = b"0".to_vec();
    loop {
        let reply = redis::execute(
            &s.conn,
            &[
                b"SCAN".to_vec(),
                cursor.clone(),
                b"MATCH".to_vec(),
                pattern.clone(),
                b"COUNT".to_vec(),
                s.scan_count.clone().into_bytes(),
                b"TYPE".to_vec(),
                b"string".to_vec(),
            ],
        )
        .map_err(|e| describe(&e))?;
        let (next, names) = match reply {
            RedisValue::Array(items) => match items.as_slice() {
                [RedisScalar::Bulk(c), RedisScalar::Nested(keys)] => (
                    c.clone(),
                    keys.iter().flatten().cloned().collect::<Vec<_>>(),
                ),
                [RedisScalar::Bulk(c)] => (c.clone(), Vec::new()),
                _ => return Err("unexpected SCAN reply".into()),
            },
            _ => return Err("unexpected SCAN reply".into()),
        };
        if !names.is_empty() {
            let gets: Vec<Vec<Vec<u8>>> = names
                .iter()
                .map(|n| vec![b"GET".to_vec(), n.clone()])
                .collect();
            let values = redis::pipeline(&s.conn, &gets).map_err(|e| describe(&e))?;
            for (name, v) in names.iter().zip(values) {
                if let Ok(RedisValue::Bulk(v)) = v {
                    f(name, &v);
                }
            }
        }
        if next == b"0" {
            return Ok(());
        }
        cursor = next;
    }
}
