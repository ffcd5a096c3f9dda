//! The fencing store: a Redis Lua script that accepts a write of `(key, fence)` only if the
//! fence is not older than the last one accepted for the key (the holder of the newest fence
//! may write again; anyone older is *stale* and rejected), and logs every new fence it accepts.
//! Keys: `fence:<key>` (newest accepted fence) and `fencelog:<key>` (each accepted fence once,
//! in the order accepted) — unrelated to the mirror's keys.
//!
//! Fences are stored as 20-digit zero-padded decimals and compared as strings, which is exact
//! for any u64 (Lua numbers are doubles).

use redis::aio::MultiplexedConnection;

/// KEYS[1] = fence:<key>, KEYS[2] = fencelog:<key>, ARGV[1] = padded fence.
/// 1 = accepted, 0 = rejected (stale).
const ACCEPT_UNLESS_STALE: &str = r#"
local newest = redis.call('GET', KEYS[1])
if newest == false or ARGV[1] > newest then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
if ARGV[1] == newest then
  return 1
end
return 0
"#;

/// A connection to the fencing store.
pub struct FenceStore {
    con: MultiplexedConnection,
}

fn last_fence_key(key: &str) -> String {
    format!("fence:{key}")
}

fn fence_log_key(key: &str) -> String {
    format!("fencelog:{key}")
}

fn padded(fence: u64) -> String {
    format!("{fence:020}")
}

impl FenceStore {
    /// Connects to the store at `url`.
    pub async fn connect(url: &str) -> redis::RedisResult<FenceStore> {
        let client = redis::Client::open(url)?;
        let con = client.get_multiplexed_async_connection().await?;
        Ok(FenceStore { con })
    }

    /// Writes `(key, fence)`: true if accepted, false if rejected as stale.
    pub async fn write(&mut self, key: &str, fence: u64) -> redis::RedisResult<bool> {
        let accepted: i64 = redis::cmd("EVAL")
            .arg(ACCEPT_UNLESS_STALE)
            .arg(2)
            .arg(last_fence_key(key))
            .arg(fence_log_key(key))
            .arg(padded(fence))
            .query_async(&mut self.con)
            .await?;
        Ok(accepted == 1)
    }

    /// Every fence accepted for `key`, in order of acceptance. Entries that do not parse are
    /// returned as errors (the text as stored).
    pub async fn accepted(&mut self, key: &str) -> redis::RedisResult<Vec<Result<u64, String>>> {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(fence_log_key(key))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con)
            .await?;
        Ok(raw
            .into_iter()
            .map(|s| s.parse::<u64>().map_err(|_| s))
            .collect())
    }
}
