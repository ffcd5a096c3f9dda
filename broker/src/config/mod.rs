//! Broker configuration: the TOML file `lockbroker serve --config` reads. Every field has a
//! default, so `serve` runs with no file at all; unknown keys are refused.
//! `broker.example.toml` documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugins::PluginSettings;

mod admin;
mod cluster;
mod mirror;

pub use admin::{AdminConfig, DEFAULT_ADMIN_PORT};
pub use cluster::ClusterConfig;
pub use mirror::{MirrorConfig, MirrorMode};

/// Errors reading or validating a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory for the epoch file, the dev certificate and plugin caches.
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub locks: LocksConfig,
    pub quic: QuicConfig,
    /// Plugins, in chain order (`[[plugin]]` tables).
    pub plugin: Vec<PluginSettings>,
    pub plugins: PluginsConfig,
    /// Named Redis connections (`[[redis]]` tables), usable by the mirror plugin.
    pub redis: Vec<crate::redis::RedisSettings>,
    /// Mirroring of the lock table to Redis through a mirror plugin (off unless `path` is set).
    pub mirror: MirrorConfig,
    /// Cluster mode on etcd (off unless `etcd` is set).
    pub cluster: ClusterConfig,
    /// The admin HTTP listener (on by default, loopback only).
    pub admin: AdminConfig,
}

/// Settings for the plugin set as a whole.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Reload plugins when their files change (checked every `watch_interval_ms`).
    pub watch: bool,
    pub watch_interval_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            watch: true,
            watch_interval_ms: 500,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], lockbroker_proto::DEFAULT_PORT)),
            data_dir: PathBuf::from(".lockbroker"),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            locks: LocksConfig::default(),
            quic: QuicConfig::default(),
            plugin: Vec::new(),
            plugins: PluginsConfig::default(),
            redis: Vec::new(),
            mirror: MirrorConfig::default(),
            cluster: ClusterConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

/// TLS settings. Without `cert`/`key` a self-signed dev certificate is generated in the data dir.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the broker.
    pub cert: Option<PathBuf>,
    /// PEM private key of the broker.
    pub key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mTLS). When set, clients may present a
    /// certificate signed by it; its subject common name becomes the principal.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients that present no certificate.
    pub require_client_cert: bool,
}

/// Token authentication: the `Hello` frame may carry a token bound to a principal name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// token → principal name.
    pub tokens: BTreeMap<String, String>,
    /// Refuse sessions without a known token (or client certificate).
    pub require: bool,
}

/// Decode and per-session limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_key_bytes: usize,
    pub max_leases_per_session: usize,
    pub max_waiters_per_session: usize,
    /// A connection must open its stream and send `Hello` within this (ms), else it is closed.
    pub hello_timeout_ms: u64,
    /// Largest `Hello` frame accepted (bytes): checked before authentication.
    pub max_hello_bytes: usize,
    /// Answers queued for a session beyond this (bytes) stop the broker reading its requests,
    /// so QUIC flow control pushes back on a client that does not read.
    pub max_outbox_bytes: usize,
    /// A session whose answers stayed over `max_outbox_bytes` this long (ms) is closed.
    pub outbox_stall_ms: u64,
    /// Live keys (held, queued or blocked by lock delay) in the table.
    pub max_keys: usize,
    /// Queued acquires and `wait_until_unlocked` watchers on one key.
    pub max_queued_per_key: usize,
    /// Queued acquires and watchers in the whole broker.
    pub max_queued_total: usize,
    /// QUIC connections at once (handshaking included).
    pub max_connections: usize,
    /// QUIC connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// New connections a second from one IP address (after a burst of
    /// `handshake_burst_per_ip`); faster attempts are refused before the TLS handshake.
    pub handshake_rate_per_ip: u32,
    pub handshake_burst_per_ip: u32,
    /// When the broker knows authenticated principals (`auth.tokens` or `tls.client_ca`), the
    /// anonymous principal as a whole gets at most this share (percent) of `max_connections`
    /// (its sessions), `max_keys`, `max_queued_total` and leases: the rest stays free for
    /// authenticated clients whatever anonymous clients do. Without authentication configured
    /// everyone is anonymous and the global limits apply as they are.
    pub anonymous_share_percent: u8,
    /// When authenticated principals exist, requests a second all anonymous sessions together
    /// have handled (0: no bound); past it their requests wait unread.
    pub anonymous_requests_per_sec: u32,
    /// Sessions of one principal at once (default: `max_connections`).
    pub max_sessions_per_principal: Option<usize>,
    /// Live keys one principal's requests created (default: `max_keys`).
    pub max_keys_per_principal: Option<usize>,
    /// Leases one principal holds (default: `max_keys`).
    pub max_leases_per_principal: Option<usize>,
    /// Queue records of one principal: queued acquires (a multi-key acquire one per key),
    /// watchers and acquires retrying against the sync mirror (default: `max_queued_total`).
    pub max_queued_per_principal: Option<usize>,
    /// Answers queued for all sessions together (bytes). Past half of it, the sessions
    /// holding more than their fair share of that half are not read until theirs drain (one
    /// that does not drain within `outbox_stall_ms` is closed); past all of it, only sessions
    /// with nothing queued are read. The sum stays within it, plus one answer a session.
    pub max_outbox_total_bytes: usize,
    /// QUIC handshakes in progress above which a new connection from an address not yet
    /// validated is answered with a Retry (one round trip proving the address) first.
    pub retry_above_handshakes: usize,
}

