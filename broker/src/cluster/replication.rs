//! Replicated shards at a broker (issue 24, `cluster.replicas = 2`): what the driver holds —
//! the grant gate with the feeds of the shards it owns (`replicator.rs`), the links to their
//! backups (`link.rs`), the replicas it keeps as a backup of others (`peer.rs`), and the
//! requests of the links to change etcd's in-sync set, which the driver's session carries
//! out. The protocol is model-checked in `tests/src/replica_model.rs`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::driver::ClusterError;
use super::handover::Handover;
use super::link::{self, InSyncOp, Link, LinkContext};
use super::peer::{PEER_ALPN, Replicas};
use super::replicator::Replicator;
use crate::broker::Broker;

/// A broker's part in replication.
pub(super) struct Replication {
    pub replicator: Arc<Replicator>,
    /// The replicas this broker keeps as a backup.
    pub replicas: Arc<Replicas>,
    links: Mutex<HashMap<String, Link>>,
    ctx: LinkContext,
    in_sync: Mutex<Option<mpsc::UnboundedReceiver<InSyncOp>>>,
    /// Until when hand-overs do not wait for acknowledgements: one drain ran out (the backup
    /// stopped answering), and the next shards' would too — a leave hands over every shard.
    drain_stuck_until: Mutex<Option<tokio::time::Instant>>,
}

impl Replication {
    /// Replication for member `me` of a cluster of `shards`, proving itself with the cluster
    /// `key`; links leave from an ephemeral port on `local_ip`.
    pub fn new(
        me: &str,
        key: &[u8],
        shards: u32,
        broker: &Arc<Broker>,
        local_ip: std::net::IpAddr,
    ) -> Result<Replication, ClusterError> {
        let endpoint = quinn::Endpoint::client(SocketAddr::new(local_ip, 0))
            .map_err(|e| ClusterError::Etcd(format!("replication link endpoint: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let replicator = Arc::new(Replicator::new(shards));
        let ctx = LinkContext {
            me: me.to_string(),
            key: Arc::from(key),
            shards,
            broker: broker.clone(),
            replicator: replicator.clone(),
            endpoint,
            client_config: client_config()?,
            in_sync: tx,
            recorded: replicator.recorded(),
        };
        Ok(Replication {
            replicator,
            replicas: Arc::new(Replicas::default()),
            links: Mutex::new(HashMap::new()),
            ctx,
            in_sync: Mutex::new(Some(rx)),
            drain_stuck_until: Mutex::new(None),
        })
    }

    /// Serves another member's link to this broker as its backup, until it ends.
    pub fn serve(&self, conn: quinn::Connection) -> impl std::future::Future<Output = ()> + use<> {
        let (replicas, key, me) = (
            self.replicas.clone(),
            self.ctx.key.clone(),
            self.ctx.me.clone(),
        );
        async move {
            let remote = conn.remote_address();
            if let Err(e) = super::peer::serve_backup(&replicas, &key, &me, conn).await {
                tracing::info!(target: "lockbroker::cluster", %remote, "replication link as backup: {e}");
            }
        }
    }

    /// The links' requests to change the in-sync set (taken once, by the driver's loop).
    pub fn take_in_sync_requests(&self) -> Option<mpsc::UnboundedReceiver<InSyncOp>> {
        self.in_sync.lock().take()
    }

    /// The backups of the shards served here are `backups` (shard, member, URL): links
    /// start, move shards and end to match.
    pub fn assign(&self, backups: &[(u32, String, String)]) {
        let mut by_backup: HashMap<&str, (&str, BTreeSet<u32>)> = HashMap::new();
        for (shard, name, url) in backups {
            by_backup
                .entry(name)
                .or_insert_with(|| (url, BTreeSet::new()))
                .1
                .insert(*shard);
        }
        let mut links = self.links.lock();
        links.retain(|name, link| {
            let keep = by_backup
                .get(name.as_str())
                .is_some_and(|(url, _)| *url == link.url);
            if !keep {
                // The backup left (or moved): what it kept in sync is not any more — answers
                // waiting for it go out once etcd no longer names it.
                for shard in link.shards.borrow().iter() {
                    link::out_of_sync(&self.ctx, *shard);
                }
            }
            keep
        });
        for (name, (url, shards)) in by_backup {
            let link = links.entry(name.to_string()).or_insert_with(|| {
                Link::start(self.ctx.clone(), name.to_string(), url.to_string())
            });
            link.shards.send_if_modified(|s| {
                let changed = *s != shards;
                *s = shards.clone();
                changed
            });
        }
    }

    /// This broker claimed `shard` in term `epoch` (grace until `grace_until`, if any).
    pub fn claimed(&self, shard: u32, epoch: u64, grace_until: Option<Instant>) {
        self.replicator.start(shard, epoch, grace_until);
    }

    /// Waits (at most `limit`) until no answer of `shard` waits for its backup any more: a
    /// planned hand-over lets the grants and renewals already made go out (their leases then
    /// move with the record) rather than answer them `Moved` when the feed ends. After a drain
    /// that ran out, the next ones for a while do not wait at all.
    pub async fn drain(&self, shard: u32, limit: std::time::Duration) {
        let now = tokio::time::Instant::now();
        if self.drain_stuck_until.lock().is_some_and(|t| now < t) {
            return;
        }
        let until = now + limit;
        while self.replicator.with_feed(shard, |f| f.has_waiting()) == Some(true) {
            if tokio::time::Instant::now() >= until {
                *self.drain_stuck_until.lock() = Some(until + limit * 5);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// This broker no longer serves `shard`: its feed ends (answers still waiting fail).
    pub fn lost(&self, shard: u32) {
        self.replicator.stop(shard);
    }

    /// The leases a claim of `shard` may load from this broker's replica of the owner's term
    /// `epoch`, as of `now`.
    pub fn take_over(&self, shard: u32, epoch: u64, now: Instant) -> Option<Handover> {
        Some(self.replicas.take(shard, epoch)?.into_handover(now))
    }
}

/// The links' TLS: the replication ALPN; the backup's certificate is not checked against a
/// root (each broker may have its own dev certificate) — the cluster-key proofs bound to
/// the session (`peer.rs`) are what authenticate both ends.
fn client_config() -> Result<quinn::ClientConfig, ClusterError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClusterError::Etcd(format!("replication link TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClusterError::Etcd(format!("replication link TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // A link with nothing to stream must not idle out (the backup's idle timeout, 10 s by
    // default): every reconnect takes the backup out of sync and back.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts any server certificate whose handshake signature is valid for it (the proof of
/// the cluster key authenticates the peer instead).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
