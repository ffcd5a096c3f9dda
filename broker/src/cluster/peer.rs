//! The broker-to-broker replication link's I/O (issue 24): framing over one QUIC stream, the
//! members' proof of the cluster key, and the backup's side — the replicas it keeps of
//! other brokers' shards.
//!
//! A link is a QUIC connection with its own ALPN ([`PEER_ALPN`]) to the backup's client
//! address. Certificates are not what makes it trusted (each broker may have its own dev
//! certificate): both ends prove they hold the cluster key with an HMAC over the TLS
//! session's exporter, which differs on every connection — a recorded proof is worthless
//! elsewhere, and a man in the middle has two sessions with two exporters. The owner proves
//! first; the backup answers with its own proof, and the owner trusts acknowledgements only
//! after checking it (a backup that is not a member could acknowledge anything).

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use ring::hmac;

use super::peer_wire::{self, PeerMsg};
use super::replica::Replica;

pub use lockbroker_proto::PEER_ALPN;

const PROOF_CONTEXT: &[u8] = b"lockbroker peer link v1";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-lockbroker-peer";

/// Which end of a link a proof is for (an owner's proof is not a backup's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Owner,
    Backup,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("frame: {0}")]
    Wire(#[from] peer_wire::WireError),
    #[error("the peer did not prove it holds the cluster key")]
    Proof,
    #[error("{0}")]
    Protocol(String),
}

/// The TLS exporter value of `conn` both ends compute alike.
pub(super) fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::Protocol("no TLS exporter".into()))?;
    Ok(out)
}

/// What a proof signs: the context, `role`, `name` (length-prefixed) and the session's
/// `exporter` — built here only, so the prover and the verifier cannot drift apart.
fn proof_input(role: Role, name: &str, exporter: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(PROOF_CONTEXT.len() + 6 + 8 + name.len() + 32);
    msg.extend_from_slice(PROOF_CONTEXT);
    msg.extend_from_slice(match role {
        Role::Owner => b"owner\0",
        Role::Backup => b"backup",
    });
    msg.extend_from_slice(&(name.len() as u64).to_be_bytes());
    msg.extend_from_slice(name.as_bytes());
    msg.extend_from_slice(exporter);
    msg
}

/// The proof that member `name`, at `role`'s end of the session with `exporter`, holds `key`.
pub(super) fn proof(key: &[u8], role: Role, name: &str, exporter: &[u8; 32]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, &proof_input(role, name, exporter))
        .as_ref()
        .to_vec()
}

/// Checks a proof (in constant time).
pub(super) fn verify(
    key: &[u8],
    role: Role,
    name: &str,
    exporter: &[u8; 32],
    given: &[u8],
) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&k, &proof_input(role, name, exporter), given).is_ok()
}

/// Writes one message.
pub(super) async fn write(send: &mut quinn::SendStream, msg: &PeerMsg) -> Result<(), LinkError> {
    let frame = peer_wire::encode(msg)
        .ok_or_else(|| LinkError::Protocol("a message larger than a frame".into()))?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one message.
pub(super) async fn read(recv: &mut quinn::RecvStream) -> Result<PeerMsg, LinkError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = peer_wire::frame_len(prefix)?;
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame).await?;
    Ok(peer_wire::decode(&frame)?)
}

/// The replicas this broker keeps as a backup, by shard: the owner's name and the replica.
#[derive(Default)]
pub(super) struct Replicas {
    by_shard: Mutex<HashMap<u32, (String, Replica)>>,
}

impl Replicas {
    /// Takes `shard`'s replica for a claim, if it follows the owner's term `epoch`.
    pub fn take(&self, shard: u32, epoch: u64) -> Option<Replica> {
        let mut map = self.by_shard.lock();
        let (_, r) = map.remove(&shard)?;
        (r.epoch() == epoch).then_some(r)
    }

    /// Drops the leases that ended by `now` from every replica.
    pub fn expire(&self, now: Instant) {
        for (_, r) in self.by_shard.lock().values_mut() {
            r.expire(now);
        }
    }

    /// Replicas kept, and leases in them.
    #[cfg(test)]
    pub fn totals(&self) -> (usize, usize) {
        let map = self.by_shard.lock();
        (map.len(), map.values().map(|(_, r)| r.len()).sum())
    }