/// The principal of sessions that present neither a token nor a client certificate.
pub const ANONYMOUS: &str = "anonymous";

impl LimitsConfig {
    /// The caps of every authenticated principal.
    pub fn principal_caps(&self) -> lockbroker_core::PrincipalCaps {
        lockbroker_core::PrincipalCaps {
            keys: self.max_keys_per_principal.unwrap_or(self.max_keys),
            leases: self.max_leases_per_principal.unwrap_or(self.max_keys),
            queued: self
                .max_queued_per_principal
                .unwrap_or(self.max_queued_total),
        }
    }

    /// `n`'s anonymous share (at least 1).
    fn share(&self, n: usize) -> usize {
        let pct = usize::from(self.anonymous_share_percent.min(100));
        (n / 100)
            .saturating_mul(pct)
            .saturating_add(n % 100 * pct / 100)
            .max(1)
    }

    /// The anonymous principal's caps when authenticated principals exist (`authenticated`),
    /// else the caps of any principal.
    pub fn anonymous_caps(&self, authenticated: bool) -> lockbroker_core::PrincipalCaps {
        let caps = self.principal_caps();
        if !authenticated {
            return caps;
        }
        lockbroker_core::PrincipalCaps {
            keys: caps.keys.min(self.share(self.max_keys)),
            leases: caps.leases.min(self.share(self.max_keys)),
            queued: caps.queued.min(self.share(self.max_queued_total)),
        }
    }

    /// Sessions one principal may have open (`anonymous`: the anonymous principal, when
    /// authenticated principals exist).
    pub fn session_cap(&self, anonymous: bool) -> usize {
        let cap = self
            .max_sessions_per_principal
            .unwrap_or(self.max_connections);
        if anonymous {
            cap.min(self.share(self.max_connections))
        } else {
            cap
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: lockbroker_proto::Limits::DEFAULT_MAX_FRAME,
            max_key_bytes: lockbroker_proto::Limits::DEFAULT_MAX_KEY,
            max_leases_per_session: 10_000,
            max_waiters_per_session: 10_000,
            hello_timeout_ms: 5_000,
            max_hello_bytes: 4_096,
            max_outbox_bytes: 1 << 20,
            outbox_stall_ms: 10_000,
            max_keys: 1_000_000,
            max_queued_per_key: 10_000,
            max_queued_total: 100_000,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            handshake_rate_per_ip: 200,
            handshake_burst_per_ip: 1_000,
            anonymous_share_percent: 50,
            anonymous_requests_per_sec: 10_000,
            max_sessions_per_principal: None,
            max_keys_per_principal: None,
            max_leases_per_principal: None,
            max_queued_per_principal: None,
            max_outbox_total_bytes: 64 << 20,
            retry_above_handshakes: 128,
        }
    }
}

/// Lease behaviour.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocksConfig {
    /// TTL of a lease when the client asks for none (ms).
    pub default_ttl_ms: u64,
    /// Longest TTL granted (ms); longer requests are cut to it.
    pub max_ttl_ms: u64,
    /// After a lost session's lease expires, the key stays blocked this long (ms).
    pub lock_delay_ms: u64,
}

impl Default for LocksConfig {
    fn default() -> Self {
        LocksConfig {
            default_ttl_ms: crate::table::wire::millis(crate::table::serve::DEFAULT_TTL),
            max_ttl_ms: 3_600_000,
            lock_delay_ms: 0,
        }
    }
}

