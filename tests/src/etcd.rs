//! Real `etcd` servers for cluster tests: a single member on free loopback ports with a data
//! dir of its own (in memory: etcd's fsyncs would otherwise make it answer slowly under a full
//! test run's load, and the brokers' 2 s ownership leases self-fence on slow answers), stopped by handle on drop (and startable again on the same ports and data).
//! Broker configs for cluster mode, and free UDP ports for brokers that must keep their address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
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

/// An etcd the brokers of a test cluster share, and the cluster's key file (kept with etcd's
/// data: one per cluster, created by its first broker).
pub trait ClusterStore {
    /// The client endpoints.
    fn endpoints(&self) -> Vec<String>;
    /// The cluster's `key_file`.
    fn key_file(&self) -> PathBuf;
}

impl<T: ClusterStore + ?Sized> ClusterStore for &T {
    fn endpoints(&self) -> Vec<String> {
        (**self).endpoints()
    }

    fn key_file(&self) -> PathBuf {
        (**self).key_file()
    }
}

impl ClusterStore for EtcdServer {
    fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    fn key_file(&self) -> PathBuf {
        self.data.path().join("cluster.key")
    }
}

impl ClusterStore for EtcdCluster {
    fn endpoints(&self) -> Vec<String> {
        EtcdCluster::endpoints(self)
    }

    fn key_file(&self) -> PathBuf {
        self.data.path().join("cluster.key")
    }
}

/// A broker config for cluster mode on `etcd` as `name` advertising `addr`, with a 2 s
/// ownership lease and `max_ttl_ms` as the TTL cap (and takeover grace). The `[cluster]` table
/// comes last, so a test may append settings of its own.
pub fn cluster_config(
    etcd: &impl ClusterStore,
    name: &str,
    addr: SocketAddr,
    max_ttl_ms: u64,
) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let endpoints = endpoints.join(", ");
    let key_file = etcd.key_file().display().to_string();
    format!(
        r#"
[locks]
default_ttl_ms = {max_ttl_ms}
[cluster]
etcd = [{endpoints}]
name = "test"
key_file = {key_file:?}
broker = "{name}"
advertise = "{addr}"
shards = 8
ownership_ttl_ms = 2000
max_ttl_ms = {max_ttl_ms}
"#
    )
}

/// What a user of [`EtcdServer::enable_auth`] may do under its prefix.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    Read,
    ReadWrite,
}

/// An etcd user for [`EtcdServer::enable_auth`]: its role (`<name>-role`) grants `access` on
/// the keys under `prefix` and nothing else.
#[derive(Clone, Copy, Debug)]
pub struct EtcdUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub access: Access,
    pub prefix: &'a str,
}

/// The password of the `root` user [`EtcdServer::enable_auth`] creates.
const ROOT_PASSWORD: &str = "root-password";

