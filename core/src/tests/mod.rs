//! The table's tests, all driving it through one harness (`harness.rs`: a table, a hand-driven
//! clock, the effects of the last calls, invariants checked after every request):
//!
//! - `single.rs`: single-key requests, one test per rule or error case;
//! - `multi.rs`: multi-key acquires (`groups.rs`);
//! - `cache.rs`: cacheable leases, their fence blocks and recalls;
//! - `faults.rs`: paths reached only when the invariants are broken by hand, and resource
//!   exhaustion on the grant path;
//! - `quotas.rs`: per-principal caps of keys, leases and queue records;
//! - `requeue.rs`: queue places kept across a planned move of a key's shard;
//! - `props.rs`: property tests of random operation sequences against a model built from what
//!   the table reports.

mod cache;
mod faults;
mod harness;
mod multi;
mod props;
mod quotas;
mod requeue;
mod single;
