//! The transport floor: a quinn echo server (on its own thread and runtime, as the broker has
//! its own process) and a client doing 32-byte round trips on one long-lived bidi stream,
//! with the same rustls/ring TLS 1.3 setup, ALPN and transport settings as broker and SDK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::stats::Lat;

/// Size of one echo message.
pub const MSG: usize = 32;

/// A running echo server; stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    child: Option<std::process::Child>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the echo server in a child process (this binary with `--echo-server`), so it sits
/// across a process boundary exactly like the broker does.
pub fn spawn_server_process() -> Result<EchoServer> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("--echo-server")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("spawn the echo server process")?;
    let stdout = child.stdout.take().context("echo stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().context("echo server said nothing")??;
    let mut parts = first.split_whitespace();
    let (Some("echo"), Some(addr), Some(cert)) = (parts.next(), parts.next(), parts.next()) else {
        let _ = child.kill();
        anyhow::bail!("echo server banner {first:?}");
    };
    let cert = (0..cert.len() / 2)
        .map(|i| u8::from_str_radix(&cert[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    // Keep draining its stdout so it never blocks.
    std::thread::spawn(move || for _ in lines {});
    Ok(EchoServer {
        addr: addr.parse()?,
        cert: CertificateDer::from(cert),
        stop: None,
        thread: None,
        child: Some(child),
    })
}

/// The `--echo-server` mode: serve, print `echo <addr> <cert hex>`, run until killed.
pub fn serve_forever() -> Result<()> {
    let server = start_server()?;
    let hex: String = server.cert.iter().map(|b| format!("{b:02x}")).collect();
    println!("echo {} {hex}", server.addr);
    loop {
        std::thread::park();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client endpoint on 127.0.0.1:0 with the SDK's TLS 1.3 (rustls/ring) setup and ALPN,
/// trusting `roots`; keep-alive every 2 s and, if given, this idle timeout (else quinn's).
pub fn client_endpoint(
    roots: rustls::RootCertStore,
    idle_timeout: Option<Duration>,
) -> Result<quinn::Endpoint> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![lockbroker_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Some(idle) = idle_timeout {
        transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle)?));
    }
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Starts the echo server on 127.0.0.1:0 on a thread with a 2-worker runtime (like the broker).
pub fn start_server() -> Result<EchoServer> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    tls.alpn_protocols = vec![lockbroker_proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10))?))
        .keep_alive_interval(Some(Duration::from_secs(3)))
        .max_concurrent_uni_streams(0u32.into());
    server_config.transport_config(Arc::new(transport));

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("echo-worker")
                .enable_all()
                .build()
                .expect("echo runtime");
            rt.block_on(async move {
                let endpoint = match quinn::Endpoint::server(
                    server_config,
                    "127.0.0.1:0".parse().expect("addr"),
                ) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = addr_tx.send(endpoint.local_addr().map_err(|e| e.to_string()));
                let accept = async {
                    while let Some(incoming) = endpoint.accept().await {
                        tokio::spawn(async move {
                            let Ok(conn) = incoming.await else { return };
                            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                tokio::spawn(async move {
                                    let mut buf = [0u8; MSG];
                                    while recv.read_exact(&mut buf).await.is_ok() {
                                        if send.write_all(&buf).await.is_err() {
                                            break;
                                        }
                                    }
                                });
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
                endpoint.close(0u32.into(), b"done");
            });
        })?;
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .context("echo server did not start")?
        .map_err(anyhow::Error::msg)?;
    Ok(EchoServer {
        addr,
        cert,
        stop: Some(stop_tx),
        thread: Some(thread),
        child: None,
    })
}

/// A client connection to the echo server with one long-lived bidi stream.
pub struct EchoClient {
    _endpoint: quinn::Endpoint,
    _conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl EchoClient {
    pub async fn connect(server: &EchoServer) -> Result<EchoClient> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.cert.clone())?;
        let endpoint = client_endpoint(roots, Some(Duration::from_secs(10)))?;
        let conn = endpoint.connect(server.addr, "localhost")?.await?;
        let (send, recv) = conn.open_bi().await?;
        let mut c = EchoClient {
            _endpoint: endpoint,
            _conn: conn,
            send,
            recv,
        };
        // The stream exists for the server once data flows: do one round trip.
        c.round_trip().await?;
        Ok(c)
    }

    /// One 32-byte round trip.
    pub async fn round_trip(&mut self) -> Result<()> {
        let msg = [7u8; MSG];
        self.send.write_all(&msg).await?;
        let mut buf = [0u8; MSG];
        self.recv.read_exact(&mut buf).await?;
        Ok(())
    }

    /// Round trips for `d`, recorded into `lat`.
    pub async fn run(&mut self, d: Duration, lat: &mut Lat) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let t = Instant::now();
            self.round_trip().await?;
            lat.record(t.elapsed());
        }
        Ok(())
    }
}