impl EtcdServer {
    /// Turns on etcd's auth as README "Run a cluster" does with `etcdctl`: a `root` user (etcd
    /// needs one), every user of `users` with a role limited to its prefix, then `auth enable`.
    /// Through etcd's JSON gateway (`/v3/auth/...`), so no `etcdctl` is needed.
    pub fn enable_auth(&self, users: &[EtcdUser<'_>]) {
        let port = self.client_port;
        gateway_ok(
            port,
            "/v3/auth/user/add",
            &format!(r#"{{"name":"root","password":"{ROOT_PASSWORD}"}}"#),
            None,
        );
        gateway_ok(
            port,
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#,
            None,
        );
        for u in users {
            let role = format!("{}-role", u.name);
            let perm = match u.access {
                Access::Read => "READ",
                Access::ReadWrite => "READWRITE",
            };
            gateway_ok(
                port,
                "/v3/auth/user/add",
                &format!(r#"{{"name":"{}","password":"{}"}}"#, u.name, u.password),
                None,
            );
            gateway_ok(
                port,
                "/v3/auth/role/add",
                &format!(r#"{{"name":"{role}"}}"#),
                None,
            );
            gateway_ok(
                port,
                "/v3/auth/role/grant",
                &format!(
                    r#"{{"name":"{role}","perm":{{"permType":"{perm}","key":"{}","range_end":"{}"}}}}"#,
                    base64_encode(u.prefix.as_bytes()),
                    base64_encode(&prefix_end(u.prefix.as_bytes())),
                ),
                None,
            );
            gateway_ok(
                port,
                "/v3/auth/user/grant",
                &format!(r#"{{"user":"{}","role":"{role}"}}"#, u.name),
                None,
            );
        }
        gateway_ok(port, "/v3/auth/enable", "{}", None);
    }

    /// Every (key, value) under `prefix`, read as `user` (auth on) — what anyone with read
    /// access to the prefix sees.
    pub fn read_prefix(&self, user: &str, password: &str, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let port = self.client_port;
        let auth = gateway_ok(
            port,
            "/v3/auth/authenticate",
            &format!(r#"{{"name":"{user}","password":"{password}"}}"#),
            None,
        );
        let token = auth["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {auth}"))
            .to_string();
        let range = gateway_ok(
            port,
            "/v3/kv/range",
            &format!(
                r#"{{"key":"{}","range_end":"{}"}}"#,
                base64_encode(prefix.as_bytes()),
                base64_encode(&prefix_end(prefix.as_bytes()))
            ),
            Some(&token),
        );
        let field = |kv: &serde_json::Value, name: &str| {
            base64_decode(kv[name].as_str().unwrap_or(""))
                .unwrap_or_else(|| panic!("{name} of {kv} is not base64"))
        };
        range["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (field(kv, "key"), field(kv, "value")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One key as etcd's gateway shows it: its value and the id of its lease (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub lease: i64,
}

/// Plain key-value access without auth, as an operator (or an intruder) with `etcdctl`
/// would do it: through etcd's JSON gateway, so no client program is needed.
impl EtcdServer {
    /// `etcdctl put key value [--lease=<lease>]` (lease 0: none).
    pub fn put(&self, key: &str, value: &str, lease: i64) {
        let lease = if lease == 0 {
            String::new()
        } else {
            format!(r#","lease":"{lease}""#)
        };
        gateway_ok(
            self.client_port,
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{}","value":"{}"{lease}}}"#,
                base64_encode(key.as_bytes()),
                base64_encode(value.as_bytes())
            ),
            None,
        );
    }

    /// `etcdctl del key`.
    pub fn delete(&self, key: &str) {
        gateway_ok(
            self.client_port,
            "/v3/kv/deleterange",
            &format!(r#"{{"key":"{}"}}"#, base64_encode(key.as_bytes())),
            None,
        );
    }

    /// `etcdctl get key`: its value and lease, `None` if there is no such key.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let range = gateway_ok(
            self.client_port,
            "/v3/kv/range",
            &format!(r#"{{"key":"{}"}}"#, base64_encode(key.as_bytes())),
            None,
        );
        let kv = range["kvs"].as_array()?.first()?.clone();
        let value = base64_decode(kv["value"].as_str().unwrap_or(""))
            .unwrap_or_else(|| panic!("value of {kv} is not base64"));
        Some(Entry {
            value,
            lease: json_i64(&kv["lease"]),
        })
    }

    /// `etcdctl lease grant <ttl_s>`: the new lease's id.
    pub fn lease_grant(&self, ttl_s: i64) -> i64 {
        let answer = gateway_ok(
            self.client_port,
            "/v3/lease/grant",
            &format!(r#"{{"TTL":"{ttl_s}"}}"#),
            None,
        );
        let id = json_i64(&answer["ID"]);
        assert!(id != 0, "no lease id in {answer}");
        id
    }

    /// `etcdctl lease revoke <id>`: the lease ends and its keys are deleted.
    pub fn lease_revoke(&self, id: i64) {
        gateway_ok(
            self.client_port,
            "/v3/lease/revoke",
            &format!(r#"{{"ID":"{id}"}}"#),
            None,
        );
    }
}

/// An int64 of etcd's gateway (a JSON string, or absent for 0).
fn json_i64(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not an int64: {v}")),
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an int64: {v}")),
        _ => 0,
    }
}

/// The end of the key range of `prefix` (its last byte + 1, as `etcdctl --prefix` computes).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A POST to etcd's JSON gateway that must succeed (200): its JSON answer.
fn gateway_ok(port: u16, path: &str, body: &str, token: Option<&str>) -> serde_json::Value {
    let (status, json) = gateway(port, path, body, token);
    assert_eq!(status, 200, "etcd {path} {body}: {status} {json}");
    json
}

/// A POST of `body` to `path` on etcd's JSON gateway at `port` (with auth `token`, if any):
/// the HTTP status and the JSON answer.
pub fn gateway(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to etcd");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write to etcd");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let (head, payload) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let payload = if chunked {
        unchunk(payload)
    } else {
        payload.to_string()
    };
    let json =
        serde_json::from_str(&payload).unwrap_or_else(|e| panic!("etcd {path}: {e} in {payload}"));
    (status, json)
}

/// The body of a chunked HTTP answer.
fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (etcd's gateway encodes bytes so).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if `s` is not base64.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = BASE64.iter().position(|&b| b == c)?;
        acc = (acc << 6) | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0xff, 0, 0x10],
        ] {
            assert_eq!(base64_decode(&base64_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(prefix_end(b"/lockbroker/"), b"/lockbroker0");
    }
}
