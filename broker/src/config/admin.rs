//! `[admin]`: the admin HTTP listener (metrics, health, the JSON API, the status page).
//!
//! ```toml
//! [admin]
//! enabled = true                # false: no admin listener at all
//! listen = "127.0.0.1:7421"     # TCP address; port 0 picks a free one (printed at start)
//! metrics = true                # record lock metrics (false: /metrics serves only stats)
//! hosts = []                    # Host names besides localhost and IP addresses
//! max_connections = 256         # open connections at most
//! header_timeout_ms = 5000      # a request head (or the next one) must arrive within this
//! [admin.tokens]                # token → name; see broker/src/admin/auth.rs for who needs one
//! "a-long-random-token" = "ops-alice"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// Default admin address: loopback, next to the QUIC port.
pub const DEFAULT_ADMIN_PORT: u16 = 7421;

/// The `[admin]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin listener.
    pub enabled: bool,
    /// TCP address of the admin listener.
    pub listen: SocketAddr,
    /// Record the lock metrics (counters, histograms) on the lock path.
    pub metrics: bool,
    /// Admin tokens: token → name (the name is what audit lines show). Needed from a peer that
    /// is not loopback; from loopback too for `POST /api/release`, and for `GET /api/*` once
    /// any token is set here or `[auth] require` is on.
    pub tokens: BTreeMap<String, String>,
    /// Names a request may give in `Host` besides `localhost` and IP addresses (e.g. the name
    /// a reverse proxy forwards). Any other name is refused (421): it is how a DNS-rebinding
    /// web page would reach the listener.
    pub hosts: Vec<String>,
    /// Open connections at most; over it the oldest idle one is closed to make room.
    pub max_connections: usize,
    /// A connection must send a whole request head within this (ms) — also the next one on a
    /// kept-alive connection — or it is closed.
    pub header_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            metrics: true,
            tokens: BTreeMap::new(),
            hosts: Vec::new(),
            max_connections: 256,
            header_timeout_ms: 5000,
        }
    }
}

impl AdminConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.tokens.keys().any(|t| t.len() < 16) {
            return Err("admin.tokens: every token must be at least 16 characters".into());
        }
        if let Some(h) = self.hosts.iter().find(|h| {
            h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        }) {
            return Err(format!(
                "admin.hosts: {h:?} is not a host name (a DNS name without port or scheme; \
                 localhost and IP addresses are always allowed)"
            ));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err("admin.max_connections: from 1 to 65536".into());
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return Err("admin.header_timeout_ms: from 100 to 600000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_plain_names_and_limits_sane() {
        let ok = AdminConfig {
            hosts: vec!["locks.example.com".into(), "broker-1".into()],
            ..AdminConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        for bad in [
            "",
            "locks.example.com:443",
            "http://x",
            "*.example.com",
            "a b",
        ] {
            let cfg = AdminConfig {
                hosts: vec![bad.into()],
                ..AdminConfig::default()
            };
            assert!(cfg.validate().is_err(), "{bad:?}");
        }
        let zero = AdminConfig {
            max_connections: 0,
            ..AdminConfig::default()
        };
        assert!(zero.validate().is_err());
        let short = AdminConfig {
            header_timeout_ms: 10,
            ..AdminConfig::default()
        };
        assert!(short.validate().is_err());
    }
}
