//! The orchestrator's own `redis-server`: on a free loopback port, no persistence, output to a
//! log file in the work dir. It is the fencing store and, in sync phases, the broker's mirror
//! target (reached through the stallable proxy).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::process::{die_with_parent, kill_and_reap};

/// A running `redis-server`, killed with its handle.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
}

/// A free TCP port on 127.0.0.1 (bind :0, read the port, drop the listener).
fn free_tcp_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl RedisServer {
    /// Starts `redis-server` and waits (bounded) until it answers PING.
    pub async fn start(work_dir: &Path) -> anyhow::Result<RedisServer> {
        let port = free_tcp_port()?;
        let log = std::fs::File::create(work_dir.join("redis-server.log"))
            .context("create redis-server.log")?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .context("cannot start redis-server (is it installed and on PATH?)")?;
        let mut server = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("redis-server exited at start ({status}); see redis-server.log");
            }
            if server.ping().await {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill_and_reap(&mut server.child).await;
        bail!("redis-server on port {port} did not answer PING within 20 s")
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let attempt = async {
            let mut con = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(_))
        )
    }

    /// Kills the server.
    pub async fn stop(mut self) {
        kill_and_reap(&mut self.child).await;
    }
}
