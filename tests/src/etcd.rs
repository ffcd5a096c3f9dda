//! Real `etcd` servers for cluster tests: a single member on free loopback ports with a data
//! dir of its own, stopped by handle on drop (and startable again on the same ports and data).
//! Broker configs for cluster mode, and free UDP ports for brokers that must keep their address.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;
use crate::redis::free_port;

/// A running single-member etcd.
pub struct EtcdServer {
    child: Child,
    pub client_port: u16,
    peer_port: u16,
    data: TempDir,
}

impl EtcdServer {
    /// Starts a member on free ports.
    pub fn start() -> EtcdServer {
        let data = TempDir::new("etcd");
        EtcdServer::start_with(data, free_port(), free_port())
    }

    fn start_with(data: TempDir, client_port: u16, peer_port: u16) -> EtcdServer {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(data.path().join("member"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd (is it installed? scripts/test-all.sh installs etcd-server)");
        let server = EtcdServer {
            child,
            client_port,
            peer_port,
            data,
        };
        let start = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], client_port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd on port {client_port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills the member (SIGKILL), keeping its data and ports for [`EtcdServer::restart`].
    pub fn kill(mut self) -> (TempDir, u16, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = std::mem::replace(&mut self.data, TempDir::empty());
        (data, self.client_port, self.peer_port)
    }

    /// Starts a killed member again on its ports and data.
    pub fn restart(killed: (TempDir, u16, u16)) -> EtcdServer {
        EtcdServer::start_with(killed.0, killed.1, killed.2)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free UDP port on 127.0.0.1, for a broker that must keep its address across restarts
/// (its advertised cluster URL).
pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind udp 127.0.0.1:0")
}

/// A broker config for cluster mode on `etcd` as `name` advertising `addr`, with a 2 s
/// ownership lease and `max_ttl_ms` as the TTL cap (and takeover grace).
pub fn cluster_config(etcd: &str, name: &str, addr: SocketAddr, max_ttl_ms: u64) -> String {
    format!(
        r#"
[locks]
default_ttl_ms = {max_ttl_ms}
[cluster]
etcd = ["{etcd}"]
name = "test"
broker = "{name}"
advertise = "{addr}"
shards = 8
ownership_ttl_ms = 2000
max_ttl_ms = {max_ttl_ms}
"#
    )
}
