//! Cluster mode: several brokers forming one lock service on etcd.
//!
//! * Keys map to a fixed number of shards (`lockbroker_proto::shard_of`). Each shard has one
//!   owner at a time: the broker that created `/lockbroker/<cluster>/shards/<n>` under its etcd
//!   lease. Brokers register under the same lease (`members/<name>` = their client URL);
//!   unowned shards are claimed by their preferred owner (rendezvous hashing over the live
//!   members, `rendezvous.rs`), so shards spread evenly and move only when an owner goes.
//! * Self-fencing (`validity.rs`): a broker serves its shards only while it can vouch for its
//!   lease — until the last confirmed keep-alive's *send* time + TTL, minus drift and margin —
//!   so a paused or partitioned broker has stopped before etcd lets another take over.
//! * Fences: a shard's ownership term has the etcd revision that created its key as epoch;
//!   on a claim the table's fence floor rises to `revision << 32`, so every fence the new
//!   owner issues is above every fence any earlier owner of the shard issued (`epoch.rs`,
//!   the one place of that arithmetic). A revision past 2^32-1 would wrap the epoch and
//!   lower fences: a broker that sees one claims nothing more (the shards it serves keep
//!   serving under their fence ceiling) and `/readyz` is 503 naming the cause; the remedy is
//!   a fresh etcd for the cluster.
//! * Membership (`register.rs`): a broker registers `members/<name>` only if the key is absent
//!   (one transaction), so a second broker with a live member's name refuses to start, naming
//!   it. A broker restarted right after a crash finds its old key under its old lease and
//!   waits for that lease to run out — at most its TTL plus 1 s; a lease seen renewed, or still
//!   there after that, is a live broker's. While it runs, a broker watches its own key and puts
//!   it back at once if it is deleted or overwritten.
//! * etcd contents are checked, not trusted (`entries.rs`): member entries without a lease or
//!   a `quic://<ip>:<port>` value, and shard ownership keys without a lease or a member name,
//!   are ignored (logged once, counted in `cluster_ignored_keys`); an ownership key without a
//!   lease is replaced by the shard's preferred owner. An owner is live only while the member
//!   it names is registered under the ownership key's own lease.
//! * Unowned shards: `cluster_unowned_shards` counts the shards without a live owner as this
//!   broker sees the cluster; once any stays so longer than two ownership TTLs (an owner's
//!   lease running out, then the claim, take less), every broker's `/readyz` is 503 with the
//!   count: those keys cannot be locked anywhere, so the service is not whole. (A readiness
//!   probe that takes brokers out of a load balancer takes them all out then: clients of the
//!   SDK route by the shard map and do not need one.)
//! * Failover grace: a claimed shard that had an owner before, and no hand-over record from
//!   it (`handover.rs`: a planned move), grants nothing new for the
//!   longest TTL a broker grants in cluster mode (`cluster.max_ttl_ms`) plus lock delay, while
//!   the earlier owner's holders adopt their leases with their lease secret (every broker signs
//!   secrets with the cluster's key, a file each broker has a copy of — `cluster.key_file`;
//!   etcd holds only its fingerprint, `secret.rs`).
//! * `state.rs` is the sans-I/O view (members, owners, terms, routing); `driver.rs` talks to
//!   etcd and carries out what the view decides; the broker core asks the cluster through
//!   [`KeyRouter`](crate::broker::KeyRouter).
//! * Planned moves (`handover.rs`): a broker that gives a shard up — a joined member is
//!   preferred for it, it is drained, or it leaves at a graceful shutdown (`Cluster::leave`,
//!   called before the server closes its sessions) — stops serving the shard, ends its leases
//!   (holders told `LeaseEnded { Moved }`, queued requests answered `Moved`) and, in the etcd
//!   transaction that deletes its ownership key (guarded by its lease), leaves the leases'
//!   record for the next owner, which loads them in its claim and serves without a grace. A
//!   leaving broker then revokes its etcd lease, so its member key vanishes at once and the
//!   others claim without waiting for the lease to run out.
//! * etcd is reached over `http://` or `https://` (`cluster.etcd_ca`, optional client
//!   certificate), one endpoint at a time (`driver.rs`).
//!
//! Layering: imports the broker core, `config` and `table` types; never the server or mirror.

mod driver;
mod entries;
mod epoch;
mod feed;
mod handover;
mod link;
mod peer;
mod peer_wire;
mod register;
mod rendezvous;
mod replica;
mod replication;
mod replicator;
mod secret;
mod state;
mod status;
mod validity;

pub use driver::{Cluster, ClusterError};
pub use replicator::ReplicationStats;
pub use secret::cluster_key;
pub use state::Ownership;
pub use status::{drain, status};
