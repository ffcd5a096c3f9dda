//! Member registration: `members/<name>` = this broker's client URL, under a fresh etcd lease,
//! written only if absent — one broker per name.
//!
//! * Absent: created in one transaction (`create_revision == 0`).
//! * There without a lease (written by hand: no broker's), or under this broker's own previous
//!   lease (a new etcd session of the same process): replaced in one transaction that
//!   compares the key's `mod_revision`.
//! * There under another lease: either a live broker of that name, or this broker's previous
//!   run that crashed a moment ago and whose lease has not run out yet. It waits while the
//!   lease runs down — at most the lease's granted TTL plus a second — and registers once
//!   the key is gone. A lease seen to be renewed (its remaining TTL goes up), or one still
//!   there after the wait, belongs to a live broker: [`ClusterError::NameTaken`], which names
//!   the broker, its URL and how long it waited.
//! * Written by someone else between the read and the transaction, [`MAX_RACES`] times in a
//!   row: another broker of this name is starting at the same moment — `NameTaken` too.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::driver::{ClusterError, bounded};
use crate::config::ClusterConfig;

/// How often the wait looks at the other lease.
const POLL: Duration = Duration::from_millis(250);

/// The longest TTL of another lease waited for (etcd allows far longer ones).
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Transactions lost to another writer of the key before giving up (each loss means the key
/// changed between the read and the write: another broker of this name is starting too).
const MAX_RACES: u32 = 8;

/// A registration: the lease it is held under, when the lease was asked for and its TTL.
pub(super) struct Registration {
    pub lease: i64,
    pub sent: Instant,
    pub ttl: Duration,
}

/// Registers `name` at `url` under the key `key`, with a new lease of `ttl_s` seconds;
/// `previous` is this broker's lease of its last etcd session, if any.
pub(super) async fn register(
    cfg: &ClusterConfig,
    client: &mut Client,
    name: &str,
    key: &str,
    url: &str,
    ttl_s: i64,
    previous: Option<i64>,
) -> Result<Registration, ClusterError> {
    let started = Instant::now();
    // The other lease being waited for: its id, the wait's end and the least TTL seen.
    let mut waiting: Option<(i64, Instant, i64)> = None;
    let mut races = 0u32;
    loop {
        let got = bounded(cfg, client.get(key, None)).await?;
        let existing = got.kvs().first();
        if let Some(kv) = existing
            && kv.lease() != 0
            && Some(kv.lease()) != previous
        {
            let holder = String::from_utf8_lossy(kv.value()).into_owned();
            let live = |waited: Duration| ClusterError::NameTaken {
                name: name.to_string(),
                url: holder.clone(),
                waited,
            };
            let other = kv.lease();
            let info = bounded(cfg, client.lease_time_to_live(other, None)).await?;
            let ttl = info.ttl();
            match waiting {
                Some((id, until, least)) if id == other => {
                    if ttl > least || Instant::now() >= until {
                        return Err(live(started.elapsed()));
                    }
                    waiting = Some((id, until, least.min(ttl)));
                }
                _ => {
                    let granted = info.granted_ttl().max(0) as u64;
                    let wait = Duration::from_secs(granted).min(MAX_WAIT) + Duration::from_secs(1);
                    tracing::warn!(
                        target: "lockbroker::cluster",
                        member = name,
                        holder = %holder,
                        "the member name is registered under another etcd lease (a crash of \
                         this broker a moment ago?); waiting up to {:.0} s for it to end",
                        wait.as_secs_f64()
                    );
                    waiting = Some((other, Instant::now() + wait, ttl));
                }
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        // Absent, without a lease, or this broker's own previous one: take it in one step.
        let compare = match existing {
            None => Compare::create_revision(key, CompareOp::Equal, 0),
            Some(kv) => {
                tracing::warn!(
                    target: "lockbroker::cluster",
                    member = name,
                    lease = kv.lease(),
                    "replacing a member key {}",
                    if kv.lease() == 0 {
                        "without an etcd lease (not a broker's)"
                    } else {
                        "of this broker's previous etcd session"
                    }
                );
                Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision())
            }
        };
        let sent = Instant::now();
        let lease = bounded(cfg, client.lease_grant(ttl_s, None)).await?;
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            key,
            url,
            Some(PutOptions::new().with_lease(lease.id())),
        )]);
        if bounded(cfg, client.txn(txn)).await?.succeeded() {
            return Ok(Registration {
                lease: lease.id(),
                sent,
                ttl: Duration::from_secs(lease.ttl().max(0) as u64),
            });
        }
        // Someone else wrote the key in between: look again, a bounded number of times.
        let _ = bounded(cfg, client.lease_revoke(lease.id())).await;
        races += 1;
        if races >= MAX_RACES {
            return Err(ClusterError::NameTaken {
                name: name.to_string(),
                url: "(another broker writing the same member key now)".to_string(),
                waited: started.elapsed(),
            });
        }
    }
}

/// Whether `key` is still registered under `lease` with `url` (else it must be restored).
pub(super) fn is_ours(value: Option<&[u8]>, key_lease: i64, lease: i64, url: &str) -> bool {
    value == Some(url.as_bytes()) && key_lease == lease
}

/// Puts this broker's member key back (deleted or overwritten while it runs).
pub(super) async fn restore(
    cfg: &ClusterConfig,
    client: &mut Client,
    key: &str,
    url: &str,
    lease: i64,
) -> Result<(), ClusterError> {
    let opts = PutOptions::new().with_lease(lease);
    bounded(cfg, client.put(key, url, Some(opts))).await?;
    tracing::warn!(
        target: "lockbroker::cluster",
        key,
        "this broker's member key was deleted or overwritten while it runs; put it back"
    );
    Ok(())
}
