//! Named Redis connections configured by the operator (`[[redis]]` tables), on which the host
//! runs commands and pipelines for a mirror plugin (the host side of the WIT `redis`
//! capability). A plugin never gets a socket: it names a connection, and the host refuses names
//! the plugin was not given (`Connections::only`). Administrative and blocking commands are
//! refused.
//!
//! Each connection is a lazily connected, self-reconnecting `redis::aio::ConnectionManager`
//! with a connect timeout and a response timeout; a command that fails on a broken connection
//! returns [`RedisError::Connection`] and the manager reconnects in the background. TLS is used
//! for `rediss://` URLs (or `tls = true`).

mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use settings::RedisSettings;

/// Why a Redis call failed as a whole (mirrors the WIT `redis-error`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// No connection with this name is available to the caller.
    #[error("no Redis connection named `{0}` is configured for this plugin")]
    UnknownConnection(String),
    /// The connection failed or timed out; the command may or may not have run.
    #[error("Redis connection failed: {0}")]
    Connection(String),
    /// Redis answered with an error reply.
    #[error("Redis error reply: {0}")]
    Server(String),
    /// The host refused to run the command.
    #[error("command refused: {0}")]
    Refused(String),
}

/// Commands a plugin may not run: administrative, blocking, connection-state or
/// replication commands that could harm the server or wedge the shared connection.
const REFUSED: &[&str] = &[
    "ACL",
    "BGREWRITEAOF",
    "BGSAVE",
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "CLIENT",
    "CLUSTER",
    "CONFIG",
    "DEBUG",
    "FAILOVER",
    "FLUSHALL",
    "FLUSHDB",
    "HELLO",
    "MIGRATE",
    "MODULE",
    "MONITOR",
    "PSUBSCRIBE",
    "PSYNC",
    "QUIT",
    "REPLICAOF",
    "RESET",
    "SAVE",
    "SELECT",
    "SHUTDOWN",
    "SLAVEOF",
    "SSUBSCRIBE",
    "SUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "WAIT",
    "WAITAOF",
    "XREAD",
    "XREADGROUP",
    "AUTH",
];

/// Most commands in one pipeline.
pub const MAX_PIPELINE: usize = 10_000;
/// Most bytes of arguments in one call (command or pipeline).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// One configured connection.
struct Conn {
    manager: ConnectionManager,
    timeout: Duration,
}

/// A set of named connections. Cheap to clone.
#[derive(Clone, Default)]
pub struct Connections {
    conns: BTreeMap<String, Arc<Conn>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.conns.keys()).finish()
    }
}