/// QUIC transport settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// A connection silent this long is lost (ms).
    pub idle_timeout_ms: u64,
    /// Keep-alive interval the broker sends (ms).
    pub keep_alive_ms: u64,
    /// Grace period for in-flight writes at shutdown (ms).
    pub shutdown_grace_ms: u64,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            idle_timeout_ms: 10_000,
            keep_alive_ms: 3_000,
            shutdown_grace_ms: 2_000,
        }
    }
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.limits.max_key_bytes == 0 || self.limits.max_frame_bytes < 64 {
            return bad("limits.max_key_bytes must be > 0 and limits.max_frame_bytes >= 64");
        }
        if self.limits.max_key_bytes + 64 > self.limits.max_frame_bytes {
            return bad("limits.max_frame_bytes must exceed limits.max_key_bytes by at least 64");
        }
        if self.locks.default_ttl_ms == 0 || self.locks.max_ttl_ms < self.locks.default_ttl_ms {
            return bad("locks.default_ttl_ms must be > 0 and <= locks.max_ttl_ms");
        }
        if self.quic.idle_timeout_ms == 0 || self.quic.keep_alive_ms >= self.quic.idle_timeout_ms {
            return bad("quic.keep_alive_ms must be below quic.idle_timeout_ms");
        }
        if self.limits.hello_timeout_ms == 0 {
            return bad("limits.hello_timeout_ms must be > 0");
        }
        if self.limits.max_hello_bytes < 64 {
            return bad("limits.max_hello_bytes must be at least 64");
        }
        if self.limits.max_outbox_bytes < self.limits.max_frame_bytes {
            return bad("limits.max_outbox_bytes must be at least limits.max_frame_bytes");
        }
        if self.limits.outbox_stall_ms == 0 {
            return bad("limits.outbox_stall_ms must be > 0");
        }
        let l = &self.limits;
        if [l.max_keys, l.max_queued_per_key, l.max_queued_total].contains(&0)
            || l.max_connections == 0
            || l.max_connections_per_ip == 0
            || l.handshake_rate_per_ip == 0
            || l.handshake_burst_per_ip == 0
        {
            return bad("limits.max_keys, max_queued_*, max_connections*, handshake_* must be > 0");
        }
        if l.anonymous_share_percent > 100 {
            return bad("limits.anonymous_share_percent must be at most 100");
        }
        let per_principal = [
            l.max_sessions_per_principal,
            l.max_keys_per_principal,
            l.max_leases_per_principal,
            l.max_queued_per_principal,
        ];
        if per_principal.contains(&Some(0)) {
            return bad("limits.max_*_per_principal must be > 0");
        }
        if l.max_outbox_total_bytes < l.max_outbox_bytes {
            return bad("limits.max_outbox_total_bytes must be at least limits.max_outbox_bytes");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key go together");
        }
        for r in &self.redis {
            r.validate().map_err(ConfigError::Invalid)?;
        }
        if self.cluster.enabled() && self.mirror.path.is_some() {
            // A broker restores its mirrored leases at start, whichever shards they are in; in
            // a cluster another member may own those shards by then. Failover is protected by
            // the takeover grace instead (README "Run a cluster").
            return bad(
                "[mirror] and [cluster] do not combine: cluster mode keeps locks in memory, \
                 failover is covered by the takeover grace",
            );
        }
        self.mirror
            .validate(&self.redis)
            .map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        self.admin.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// Whether sessions may authenticate as a principal other than `anonymous` (tokens or
    /// client certificates configured): then the anonymous principal gets only its share of
    /// the limits (`limits.anonymous_share_percent`).
    pub fn has_authenticated_principals(&self) -> bool {
        !self.auth.tokens.is_empty() || self.tls.client_ca.is_some()
    }

    /// The decode limits in force.
    pub fn proto_limits(&self) -> lockbroker_proto::Limits {
        lockbroker_proto::Limits {
            max_frame: self.limits.max_frame_bytes,
            max_key: self.limits.max_key_bytes,
        }
    }

    pub(crate) fn default_ttl(&self) -> Duration {
        Duration::from_millis(self.locks.default_ttl_ms)
    }

    /// The longest TTL granted: `locks.max_ttl_ms`, capped by `cluster.max_ttl_ms` in cluster
    /// mode.
    pub(crate) fn max_ttl(&self) -> Duration {
        let mut ms = self.locks.max_ttl_ms;
        if self.cluster.enabled() {
            ms = ms.min(self.cluster.max_ttl_ms);
        }
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker.example.toml");
        let cfg = Config::load(&path).expect("example config loads");
        let def = Config::default();
        assert_eq!(cfg.listen, def.listen);
        assert_eq!(cfg.data_dir, def.data_dir);
        assert_eq!(cfg.limits.max_key_bytes, def.limits.max_key_bytes);
        assert_eq!(cfg.locks.default_ttl_ms, def.locks.default_ttl_ms);
        assert_eq!(cfg.quic.idle_timeout_ms, def.quic.idle_timeout_ms);
    }

    #[test]
    fn the_documented_cluster_table_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker.example.toml");
        let text = std::fs::read_to_string(path).expect("example");
        let table: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# [cluster]"))
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        assert!(table.contains("etcd"), "{table}");
        let cfg: Config = toml::from_str(&table).expect("the documented [cluster] table parses");
        cfg.validate().expect("and validates");
        assert!(cfg.cluster.enabled());
        assert_eq!(cfg.max_ttl(), Duration::from_millis(cfg.cluster.max_ttl_ms));
        let mut bad = cfg.clone();
        let mut mirrored = cfg.clone();
        mirrored.mirror.path = Some("m.wasm".into());
        assert!(
            matches!(mirrored.validate(), Err(ConfigError::Invalid(m)) if m.contains("[mirror] and [cluster]"))
        );
        bad.cluster.ownership_ttl_ms = 2500;
        assert!(bad.validate().is_err());
        let mut keyless = cfg.clone();
        keyless.cluster.key_file = None;
        assert!(
            matches!(keyless.validate(), Err(ConfigError::Invalid(m)) if m.contains("cluster.key_file is required"))
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("lb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, "listn = \"127.0.0.1:1\"\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
        std::fs::write(&p, "[locks]\ndefault_ttl_ms = 0\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Invalid(_))));
        std::fs::write(&p, "[tls]\ncert = \"a.pem\"\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Invalid(_))));
        assert!(matches!(
            Config::load(&dir.join("missing.toml")),
            Err(ConfigError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
