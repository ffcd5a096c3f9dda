//! TEST ONLY. A TTL policy that misbehaves on purpose, for the host's fault tests. Keys that
//! don't start with `fault/` get the requested TTL (or 1000 ms when 0 was requested). Others:
//!
//! * `fault/zero`  — grants a TTL of 0 (garbage: a TTL must be > 0);
//! * `fault/trap`  — executes `unreachable`;
//! * `fault/error` — returns the error `fault: refused`.


wit_bindgen::generate!({
    world: "ttl-policy",
    path: "../../../wit",
});

struct FaultTtl;

impl Guest for FaultTtl {
    fn grant_ttl(req: LockRequest) -> Result<u64, String> {
        match req.key.strip_prefix(b"fault/") {
            None if req.ttl_ms == 0 => Ok(1000),
            None => Ok(req.ttl_ms),
            Some(b"zero") => Ok(0),
            Some(b"trap") => core::arch::wasm32::unreachable(),
            Some(_) => Err("fault: refused".to_string()),
        }
    }
}

export!(FaultTtl);
