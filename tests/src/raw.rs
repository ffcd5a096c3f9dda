//! A raw QUIC connection to the broker that sends arbitrary bytes on the control stream, for
//! malformed-input tests and for measuring the transport floor.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{Acquire, Frame, Hello, Limits, Mode, WaitSpec, decode, encode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A QUIC client endpoint trusting `ca` and speaking the broker's ALPN.
pub fn client_endpoint(ca: &Path) -> quinn::Endpoint {
    client_endpoint_with(ca, None)
}

/// [`client_endpoint`] with its own transport settings (e.g. a small receive window).
pub fn client_endpoint_with(
    ca: &Path,
    transport: Option<quinn::TransportConfig>,
) -> quinn::Endpoint {
    client_endpoint_from(ca, transport, "127.0.0.1:0".parse().expect("addr"))
}

/// [`client_endpoint_with`] bound to `bind` (e.g. `127.0.0.7:0`: another loopback source
/// address, as a client on another host would be).
pub fn client_endpoint_from(
    ca: &Path,
    transport: Option<quinn::TransportConfig>,
    bind: SocketAddr,
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read ca") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![lockbroker_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint = quinn::Endpoint::client(bind).expect("endpoint");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(t) = transport {
        config.transport_config(Arc::new(t));
    }
    endpoint.set_default_client_config(config);
    endpoint
}

/// A raw control stream.
pub struct RawConn {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects and opens the control stream (no Hello sent).
    pub async fn connect(addr: SocketAddr, ca: &Path) -> RawConn {
        RawConn::connect_with(addr, ca, None).await
    }

    /// [`RawConn::connect`] with the client's own transport settings.
    pub async fn connect_with(
        addr: SocketAddr,
        ca: &Path,
        transport: Option<quinn::TransportConfig>,
    ) -> RawConn {
        let endpoint = client_endpoint_with(ca, transport);
        let conn = endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("open stream");
        RawConn {
            conn,
            send,
            recv,
            buf: Vec::new(),
        }
    }

    /// Connects and completes Hello/Welcome.
    pub async fn hello(addr: SocketAddr, ca: &Path) -> RawConn {
        RawConn::hello_with(addr, ca, None).await
    }

    /// [`RawConn::hello`] with the client's own transport settings.
    pub async fn hello_with(
        addr: SocketAddr,
        ca: &Path,
        transport: Option<quinn::TransportConfig>,
    ) -> RawConn {
        let mut c = RawConn::connect_with(addr, ca, transport).await;
        c.send_frame(&Frame::Hello(Hello {
            token: None,
            client: "raw".into(),
        }))
        .await;
        match c.next_frame(Duration::from_secs(5)).await {
            Some(Frame::Welcome(_)) => c,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Connects from source address `from`, sends `Hello` (with `token`, if any) and waits
    /// for `Welcome`; `Err` says why the broker did not welcome it (refused, closed, silent).
    pub async fn try_hello_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
        ca: &Path,
        token: Option<&str>,
    ) -> Result<RawConn, String> {
        let endpoint = client_endpoint_from(ca, None, SocketAddr::new(from, 0));
        let connecting = endpoint
            .connect(addr, "localhost")
            .map_err(|e| format!("connect: {e}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "no handshake within 10 s".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        let mut c = RawConn {
            conn,
            send,
            recv,
            buf: Vec::new(),
        };
        let mut hello = Vec::new();
        encode(
            &Frame::Hello(Hello {
                token: token.map(str::to_owned),
                client: "raw".into(),
            }),
            &mut hello,
        );
        c.send
            .write_all(&hello)
            .await
            .map_err(|e| format!("write: {e}"))?;
        match c.next_frame(Duration::from_secs(10)).await {
            Some(Frame::Welcome(_)) => Ok(c),
            Some(Frame::Error { code, message, .. }) => Err(format!("{code:?}: {message}")),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.send.write_all(b).await.expect("write");
    }

    pub async fn send_frame(&mut self, f: &Frame) {
        let mut b = Vec::new();
        encode(f, &mut b);
        self.send_bytes(&b).await;
    }

    /// The next frame, or None if the stream ended / nothing came within `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let limits = Limits {
                max_frame: 1 << 20,
                max_key: 1 << 20,
            };
            if let Ok(Some((f, n))) = decode(&self.buf, &limits) {
                self.buf.drain(..n);
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.recv.read(&mut chunk)).await {
                Ok(Ok(Some(n))) => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Waits (bounded) for the broker to close the connection; returns its reason.
    pub async fn closed(&self, limit: Duration) -> Option<quinn::ConnectionError> {
        tokio::time::timeout(limit, self.conn.closed()).await.ok()
    }
}

/// What [`RawConn::pipeline_acquires`] saw.
pub struct Pipelined {
    /// `Granted` answers that arrived.
    pub granted: usize,
    /// The first answer that was not a grant, or why the stream ended.
    pub other: Option<String>,
    /// The connection, still open (its leases held) unless the broker closed it.
    pub conn: quinn::Connection,
    /// The control stream's sending half, kept so the session is not ended.
    pub send: quinn::SendStream,
}

impl RawConn {
    /// Pipelines one exclusive, non-waiting `Acquire` per key (`per_write` frames per stream
    /// write, ids from 1, TTL `ttl_ms`) while reading the answers, until every key is answered,
    /// an answer is not a grant, or `limit` passes.
    pub async fn pipeline_acquires(
        self,
        keys: Vec<Bytes>,
        per_write: usize,
        ttl_ms: u64,
        limit: Duration,
    ) -> Pipelined {
        let RawConn {
            conn,
            mut send,
            mut recv,
            mut buf,
        } = self;
        let n = keys.len();
        let writer = tokio::spawn(async move {
            for (i, chunk) in keys.chunks(per_write.max(1)).enumerate() {
                let mut batch = Vec::new();
                for (j, key) in chunk.iter().enumerate() {
                    let frame = Frame::Acquire(Acquire {
                        id: (i * per_write.max(1) + j + 1) as u64,
                        key: key.clone(),
                        mode: Mode::Exclusive,
                        ttl_ms,
                        wait: WaitSpec::NoWait,
                        owner: Bytes::new(),
                        ticket: 0,
                        fence_block: 1,
                    });
                    encode(&frame, &mut batch);
                }
                if send.write_all(&batch).await.is_err() {
                    break;
                }
            }
            send
        });
        let limits = Limits {
            max_frame: 1 << 20,
            max_key: 1 << 20,
        };
        let mut granted = 0;
        let mut other = None;
        let deadline = tokio::time::Instant::now() + limit;
        while granted < n && other.is_none() {
            while let Ok(Some((f, used))) = decode(&buf, &limits) {
                buf.drain(..used);
                match f {
                    Frame::Granted(_) => granted += 1,
                    f => other = Some(format!("{f:?}")),
                }
            }
            if granted == n || other.is_some() {
                break;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, recv.read(&mut chunk)).await {
                Ok(Ok(Some(read))) => buf.extend_from_slice(&chunk[..read]),
                Ok(_) => other = Some(format!("the stream ended: {:?}", conn.close_reason())),
                Err(_) => break,
            }
        }
        let send = writer.await.expect("the writer task");
        Pipelined {
            granted,
            other,
            conn,
            send,
        }
    }
}
