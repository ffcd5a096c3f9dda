//! Request policy: turns what a client asked for (key, TTL) into what the table is asked to do.
//! Applies the broker's TTL bounds and, when plugins are configured, the key and TTL policies.

use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;

/// What a request was allowed to do.
pub struct Decided {
    /// The key to operate on (rewritten by a key policy, or the one asked for).
    pub key: Bytes,
    pub rewritten: bool,
    pub ttl: Duration,
}

/// The operation a policy is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Acquire,
    Inspect,
    Wait,
}

/// The policy chain of one broker.
#[derive(Default)]
pub struct Policy {}

impl Policy {
    /// Decides a request: `Err(reason)` denies it.
    pub async fn decide(
        &self,
        cfg: &Config,
        _principal: &str,
        key: &Bytes,
        _mode: lockbroker_proto::Mode,
        requested_ttl_ms: u64,
        _op: Op,
    ) -> Result<Decided, String> {
        Ok(Decided {
            key: key.clone(),
            rewritten: false,
            ttl: clamp_ttl(cfg, requested_ttl_ms),
        })
    }
}

/// The TTL to use for a requested one: 0 means the default; longer than the maximum is cut.
pub fn clamp_ttl(cfg: &Config, requested_ms: u64) -> Duration {
    if requested_ms == 0 {
        cfg.default_ttl()
    } else {
        Duration::from_millis(requested_ms).min(cfg.max_ttl())
    }
}
