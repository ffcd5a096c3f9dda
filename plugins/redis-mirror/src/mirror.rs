//! The three exports: ship a batch of events, resync to a snapshot, restore at start.

use std::collections::HashSet;

use crate::format::{lock_key, match_pattern, parse_token, redis_key, token};
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
        if !wanted.contains(&(name.to_vec(), value.to_vec())) {
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

pub fn restore(s: &Settings) -> Result<RestoreState, String> {
    let mut found = Vec::new();
    scan(s, |name, value| found.push((name.to_vec(), value.to_vec())))?;
    let mut locks = Vec::new();
    let mut max_fence = 0;
    for chunk in found.chunks(CHUNK) {
        let commands: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|(name, _)| vec![b"PTTL".to_vec(), name.clone()])
            .collect();
        let replies = scripts::pipeline(&s.conn, &commands).map_err(|e| describe(&e))?;
        for ((name, value), ttl) in chunk.iter().zip(replies) {
            let Some((fence, mode)) = parse_token(value) else {
                continue;
            };
            max_fence = max_fence.max(fence);
            let Ok(RedisValue::Int(ms)) = ttl else {
                continue;
            };
            // -2: gone since the scan; -1: no expiry (not written by us) — skip both.
            let (Ok(ms), Some(key)) = (u64::try_from(ms), lock_key(&s.prefix, name, value, mode))
            else {
                continue;
            };
            if ms == 0 {
                continue;
            }
            locks.push(HeldLock {
                key: key.to_vec(),
                mode,
                owner_session: 0,
                fence,
                remaining_ttl_ms: ms,
            });
        }
    }
    let stored = match redis::execute(&s.conn, &[b"GET".to_vec(), s.fence_key.clone()]) {
        Ok(RedisValue::Bulk(b)) => std::str::from_utf8(&b)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0),
        Ok(_) => 0,
        Err(e) => return Err(describe(&e)),
    };
    host::log(
        LogLevel::Info,
        &format!(
            "restore: {} held locks, max fence {}",
            locks.len(),
            stored.max(max_fence)
        ),
    );
    Ok(RestoreState {
        locks,
        max_fence: stored.max(max_fence),
    })
}

/// Calls `f(name, value)` for every key under the prefix whose value is a broker token.
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
                if let Ok(RedisValue::Bulk(v)) = v
                    && parse_token(&v).is_some()
                {
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
