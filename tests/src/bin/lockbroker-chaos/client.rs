//! `lockbroker-chaos client`: one client process. It locks random hot keys through the public
//! SDK, logs every grant and every step it takes believing it holds the key, and writes the
//! fence to the fencing store at each step. Failed calls are normal under faults: it pauses
//! (bounded backoff) and tries again. It runs until killed, or `--max-runtime`.

use std::time::{Duration, Instant};

use anyhow::Context;
use lockbroker_sdk::{Client, Error, Guard};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ClientArgs;
use crate::clock::mono_ns;
use crate::history::{Entry, HistoryWriter};
use crate::store::FenceStore;

/// Pauses after failed calls: 5 ms doubling to 200 ms, back to 5 ms after a success.
struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(200);

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

/// The history-log name of an SDK error.
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Busy => "busy",
        Error::Timeout => "timeout",
        Error::NotOwner => "not-owner",
        Error::NotLocked => "not-locked",
        Error::Denied(_) => "denied",
        Error::Lost(_) => "lost",
        Error::Disconnected(_) => "disconnected",
        Error::Protocol(_) => "protocol",
        Error::Tls(_) => "tls",
        Error::Unavailable(_) => "unavailable",
        Error::LimitExceeded(_) => "limit-exceeded",
        Error::Invalid(_) => "invalid",
        Error::Connect(_) => "connect",
        Error::Cancelled(_) => "cancelled",
    }
}

/// Runs the client on a current-thread runtime.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(ClientLoop::start(args)?.run())
}

struct ClientLoop {
    args: ClientArgs,
    log: HistoryWriter,
    rng: StdRng,
    backoff: Backoff,
    deadline: Instant,
}

impl ClientLoop {
    fn start(args: ClientArgs) -> anyhow::Result<ClientLoop> {
        let mut log = HistoryWriter::open(&args.log)
            .with_context(|| format!("open the history log {}", args.log.display()))?;
        log.append(&Entry::Start {
            t: mono_ns(),
            pid: std::process::id(),
        })?;
        Ok(ClientLoop {
            rng: StdRng::seed_from_u64(args.seed),
            deadline: Instant::now() + args.max_runtime,
            backoff: Backoff(Backoff::MIN),
            log,
            args,
        })
    }

    fn log_error(&mut self, kind: &str, message: String) -> anyhow::Result<()> {
        self.log.append(&Entry::Err {
            kind: kind.to_owned(),
            t: mono_ns(),
            message,
        })?;
        Ok(())
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let mut store = self.connect_store().await?;
        let client = self.connect_broker().await?;
        while Instant::now() < self.deadline {
            let key = format!("chaos/{}", self.rng.random_range(0..self.args.keys));
            let request = client.lock(key.clone()).ttl(self.args.ttl);
            match request.wait(self.args.ttl * 2).await {
                Ok(guard) => {
                    self.backoff.reset();
                    self.hold(&key, guard, &mut store).await?;
                }
                Err(e) => {
                    self.log_error(error_kind(&e), e.to_string())?;
                    self.backoff.pause().await;
                }
            }
        }
        Ok(())
    }

    /// Logs the grant, takes 1–3 steps while the guard says the lease is held, unlocks.
    async fn hold(
        &mut self,
        key: &str,
        guard: Guard,
        store: &mut FenceStore,
    ) -> anyhow::Result<()> {
        let fence = guard.fence();
        let key = key.to_owned();
        self.log.append(&Entry::Grant {
            key: key.clone(),
            fence,
            t: mono_ns(),
        })?;
        let steps = self.rng.random_range(1..=3);
        for _ in 0..steps {
            let t = mono_ns();
            if guard.is_lost() {
                // Already lost: `lost()` answers at once with the reason (kept in the
                // client's stderr file for `--keep` runs).
                eprintln!("lost {key} fence {fence}: {}", guard.lost().await);
                self.log.append(&Entry::Lost {
                    key: key.clone(),
                    fence,
                    t,
                })?;
                break;
            }
            self.log.append(&Entry::Ok {
                key: key.clone(),
                fence,
                t,
            })?;
            match store.write(&key, fence).await {
                Ok(true) => {}
                Ok(false) => self.log.append(&Entry::Stale {
                    key: key.clone(),
                    fence,
                })?,
                Err(e) => self.log_error("store", e.to_string())?,
            }
            let pause = Duration::from_micros(self.rng.random_range(0..=2000));
            tokio::time::sleep(pause).await;
        }
        // The outcome does not matter: a lost lease may be gone from the broker already.
        let _ = guard.unlock().await;
        Ok(())
    }

    /// Connects to the fencing store, retrying (bounded) while it does not answer.
    async fn connect_store(&mut self) -> anyhow::Result<FenceStore> {
        let mut last = String::new();
        for _ in 0..50 {
            match FenceStore::connect(&self.args.redis).await {
                Ok(store) => return Ok(store),
                Err(e) => last = e.to_string(),
            }
            self.backoff.pause().await;
        }
        anyhow::bail!(
            "cannot connect to the fencing store {}: {last}",
            self.args.redis
        )
    }

    /// Connects to the broker, retrying until the deadline (it may be down or paused).
    async fn connect_broker(&mut self) -> anyhow::Result<Client> {
        while Instant::now() < self.deadline {
            let mut builder = Client::builder();
            for url in &self.args.broker {
                builder = builder.broker(url.clone());
            }
            if self.args.cache_locks {
                // Kept a little while unused: most hot-key locks find the lease recalled.
                builder = builder.cache_locks(self.args.ttl / 2);
            }
            let attempt = builder
                .ca_file(&self.args.ca)
                .name(format!("chaos-client/{}", std::process::id()))
                .connect_timeout(Duration::from_secs(1))
                .request_timeout((self.args.ttl * 2).max(Duration::from_secs(1)))
                // A SIGKILLed broker's connections are only noticed at the idle timeout (the
                // restarted broker cannot reset them): 10 s by default, far longer than the
                // faults. 3× TTL still outlasts a broker paused for 2× TTL.
                .idle_timeout((self.args.ttl * 3).max(Duration::from_secs(1)))
                .keep_alive((self.args.ttl / 2).max(Duration::from_millis(100)))
                .connect()
                .await;
            match attempt {
                Ok(client) => {
                    self.backoff.reset();
                    return Ok(client);
                }
                Err(e) => {
                    self.log_error(error_kind(&e), e.to_string())?;
                    self.backoff.pause().await;
                }
            }
        }
        anyhow::bail!("no broker connection before --max-runtime ran out")
    }
}
