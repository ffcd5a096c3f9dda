//! A raw QUIC control stream to the broker that pipelines `Acquire` frames, for the memory
//! test (holding a million leases through the SDK would measure guards, not the broker).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use lockbroker_proto::{Acquire, Frame, Hello, Limits, Mode, WaitSpec, decode, encode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;

/// A raw session holding leases; closing it (or dropping it) ends the session.
pub struct RawSession {
    _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    _send: quinn::SendStream,
}

pub fn endpoint(ca: &Path) -> Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).context("read ca")? {
        roots.add(c?)?;
    }
    crate::echo::client_endpoint(roots, None)
}

/// A raw connection and its control stream.
pub type RawOpen = (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
);

/// A raw connection whose control stream has sent `Hello` as `client` (the answer is left
/// to the caller to read, or not).
pub async fn open(addr: SocketAddr, ca: &Path, client: &str) -> Result<RawOpen> {
    open_from(addr, ca, client, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`open`] from the local address `from` (any loopback address: 127.0.0.0/8).
pub async fn open_from(
    addr: SocketAddr,
    ca: &Path,
    client: &str,
    from: std::net::IpAddr,
) -> Result<RawOpen> {
    let ep = endpoint(ca)?;
    ep.rebind(std::net::UdpSocket::bind((from, 0))?)?;
    let conn = ep.connect(addr, "localhost")?.await?;
    let (mut send, recv) = conn.open_bi().await?;
    let mut out = Vec::new();
    encode(
        &Frame::Hello(Hello {
            token: None,
            client: client.into(),
        }),
        &mut out,
    );
    send.write_all(&out).await?;
    Ok((ep, conn, send, recv))
}

/// Opens a session and acquires every key of `keys` (exclusive, `ttl_ms`, no wait), writing
/// `batch` frames per write; returns once every grant arrived.
/// How long the memory test waits for the broker to take a request or send an answer.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn hold(
    addr: SocketAddr,
    ca: &Path,
    keys: Vec<Bytes>,
    ttl_ms: u64,
    batch: usize,
) -> Result<RawSession> {
    let (ep, conn, mut send, mut recv) = open(addr, ca, "lockbroker-bench raw").await?;
    let mut out = Vec::new();
    let n = keys.len();
    let reader = tokio::spawn(async move {
        let limits = Limits {
            max_frame: 1 << 20,
            max_key: 1 << 20,
        };
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        let mut granted = 0usize;
        let mut welcomed = false;
        while granted < n {
            while let Some((f, used)) = decode(&buf, &limits)? {
                bytes::Buf::advance(&mut buf, used);
                match f {
                    Frame::Welcome(_) => welcomed = true,
                    Frame::Granted(_) => granted += 1,
                    other => bail!("memory test: unexpected answer {other:?}"),
                }
            }
            if granted >= n {
                break;
            }
            // Bounded: a broker that stops answering fails the run with a message instead
            // of stalling it (issue 23: answers that never arrived).
            let read = tokio::time::timeout(STALL_LIMIT, recv.read_buf(&mut buf))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "memory test: no answer for {STALL_LIMIT:?} after {granted} of {n} grants"
                    )
                })?;
            if read? == 0 {
                bail!("memory test: broker closed the stream after {granted} grants");
            }
        }
        anyhow::ensure!(welcomed, "no Welcome");
        Ok(recv)
    });
    let mut id = 1u64;
    for chunk in keys.chunks(batch) {
        out.clear();
        for key in chunk {
            encode(
                &Frame::Acquire(Acquire {
                    id,
                    key: key.clone(),
                    mode: Mode::Exclusive,
                    ttl_ms,
                    wait: WaitSpec::NoWait,
                    owner: Bytes::new(),
                    ticket: 0,
                    fence_block: 1,
                }),
                &mut out,
            );
            id += 1;
        }
        tokio::time::timeout(STALL_LIMIT, send.write_all(&out))
            .await
            .map_err(|_| {
                anyhow::anyhow!("memory test: the broker read no request for {STALL_LIMIT:?}")
            })??;
    }
    let _recv = reader.await??;
    Ok(RawSession {
        _endpoint: ep,
        conn,
        _send: send,
    })
}

impl RawSession {
    /// Closes the session cleanly (the broker releases its leases).
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}
