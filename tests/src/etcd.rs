//! Real `etcd` servers for cluster tests: a single member on free loopback ports with a data
//! dir of its own (in memory: etcd's fsyncs would otherwise make it answer slowly under a full
//! test run's load, and the brokers' 2 s ownership leases self-fence on slow answers), stopped by handle on drop (and startable again on the same ports and data).
//! Broker configs for cluster mode, and free UDP ports for brokers that must keep their address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;
use crate::ports::free_port;
pub use crate::ports::free_udp_addr;

/// A running single-member etcd.
pub struct EtcdServer {
    child: Child,
    pub client_port: u16,
    peer_port: u16,
    data: TempDir,
    /// "http", or "https" for [`EtcdServer::start_tls`].
    scheme: &'static str,
}

impl EtcdServer {
    /// Starts a member on free ports.
    pub fn start() -> EtcdServer {
        let data = TempDir::in_memory("etcd");
        EtcdServer::start_with(data, free_port(), free_port())
    }

    /// Starts a member serving clients over TLS only (`https://`) with `cert`/`key`, and
    /// accepting only clients with a certificate `cert` verifies (`--client-cert-auth`).
    pub fn start_tls(cert: &Path, key: &Path) -> EtcdServer {
        let data = TempDir::in_memory("etcd-tls");
        let (client_port, peer_port) = (free_port(), free_port());
        let initial = format!("test=http://127.0.0.1:{peer_port}");
        let mut cmd = member_command(
            "test",
            &data.path().join("member"),
            &format!("https://127.0.0.1:{client_port}"),
            peer_port,
            &initial,
        );
        cmd.arg("--cert-file")
            .arg(cert)
            .arg("--key-file")
            .arg(key)
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(cert);
        let child = cmd.spawn().expect("spawn etcd");
        let server = EtcdServer {
            child,
            client_port,
            peer_port,
            data,
            scheme: "https",
        };
        wait_port(client_port);
        server
    }

    fn start_with(data: TempDir, client_port: u16, peer_port: u16) -> EtcdServer {
        let initial = format!("test=http://127.0.0.1:{peer_port}");
        let child = spawn_member(
            "test",
            &data.path().join("member"),
            client_port,
            peer_port,
            &initial,
        );
        let server = EtcdServer {
            child,
            client_port,
            peer_port,
            data,
            scheme: "http",
        };
        wait_port(client_port);
        server
    }

    /// `http://127.0.0.1:<port>` (`https://` over TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
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

/// A running three-member etcd cluster on loopback.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    names: Vec<String>,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    data: TempDir,
}

impl EtcdCluster {
    /// Starts three members and waits until every one accepts clients.
    pub fn start() -> EtcdCluster {
        let data = TempDir::in_memory("etcd3");
        let names: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = EtcdCluster {
            members: (0..3).map(|_| None).collect(),
            names,
            client_ports,
            peer_ports,
            data,
        };
        for i in 0..3 {
            c.start_member(i);
        }
        for i in 0..3 {
            wait_port(c.client_ports[i]);
        }
        c.wait_writable();
        c
    }

    /// Waits (bounded) until the cluster has a leader and takes a write: a `put` through
    /// etcd's own HTTP gateway (`POST /v3/kv/put`) on each member in turn, so no client
    /// program (`etcdctl`) is needed.
    pub fn wait_writable(&self) {
        let start = Instant::now();
        loop {
            if self.client_ports.iter().any(|&p| put_probe(p)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the etcd cluster never took a write in 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_member(&mut self, i: usize) {
        let initial: Vec<String> = (0..3)
            .map(|j| format!("{}=http://127.0.0.1:{}", self.names[j], self.peer_ports[j]))
            .collect();
        let data = self.data.path().join(&self.names[i]);
        let (client, peer) = (self.client_ports[i], self.peer_ports[i]);
        let child = spawn_member(&self.names[i], &data, client, peer, &initial.join(","));
        self.members[i] = Some(child);
    }

    /// The client endpoints of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// Stops member `i` (SIGKILL); its data stays for [`EtcdCluster::restart`].
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped member again (it rejoins with its data).
    pub fn restart(&mut self, i: usize) {
        self.start_member(i);
        wait_port(self.client_ports[i]);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}

/// Starts one etcd member on loopback ports.
fn spawn_member(
    name: &str,
    data: &Path,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
) -> Child {
    let client = format!("http://127.0.0.1:{client_port}");
    member_command(name, data, &client, peer_port, initial_cluster)
        .spawn()
        .expect("spawn etcd (is it installed? scripts/test-all.sh installs etcd-server)")
}

/// The command line of one etcd member serving clients at `client_url`.
fn member_command(
    name: &str,
    data: &Path,
    client_url: &str,
    peer_port: u16,
    initial_cluster: &str,
) -> Command {
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new("etcd");
    cmd.arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen-client-urls")
        .arg(client_url)
        .arg("--advertise-client-urls")
        .arg(client_url)
        .arg("--listen-peer-urls")
        .arg(&peer)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .arg("--initial-cluster")
        .arg(initial_cluster)
        .arg("--initial-cluster-state")
        .arg("new")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// One `put` of a probe key through the HTTP gateway of the member on `port`: true if it
/// answered 200 (a leader committed it) within 2 s.
fn put_probe(port: u16) -> bool {
    // {"key": base64("/lockbroker-test/probe"), "value": base64("1")}
    const BODY: &str = r#"{"key":"L2xvY2ticm9rZXItdGVzdC9wcm9iZQ==","value":"MQ=="}"#;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\"header\"")
}

/// Waits (bounded) until a loopback TCP port accepts connections.
fn wait_port(port: u16) {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd on port {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker config for cluster mode on the `etcd` endpoints as `name` advertising `addr`, with
/// a 2 s ownership lease and `max_ttl_ms` as the TTL cap (and takeover grace).
pub fn cluster_config(etcd: &[String], name: &str, addr: SocketAddr, max_ttl_ms: u64) -> String {
    let etcd: Vec<String> = etcd.iter().map(|e| format!("{e:?}")).collect();
    let etcd = etcd.join(", ");
    format!(
        r#"
[locks]
default_ttl_ms = {max_ttl_ms}
[cluster]
etcd = [{etcd}]
name = "test"
broker = "{name}"
advertise = "{addr}"
shards = 8
ownership_ttl_ms = 2000
max_ttl_ms = {max_ttl_ms}
"#
    )
}
