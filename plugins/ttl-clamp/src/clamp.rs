//! The clamp rules: parsing the settings and computing a TTL. Pure Rust with no WIT types, so
//! it is unit-tested natively (`cargo test -p ttl-clamp`).

/// Default, minimum and maximum TTL in milliseconds; `None` = inherit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// TTL used when the request asks for 0 ("default").
    pub default_ms: Option<u64>,
    /// Smallest TTL granted.
    pub min_ms: Option<u64>,
    /// Largest TTL granted.
    pub max_ms: Option<u64>,
}

/// Global limits plus per-prefix overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clamp {
    /// Applies to every key; fields a prefix rule leaves unset come from here.
    pub global: Limits,
    /// `(prefix, limits)`; the longest matching prefix wins.
    pub rules: Vec<(String, Limits)>,
}

/// Built-in defaults: default 30 s, min 1 ms, no max.
pub const DEFAULT_TTL_MS: u64 = 30_000;

fn num(field: &str, value: &str) -> Result<u64, String> {
    value.trim().parse::<u64>().map_err(|_| {
        format!(
            "`{field}`: `{}` is not a number of milliseconds",
            value.trim()
        )
    })
}

/// Builds the clamp from the settings: `default_ms`, `min_ms`, `max_ms` (globals) and
/// `rules` = `prefix=field:value[,field:value...][;prefix=...]` with fields `default`, `min`,
/// `max`. `get` looks a setting up.
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Clamp, String> {
    let opt = |name: &str| get(name).map(|v| num(name, &v)).transpose();
    let global = Limits {
        default_ms: Some(opt("default_ms")?.unwrap_or(DEFAULT_TTL_MS)),
        min_ms: Some(opt("min_ms")?.unwrap_or(1)),
        max_ms: opt("max_ms")?,
    };
    let mut rules = Vec::new();
    if let Some(text) = get("rules") {
        for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let (prefix, fields) = rule
                .split_once('=')
                .ok_or_else(|| format!("rule `{rule}`: expected `prefix=field:value,...`"))?;
            let mut limits = Limits::default();
            for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let (name, value) = field
                    .split_once(':')
                    .ok_or_else(|| format!("rule `{rule}`: `{field}` is not `field:value`"))?;
                let value = Some(num(name, value)?);
                match name.trim() {
                    "default" => limits.default_ms = value,
                    "min" => limits.min_ms = value,
                    "max" => limits.max_ms = value,
                    other => {
                        return Err(format!(
                            "rule `{rule}`: unknown field `{other}` (use default, min, max)"
                        ));
                    }
                }
            }
            rules.push((prefix.trim().to_string(), limits));
        }
    }
    let clamp = Clamp { global, rules };
    // Validate every effective combination once, so a bad config is reported at load.
    let mut scopes = vec![("(global)".to_string(), clamp.effective(&[]))];
    for (prefix, _) in &clamp.rules {
        scopes.push((prefix.clone(), clamp.effective(prefix.as_bytes())));
    }
    for (scope, l) in scopes {
        let (min, max) = (l.min_ms.unwrap_or(1), l.max_ms.unwrap_or(u64::MAX));
        if min == 0 {
            return Err(format!("{scope}: min must be at least 1 ms"));
        }
        if min > max {
            return Err(format!("{scope}: min {min} ms is above max {max} ms"));
        }
    }
    Ok(clamp)
}

impl Clamp {
    /// The limits for `key`: the longest matching rule, with unset fields from the globals.
    pub fn effective(&self, key: &[u8]) -> Limits {
        let rule = self
            .rules
            .iter()
            .filter(|(p, _)| key.starts_with(p.as_bytes()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, l)| *l)
            .unwrap_or_default();
        Limits {
            default_ms: rule.default_ms.or(self.global.default_ms),
            min_ms: rule.min_ms.or(self.global.min_ms),
            max_ms: rule.max_ms.or(self.global.max_ms),
        }
    }

    /// The TTL to grant for `requested_ms` (0 = default) on `key`; always at least 1 ms.
    pub fn grant(&self, key: &[u8], requested_ms: u64) -> u64 {
        let l = self.effective(key);
        let ttl = if requested_ms == 0 {
            l.default_ms.unwrap_or(DEFAULT_TTL_MS)
        } else {
            requested_ms
        };
        ttl.clamp(
            l.min_ms.unwrap_or(1).max(1),
            l.max_ms.unwrap_or(u64::MAX).max(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn clamp(settings: &[(&str, &str)]) -> Result<Clamp, String> {
        let map: HashMap<String, String> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = clamp(&[]).unwrap();
        assert_eq!(c.grant(b"k", 0), DEFAULT_TTL_MS);
        assert_eq!(c.grant(b"k", 5), 5);
        assert_eq!(c.grant(b"k", u64::MAX), u64::MAX);
    }

    #[test]
    fn per_prefix_longest_wins() {
        let c = clamp(&[
            ("default_ms", "10000"),
            ("max_ms", "60000"),
            (
                "rules",
                "jobs/=min:1000,default:5000; jobs/nightly/=max:3600000; cache/=max:2000",
            ),
        ])
        .unwrap();
        assert_eq!(c.grant(b"other", 0), 10_000);
        assert_eq!(c.grant(b"other", 100_000), 60_000);
        assert_eq!(c.grant(b"jobs/a", 0), 5_000);
        assert_eq!(c.grant(b"jobs/a", 10), 1_000);
        assert_eq!(c.grant(b"jobs/nightly/x", 1_000_000), 1_000_000);
        assert_eq!(c.grant(b"jobs/nightly/x", 10), 10); // min comes from the global (1)
        assert_eq!(c.grant(b"cache/x", 0), 2_000); // default 10 s clamped to max 2 s
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(clamp(&[("min_ms", "x")]).is_err());
        assert!(clamp(&[("min_ms", "0")]).is_err());
        assert!(clamp(&[("min_ms", "10"), ("max_ms", "5")]).is_err());
        assert!(clamp(&[("rules", "a/=foo:1")]).is_err());
        assert!(clamp(&[("rules", "a/")]).is_err());
        assert!(clamp(&[("max_ms", "100"), ("rules", "a/=min:500")]).is_err());
    }
}
