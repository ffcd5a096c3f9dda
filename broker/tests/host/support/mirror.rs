//! Helpers of the `mirror_host` tests: a real `redis-server` on a free port (stopped on drop),
//! the compiled redis-mirror plugin, and an in-process broker with a mirror.

use std::sync::Arc;

use lockbroker::config::Config;
use lockbroker::mirror::Mirror;
use lockbroker::redis::RedisSettings;
use lockbroker::server::Server;
use lockbroker::server::policy::Policy;

/// The compiled redis-mirror plugin (plugins are built once per test process).
pub fn mirror_wasm() -> std::path::PathBuf {
    super::plugins::dist().join("redis_mirror.wasm")
}

/// A running `redis-server` with no persistence (the end-to-end tests' helper).
pub use lockbroker_tests::redis::RedisServer;

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

/// Binds an in-process server and starts its mirror (wired as `lockbroker serve` does).
pub async fn server(cfg: Config) -> (Server, Arc<Mirror>) {
    std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
    let server = Server::bind(cfg, Policy::default()).expect("bind");
    let cfg = &server.broker().cfg;
    let mirror = Mirror::start(&cfg.mirror, &cfg.redis, &cfg.data_dir, server.broker())
        .await
        .expect("start mirror")
        .expect("a mirror is configured");
    (server, mirror)
}
