//! Locking through Redis the way redsync/dlock do: `SET key token NX PX ttl` to lock, a
//! compare-and-delete Lua script (EVALSHA) to unlock; redis-rs 1.x, multiplexed connections.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use redis::aio::MultiplexedConnection;

/// The unlock script of BASELINE.md (redsync's).
pub const UNLOCK: &str =
    "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end";

/// TTL of every Redis lock (ms).
pub const TTL_MS: u64 = 30_000;

/// One Redis locker: a connection and the unlock script.
#[derive(Clone)]
pub struct RedisLock {
    pub con: MultiplexedConnection,
    script: std::sync::Arc<redis::Script>,
}

static TOKENS: AtomicU64 = AtomicU64::new(1);

/// A fresh lock token, as long as redsync's (22 characters of base64 for 16 random bytes).
pub fn token() -> String {
    format!("tok-{:018}", TOKENS.fetch_add(1, Ordering::Relaxed))
}

impl RedisLock {
    pub async fn connect(url: &str) -> Result<RedisLock> {
        let client = redis::Client::open(url)?;
        let con = client.get_multiplexed_async_connection().await?;
        let lock = RedisLock {
            con,
            script: std::sync::Arc::new(redis::Script::new(UNLOCK)),
        };
        // Load the script so every unlock is a plain EVALSHA.
        let mut con = lock.con.clone();
        let _: String = lock.script.prepare_invoke().load_async(&mut con).await?;
        Ok(lock)
    }

    /// `SET key token NX PX ttl`: true if locked.
    pub async fn try_lock(&mut self, key: &str, token: &str) -> Result<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(TTL_MS)
            .query_async(&mut self.con)
            .await?;
        Ok(r.is_some())
    }

    /// Compare-and-delete: true if the lock was ours and is now gone.
    pub async fn unlock(&mut self, key: &str, token: &str) -> Result<bool> {
        let n: i64 = self
            .script
            .key(key)
            .arg(token)
            .invoke_async(&mut self.con)
            .await?;
        Ok(n == 1)
    }

    /// One uncontended lock + unlock cycle.
    pub async fn cycle(&mut self, key: &str) -> Result<()> {
        let tok = token();
        if !self.try_lock(key, &tok).await? {
            bail!("redis: uncontended SET NX failed on {key}");
        }
        if !self.unlock(key, &tok).await? {
            bail!("redis: unlock of {key} found another token");
        }
        Ok(())
    }

    /// `used_memory` from `INFO memory`.
    pub async fn used_memory(&mut self) -> Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.con)
            .await?;
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("used_memory:") {
                return Ok(v.trim().parse()?);
            }
        }
        bail!("no used_memory in INFO memory")
    }

    /// Locks `keys` with long-lived tokens, pipelined `batch` at a time.
    pub async fn hold_many(&mut self, keys: &[String], batch: usize) -> Result<()> {
        for chunk in keys.chunks(batch) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(token())
                    .arg("NX")
                    .arg("PX")
                    .arg(3_600_000u64);
            }
            let r: Vec<Option<String>> = pipe.query_async(&mut self.con).await?;
            if r.iter().any(Option::is_none) {
                bail!("redis: a SET NX of the memory test failed");
            }
        }
        Ok(())
    }

    /// Empties Redis. `background`: `FLUSHALL ASYNC` (freeing a million keys synchronously can
    /// outlast the client's response timeout on a busy machine).
    pub async fn flushall(&mut self, background: bool) -> Result<()> {
        let mut cmd = redis::cmd("FLUSHALL");
        if background {
            cmd.arg("ASYNC");
        }
        let _: () = cmd.query_async(&mut self.con).await?;
        Ok(())
    }
}