    /// Applies one message of owner `owner`'s stream; the answer to send back.
    fn handle(&self, owner: &str, msg: PeerMsg, now: Instant) -> Result<PeerMsg, LinkError> {
        match msg {
            PeerMsg::Snapshot {
                shard,
                epoch,
                next_seq,
                record,
            } => {
                let replica = Replica::from_snapshot(epoch, next_seq, record, now);
                self.by_shard
                    .lock()
                    .insert(shard, (owner.to_string(), replica));
                Ok(PeerMsg::Ack {
                    shard,
                    epoch,
                    next_seq,
                })
            }
            PeerMsg::Changes {
                shard,
                epoch,
                seq,
                changes,
            } => {
                let mut map = self.by_shard.lock();
                let Some((_, replica)) = map.get_mut(&shard).filter(|(o, _)| o == owner) else {
                    let why = "no replica of the shard from this owner".to_string();
                    return Ok(PeerMsg::Refused { shard, epoch, why });
                };
                Ok(match replica.apply(epoch, seq, &changes, now) {
                    Ok(next_seq) => PeerMsg::Ack {
                        shard,
                        epoch,
                        next_seq,
                    },
                    Err(e) => {
                        // It cannot follow the stream any more: a snapshot starts it again.
                        map.remove(&shard);
                        PeerMsg::Refused {
                            shard,
                            epoch,
                            why: e.to_string(),
                        }
                    }
                })
            }
            other => Err(LinkError::Protocol(format!(
                "unexpected message from an owner: {other:?}"
            ))),
        }
    }
}

/// Serves one link as the backup: checks the owner's proof, proves itself, then applies the
/// owner's snapshots and changes and acknowledges each batch, until the link ends.
pub(super) async fn serve_backup(
    replicas: &Replicas,
    key: &[u8],
    me: &str,
    conn: quinn::Connection,
) -> Result<(), LinkError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let exporter = exporter(&conn)?;
    let owner = match read(&mut recv).await? {
        PeerMsg::Hello { name, proof: given }
            if verify(key, Role::Owner, &name, &exporter, &given) =>
        {
            name
        }
        _ => {
            conn.close(1u32.into(), b"not a member of this cluster");
            return Err(LinkError::Proof);
        }
    };
    let hello = PeerMsg::Hello {
        name: me.to_string(),
        proof: proof(key, Role::Backup, me, &exporter),
    };
    write(&mut send, &hello).await?;
    loop {
        let msg = read(&mut recv).await?;
        let answer = replicas.handle(&owner, msg, Instant::now())?;
        write(&mut send, &answer).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::cluster::handover::Handover;
    use crate::cluster::replica::Change;
    use crate::table::Mode;

    #[test]
    fn a_proof_is_bound_to_the_key_the_role_the_name_and_the_session() {
        let (key, x) = ([7u8; 32], [1u8; 32]);
        let p = proof(&key, Role::Owner, "b1", &x);
        assert!(verify(&key, Role::Owner, "b1", &x, &p));
        assert!(
            !verify(&[8u8; 32], Role::Owner, "b1", &x, &p),
            "another key"
        );
        assert!(
            !verify(&key, Role::Backup, "b1", &x, &p),
            "the other end's role"
        );
        assert!(!verify(&key, Role::Owner, "b2", &x, &p), "another name");
        assert!(
            !verify(&key, Role::Owner, "b1", &[2u8; 32], &p),
            "another session"
        );
    }

    #[test]
    fn a_backup_keeps_each_owners_shard_and_refuses_a_stream_it_cannot_follow() {
        let r = Replicas::default();
        let now = Instant::now();
        let snap = PeerMsg::Snapshot {
            shard: 2,
            epoch: 40,
            next_seq: 5,
            record: Handover::default(),
        };
        assert!(matches!(
            r.handle("b1", snap, now),
            Ok(PeerMsg::Ack { next_seq: 5, .. })
        ));
        let change = Change::Acquired {
            key: Bytes::from_static(b"k"),
            fence: 9,
            mode: Mode::Exclusive,
            left: Duration::from_secs(5),
        };
        let changes = |seq| PeerMsg::Changes {
            shard: 2,
            epoch: 40,
            seq,
            changes: vec![change.clone()],
        };
        assert!(matches!(
            r.handle("b1", changes(5), now),
            Ok(PeerMsg::Ack { next_seq: 6, .. })
        ));
        // Another owner's changes of the same shard are not this replica's.
        assert!(matches!(
            r.handle("b3", changes(6), now),
            Ok(PeerMsg::Refused { .. })
        ));
        assert_eq!(r.totals(), (1, 1));
        // A gap: refused, and the replica is dropped (it must start again from a snapshot).
        assert!(matches!(
            r.handle("b1", changes(9), now),
            Ok(PeerMsg::Refused { .. })
        ));
        assert!(r.take(2, 40).is_none());
    }

    #[test]
    fn a_claim_takes_only_a_replica_of_the_last_term() {
        let r = Replicas::default();
        let now = Instant::now();
        let snap = |epoch| PeerMsg::Snapshot {
            shard: 2,
            epoch,
            next_seq: 1,
            record: Handover::default(),
        };
        r.handle("b1", snap(40), now).ok();
        assert!(
            r.take(2, 41).is_none(),
            "a replica of term 40 cannot vouch for 41"
        );
        r.handle("b1", snap(41), now).ok();
        assert!(r.take(2, 41).is_some());
    }
}
