//! The ACL itself: parsing the `rules` setting and deciding on a request. Pure Rust with no
//! WIT types, so it is unit-tested natively (`cargo test -p key-prefix-acl`).

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `r`: shared acquire, inspect, wait.
    Read,
    /// `w`: exclusive or semaphore acquire.
    Write,
}

/// One allowed prefix with its rights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Key prefix; may contain `{principal}`, replaced by the requesting principal.
    pub prefix: String,
    /// `r` right.
    pub read: bool,
    /// `w` right.
    pub write: bool,
}

/// The grants of one principal (or of `default`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Principal name; `default` applies to principals without an entry of their own.
    pub principal: String,
    /// Allowed prefixes.
    pub grants: Vec<Grant>,
}

/// The parsed ACL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// Entries in configuration order.
    pub entries: Vec<Entry>,
}

/// Parses `rules`: `principal=prefix:rights[,prefix:rights...][;principal=...]`.
///
/// * `rights` is a non-empty combination of `r` and `w`.
/// * the prefix is everything before the last `:` of the item (so it may contain `:`),
///   may be empty (every key), and may contain `{principal}`.
/// * the principal `default` applies to principals that have no entry of their own.
/// * whitespace around items is ignored; empty items are skipped.
pub fn parse(rules: &str) -> Result<Acl, String> {
    let mut acl = Acl::default();
    for entry in rules.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (principal, grants) = entry
            .split_once('=')
            .ok_or_else(|| format!("rule `{entry}`: expected `principal=prefix:rights`"))?;
        let principal = principal.trim();
        if principal.is_empty() {
            return Err(format!("rule `{entry}`: empty principal"));
        }
        if acl.entries.iter().any(|e| e.principal == principal) {
            return Err(format!("principal `{principal}` listed twice"));
        }
        let mut parsed = Vec::new();
        for item in grants.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let (prefix, rights) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("rule `{entry}`: `{item}` lacks `:rights`"))?;
            let rights = rights.trim();
            if rights.is_empty() || rights.chars().any(|c| c != 'r' && c != 'w') {
                return Err(format!(
                    "rule `{entry}`: rights `{rights}` must be a combination of `r` and `w`"
                ));
            }
            parsed.push(Grant {
                prefix: prefix.to_string(),
                read: rights.contains('r'),
                write: rights.contains('w'),
            });
        }
        acl.entries.push(Entry {
            principal: principal.to_string(),
            grants: parsed,
        });
    }
    Ok(acl)
}

impl Acl {
    /// `Ok(())` when `principal` may do `need` on `key`, else the deny reason.
    pub fn check(&self, principal: &str, key: &[u8], need: Need) -> Result<(), String> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.principal == principal)
            .or_else(|| self.entries.iter().find(|e| e.principal == "default"));
        let Some(entry) = entry else {
            return Err(format!(
                "acl: principal `{principal}` has no rule (key `{}`)",
                String::from_utf8_lossy(key)
            ));
        };
        let allowed = entry.grants.iter().any(|g| {
            let right = match need {
                Need::Read => g.read,
                Need::Write => g.write,
            };
            right && key.starts_with(expand(&g.prefix, principal).as_bytes())
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "acl: principal `{principal}` may not {} key `{}`",
                match need {
                    Need::Read => "read-lock/inspect/wait on (needs `r`)",
                    Need::Write => "exclusively lock (needs `w`)",
                },
                String::from_utf8_lossy(key)
            ))
        }
    }
}

/// Replaces `{principal}` in `template`.
pub fn expand(template: &str, principal: &str) -> String {
    template.replace("{principal}", principal)
}

/// The key after the optional `rewrite_prefix` (a template with `{principal}`): `None` when the
/// key already starts with the expanded prefix (rewriting is idempotent), else the new key.
pub fn rewrite(prefix_template: &str, principal: &str, key: &[u8]) -> Option<Vec<u8>> {
    let prefix = expand(prefix_template, principal);
    if prefix.is_empty() || key.starts_with(prefix.as_bytes()) {
        return None;
    }
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(key);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let acl = parse("alice=orders/:rw, locks/:r; bob=reports/:r; default=home/{principal}/:rw")
            .unwrap();
        assert_eq!(acl.entries.len(), 3);
        assert!(acl.check("alice", b"orders/1", Need::Write).is_ok());
        assert!(acl.check("alice", b"locks/x", Need::Read).is_ok());
        assert!(acl.check("alice", b"locks/x", Need::Write).is_err());
        assert!(acl.check("bob", b"reports/q1", Need::Read).is_ok());
        let err = acl.check("bob", b"orders/1", Need::Read).unwrap_err();
        assert!(err.contains("bob") && err.contains("orders/1"), "{err}");
        assert!(acl.check("carol", b"home/carol/a", Need::Write).is_ok());
        assert!(acl.check("carol", b"home/dave/a", Need::Write).is_err());
    }

    #[test]
    fn no_default_means_deny() {
        let acl = parse("alice=:rw").unwrap();
        assert!(acl.check("alice", b"anything", Need::Write).is_ok());
        let err = acl.check("eve", b"k", Need::Read).unwrap_err();
        assert!(err.contains("eve") && err.contains("no rule"), "{err}");
    }

    #[test]
    fn rejects_bad_rules() {
        assert!(parse("alice").is_err());
        assert!(parse("alice=orders/").is_err());
        assert!(parse("alice=orders/:x").is_err());
        assert!(parse("=orders/:r").is_err());
        assert!(parse("a=x:r;a=y:r").is_err());
        assert_eq!(parse("  ").unwrap(), Acl::default());
    }

    #[test]
    fn prefix_may_contain_colons() {
        let acl = parse("svc=urn:lock::rw").unwrap();
        assert_eq!(acl.entries[0].grants[0].prefix, "urn:lock:");
        assert!(acl.check("svc", b"urn:lock:1", Need::Write).is_ok());
    }

    #[test]
    fn rewrite_is_idempotent() {
        assert_eq!(
            rewrite("tenant/{principal}/", "alice", b"k"),
            Some(b"tenant/alice/k".to_vec())
        );
        assert_eq!(
            rewrite("tenant/{principal}/", "alice", b"tenant/alice/k"),
            None
        );
        assert_eq!(rewrite("", "alice", b"k"), None);
    }
}