impl Connections {
    /// Prepares every configured connection (nothing connects until first use). Fails on a
    /// malformed URL or duplicate names. Must be called inside a tokio runtime.
    pub fn new(settings: &[RedisSettings]) -> Result<Connections, String> {
        let mut conns = BTreeMap::new();
        for s in settings {
            let client = redis::Client::open(s.connection_info()?)
                .map_err(|e| format!("redis `{}`: {e}", s.name))?;
            let timeout = Duration::from_millis(s.command_timeout_ms);
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(s.connect_timeout_ms)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(1_000));
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| format!("redis `{}`: {e}", s.name))?;
            let conn = Arc::new(Conn { manager, timeout });
            if conns.insert(s.name.clone(), conn).is_some() {
                return Err(format!("two [[redis]] connections are named `{}`", s.name));
            }
        }
        Ok(Connections { conns })
    }

    /// The subset named in `names` (what one plugin may reach). Unknown names are an error.
    pub fn only(&self, names: &[String]) -> Result<Connections, String> {
        let mut conns = BTreeMap::new();
        for n in names {
            let c = self
                .conns
                .get(n)
                .ok_or_else(|| format!("no [[redis]] connection is named `{n}`"))?;
            conns.insert(n.clone(), c.clone());
        }
        Ok(Connections { conns })
    }

    /// Names of the connections in this set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.conns.keys().map(String::as_str)
    }

    /// Runs one command. An error reply is `RedisError::Server`.
    pub async fn execute(
        &self,
        conn: &str,
        command: Vec<Vec<u8>>,
    ) -> Result<redis::Value, RedisError> {
        let mut replies = self.pipeline(conn, vec![command]).await?;
        match replies.pop() {
            Some(Ok(v)) => Ok(v),
            Some(Err(msg)) => Err(RedisError::Server(msg)),
            None => Err(RedisError::Connection("no reply".into())),
        }
    }

    /// Runs commands in one round trip; one entry per command (its reply or error message).
    pub async fn pipeline(
        &self,
        conn: &str,
        commands: Vec<Vec<Vec<u8>>>,
    ) -> Result<Vec<Result<redis::Value, String>>, RedisError> {
        let c = self
            .conns
            .get(conn)
            .ok_or_else(|| RedisError::UnknownConnection(conn.to_string()))?;
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        check(&commands)?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for args in &commands {
            let mut cmd = redis::Cmd::new();
            for a in args {
                cmd.arg(a.as_slice());
            }
            pipe.add_command(cmd);
        }
        let mut manager = c.manager.clone();
        // The manager has its own response timeout; this bounds connecting + retries as well.
        let reply = tokio::time::timeout(
            c.timeout.saturating_mul(3),
            pipe.query_async::<Vec<redis::Value>>(&mut manager),
        )
        .await
        .map_err(|_| RedisError::Connection(format!("timed out after {:?}", c.timeout * 3)))?;
        let values = reply.map_err(classify)?;
        if values.len() != commands.len() {
            return Err(RedisError::Connection(format!(
                "{} replies to {} commands",
                values.len(),
                commands.len()
            )));
        }
        Ok(values
            .into_iter()
            .map(|v| match v {
                redis::Value::ServerError(e) => Err(wire_error(&e)),
                other => Ok(other),
            })
            .collect())
    }
}

/// An error reply as Redis sent it: `CODE detail` (e.g. `NOSCRIPT No matching script...`).
fn wire_error(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    }
}

/// Refuses empty, oversized and forbidden commands.
fn check(commands: &[Vec<Vec<u8>>]) -> Result<(), RedisError> {
    if commands.len() > MAX_PIPELINE {
        return Err(RedisError::Refused(format!(
            "{} commands in one pipeline (at most {MAX_PIPELINE})",
            commands.len()
        )));
    }
    let mut bytes = 0usize;
    for args in commands {
        let Some(name) = args.first() else {
            return Err(RedisError::Refused("empty command".into()));
        };
        let upper = name.to_ascii_uppercase();
        if REFUSED.iter().any(|r| r.as_bytes() == upper.as_slice()) {
            return Err(RedisError::Refused(format!(
                "`{}` is not allowed for plugins",
                String::from_utf8_lossy(&upper)
            )));
        }
        bytes = args.iter().fold(bytes, |n, a| n.saturating_add(a.len()));
    }
    if bytes > MAX_REQUEST_BYTES {
        return Err(RedisError::Refused(format!(
            "{bytes} bytes of arguments (at most {MAX_REQUEST_BYTES})"
        )));
    }
    Ok(())
}

/// A failed round trip: an error reply as a whole (e.g. `NOAUTH`) is `Server`, anything else
/// is a connection problem.
fn classify(e: redis::RedisError) -> RedisError {
    match e.kind() {
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => {
            RedisError::Server(e.to_string())
        }
        _ => RedisError::Connection(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_dangerous_and_empty_commands() {
        let cmd = |parts: &[&str]| {
            parts
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert!(check(&[cmd(&["SET", "k", "v"])]).is_ok());
        assert!(matches!(
            check(&[cmd(&["flushall"])]),
            Err(RedisError::Refused(_))
        ));
        assert!(matches!(
            check(&[cmd(&["GET", "k"]), Vec::new()]),
            Err(RedisError::Refused(_))
        ));
        assert!(matches!(
            check(&[cmd(&["Config", "SET", "x", "y"])]),
            Err(RedisError::Refused(_))
        ));
    }
}
