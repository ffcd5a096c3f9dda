//! `key-prefix-acl`: a lockbroker key policy. Principals may only lock keys under the prefixes
//! the `rules` setting grants them; optionally every allowed key is rewritten under a
//! per-principal prefix (`rewrite_prefix`) to give each principal its own namespace.
//!
//! Settings (`[plugin.config]` in the broker configuration):
//! * `rules` (required): `principal=prefix:rights[,prefix:rights...][;principal=...]`, rights
//!   a combination of `r` (shared acquire, inspect, wait) and `w` (exclusive and semaphore
//!   acquire). `{principal}` in a prefix is replaced by the requesting principal; the principal
//!   `default` applies to principals without an entry. Example:
//!   `alice=orders/:rw;bob=reports/:r;default=home/{principal}/:rw`.
//! * `rewrite_prefix` (optional): e.g. `tenant/{principal}/`. After the ACL allowed a request,
//!   its key is rewritten to `<expanded prefix><key>` unless it already starts with it. The ACL
//!   is checked against the key as the client sent it.
//!
//! A missing or malformed `rules` setting denies every request with the parse error as reason
//! (fail closed), and logs it once.

// The code `wit_bindgen::generate!` emits trips this lint (8-argument export shims).
#![allow(clippy::too_many_arguments)]

mod rules;

use std::sync::OnceLock;

use lockbroker::plugin::host::{self, LogLevel};
use lockbroker::plugin::types::{LockMode, Operation};

wit_bindgen::generate!({
    world: "key-policy",
    path: "../../wit",
});

/// Largest key the broker accepts.
const MAX_KEY: usize = 1024;

struct Settings {
    acl: Result<rules::Acl, String>,
    rewrite_prefix: Option<String>,
}

/// Settings are read once per instance (the broker reuses instances across calls, and makes
/// new ones after a reload).
fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let acl = match host::config("rules") {
            Some(text) => rules::parse(&text).map_err(|e| format!("acl: bad `rules` setting: {e}")),
            None => Err("acl: the `rules` setting is missing".to_string()),
        };
        match &acl {
            Ok(acl) => host::log(
                LogLevel::Info,
                &format!("acl loaded with {} principal entries", acl.entries.len()),
            ),
            Err(e) => host::log(LogLevel::Error, e),
        }
        Settings {
            acl,
            rewrite_prefix: host::config("rewrite_prefix").filter(|p| !p.is_empty()),
        }
    })
}

struct KeyPrefixAcl;

impl Guest for KeyPrefixAcl {
    fn check(req: LockRequest) -> KeyDecision {
        let settings = settings();
        let acl = match &settings.acl {
            Ok(acl) => acl,
            Err(e) => return KeyDecision::Deny(e.clone()),
        };
        let need = match (req.operation, req.mode) {
            (Operation::Inspect | Operation::Wait, _) | (Operation::Acquire, LockMode::Shared) => {
                rules::Need::Read
            }
            (Operation::Acquire, LockMode::Exclusive | LockMode::Semaphore(_)) => {
                rules::Need::Write
            }
        };
        if let Err(reason) = acl.check(&req.principal, &req.key, need) {
            return KeyDecision::Deny(reason);
        }
        match settings
            .rewrite_prefix
            .as_deref()
            .and_then(|p| rules::rewrite(p, &req.principal, &req.key))
        {
            None => KeyDecision::Allow,
            Some(key) if key.len() > MAX_KEY => KeyDecision::Deny(format!(
                "acl: key `{}` is too long after adding the tenant prefix ({} > {MAX_KEY} bytes)",
                String::from_utf8_lossy(&req.key),
                key.len()
            )),
            Some(key) => KeyDecision::Rewrite(key),
        }
    }
}

export!(KeyPrefixAcl);
