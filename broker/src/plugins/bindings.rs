//! Host bindings generated from `wit/` by `wasmtime::component::bindgen!`, one module per world
//! with a host implementation. The `types` and `host` interfaces are generated once (in
//! `key_policy`) and shared with `ttl_policy` through `with`, so one `Host` implementation and
//! one `Linker` serve both. The `mirror` world shares them too and adds the `redis` interface,
//! whose functions are `async` on the host (they wait for Redis); it has its own linker
//! (`host::mirror_linker`), so policy plugins cannot import `redis` at all.
//!
//! Exports are called with `call_async` (on a fiber): the WASI p2 implementation is linked in
//! its async flavour, because the sync flavour blocks on an internal tokio runtime and panics
//! when a guest writes to stderr from inside the broker's own runtime. The `host` interface
//! functions are plain sync functions.
//!
//! Generated types own their data (`ownership: Borrowing` would save copying the key and
//! principal into a `Vec`/`String` per call, but wasmtime 48's generator emits invalid code for
//! it on this package, so the default `Owning` is used).

/// The `key-policy` world.
pub mod key_policy {
    wasmtime::component::bindgen!({
        world: "key-policy",
        path: "../wit",
        exports: { default: async },
    });
}

/// The `ttl-policy` world.
pub mod ttl_policy {
    wasmtime::component::bindgen!({
        world: "ttl-policy",
        path: "../wit",
        exports: { default: async },
        with: {
            "lockbroker:plugin/types": super::key_policy::lockbroker::plugin::types,
            "lockbroker:plugin/host": super::key_policy::lockbroker::plugin::host,
        },
    });
}

/// The `mirror` world.
pub mod mirror {
    wasmtime::component::bindgen!({
        world: "mirror",
        path: "../wit",
        exports: { default: async },
        imports: { "lockbroker:plugin/redis": async },
        with: {
            "lockbroker:plugin/types": super::key_policy::lockbroker::plugin::types,
            "lockbroker:plugin/host": super::key_policy::lockbroker::plugin::host,
        },
    });
}

pub use key_policy::lockbroker::plugin::{host, types};
pub use mirror::lockbroker::plugin::redis;

/// The WIT package version this host implements (`package lockbroker:plugin@…` in `wit/`).
pub const WIT_VERSION: &str = "0.1.0";
/// The WIT package name.
pub const WIT_PACKAGE: &str = "lockbroker:plugin";
