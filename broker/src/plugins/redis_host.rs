//! The host side of the WIT `redis` interface: a mirror plugin names a connection and the host
//! runs the command or pipeline on it (`crate::redis::Connections`), converting replies to the
//! flattened WIT `redis-value` (see the interface docs in `wit/plugin.wit`).

use super::bindings::redis::{Host, RedisError, RedisScalar, RedisValue};
use super::state::HostState;
use crate::redis::RedisError as HostError;

impl Host for HostState {
    async fn execute(
        &mut self,
        conn_name: String,
        command: Vec<Vec<u8>>,
    ) -> Result<RedisValue, RedisError> {
        let redis = self.redis.clone();
        let reply = redis.execute(&conn_name, command).await;
        self.clock.resumed();
        match reply {
            Ok(v) => Ok(value(v)),
            Err(e) => Err(error(e)),
        }
    }

    async fn pipeline(
        &mut self,
        conn_name: String,
        commands: Vec<Vec<Vec<u8>>>,
    ) -> Result<Vec<Result<RedisValue, String>>, RedisError> {
        let redis = self.redis.clone();
        let replies = redis.pipeline(&conn_name, commands).await;
        self.clock.resumed();
        match replies {
            Ok(replies) => Ok(replies.into_iter().map(|r| r.map(value)).collect()),
            Err(e) => Err(error(e)),
        }
    }
}

fn error(e: HostError) -> RedisError {
    match e {
        HostError::UnknownConnection(n) => RedisError::UnknownConnection(n),
        HostError::Connection(m) => RedisError::Connection(m),
        HostError::Server(m) => RedisError::Server(m),
        HostError::Refused(m) => RedisError::Refused(m),
    }
}

/// A top-level reply.
fn value(v: redis::Value) -> RedisValue {
    match v {
        redis::Value::Nil => RedisValue::Nil,
        redis::Value::Int(i) => RedisValue::Int(i),
        redis::Value::BulkString(b) => RedisValue::Bulk(b),
        redis::Value::SimpleString(s) => RedisValue::Simple(s),
        redis::Value::Okay => RedisValue::Simple("OK".into()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            RedisValue::Array(items.into_iter().map(scalar).collect())
        }
        other => match bytes(other) {
            Some(b) => RedisValue::Bulk(b),
            None => RedisValue::Nil,
        },
    }
}

/// An element of an array reply.
fn scalar(v: redis::Value) -> RedisScalar {
    match v {
        redis::Value::Nil => RedisScalar::Nil,
        redis::Value::Int(i) => RedisScalar::Int(i),
        redis::Value::BulkString(b) => RedisScalar::Bulk(b),
        redis::Value::SimpleString(s) => RedisScalar::Simple(s),
        redis::Value::Okay => RedisScalar::Simple("OK".into()),
        redis::Value::ServerError(e) => RedisScalar::Error(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_string(),
        }),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            RedisScalar::Nested(items.into_iter().map(bytes).collect())
        }
        other => match bytes(other) {
            Some(b) => RedisScalar::Bulk(b),
            None => RedisScalar::Nil,
        },
    }
}

/// A value rendered as bytes (for nested arrays); `None` for nil and anything structured.
fn bytes(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        redis::Value::Okay => Some(b"OK".to_vec()),
        redis::Value::Int(i) => Some(i.to_string().into_bytes()),
        redis::Value::Double(d) => Some(d.to_string().into_bytes()),
        redis::Value::Boolean(b) => Some(if b { b"1".to_vec() } else { b"0".to_vec() }),
        redis::Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}
