//! The Lua scripts the mirror runs in Redis (atomic compare-and-set / compare-and-delete), and
//! running commands through the host with `EVALSHA`, loading the scripts on `NOSCRIPT` (a
//! restarted or flushed Redis) and retrying once. Every script is idempotent, so replaying a
//! whole pipeline is safe.

use crate::lockbroker::plugin::redis::{self, RedisError, RedisValue};

/// Claims or refreshes a lease. KEYS[1] = key; ARGV = token, ttl ms, fence (decimal).
/// Sets the key when it is free, already ours, or held by an older broker token (a lease whose
/// release was lost); returns 1. Returns 0 when someone else (a Redis client) holds it.
pub const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
local function older(f, g)
  if #f ~= #g then return #f < #g end
  return f < g
end
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
local f = string.match(v, '^lb:(%d+)')
if f ~= nil and older(f, ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Compare-and-delete. KEYS[1] = key; ARGV[1] = token. Returns 1 if deleted.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Raises the stored maximum fence. KEYS[1] = fence key; ARGV[1] = fence (decimal).
pub const MAX_FENCE: &str = r#"
local v = redis.call('GET', KEYS[1])
local a = ARGV[1]
if v == false or #v < #a or (#v == #a and v < a) then
  redis.call('SET', KEYS[1], a)
  return 1
end
return 0
"#;

const ALL: [&str; 3] = [CLAIM, RELEASE, MAX_FENCE];

/// One of the scripts.
#[derive(Clone, Copy)]
pub enum Script {
    Claim = 0,
    Release = 1,
    MaxFence = 2,
}

impl Script {
    /// SHA-1 (hex) of the script, as EVALSHA wants it (computed once).
    pub fn sha(self) -> &'static [u8] {
        static SHAS: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
        let shas = SHAS.get_or_init(|| ALL.map(|s| sha1_smol::Sha1::from(s).digest().to_string()));
        shas[self as usize].as_bytes()
    }
}

/// `EVALSHA <sha> 1 <key> <args...>`.
pub fn evalsha(script: Script, key: Vec<u8>, args: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut cmd = Vec::with_capacity(4 + args.len());
    cmd.push(b"EVALSHA".to_vec());
    cmd.push(script.sha().to_vec());
    cmd.push(b"1".to_vec());
    cmd.push(key);
    cmd.extend(args);
    cmd
}

/// Runs a pipeline; on any `NOSCRIPT` reply loads every script and runs it once more.
pub fn pipeline(
    conn: &str,
    commands: &[Vec<Vec<u8>>],
) -> Result<Vec<Result<RedisValue, String>>, RedisError> {
    let replies = redis::pipeline(conn, commands)?;
    if !replies
        .iter()
        .any(|r| matches!(r, Err(e) if e.starts_with("NOSCRIPT")))
    {
        return Ok(replies);
    }
    let load: Vec<Vec<Vec<u8>>> = ALL
        .iter()
        .map(|s| vec![b"SCRIPT".to_vec(), b"LOAD".to_vec(), s.as_bytes().to_vec()])
        .collect();
    for r in redis::pipeline(conn, &load)? {
        r.map_err(RedisError::Server)?;
    }
    redis::pipeline(conn, commands)
}

/// A human-readable Redis error.
pub fn describe(e: &RedisError) -> String {
    match e {
        RedisError::UnknownConnection(n) => format!("unknown connection `{n}`"),
        RedisError::Connection(m) => format!("connection: {m}"),
        RedisError::Server(m) => format!("server: {m}"),
        RedisError::Refused(m) => format!("refused: {m}"),
    }
}
