//! `RedisSettings`: one `[[redis]]` table of the broker configuration.
//!
//! ```toml
//! [[redis]]
//! name = "main"                       # what plugins name in redis.execute/pipeline
//! url = "redis://127.0.0.1:6379/0"    # rediss:// for TLS
//! # username = "lockbroker"           # ACL user (overrides the URL's)
//! # password = "secret"               # overrides the URL's
//! # tls = false                       # true = TLS even for a redis:// URL
//! connect_timeout_ms = 1000
//! command_timeout_ms = 1000
//! ```

use serde::Deserialize;

/// One named Redis connection.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Unique name, referenced by `[mirror] connections` and by plugins.
    pub name: String,
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub url: String,
    /// ACL user name (overrides the one in the URL).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (overrides the one in the URL).
    #[serde(default)]
    pub password: Option<String>,
    /// Use TLS even though the URL says `redis://`.
    #[serde(default)]
    pub tls: bool,
    /// Connect timeout in ms.
    #[serde(default = "default_timeout")]
    pub connect_timeout_ms: u64,
    /// Response timeout per command or pipeline in ms.
    #[serde(default = "default_timeout")]
    pub command_timeout_ms: u64,
}

fn default_timeout() -> u64 {
    1_000
}

impl RedisSettings {
    /// Settings for `url` with every optional field at its default.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        RedisSettings {
            name: name.into(),
            url: url.into(),
            username: None,
            password: None,
            tls: false,
            connect_timeout_ms: default_timeout(),
            command_timeout_ms: default_timeout(),
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("a [[redis]] connection needs a name".into());
        }
        if self.connect_timeout_ms == 0 || self.command_timeout_ms == 0 {
            return Err(format!("redis `{}`: timeouts must be > 0", self.name));
        }
        self.connection_info().map(|_| ())
    }

    /// The connection info for the `redis` crate, with overrides applied.
    pub(crate) fn connection_info(&self) -> Result<redis::ConnectionInfo, String> {
        let mut url = self.url.clone();
        if self.tls
            && let Some(rest) = url.strip_prefix("redis://")
        {
            url = format!("rediss://{rest}");
        }
        let bad = |e: redis::RedisError| format!("redis `{}`: bad url: {e}", self.name);
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(bad)?;
        let mut redis = info.redis_settings().clone();
        if let Some(user) = &self.username {
            redis = redis.set_username(user.clone());
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password.clone());
        }
        info = info.set_redis_settings(redis);
        Ok(info)
    }
}
