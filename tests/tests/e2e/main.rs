//! End-to-end tests: the real `lockbroker` binary on an ephemeral port, driven by SDK clients,
//! the CLI and raw QUIC connections (and real `redis-server`s for the mirror). One test binary
//! (`cargo test -p lockbroker-tests`) with a module per area:
//!
//! - [`admin`]: the admin HTTP listener: health probes, `/metrics`, the JSON API, forced
//!   release and its token rule.
//! - [`admin_trust`]: whom the admin listener trusts (DNS rebinding, cross-origin posts,
//!   other local users, `[auth] require`) and its connection cap and header timeout.
//! - [`backends`]: every SDK behaviour from one test body against `Client::embedded()` and a
//!   real broker: locks, FIFO, modes, TTLs and renewal, inspect with owner labels and queue
//!   positions, waits, cancellation, exclusion among tasks, leader election.
//! - [`bad_input`]: garbage, oversized and out-of-order frames; bad CA files.
//! - [`caching`]: lock caching: fence blocks and recalls at the broker, `cache_locks` in the SDK.
//! - [`cli`]: `lockbroker lock` and `lockbroker inspect` against a real broker.
//! - [`cli_signals`]: `lock -- CMD` as a supervisor: signals forwarded to CMD's group, CMD
//!   never outlives a SIGKILLed `lock`, lease loss stops the whole group.
//! - [`cluster`]: cluster mode on a real etcd: shard ownership, `Moved`, failover with grace
//!   and lease adoption, self-fencing without etcd.
//! - [`etcd_contents`]: what the brokers read from etcd is checked: stray member and shard
//!   keys, a duplicate member name, a deleted member key, unowned shards in `/readyz`.
//! - [`errors`]: re-locking (not re-entrant), `NotLocked`, `NotOwner` and the per-session
//!   limits.
//! - [`exclusion`]: lease secrets and reclaim by principal, honest guards (`extend`, `lost`
//!   by the local clock), no carry-over of a guard to an independent broker, `Cancel` of an
//!   acquire polling the sync mirror.
//! - [`failover`]: a guard that only holds keeps its lease across a SIGKILL and a SIGSTOP of
//!   its shard's owner (three brokers, default client settings).
//! - [`hostile`]: what an unfriendly neighbour could do: files and secrets others could read.
//! - [`late_grants`]: a grant answered as its key's shard moves is released at the new owner.
//! - [`leases`]: TTLs of crashed and lost holders, clean disconnects, renewal, lock delay.
//! - [`limits`]: limits per principal: anonymous sessions, keys, queue records and
//!   sync-mirror retries stop at their share, an authenticated bystander still gets in; QUIC
//!   Retry under a handshake burst; the global outbox budget against clients that never read.
//! - [`lifecycle`]: SIGTERM, fences across restarts, the `serve` banner.
//! - [`mirror_async`]: holds mirrored to Redis in redlock format; resync after an outage.
//! - [`mirror_faults`]: `sync` mode refuses grants while Redis is down.
//! - [`mirror_interop`]: exclusion with redis-py's `Lock`.
//! - [`mirror_restore`]: locks and fences restored from Redis after a SIGKILL.
//! - [`modes`]: shared locks, semaphores, mode mismatches.
//! - [`mutual_exclusion`]: no overlapping holders and growing fences under contention.
//! - [`plugins_e2e`]: policy plugins through the broker: ACLs, rewrite, TTL clamp, faults,
//!   hot reload.
//! - [`restart_exclusion`]: a frozen (SIGSTOP-like) holder's key across graceful and SIGKILL
//!   restarts, memory only and with the sync mirror (found with `lockbroker-chaos`).
//! - [`restart_grace`]: a broker restarted without its leases grants nothing its previous run
//!   may still hold, while that run's holders reclaim theirs.
//! - [`secrets`]: lease secrets against a second principal that has the signing key or read
//!   access to etcd, and a lease's mode, which a reclaim cannot change.
//! - [`sdk_metrics`]: the SDK's client metrics (`metrics` facade) read from a local
//!   `DebuggingRecorder`: waits by outcome, hold times, a lease lost to a forced release.
//! - [`status_page`]: the status page in headless Chromium (chromedriver, `chromedriver.rs`):
//!   a held key and its holder appear and vanish; a screenshot in `target/artifacts/`.
//! - [`restore_validation`]: restore refuses an absurd max-fence and hand-written values.
//! - [`preflight`]: every program the tests spawn is in the test command's preflight list.
//! - [`queueing`]: FIFO grants, try-lock and bounded waits, cancelled acquires.

mod admin;
mod admin_queues;
mod admin_trust;
mod answers;
mod backends;
mod bad_input;
mod caching;
mod chromedriver;
mod cli;
mod cli_signals;
mod cluster;
mod errors;
mod etcd_contents;
mod exclusion;
mod failover;
mod hostile;
mod late_grants;
mod leases;
mod lifecycle;
mod limits;
mod mirror_async;
mod mirror_faults;
mod mirror_interop;
mod mirror_restore;
mod modes;
mod mutual_exclusion;
mod plugins_e2e;
mod preflight;
mod queueing;
mod restart_exclusion;
mod restart_grace;
mod restore_validation;
mod sdk_metrics;
mod secrets;
mod status_page;
mod terminal_text;
