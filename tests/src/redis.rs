//! Real `redis-server` processes for mirror tests: each on a free port of its own (found by
//! binding 127.0.0.1:0 and dropping the listener), no persistence, stopped by handle on drop;
//! a small synchronous Redis client for assertions; broker configs with a mirror; and the
//! redis-py `Lock` (an independent redlock-style client) driven through `python3`.

use crate::ports::free_port;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::plugins::plugin;

/// A running `redis-server`.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts a server on `port` (e.g. to bring a killed one back on the same address).
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (is it installed? scripts/test-all.sh installs it)");
        let server = RedisServer { child, port };
        let start = Instant::now();
        loop {
            if let Ok(mut c) = server.try_conn()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server on port {port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        client.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A synchronous connection.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to redis-server")
    }

    /// `GET key` as a string.
    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.conn())
            .expect("GET")
    }

    /// `PTTL key` (-2 missing, -1 no expiry).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.conn())
            .expect("PTTL")
    }

    /// `SET key value NX PX ttl_ms`: true if set.
    pub fn set_nx(&self, key: &str, value: &str, ttl_ms: u64) -> bool {
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query(&mut self.conn())
            .expect("SET NX");
        r.is_some()
    }

    /// Every key matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.conn())
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// Kills the server (SIGKILL); returns its port to start it again with `start_on`.
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

/// A broker config mirroring to `redis_url` with the redis-mirror plugin in `mode`
/// (`async` | `sync`); `extra` is appended to the `[mirror]` table.
pub fn mirror_config(redis_url: &str, mode: &str, extra: &str) -> String {
    format!(
        r#"
[[redis]]
name = "main"
url = "{redis_url}"
connect_timeout_ms = 300
command_timeout_ms = 500

[mirror]
path = "{path}"
mode = "{mode}"
retry_ms = 100
restore_timeout_ms = 3000
{extra}
"#,
        path = plugin("redis_mirror").display()
    )
}

/// Runs a Python program with the `redis` package (redis-py) imported as `redis`, the server's
/// port in `PORT`; returns its output. Panics if python3 or redis-py is missing.
pub fn python(server: &RedisServer, program: &str) -> Output {
    let full = format!(
        "import redis, sys, time\nPORT = {}\nr = redis.Redis(host='127.0.0.1', port=PORT)\n{program}",
        server.port
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(full)
        .output()
        .expect("run python3");
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Spawns a Python program like [`python`] without waiting (stdout piped).
pub fn python_spawn(server: &RedisServer, program: &str) -> Child {
    let full = format!(
        "import redis, sys, time\nPORT = {}\nr = redis.Redis(host='127.0.0.1', port=PORT)\n{program}",
        server.port
    );
    Command::new("python3")
        .arg("-c")
        .arg(full)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3")
}
