//! Operator-facing plugin settings: one `[[plugin]]` table of the broker configuration, with
//! defaults and validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::PluginError;

/// Default per-call time budget of a policy plugin.
pub const DEFAULT_TIME_BUDGET: Duration = Duration::from_millis(1);
/// Default linear-memory cap per plugin instance.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;
/// Default calls in flight at once per plugin.
pub const DEFAULT_MAX_INSTANCES: usize = 32;
/// Most calls in flight at once one plugin may be given (the engine's instance pool is shared).
pub const MAX_INSTANCES: usize = 128;
/// Largest memory cap an operator may configure (the engine's pooling allocator is sized for it).
pub const MAX_MEMORY_LIMIT: usize = 256 << 20;
/// Most decisions a policy plugin's decision cache may keep (`decision_cache`).
pub const MAX_DECISION_CACHE: usize = 1 << 20;
/// Largest time budget an operator may configure for a hot-path policy call.
pub const MAX_TIME_BUDGET: Duration = Duration::from_secs(10);

/// Which WIT world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// `key-policy`: allow / rewrite / deny each request.
    KeyPolicy,
    /// `ttl-policy`: decide the granted TTL.
    TtlPolicy,
    /// `mirror`: receive lock events, restore at start (host side not implemented yet).
    Mirror,
}

impl PluginKind {
    /// The WIT world name.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::KeyPolicy => "key-policy",
            PluginKind::TtlPolicy => "ttl-policy",
            PluginKind::Mirror => "mirror",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.world())
    }
}

/// What to do with a request when the plugin fails (traps, times out, exceeds its memory,
/// returns an invalid result, or cannot be instantiated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail closed: deny the request with the failure as reason (default).
    #[default]
    Deny,
    /// Fail open: skip this plugin for the request, as if it had allowed it unchanged.
    Allow,
}

/// One configured plugin.
///
/// Deserializes from a `[[plugin]]` table:
/// ```toml
/// [[plugin]]
/// name = "acl"
/// path = "plugins/dist/key_prefix_acl.wasm"
/// kind = "key-policy"        # key-policy | ttl-policy | mirror
/// on_error = "deny"          # deny (default) | allow
/// time_budget_ms = 1         # default 1
/// memory_limit_mb = 16       # default 16
/// max_instances = 32         # calls at once (instances); default 32, at most 128
/// decision_cache = 0         # decisions remembered (policies whose decision depends only on
///                            # the request and [plugin.config]); default 0 = off
/// [plugin.config]            # the plugin's own settings, served by host.config(name)
/// rules = "alice=orders/:rw;bob=reports/:r"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct PluginSettings {
    /// Unique name, used in logs, stats and deny reasons.
    pub name: String,
    /// The component file (`.wasm`), relative to the broker's working directory.
    pub path: PathBuf,
    /// Which world it implements.
    pub kind: PluginKind,
    /// Fail closed (default) or open.
    pub on_error: OnError,
    /// Per-call time budget (default 1 ms).
    pub time_budget: Duration,
    /// Linear-memory cap per instance in bytes (default 16 MiB).
    pub memory_limit: usize,
    /// Calls in flight at once (each on its own instance). A call waits for a free one within
    /// its time budget, then is refused as overload — never let through, whatever `on_error`.
    pub max_instances: usize,
    /// Decisions of a policy plugin to remember (0, the default: none). Only for plugins whose
    /// decision depends on nothing but the request (key, mode, TTL, principal, operation) and
    /// their `config` — e.g. the bundled `key-prefix-acl` and `ttl-clamp` — not on time,
    /// randomness or outside state: a remembered decision is replayed without calling the
    /// plugin. Faults are never remembered; a reload starts with an empty cache.
    pub decision_cache: usize,
    /// The plugin's own settings, served by `host.config(name)`.
    pub config: BTreeMap<String, String>,
}

impl PluginSettings {
    /// Settings with every optional field at its default.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, kind: PluginKind) -> Self {
        PluginSettings {
            name: name.into(),
            path: path.into(),
            kind,
            on_error: OnError::Deny,
            time_budget: DEFAULT_TIME_BUDGET,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_instances: DEFAULT_MAX_INSTANCES,
            decision_cache: 0,
            config: BTreeMap::new(),
        }
    }

    /// Remembers up to `entries` decisions (builder style); see [`PluginSettings::decision_cache`].
    pub fn with_decision_cache(mut self, entries: usize) -> Self {
        self.decision_cache = entries;
        self
    }

    /// Adds one `host.config` setting (builder style).
    pub fn with_config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(name.into(), value.into());
        self
    }

    /// Checks the limits; called by `PluginHost::load` as well as by deserialization.
    pub fn validate(&self) -> Result<(), PluginError> {
        let bad = |reason: String| {
            Err(PluginError::Settings {
                name: self.name.clone(),
                reason,
            })
        };
        if self.name.trim().is_empty() {
            return bad("name must not be empty".into());
        }
        if self.time_budget.is_zero() || self.time_budget > MAX_TIME_BUDGET {
            return bad(format!(
                "time budget {:?} must be between 1 µs and {:?}",
                self.time_budget, MAX_TIME_BUDGET
            ));
        }
        if self.memory_limit < (1 << 20) || self.memory_limit > MAX_MEMORY_LIMIT {
            return bad(format!(
                "memory limit {} bytes must be between 1 MiB and {} MiB",
                self.memory_limit,
                MAX_MEMORY_LIMIT >> 20
            ));
        }
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES {
            return bad(format!(
                "max_instances = {} must be between 1 and {MAX_INSTANCES}",
                self.max_instances
            ));
        }
        if self.decision_cache > MAX_DECISION_CACHE {
            return bad(format!(
                "decision_cache = {} must be at most {MAX_DECISION_CACHE}",
                self.decision_cache
            ));
        }
        if self.decision_cache > 0 && self.kind == PluginKind::Mirror {
            return bad("decision_cache is for policy plugins, not mirrors".into());
        }
        Ok(())
    }
}

