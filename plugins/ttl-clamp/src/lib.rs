//! `ttl-clamp`: a lockbroker TTL policy. Fills in a default TTL when the client asked for 0 and
//! clamps every TTL into `[min, max]`, globally and per key prefix.
//!
//! Settings (`[plugin.config]` in the broker configuration), all in milliseconds:
//! * `default_ms` (default 30000), `min_ms` (default 1), `max_ms` (default: no maximum);
//! * `rules` (optional): `prefix=field:value[,field:value...][;prefix=...]` with fields
//!   `default`, `min`, `max`; the longest matching prefix wins and fields it leaves unset come
//!   from the globals. Example: `jobs/=min:1000,default:5000;cache/=max:2000`.
//!
//! A malformed setting makes every request fail with the parse error (the broker denies it).

// The code `wit_bindgen::generate!` emits trips this lint (8-argument export shims).
#![allow(clippy::too_many_arguments)]

mod clamp;

use std::sync::OnceLock;

use lockbroker::plugin::host::{self, LogLevel};

wit_bindgen::generate!({
    world: "ttl-policy",
    path: "../../wit",
});

/// Parsed once per instance.
fn settings() -> &'static Result<clamp::Clamp, String> {
    static SETTINGS: OnceLock<Result<clamp::Clamp, String>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let parsed = clamp::parse(host::config).map_err(|e| format!("ttl-clamp: {e}"));
        if let Err(e) = &parsed {
            host::log(LogLevel::Error, e);
        }
        parsed
    })
}

struct TtlClamp;

impl Guest for TtlClamp {
    fn grant_ttl(req: LockRequest) -> Result<u64, String> {
        let clamp = settings().as_ref().map_err(Clone::clone)?;
        Ok(clamp.grant(&req.key, req.ttl_ms))
    }
}

export!(TtlClamp);
