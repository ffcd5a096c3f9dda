//! Shared helpers of the `mirror_*` host-level tests: a real `redis-server` on a free port
//! (stopped on drop), the compiled redis-mirror plugin, and an in-process broker with a mirror.
#![allow(dead_code)] // each test file uses a different subset

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbroker::config::Config;
use lockbroker::redis::RedisSettings;
use lockbroker::server::Server;
use lockbroker::server::policy::Policy;

#[path = "../plugins_support/mod.rs"]
mod plugins_support;

/// The compiled redis-mirror plugin (plugins are built once per test process).
pub fn mirror_wasm() -> std::path::PathBuf {
    plugins_support::dist().join("redis_mirror.wasm")
}

/// A running `redis-server` with no persistence.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        RedisServer::start_on(port)
    }

    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let s = RedisServer { child, port };
        let start = Instant::now();
        loop {
            if let Ok(mut c) = s.try_conn()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect")
    }

    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.conn())
            .expect("GET")
    }

    /// SIGKILL; returns the port.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker config with one `[[redis]]` connection named `main` and the mirror plugin.
pub fn config(redis_url: &str, data_dir: &std::path::Path) -> Config {
    let mut r = RedisSettings::new("main", redis_url);
    r.connect_timeout_ms = 200;
    r.command_timeout_ms = 300;
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data_dir.to_path_buf(),
        redis: vec![r],
        ..Config::default()
    };
    cfg.mirror.path = Some(mirror_wasm());
    cfg.mirror.retry_ms = 50;
    cfg.mirror.restore_timeout_ms = 2_000;
    cfg
}

/// Binds an in-process server and starts its mirror.
pub async fn server(cfg: Config) -> Server {
    std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
    let server = Server::bind(cfg, Policy::default()).expect("bind");
    server.start_mirror().await.expect("start mirror");
    server
}

/// The broker of a server.
pub fn broker(s: &Server) -> &Arc<lockbroker::server::Broker> {
    s.broker()
}