/// The TOML shape of [`PluginSettings`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    name: String,
    path: PathBuf,
    kind: PluginKind,
    #[serde(default)]
    on_error: OnError,
    time_budget_ms: Option<u64>,
    time_budget_us: Option<u64>,
    memory_limit_mb: Option<u64>,
    max_instances: Option<usize>,
    #[serde(default)]
    decision_cache: usize,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
}

impl TryFrom<RawSettings> for PluginSettings {
    type Error = PluginError;

    fn try_from(raw: RawSettings) -> Result<Self, PluginError> {
        let name = raw.name;
        let bad = |reason: String| PluginError::Settings {
            name: name.clone(),
            reason,
        };
        let time_budget = match (raw.time_budget_ms, raw.time_budget_us) {
            (Some(_), Some(_)) => {
                return Err(bad("set time_budget_ms or time_budget_us, not both".into()));
            }
            (Some(ms), None) => Duration::from_millis(ms),
            (None, Some(us)) => Duration::from_micros(us),
            (None, None) => DEFAULT_TIME_BUDGET,
        };
        let memory_limit = match raw.memory_limit_mb {
            None => DEFAULT_MEMORY_LIMIT,
            Some(mb) => usize::try_from(mb)
                .ok()
                .and_then(|mb| mb.checked_mul(1 << 20))
                .ok_or_else(|| bad(format!("memory_limit_mb = {mb} is too large")))?,
        };
        // Plugin settings are strings; numbers and booleans are accepted and stringified so
        // `max_ms = 5000` works as well as `max_ms = "5000"`.
        let mut config = BTreeMap::new();
        for (key, value) in raw.config {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "config `{key}` must be a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            config.insert(key, text);
        }
        let settings = PluginSettings {
            name: name.clone(),
            path: raw.path,
            kind: raw.kind,
            on_error: raw.on_error,
            time_budget,
            memory_limit,
            max_instances: raw.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES),
            decision_cache: raw.decision_cache,
            config,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// Parses the `[[plugin]]` tables of a TOML document (other top-level keys are ignored), for
/// tools and tests; the broker's own config embeds `Vec<PluginSettings>` under `plugin`.
pub fn parse_plugin_tables(toml_text: &str) -> Result<Vec<PluginSettings>, PluginError> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        plugin: Vec<PluginSettings>,
    }
    toml::from_str::<Doc>(toml_text)
        .map(|d| d.plugin)
        .map_err(|e| PluginError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_default_tables() {
        let plugins = parse_plugin_tables(
            r#"
            [[plugin]]
            name = "acl"
            path = "plugins/dist/key_prefix_acl.wasm"
            kind = "key-policy"
            on_error = "allow"
            time_budget_ms = 2
            memory_limit_mb = 32
            [plugin.config]
            rules = "alice=orders/:rw"
            max_ms = 5000

            [[plugin]]
            name = "ttl"
            path = "ttl.wasm"
            kind = "ttl-policy"
            "#,
        )
        .unwrap();
        assert_eq!(plugins.len(), 2);
        let acl = &plugins[0];
        assert_eq!(acl.kind, PluginKind::KeyPolicy);
        assert_eq!(acl.on_error, OnError::Allow);
        assert_eq!(acl.time_budget, Duration::from_millis(2));
        assert_eq!(acl.memory_limit, 32 << 20);
        assert_eq!(acl.config["rules"], "alice=orders/:rw");
        assert_eq!(acl.config["max_ms"], "5000");
        assert_eq!(
            plugins[1],
            PluginSettings::new("ttl", "ttl.wasm", PluginKind::TtlPolicy)
        );
    }

    #[test]
    fn rejects_bad_tables() {
        for bad in [
            "[[plugin]]\nname='a'\npath='a'\nkind='nope'",
            "[[plugin]]\nname='a'\npath='a'\nkind='key-policy'\nbogus=1",
            "[[plugin]]\nname='a'\npath='a'\nkind='key-policy'\ntime_budget_ms=0",
            "[[plugin]]\nname='a'\npath='a'\nkind='key-policy'\nmemory_limit_mb=100000",
            "[[plugin]]\nname='a'\npath='a'\nkind='key-policy'\non_error='maybe'",
            "[[plugin]]\nname='a'\npath='a'\nkind='key-policy'\n[plugin.config]\nx=[1]",
        ] {
            assert!(parse_plugin_tables(bad).is_err(), "{bad}");
        }
    }
}
