//! TEST ONLY. A TTL policy that misbehaves on purpose, for the host's fault tests:
//!
//! * `fault/ttl-zero`  — grants a TTL of 0 (garbage: a TTL must be > 0);
//! * `fault/ttl-trap`  — executes `unreachable`;
//! * `fault/ttl-error` — returns the error `fault: refused`.
//!
//! Every other key gets the requested TTL (1000 ms when 0, i.e. the default, was requested),
//! so it also serves as a pass-through TTL policy in chaining tests.

// The code `wit_bindgen::generate!` emits trips this lint (8-argument export shims).
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "ttl-policy",
    path: "../../../wit",
});

struct FaultTtl;

impl Guest for FaultTtl {
    fn grant_ttl(req: LockRequest) -> Result<u64, String> {
        match req.key.as_slice() {
            b"fault/ttl-zero" => Ok(0),
            b"fault/ttl-trap" => core::arch::wasm32::unreachable(),
            b"fault/ttl-error" => Err("fault: refused".to_string()),
            _ if req.ttl_ms == 0 => Ok(1000),
            _ => Ok(req.ttl_ms),
        }
    }
}

export!(FaultTtl);
