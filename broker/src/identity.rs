//! The broker's persistent identity: 32 random bytes kept in `<data_dir>/broker.key` (created
//! once, mode 0600). From it come
//! * the broker id announced in `Welcome` (the first 8 bytes of its SHA-256), which a client
//!   compares before carrying a lease over to a broker after a reconnect, and
//! * lease secrets: HMAC-SHA256 under the key of (key, fence, principal, mode), each field
//!   length-prefixed, truncated to 128 bits. A secret is unguessable without the key, needs no
//!   per-lease state, and survives a restart with the same data dir (so a restored lease can be
//!   reclaimed by the holder that has it) — in the lease's mode only, and only by its principal.
//!   In cluster mode the key is the cluster's (`cluster.key_file`), not this file's.

use std::io;
use std::path::Path;

use lockbroker_proto::LeaseSecret;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::table::Mode;

/// Name of the key file in the data dir.
pub const KEY_FILE: &str = "broker.key";
const KEY_LEN: usize = 32;
/// What a lease secret's HMAC starts with: secrets of this scheme are no other use of the key.
const SECRET_CONTEXT: &[u8] = b"lockbroker lease secret v2";

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
        let read = match std::fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(data_dir),
            read => read,
        };
        let bytes = match read {
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

    /// The secret of lease (`key`, `fence`) granted to `principal` in `mode`.
    pub fn lease_secret(&self, key: &[u8], fence: u64, principal: &str, mode: Mode) -> LeaseSecret {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(SECRET_CONTEXT);
        let field = |ctx: &mut hmac::Context, bytes: &[u8]| {
            ctx.update(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
            ctx.update(bytes);
        };
        field(&mut ctx, key);
        ctx.update(&fence.to_le_bytes());
        field(&mut ctx, principal.as_bytes());
        let (tag, n) = match mode {
            Mode::Exclusive => (0u8, 0u32),
            Mode::Shared => (1, 0),
            Mode::Semaphore(n) => (2, n),
        };
        ctx.update(&[tag]);
        ctx.update(&n.to_le_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        LeaseSecret(out)
    }

    /// Whether `secret` is the secret of lease (`key`, `fence`) for `principal` in `mode`,
    /// compared in constant time.
    pub fn verify(
        &self,
        key: &[u8],
        fence: u64,
        principal: &str,
        mode: Mode,
        secret: &LeaseSecret,
    ) -> bool {
        let expected = self.lease_secret(key, fence, principal, mode);
        expected
            .0
            .iter()
            .zip(secret.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Creates the key file with fresh random bytes (0600, durable; see
/// `private_files::create_private_once`) and returns the key — the one already there if
/// another process created it first.
fn create(data_dir: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no system randomness for the broker key"))?;
    let path = data_dir.join(KEY_FILE);
    if crate::private_files::create_private_once(&path, &bytes)? {
        Ok(bytes)
    } else {
        std::fs::read(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_secrets_bind_key_fence_principal_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path()).expect("create");
        let b = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.id(), b.id());
        let x = Mode::Exclusive;
        let s = a.lease_secret(b"k", 42, "alice", x);
        assert!(b.verify(b"k", 42, "alice", x, &s), "survives a restart");
        assert!(!a.verify(b"k", 42, "bob", x, &s), "bound to the principal");
        assert!(!a.verify(b"k", 43, "alice", x, &s), "bound to the fence");
        assert!(!a.verify(b"k2", 42, "alice", x, &s), "bound to the key");
        for other in [Mode::Shared, Mode::Semaphore(1), Mode::Semaphore(2)] {
            assert!(!a.verify(b"k", 42, "alice", other, &s), "bound to the mode");
        }
        let shared = a.lease_secret(b"k", 42, "alice", Mode::Shared);
        assert!(a.verify(b"k", 42, "alice", Mode::Shared, &shared));
        assert!(!a.verify(b"k", 42, "alice", x, &shared));
        let sem = a.lease_secret(b"k", 42, "alice", Mode::Semaphore(3));
        assert!(
            !a.verify(b"k", 42, "alice", Mode::Semaphore(4), &sem),
            "bound to n"
        );
        let other = tempfile::tempdir().expect("tempdir");
        let c = Identity::load_or_create(other.path()).expect("create");
        assert_ne!(a.id(), c.id());
        assert!(!c.verify(b"k", 42, "alice", x, &s), "another broker's key");
    }

    /// Every field is length-prefixed: bytes moved from one field to the next give another
    /// secret.
    #[test]
    fn fields_do_not_run_into_each_other() {
        let a = Identity::from_bytes(&[3; 32]);
        let x = Mode::Exclusive;
        assert_ne!(
            a.lease_secret(b"ab", 1, "c", x),
            a.lease_secret(b"a", 1, "bc", x)
        );
        assert_ne!(
            a.lease_secret(b"k", 1, "alice\u{0}", x),
            a.lease_secret(b"k", 1, "alice", x)
        );
    }

    #[test]
    fn a_corrupt_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        assert!(Identity::load_or_create(dir.path()).is_err());
    }
}
