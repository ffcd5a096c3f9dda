//! Restore validates what it reads from Redis (issue 11, finding 6): a stored max-fence far above
//! anything the broker granted is refused with an error log and the broker keeps granting,
//! across restarts; a value that is not a token the mirror writes (a hand-written `lb:5`) is not
//! restored as a held lease, and the log says so.
//!
//! These tests start the real `lockbroker` binary themselves (not through `Broker`) so they can
//! capture its log (stderr) in a file and assert on it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lockbroker_sdk::{Client, Error};
use lockbroker_tests::redis::{RedisServer, mirror_config};
use lockbroker_tests::util::inspect;
use lockbroker_tests::{TempDir, lockbroker_bin};

/// Bits of a fencing token below the epoch.
const COUNTER_BITS: u32 = 40;

/// A broker process whose log goes to `<data dir>/broker.log`.
struct LoggedBroker {
    child: Child,
    addr: SocketAddr,
    /// Always `Some` until `kill` takes it.
    dir: Option<TempDir>,
}

impl LoggedBroker {
    /// Starts `lockbroker serve` on `dir` with `toml`; the log (level info) is appended to
    /// `dir/broker.log`, so it spans restarts on the same dir.
    fn start_in(dir: TempDir, toml: &str) -> LoggedBroker {
        let cfg = dir.path().join("broker.toml");
        std::fs::write(&cfg, toml).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("broker.log"))
            .expect("open broker.log");
        let mut child = Command::new(lockbroker_bin())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--config")
            .arg(&cfg)
            .env("LOCKBROKER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn lockbroker serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = None;
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line
                    .strip_prefix("lockbroker listening on ")
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    addr = Some(a);
                }
                if !sent && line.starts_with("  lockbroker lock") {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
            if !sent {
                let _ = tx.send(None);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "broker did not start; log:\n{}",
                    read_log(&dir.path().join("broker.log"))
                )
            });
        LoggedBroker {
            child,
            addr,
            dir: Some(dir),
        }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("data dir").path()
    }

    async fn client(&self) -> Client {
        Client::builder()
            .broker(format!("quic://{}", self.addr))
            .ca_file(self.path().join("dev-cert.pem"))
            .connect()
            .await
            .expect("connect to broker")
    }

    /// The broker's epoch (bumped at every start), from its data dir.
    fn epoch(&self) -> u64 {
        std::fs::read_to_string(self.path().join("epoch"))
            .expect("read epoch")
            .trim()
            .parse()
            .expect("epoch is a number")
    }

    /// Everything logged so far in this data dir.
    fn log(&self) -> String {
        read_log(&self.path().join("broker.log"))
    }

    /// Kills the process (SIGKILL) and gives back its data dir, to restart on it.
    fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("data dir")
    }
}

impl Drop for LoggedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log file without ANSI colour sequences.
fn read_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn set(redis: &RedisServer, key: &str, value: &str, px: Option<u64>) {
    let mut cmd = ::redis::cmd("SET");
    cmd.arg(key).arg(value);
    if let Some(ms) = px {
        cmd.arg("PX").arg(ms);
    }
    let _: () = cmd.query(&mut redis.conn()).expect("SET");
}

/// Takes and releases a few locks; every grant's fence must be in this broker's epoch range.
async fn grants_work(broker: &LoggedBroker, round: &str) -> u64 {
    let client = broker.client().await;
    let epoch = broker.epoch();
    let mut last = 0;
    for i in 0..3 {
        let key = format!("{round}/{i}");
        let g = match client.try_lock(key.clone()).await {
            Ok(g) => g,
            Err(e) => panic!(
                "{round}: acquire of {key} refused: {e}\nlog:\n{}",
                broker.log()
            ),
        };
        assert!(g.fence() > last, "fences increase");
        assert!(
            g.fence() >> COUNTER_BITS <= epoch + 1,
            "{round}: fence {} continues from the broker's own epoch {epoch}, not the bogus max",
            g.fence()
        );
        last = g.fence();
        g.unlock().await.expect("unlock");
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_max_fence_is_refused_and_does_not_brick_the_broker() {
    let redis = RedisServer::start();
    let bogus = u64::MAX - 2;
    set(&redis, "lockbroker:max-fence", &bogus.to_string(), None);
    // A lease in the mirror's exact format whose fence is just as absurd.
    set(
        &redis,
        "bogus/lease",
        &format!("lb:{}", bogus - 1),
        Some(60_000),
    );
    let config = mirror_config(&redis.url(), "sync", "");

    let broker = LoggedBroker::start_in(TempDir::new("restore-maxfence"), &config);
    let first = grants_work(&broker, "first").await;
    let log = broker.log();
    assert!(
        log.contains(&format!("refusing max-fence {bogus}")),
        "the refusal is logged:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("lease bogus/lease")
            && l.contains(&(bogus - 1).to_string())
            && l.contains("skipped")),
        "the absurd lease is skipped, by name and fence:\n{log}"
    );
    // Not installed in the table. (The Redis key itself still excludes: the mirror will not
    // overwrite a token with a higher fence, so a grant on this key waits for its PX.)
    let client = broker.client().await;
    assert!(!inspect(&client, "bogus/lease").await.is_locked());
    drop(client);

    // Across a restart (same data dir, Redis still holds the bogus value): still granting, and
    // fences keep rising above the previous life's.
    let dir = broker.kill();
    let broker = LoggedBroker::start_in(dir, &config);
    let second = grants_work(&broker, "second").await;
    assert!(second > first, "fences rise across the restart");
    assert_eq!(
        broker.log().matches("refusing max-fence").count(),
        2,
        "refused at each start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_token_is_not_restored_as_a_lease() {
    let redis = RedisServer::start();
    // What a person or a foreign client might write: `lb:` followed by a small number. The
    // broker never hands out such a fence (every epoch is >= 1, so every fence is >= 2^40).
    set(&redis, "hand/5", "lb:5", Some(60_000));
    // Not the exact format either: the mirror never writes a leading zero.
    set(&redis, "hand/zero", "lb:01099511627777", Some(60_000));
    // A genuine-looking broker token next to them is still restored.
    let genuine = (1u64 << COUNTER_BITS) | 7;
    set(&redis, "real/1", &format!("lb:{genuine}"), Some(60_000));
    let config = mirror_config(&redis.url(), "sync", "");

    let broker = LoggedBroker::start_in(TempDir::new("restore-handwritten"), &config);
    let client = broker.client().await;
    for key in ["hand/5", "hand/zero"] {
        assert!(
            !inspect(&client, key).await.is_locked(),
            "{key} must not be restored as held\nlog:\n{}",
            broker.log()
        );
    }
    // Not held: a try-lock is granted at once.
    match client.try_lock("hand/5").await {
        Ok(g) => g.unlock().await.expect("unlock"),
        Err(e) => panic!("hand/5 is free, got {e}\nlog:\n{}", broker.log()),
    }
    let info = inspect(&client, "real/1").await;
    assert_eq!(info.holders.len(), 1, "a valid broker token is restored");
    assert_eq!(info.holders[0].fence, genuine);
    match client.try_lock("real/1").await {
        Err(Error::Busy) => {}
        other => panic!("a restored lease is held: {other:?}"),
    }
    let log = broker.log();
    for (key, value) in [("hand/5", "lb:5"), ("hand/zero", "lb:01099511627777")] {
        assert!(
            log.lines()
                .any(|l| l.contains("skipped") && l.contains(key) && l.contains(value)),
            "the log says {key} = {value} was skipped:\n{log}"
        );
    }
}
