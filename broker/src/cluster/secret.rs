//! The cluster's lease-secret key: 32 random bytes at `/lockbroker/<cluster>/secret`, created
//! by the first broker that starts (a compare-and-create transaction) and read by every other,
//! so a lease granted by one broker can be verified — and adopted — by another.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ring::rand::{SecureRandom, SystemRandom};

use super::driver::{ClusterError, connect, prefix};
use crate::config::ClusterConfig;

/// Length of the key.
pub const SECRET_LEN: usize = 32;

/// How long start-up keeps trying to reach etcd for the key.
const FETCH_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// The cluster's secret key, created on first use. Retries (for up to 15 s) while etcd cannot
/// answer yet — e.g. a cluster still electing its leader.
pub async fn fetch_secret(cfg: &ClusterConfig) -> Result<[u8; SECRET_LEN], ClusterError> {
    let until = std::time::Instant::now() + FETCH_FOR;
    loop {
        match fetch_once(cfg).await {
            Ok(key) => return Ok(key),
            Err(e) if std::time::Instant::now() < until => {
                tracing::warn!(target: "lockbroker::cluster", "cluster key: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn fetch_once(cfg: &ClusterConfig) -> Result<[u8; SECRET_LEN], ClusterError> {
    let mut client = connect(cfg).await?;
    let key = format!("{}secret", prefix(cfg));
    let mut fresh = [0u8; SECRET_LEN];
    SystemRandom::new()
        .fill(&mut fresh)
        .map_err(|_| ClusterError::Etcd("no randomness for the cluster key".into()))?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), fresh.to_vec(), None)]);
    client.txn(txn).await?;
    let got = client.get(key.clone(), None).await?;
    let value = got
        .kvs()
        .first()
        .map(|kv| kv.value().to_vec())
        .ok_or_else(|| ClusterError::Etcd(format!("{key} vanished")))?;
    <[u8; SECRET_LEN]>::try_from(value.as_slice()).map_err(|_| {
        ClusterError::Etcd(format!(
            "{key} holds {} bytes, not {SECRET_LEN}: not a lockbroker cluster key",
            value.len()
        ))
    })
}
