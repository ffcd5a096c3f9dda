//! `redis-mirror`: a lockbroker mirror plugin. Keeps every lease the broker holds in Redis, in
//! the format redlock-style clients use (`<prefix><key>` = unique token, `PX` = remaining TTL;
//! see `format.rs`), so locks survive a broker restart and Redis clients and broker clients
//! exclude each other; and restores held leases at broker start.
//!
//! * `acquired` / `extended` → claim script (set if free, ours, or a stale broker token;
//!   `conflict` if a Redis client holds the key);
//! * `released` / `expired` → compare-and-delete (only our token is deleted);
//! * every batch raises the stored maximum fencing token (`fence_key`);
//! * `resync` rewrites every hold of a snapshot and deletes broker tokens not in it;
//! * `restore` scans `<prefix>*` for broker tokens and returns them with their `PTTL`; values
//!   that are not exactly a token the mirror writes (e.g. a hand-written `lb:5`) are skipped and
//!   logged.
//!
//! Settings (`[mirror.config]`): `connection` (default `main`), `prefix` (default empty: lock
//! keys are stored under their own name, as redlock clients do), `fence_key` (default
//! `lockbroker:max-fence`), `scan_count` (default 1000).

// The code `wit_bindgen::generate!` emits trips this lint.
#![allow(clippy::too_many_arguments)]

mod format;
mod mirror;
mod scripts;

wit_bindgen::generate!({
    world: "mirror",
    path: "../../wit",
});

struct RedisMirror;

impl Guest for RedisMirror {
    fn on_events(events: Vec<LockEvent>) -> Result<Vec<EventOutcome>, String> {
        mirror::on_events(&mirror::Settings::read(), &events)
    }

    fn resync(holds: Vec<HeldLock>, max_fence: u64) -> Result<Vec<EventOutcome>, String> {
        mirror::resync(&mirror::Settings::read(), &holds, max_fence)
    }

    fn restore() -> Result<RestoreState, String> {
        mirror::restore(&mirror::Settings::read())
    }
}

export!(RedisMirror);
