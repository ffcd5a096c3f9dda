//! `[mirror]`: which mirror plugin runs, in which mode, on which Redis connections, with which
//! queue and batch sizes.
//!
//! ```toml
//! [mirror]
//! path = "plugins/dist/redis_mirror.wasm"   # unset = no mirror (the default)
//! mode = "async"                            # async | sync
//! connections = ["main"]                    # [[redis]] names the plugin may use (default: all)
//! queue_capacity = 65536                    # events buffered before drop-and-resync
//! batch_max = 8192                          # events per plugin call / Redis pipeline
//! linger_ms = 10                            # async: how long a batch may fill (mirror lag)
//! retry_ms = 250                            # pause after a failure before the next resync
//! restore_timeout_ms = 10000                # how long start-up waits for Redis to restore
//! time_budget_ms = 1000                     # guest execution per call (Redis waits excluded)
//! memory_limit_mb = 64
//! [mirror.config]                           # the plugin's own settings (host.config)
//! connection = "main"
//! prefix = ""
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::plugins::{PluginKind, PluginSettings};
use crate::redis::RedisSettings;

/// When a grant is acknowledged relative to the mirror.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorMode {
    /// Grants are acknowledged at once; the mirror follows off the hot path (default).
    #[default]
    Async,
    /// A grant is acknowledged only after the mirror stored it (e.g. Redis `SET NX` succeeded);
    /// refused → `Busy`, mirror down → `Unavailable`.
    Sync,
}

/// The `[mirror]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// The mirror plugin (`.wasm` component of the `mirror` world); unset = no mirror.
    pub path: Option<PathBuf>,
    pub mode: MirrorMode,
    /// `[[redis]]` connections the plugin may use; empty = all configured.
    pub connections: Vec<String>,
    pub queue_capacity: usize,
    pub batch_max: usize,
    /// Async mode: how long the task lets a batch fill before shipping it (0 = ship at once).
    /// Bounds the mirror's lag behind the table (plus one Redis round trip).
    pub linger_ms: u64,
    pub retry_ms: u64,
    pub restore_timeout_ms: u64,
    pub time_budget_ms: u64,
    pub memory_limit_mb: u64,
    /// The plugin's own settings, served by `host.config(name)`.
    pub config: BTreeMap<String, toml::Value>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            path: None,
            mode: MirrorMode::Async,
            connections: Vec::new(),
            queue_capacity: 65_536,
            batch_max: 8_192,
            linger_ms: 10,
            retry_ms: 250,
            restore_timeout_ms: 10_000,
            time_budget_ms: 1_000,
            memory_limit_mb: 64,
            config: BTreeMap::new(),
        }
    }
}

impl MirrorConfig {
    /// Checks the table against the configured connections.
    pub fn validate(&self, redis: &[RedisSettings]) -> Result<(), String> {
        if self.path.is_none() {
            return Ok(());
        }
        if redis.is_empty() {
            return Err("[mirror] needs at least one [[redis]] connection".into());
        }
        for c in &self.connections {
            if !redis.iter().any(|r| &r.name == c) {
                return Err(format!("[mirror] connections: no [[redis]] is named `{c}`"));
            }
        }
        if self.queue_capacity == 0 || self.batch_max == 0 {
            return Err("[mirror] queue_capacity and batch_max must be > 0".into());
        }
        if self.batch_max >= crate::redis::MAX_PIPELINE {
            return Err(format!(
                "[mirror] batch_max must be below {} (one pipeline per batch)",
                crate::redis::MAX_PIPELINE
            ));
        }
        self.plugin_settings()
            .validate()
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The connection names the plugin may use.
    pub fn connection_names(&self, redis: &[RedisSettings]) -> Vec<String> {
        if self.connections.is_empty() {
            redis.iter().map(|r| r.name.clone()).collect()
        } else {
            self.connections.clone()
        }
    }

    /// The plugin settings of the mirror plugin (name `mirror`).
    pub fn plugin_settings(&self) -> PluginSettings {
        let mut s = PluginSettings::new(
            "mirror",
            self.path.clone().unwrap_or_default(),
            PluginKind::Mirror,
        );
        s.time_budget = Duration::from_millis(self.time_budget_ms.max(1));
        s.memory_limit = usize::try_from(self.memory_limit_mb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 20);
        for (k, v) in &self.config {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.config.insert(k.clone(), text);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Config {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn mirror_tables_parse_and_validate() {
        let cfg = parse(
            r#"
            [[redis]]
            name = "main"
            url = "rediss://user:pw@127.0.0.1:6380/2"
            command_timeout_ms = 250
            [mirror]
            path = "m.wasm"
            mode = "sync"
            connections = ["main"]
            [mirror.config]
            prefix = "lk:"
            scan_count = 500
            "#,
        );
        cfg.validate().expect("valid");
        assert_eq!(cfg.mirror.mode, super::MirrorMode::Sync);
        let s = cfg.mirror.plugin_settings();
        assert_eq!(s.config["prefix"], "lk:");
        assert_eq!(s.config["scan_count"], "500");
        assert_eq!(cfg.redis[0].command_timeout_ms, 250);
    }

    #[test]
    fn a_mirror_needs_known_connections() {
        let no_redis = parse("[mirror]\npath = \"m.wasm\"\n");
        assert!(no_redis.validate().is_err());
        let unknown = parse(
            "[[redis]]\nname = \"a\"\nurl = \"redis://x\"\n[mirror]\npath = \"m.wasm\"\nconnections = [\"b\"]\n",
        );
        assert!(unknown.validate().is_err());
        let bad_url = parse("[[redis]]\nname = \"a\"\nurl = \"http://x\"\n");
        assert!(bad_url.validate().is_err());
        assert!(toml::from_str::<Config>("[mirror]\nmode = \"maybe\"\n").is_err());
    }
}
