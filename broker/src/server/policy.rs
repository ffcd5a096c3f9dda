//! Request policy: turns what a client asked for (key, TTL) into what the table is asked to do.
//! Runs the WASM key and TTL policies when plugins are configured, then applies the broker's
//! TTL bounds (0 → default, capped at the maximum) and key limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::Mode;

use crate::config::Config;
use crate::plugins::{Operation, PluginHost, PolicyRequest};

/// What a request was allowed to do.
pub struct Decided {
    /// The key to operate on (rewritten by a key policy, or the one asked for).
    pub key: Bytes,
    pub rewritten: bool,
    pub ttl: Duration,
}

/// The operation a policy is asked about.
pub use crate::plugins::Operation as Op;

/// The policy chain of one broker.
#[derive(Default, Clone)]
pub struct Policy {
    plugins: Option<Arc<PluginHost>>,
}

impl Policy {
    /// A policy that runs these plugins (none when the host is empty).
    pub fn with_plugins(host: Arc<PluginHost>) -> Policy {
        Policy {
            plugins: (!host.is_empty()).then_some(host),
        }
    }

    /// The plugin host, if plugins are configured.
    pub fn plugins(&self) -> Option<&Arc<PluginHost>> {
        self.plugins.as_ref()
    }

    /// Decides a request: `Err(reason)` denies it.
    pub async fn decide(
        &self,
        cfg: &Config,
        principal: &str,
        key: &Bytes,
        mode: Mode,
        requested_ttl_ms: u64,
        op: Operation,
    ) -> Result<Decided, String> {
        let Some(host) = &self.plugins else {
            return Ok(Decided {
                key: key.clone(),
                rewritten: false,
                ttl: clamp_ttl(cfg, requested_ttl_ms),
            });
        };
        let outcome = host
            .evaluate(PolicyRequest {
                key,
                mode: mode.into(),
                ttl: Duration::from_millis(requested_ttl_ms),
                principal,
                op,
            })
            .await?;
        let ttl = clamp_ttl(cfg, crate::broker::wire::millis(outcome.ttl));
        if !outcome.rewritten {
            return Ok(Decided {
                key: key.clone(),
                rewritten: false,
                ttl,
            });
        }
        if outcome.key.len() > cfg.limits.max_key_bytes {
            return Err(format!(
                "a key policy rewrote the key to {} bytes, over the broker's {}-byte limit",
                outcome.key.len(),
                cfg.limits.max_key_bytes
            ));
        }
        Ok(Decided {
            key: Bytes::from(outcome.key.into_owned()),
            rewritten: true,
            ttl,
        })
    }
}

impl Policy {
    /// The TTL a renewal (`Extend`) of a `mode` lease on `key` gets: the TTL policies run on
    /// the key as granted (key policies ran, and may have rewritten it, at the grant: they are
    /// not run twice), then the broker's bounds. `Err(reason)` denies the renewal.
    pub async fn renewal_ttl(
        &self,
        cfg: &Config,
        principal: &str,
        key: &Bytes,
        mode: Mode,
        requested_ttl_ms: u64,
    ) -> Result<Duration, String> {
        let Some(host) = &self.plugins else {
            return Ok(clamp_ttl(cfg, requested_ttl_ms));
        };
        let granted = host
            .evaluate_ttl(PolicyRequest {
                key,
                mode: mode.into(),
                ttl: Duration::from_millis(requested_ttl_ms),
                principal,
                op: Operation::Acquire,
            })
            .await?;
        Ok(clamp_ttl(cfg, crate::broker::wire::millis(granted)))
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
