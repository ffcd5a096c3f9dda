//! `template-key-policy`: the starting point for your own lockbroker key policy.
//!
//! Copy this folder (e.g. to `plugins/my-policy/`), rename the package in its `Cargo.toml`, add
//! it to `members` in `plugins/Cargo.toml`, edit `check` below, then build with
//!
//! ```sh
//! plugins/build.sh        # or: cd plugins && cargo build --release --target wasm32-wasip2 -p my-policy
//! ```
//!
//! and load `plugins/dist/my_policy.wasm` with a `[[plugin]]` entry of
//! `kind = "key-policy"` (see plugins/README.md). Check it first with
//! `lockbroker plugin check my_policy.wasm`.
//!
//! What this template does, as an example: it denies keys that start with the `deny_prefix`
//! setting (default `forbidden/`) and keys with an empty path segment (`a//b`), and allows
//! everything else. It logs its settings once through the host.

// The code `wit_bindgen::generate!` emits trips this lint (8-argument export shims).
#![allow(clippy::too_many_arguments)]

use std::sync::OnceLock;

// The world's own types (`LockRequest`, `KeyDecision`) are generated at the crate root;
// `lockbroker::plugin::types` holds the others (`LockMode`, `Operation`), `host` the functions the
// broker gives every plugin (log, now_ms, config).
use lockbroker::plugin::host::{self, LogLevel};

// Generates the bindings for the `key-policy` world from the WIT package in the repository's
// `wit/` folder. If you move the crate elsewhere, copy `wit/` next to it and use `path: "wit"`.
wit_bindgen::generate!({
    world: "key-policy",
    path: "../../wit",
});

/// Settings are read once per instance: the broker reuses instances across calls and makes new
/// ones after a reload, so a `OnceLock` is the right place for parsed configuration.
fn deny_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = host::config("deny_prefix").unwrap_or_else(|| "forbidden/".to_string());
        host::log(
            LogLevel::Info,
            &format!("template: denying keys under `{prefix}`"),
        );
        prefix
    })
}

struct Template;

impl Guest for Template {
    /// Called for every request. Keep it fast: the default time budget is 1 ms per call, and a
    /// trap (panic), timeout or oversize rewrite denies the request and recycles the instance.
    fn check(req: LockRequest) -> KeyDecision {
        let prefix = deny_prefix();
        if !prefix.is_empty() && req.key.starts_with(prefix.as_bytes()) {
            return KeyDecision::Deny(format!(
                "template: principal `{}` may not use keys under `{prefix}`",
                req.principal
            ));
        }
        if req.key.windows(2).any(|w| w == b"//") {
            return KeyDecision::Deny(format!(
                "template: key `{}` has an empty path segment",
                String::from_utf8_lossy(&req.key)
            ));
        }
        // To move a key elsewhere instead: `KeyDecision::Rewrite(new_key_bytes)`.
        KeyDecision::Allow
    }
}

export!(Template);
