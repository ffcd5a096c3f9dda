//! `[admin]`: the admin HTTP listener (metrics, health, the JSON API, the status page).
//!
//! ```toml
//! [admin]
//! enabled = true                # false: no admin listener at all
//! listen = "127.0.0.1:7421"     # TCP address; port 0 picks a free one (printed at start)
//! metrics = true                # record lock metrics (false: /metrics serves only stats)
//! [admin.tokens]                # token → name; required from non-loopback peers
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
    /// Admin tokens: token → name (the name is what audit lines show). A request from a
    /// peer that is not loopback must carry `Authorization: Bearer <token>` with one of them.
    pub tokens: BTreeMap<String, String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            metrics: true,
            tokens: BTreeMap::new(),
        }
    }
}

impl AdminConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.tokens.keys().any(|t| t.len() < 16) {
            return Err("admin.tokens: every token must be at least 16 characters".into());
        }
        Ok(())
    }
}
