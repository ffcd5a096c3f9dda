//! # lockbroker-sdk
//!
//! The Rust client of [lockbroker](https://example.invalid/lockbroker): distributed locks
//! served over QUIC with leases, fencing tokens, fair FIFO queues and grants pushed to waiters
//! (no polling).
//!
//! ```no_run
//! use std::time::Duration;
//! use lockbroker_sdk::{Client, Error};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::builder()
//!     .broker("quic://127.0.0.1:7420")
//!     .ca_file(".lockbroker/dev-cert.pem") // printed by `lockbroker serve` on first start
//!     .connect()
//!     .await?;
//!
//! // Exclusive lock, 30 s lease renewed in the background, wait up to 5 s for it.
//! let guard = client.lock("jobs/nightly").ttl(Duration::from_secs(30)).wait(Duration::from_secs(5)).await?;
//! // Hand the fencing token to whatever you write, so a stale holder can be rejected.
//! println!("fence {}", guard.fence());
//! tokio::select! {
//!     _ = async { /* the work */ } => {}
//!     lost = guard.lost() => return Err(lost), // renewal failed: stop working
//! }
//! guard.unlock().await?;                       // acknowledged; dropping the guard also releases
//!
//! match client.try_lock("jobs/nightly").await {
//!     Err(Error::Busy) => println!("someone else runs it"),
//!     other => drop(other?),
//! }
//! let _readers = client.read_lock("config").await?;
//! let _slot = client.semaphore("pool/db", 4).await?;
//! let info = client.inspect("jobs/nightly").await?;
//! println!("locked: {}, waiters: {}", info.is_locked(), info.waiters);
//! # Ok(()) }
//! ```
//!
//! * Dropping an acquire future (e.g. in a `select!` or a timeout) cancels the wait on the
//!   broker, so the queue slot is freed.
//! * If the connection drops, the next call reconnects (trying every configured broker
//!   address), and live guards reclaim their leases on the new connection by fencing token.
//!
//! ## Metrics
//!
//! The SDK records client metrics through the [`metrics`](https://docs.rs/metrics) facade:
//! `lockbroker_client_acquire_wait_seconds{mode,outcome}`, `lockbroker_client_hold_seconds{mode}`,
//! `lockbroker_client_lost_leases_total{mode}` and `lockbroker_client_acquires_total{mode}`.
//! Whatever `metrics` exporter the application installs picks them up (e.g.
//! `metrics-exporter-prometheus`); with none installed they cost nothing. Labels never carry a
//! key or a principal. The names, label values and what each measures are in [`metrics`].

mod cache;
mod client;
mod conn;
mod embedded;
mod error;
mod guard;
mod inspect;
mod lock;
mod lock_all;
pub mod metrics;
mod route;
mod shards;
mod tls;
mod watchdogs;

pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use guard::Guard;
pub use inspect::{Holder, LockInfo};
pub use lock::{LockFuture, LockRequest};
pub use lock_all::LockAllRequest;
pub use lockbroker_proto::{Mode, UnlockOutcome};
