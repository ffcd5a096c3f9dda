//! The broker's persistent identity: 32 random bytes kept in `<data_dir>/broker.key` (created
//! once, mode 0600). From it come
//! * the broker id announced in `Welcome` (the first 8 bytes of its SHA-256), which a client
//!   compares before carrying a lease over to a broker after a reconnect, and
//! * lease secrets: HMAC-SHA256 of (key, fence, principal) under the key, truncated to 128 bits.
//!   A secret is unguessable without the key, needs no per-lease state, and survives a restart
//!   with the same data dir (so a restored lease can be reclaimed by the holder that has it).

use std::io;
use std::path::Path;

use lockbroker_proto::LeaseSecret;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Name of the key file in the data dir.
pub const KEY_FILE: &str = "broker.key";
const KEY_LEN: usize = 32;

/// A broker's identity and lease-secret key.
pub struct Identity {
    id: u64,
    key: hmac::Key,
}

impl Identity {
    /// Loads `<data_dir>/broker.key`, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> io::Result<Identity> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() == KEY_LEN => b,
            Ok(b) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is corrupt ({} bytes, expected {KEY_LEN}); remove it to give this \
                         broker a new identity (leases it granted can then not be reclaimed)",
                        path.display(),
                        b.len()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(data_dir)?,
            Err(e) => return Err(e),
        };
        Ok(Identity::from_bytes(&bytes))
    }

    /// An identity from key bytes (tests, benches).
    pub fn from_bytes(bytes: &[u8]) -> Identity {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Identity {
            id: u64::from_le_bytes(id),
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The key of QUIC stateless resets, derived from the broker key: a broker restarted on
    /// the same data dir can then reset the connections its previous run had (clients notice
    /// at once and reconnect) instead of leaving them to their idle timeout.
    pub fn stateless_reset_key(&self) -> hmac::Key {
        let derived = hmac::sign(&self.key, b"lockbroker quic stateless reset");
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }

    /// The key of the connection-id generator, derived from the broker key: a restarted broker
    /// recognises the connection ids of its previous run as its own (and answers them with a
    /// stateless reset instead of dropping them as invalid).
    pub fn connection_id_key(&self) -> u64 {
        let derived = hmac::sign(&self.key, b"lockbroker quic connection ids");
        let mut k = [0u8; 8];
        k.copy_from_slice(&derived.as_ref()[..8]);
        u64::from_le_bytes(k)
    }

    /// The broker id announced in `Welcome`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The secret of lease (`key`, `fence`) granted to `principal`.
    pub fn lease_secret(&self, key: &[u8], fence: u64, principal: &str) -> LeaseSecret {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&u64::try_from(key.len()).unwrap_or(u64::MAX).to_le_bytes());
        ctx.update(key);
        ctx.update(&fence.to_le_bytes());
        ctx.update(principal.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        LeaseSecret(out)
    }

    /// Whether `secret` is the secret of lease (`key`, `fence`) for `principal`, compared in
    /// constant time.
    pub fn verify(&self, key: &[u8], fence: u64, principal: &str, secret: &LeaseSecret) -> bool {
        let expected = self.lease_secret(key, fence, principal);
        expected
            .0
            .iter()
            .zip(secret.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Writes a fresh key durably (temp file, fsync, rename) with mode 0600.
fn create(data_dir: &Path) -> io::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = vec![0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no system randomness for the broker key"))?;
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, data_dir.join(KEY_FILE))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_secrets_bind_key_fence_and_principal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path()).expect("create");
        let b = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.id(), b.id());
        let s = a.lease_secret(b"k", 42, "alice");
        assert!(b.verify(b"k", 42, "alice", &s), "survives a restart");
        assert!(!a.verify(b"k", 42, "bob", &s), "bound to the principal");
        assert!(!a.verify(b"k", 43, "alice", &s), "bound to the fence");
        assert!(!a.verify(b"k2", 42, "alice", &s), "bound to the key");
        let other = tempfile::tempdir().expect("tempdir");
        let c = Identity::load_or_create(other.path()).expect("create");
        assert_ne!(a.id(), c.id());
        assert!(!c.verify(b"k", 42, "alice", &s), "another broker's key");
    }

    #[test]
    fn a_corrupt_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        assert!(Identity::load_or_create(dir.path()).is_err());
    }
}
