//! `lockbroker cluster status`: the cluster as etcd records it — members, and per shard its
//! owner, the epoch of its ownership term (the revision that created the ownership key, the
//! high bits of its fences), its backup if etcd names one in sync for that term (`replicas = 2`:
//! a failover to it needs no grace) and the grace left after a takeover. And `drain`: a
//! `drained/<name>` key that takes the member out of every shard's preference. Entries the
//! brokers ignore (`entries.rs`) are shown with the reason.

use std::fmt::Write;

use etcd_client::GetOptions;

use super::driver::{ClusterError, OwnerValue, connect, parse_in_sync, prefix};
use super::entries::{self, Key};
use crate::broker::wire::unix_ms;
use crate::config::ClusterConfig;

/// The report, one line per member and per shard.
pub async fn status(cfg: &ClusterConfig) -> Result<String, ClusterError> {
    let mut client = connect(cfg).await?;
    let prefix = prefix(cfg);
    let all = client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let now_ms = unix_ms();
    let mut members = Vec::new();
    let mut ignored = Vec::new();
    let mut shards = vec![None; cfg.shards as usize];
    let mut in_sync = std::collections::HashMap::new();
    for kv in all.kvs() {
        let Some(key) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(&prefix))
        else {
            continue;
        };
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        if let Some(name) = key.strip_prefix("members/") {
            let ignored = match entries::key_of(key, cfg.shards) {
                Ok(_) => entries::member_url(kv.value(), kv.lease()).err(),
                Err(e) => Some(e),
            };
            members.push(match ignored {
                None => format!("member {name} {value}"),
                Some(why) => format!("member {name:?} {value:?} (ignored: {why})"),
            });
        } else if let Some(n) = key.strip_prefix("insync/") {
            if let (Ok(n), Some((backup, term))) = (n.parse::<u32>(), parse_in_sync(kv.value())) {
                in_sync.insert(n, (backup.to_string(), term));
            }
        } else if let Ok(Key::Shard(n)) = entries::key_of(key, cfg.shards) {
            if let Err(why) = entries::owner_name(kv.value(), kv.lease()) {
                ignored.push(format!("shard {n} key {value:?} ignored: {why}"));
                continue;
            }
            let v = OwnerValue::parse(&value);
            shards[n as usize] = Some((
                v.name.to_string(),
                kv.create_revision(),
                v.claimed_ms,
                v.grace_end_ms,
            ));
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "cluster {} ({} shards)", cfg.name, cfg.shards);
    for m in members.iter().chain(&ignored) {
        let _ = writeln!(out, "{m}");
    }
    let owned = shards.iter().filter(|s| s.is_some()).count();
    let _ = writeln!(out, "shards owned: {owned}/{}", cfg.shards);
    for (n, s) in shards.iter().enumerate() {
        match s {
            Some((owner, epoch, claimed, grace_end)) => {
                let grace = grace_end.saturating_sub(now_ms);
                let age = now_ms.saturating_sub(*claimed);
                let backup = match in_sync.get(&(n as u32)) {
                    Some((backup, term)) if i64::try_from(*term).ok() == Some(*epoch) => {
                        backup.as_str()
                    }
                    _ => "-",
                };
                let _ = writeln!(
                    out,
                    "shard {n} owner {owner} in_sync {backup} epoch {epoch} claimed {age}ms ago \
                     grace_left_ms {grace}"
                );
            }
            None => {
                let _ = writeln!(out, "shard {n} owner - (unowned)");
            }
        }
    }
    Ok(out)
}

/// `lockbroker cluster drain`: marks member `name` drained (`/lockbroker/<cluster>/drained/<name>`,
/// kept until `undrain`). Every broker then prefers other members for all shards: the drained
/// broker hands its shards over (holders adopt their leases at the new owners during their
/// grace) and claims none. Waits (up to `limit`) until etcd shows it owning no shard; returns
/// how many it still owns.
pub async fn drain(
    cfg: &ClusterConfig,
    name: &str,
    on: bool,
    limit: std::time::Duration,
) -> Result<usize, ClusterError> {
    let mut client = connect(cfg).await?;
    let prefix = prefix(cfg);
    let key = format!("{prefix}drained/{name}");
    if on {
        client.put(key, "1", None).await?;
    } else {
        client.delete(key, None).await?;
        return Ok(0);
    }
    let until = std::time::Instant::now() + limit;
    loop {
        let shards = client
            .get(
                format!("{prefix}shards/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let owned = shards
            .kvs()
            .iter()
            .filter(|kv| OwnerValue::parse(&String::from_utf8_lossy(kv.value())).name == name)
            .count();
        if owned == 0 || std::time::Instant::now() >= until {
            return Ok(owned);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
