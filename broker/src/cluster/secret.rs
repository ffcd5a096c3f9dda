//! The cluster's lease-secret key: 32 random bytes in the file `cluster.key_file` (64 hex
//! digits), which every broker of the cluster has a copy of, so a lease granted by one broker
//! can be verified — and adopted — by another. etcd never holds the key: whoever can read
//! etcd could otherwise sign lease secrets for any principal.
//!
//! * A broker that finds the file missing creates it (0600; written beside it, then linked
//!   into place, so of brokers starting at once on one file exactly one key wins). Copy that
//!   file to every other broker before starting it.
//! * etcd holds the key's fingerprint, `/lockbroker/<cluster>/key-fingerprint` = hex of
//!   HMAC-SHA256(key, "lockbroker cluster key fingerprint"), written by the first broker
//!   (compare-and-create). A broker whose key has another fingerprint refuses to start, naming
//!   its key file: its leases could not move to the other brokers, nor theirs to it.
//! * `/lockbroker/<cluster>/secret`, where versions before the key file kept the key itself,
//!   is deleted at start.

use std::path::Path;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::driver::{ClusterError, connect, prefix};
use crate::config::ClusterConfig;

/// Length of the key.
pub const SECRET_LEN: usize = 32;

/// How long start-up keeps trying to reach etcd to check the key's fingerprint.
const FETCH_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// What the fingerprint is the HMAC of, under the key.
const FINGERPRINT_CONTEXT: &[u8] = b"lockbroker cluster key fingerprint";

/// The cluster's lease-secret key: read from `cluster.key_file` (created if missing), checked
/// against the fingerprint in etcd (set on first use). Retries (for up to 15 s) while etcd
/// cannot answer yet — e.g. a cluster still electing its leader; a key file that cannot be
/// read or whose fingerprint is not the cluster's fails at once.
pub async fn cluster_key(cfg: &ClusterConfig) -> Result<[u8; SECRET_LEN], ClusterError> {
    let path = cfg.key_file.as_deref().ok_or_else(|| {
        ClusterError::KeyFile("cluster.key_file is not set (required in cluster mode)".into())
    })?;
    let key = load_or_create(path)?;
    let fingerprint = fingerprint(&key);
    let until = std::time::Instant::now() + FETCH_FOR;
    loop {
        match check_fingerprint(cfg, path, &fingerprint).await {
            Ok(()) => return Ok(key),
            Err(ClusterError::Etcd(e)) if std::time::Instant::now() < until => {
                tracing::warn!(target: "lockbroker::cluster", "cluster key: etcd: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The key in `path`, which is created with a fresh key if it does not exist.
fn load_or_create(path: &Path) -> Result<[u8; SECRET_LEN], ClusterError> {
    let failed = |what: &str, e: std::io::Error| {
        ClusterError::KeyFile(format!("cannot {what} {}: {e}", path.display()))
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut fresh = [0u8; SECRET_LEN];
            SystemRandom::new()
                .fill(&mut fresh)
                .map_err(|_| ClusterError::KeyFile("no randomness for the cluster key".into()))?;
            let created = crate::private_files::create_private_once(
                path,
                format!("{}\n", hex(&fresh)).as_bytes(),
            )
            .map_err(|e| failed("create", e))?;
            if created {
                tracing::info!(
                    target: "lockbroker::cluster",
                    file = %path.display(),
                    "created the cluster key; copy this file to every other broker of the cluster"
                );
            }
            std::fs::read(path).map_err(|e| failed("read", e))?
        }
        Err(e) => return Err(failed("read", e)),
    };
    warn_if_readable_by_others(path);
    parse(&text).ok_or_else(|| {
        ClusterError::KeyFile(format!(
            "{} is not a cluster key: it must hold {} hex digits (remove it to have a new key \
             created, then copy it to every broker)",
            path.display(),
            SECRET_LEN * 2
        ))
    })
}

/// A key file that others may read lets them sign lease secrets: said once at start.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            target: "lockbroker::cluster",
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the cluster key file is readable by others than its owner; whoever reads it can \
             sign lease secrets (chmod 600)"
        );
    }
}

/// The key a key file's text (64 hex digits, surrounding whitespace ignored) holds.
fn parse(text: &[u8]) -> Option<[u8; SECRET_LEN]> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.len() != SECRET_LEN * 2 {
        return None;
    }
    let mut key = [0u8; SECRET_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of `key` (hex): what etcd may hold of it.
fn fingerprint(key: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hex(hmac::sign(&k, FINGERPRINT_CONTEXT).as_ref())
}

/// Sets the cluster's key fingerprint in etcd if it has none, and checks ours against it;
/// deletes the key that versions before the key file kept in etcd.
async fn check_fingerprint(
    cfg: &ClusterConfig,
    path: &Path,
    ours: &str,
) -> Result<(), ClusterError> {
    let mut client = connect(cfg).await?;
    let at = format!("{}key-fingerprint", prefix(cfg));
    let legacy = format!("{}secret", prefix(cfg));
    let txn = Txn::new()
        .when([Compare::create_revision(at.clone(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(at.clone(), ours, None),
            TxnOp::delete(legacy.clone(), None),
        ])
        .or_else([TxnOp::get(at.clone(), None), TxnOp::delete(legacy, None)]);
    let answer = client.txn(txn).await?;
    if answer.succeeded() {
        return Ok(());
    }
    let stored = answer
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .ok_or_else(|| ClusterError::Etcd(format!("{at} vanished")))?;
    if stored == ours.as_bytes() {
        return Ok(());
    }
    Err(ClusterError::KeyMismatch(format!(
        "the cluster key in {} is not the key of cluster {:?}: etcd ({at}) holds the \
         fingerprint of another key. Every broker of a cluster needs a copy of the same key \
         file — copy it from a broker of the cluster",
        path.display(),
        cfg.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.key");
        let key = load_or_create(&path).expect("created");
        assert_eq!(load_or_create(&path).expect("read"), key);
        let text = std::fs::read_to_string(&path).expect("text");
        assert_eq!(text.trim(), hex(&key));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.key");
        for bad in [
            "",
            "abc",
            &"zz".repeat(SECRET_LEN),
            &"ab".repeat(SECRET_LEN + 1),
        ] {
            std::fs::write(&path, bad).expect("write");
            let e = load_or_create(&path).expect_err("refused").to_string();
            assert!(e.contains("cluster.key") && e.contains("hex digits"), "{e}");
        }
        std::fs::write(&path, format!("  {}\n", "0a".repeat(SECRET_LEN))).expect("write");
        assert_eq!(
            load_or_create(&path).expect("whitespace is fine"),
            [10; SECRET_LEN]
        );
    }

    #[test]
    fn the_fingerprint_does_not_give_the_key_away() {
        let key = [7u8; SECRET_LEN];
        let f = fingerprint(&key);
        assert_eq!(f.len(), 64);
        assert_ne!(f, hex(&key));
        assert_ne!(fingerprint(&[8u8; SECRET_LEN]), f);
    }
}
