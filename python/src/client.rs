//! `NativeClient`: one SDK client per process (`process.rs`), and every request the Python
//! layer makes of it. Each request method runs blocking (GIL released) or, with
//! `asynchronous=True`, returns an asyncio future (`bridge.rs`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lockbroker_sdk::{Client, Guard, LockAllRequest, LockInfo, LockRequest, Mode, UnlockOutcome};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::bridge;
use crate::errors::to_py;
use crate::guard::NativeGuard;
use crate::process::{Options, Process, Slot, client};

/// A lockbroker client: made in Python, connected in each process on first use.
#[pyclass(frozen, module = "lockbroker._native")]
pub(crate) struct NativeClient {
    opts: Options,
    slot: Slot,
}

/// How long a lock waits: `None` forever, 0 not at all, else that many seconds.
fn wait_of(wait: Option<f64>) -> PyResult<Option<Duration>> {
    wait.map(seconds).transpose()
}

/// Seconds as a duration; negative, NaN or absurd values are refused.
fn seconds(s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("not a duration in seconds: {s}")))
}

/// A key given as `str` (UTF-8) or `bytes`.
fn key_of(key: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_cow()?.as_bytes()));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    Err(PyValueError::new_err("a key is a str or bytes"))
}

/// A PEM file's bytes, read when the client is made (a wrong path fails there, not at the
/// first lock).
fn read_pem(path: &Path) -> PyResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| PyOSError::new_err(format!("{}: {e}", path.display())))
}

/// Applies a Python `wait` (`None` forever, 0 not at all, else up to that long) to a request
/// builder, given the builder's `[wait_forever, no_wait]` and `wait`.
fn with_wait<R>(
    r: R,
    wait: Option<Duration>,
    [forever, none]: [fn(R) -> R; 2],
    up_to: fn(R, Duration) -> R,
) -> R {
    match wait {
        None => forever(r),
        Some(d) if d.is_zero() => none(r),
        Some(d) => up_to(r, d),
    }
}

/// A lock as the Python layer asks for it.
struct LockArgs {
    key: Bytes,
    mode: Mode,
    ttl: Option<Duration>,
    /// `None`: wait forever.
    wait: Option<Duration>,
    owner: Option<String>,
    cache: Option<bool>,
}

impl LockArgs {
    async fn run(self, c: &Client) -> lockbroker_sdk::Result<Guard> {
        let mut r = match self.mode {
            Mode::Shared => c.read_lock(self.key),
            Mode::Semaphore(n) => c.semaphore(self.key, n),
            Mode::Exclusive => c.lock(self.key),
        };
        if let Some(ttl) = self.ttl {
            r = r.ttl(ttl);
        }
        r = with_wait(
            r,
            self.wait,
            [LockRequest::wait_forever, LockRequest::no_wait],
            LockRequest::wait,
        );
        if let Some(owner) = self.owner {
            r = r.owner(owner);
        }
        if let Some(on) = self.cache {
            r = r.cache(on);
        }
        r.await
    }
}

impl NativeClient {
    /// Runs `op` with this process's client: blocking, or as an asyncio future.
    fn call<T, F>(
        &self,
        py: Python<'_>,
        asynchronous: bool,
        op: impl FnOnce(Client, Arc<Process>) -> F + Send + 'static,
    ) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        let p = self.slot.current()?;
        let (opts, cell, owner) = (self.opts.clone(), p.client.clone(), p.clone());
        let fut = async move {
            let c = client(&cell, &opts).await.map_err(to_py)?;
            op(c, owner).await
        };
        if asynchronous {
            bridge::awaitable(py, &p, fut)
        } else {
            bridge::block(py, &p, fut)
        }
    }
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (urls, ca_files, token=None, owner=None, embedded=false, cache_idle=None, connect_timeout=None, request_timeout=None, cert=None, key=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        urls: Vec<String>,
        ca_files: Vec<String>,
        token: Option<String>,
        owner: Option<String>,
        embedded: bool,
        cache_idle: Option<f64>,
        connect_timeout: Option<f64>,
        request_timeout: Option<f64>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> PyResult<Self> {
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((read_pem(&cert)?, read_pem(&key)?)),
            _ => {
                return Err(PyValueError::new_err(
                    "a client certificate needs both cert= and key=",
                ));
            }
        };
        Ok(NativeClient {
            opts: Options {
                urls,
                ca_files,
                token,
                owner,
                embedded,
                cache_idle: cache_idle.map(seconds).transpose()?,
                connect_timeout: connect_timeout.map(seconds).transpose()?,
                request_timeout: request_timeout.map(seconds).transpose()?,
                identity,
            },
            slot: Slot::default(),
        })
    }

    /// Locks `key` in `mode` ("exclusive", "shared", "semaphore" with `permits`).
    #[pyo3(signature = (key, mode, permits, ttl, wait, owner, cache, asynchronous))]
    #[allow(clippy::too_many_arguments)]
    fn lock(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        mode: &str,
        permits: u32,
        ttl: Option<f64>,
        wait: Option<f64>,
        owner: Option<String>,
        cache: Option<bool>,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let args = LockArgs {
            key: key_of(key)?,
            mode: match mode {
                "exclusive" => Mode::Exclusive,
                "shared" => Mode::Shared,
                "semaphore" => Mode::Semaphore(permits),
                other => return Err(PyValueError::new_err(format!("unknown mode {other:?}"))),
            },
            ttl: ttl.map(seconds).transpose()?,
            wait: wait_of(wait)?,
            owner,
            cache,
        };
        self.call(py, asynchronous, move |c, p| async move {
            let guard = args.run(&c).await.map_err(to_py)?;
            Ok(NativeGuard::new(guard, p))
        })
    }

    /// Locks every key of `keys` at once (exclusive), or none.
    #[pyo3(signature = (keys, ttl, wait, owner, asynchronous))]
    fn lock_all(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        ttl: Option<f64>,
        wait: Option<f64>,
        owner: Option<String>,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let keys = keys.iter().map(key_of).collect::<PyResult<Vec<_>>>()?;
        let (ttl, wait) = (ttl.map(seconds).transpose()?, wait_of(wait)?);
        self.call(py, asynchronous, move |c, p| async move {
            let mut r = c.lock_all(keys);
            if let Some(ttl) = ttl {
                r = r.ttl(ttl);
            }
            r = with_wait(
                r,
                wait,
                [LockAllRequest::wait_forever, LockAllRequest::no_wait],
                LockAllRequest::wait,
            );
            if let Some(owner) = owner {
                r = r.owner(owner);
            }
            let guards = r.await.map_err(to_py)?;
            Ok(guards
                .into_iter()
                .map(|g| NativeGuard::new(g, p.clone()))
                .collect::<Vec<_>>())
        })
    }

    /// Who holds `key` now.
    fn inspect(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let key = key_of(key)?;
        self.call(py, asynchronous, move |c, _| async move {
            c.inspect(key).await.map(Info::from).map_err(to_py)
        })
    }

    /// The principal the broker identified this client as (certificate, token or
    /// `anonymous`).
    fn principal(&self, py: Python<'_>, asynchronous: bool) -> PyResult<Py<PyAny>> {
        self.call(py, asynchronous, move |c, _| async move {
            c.principal().await.map_err(to_py)
        })
    }

    /// Whether anyone holds `key` now.
    fn is_locked(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let key = key_of(key)?;
        self.call(py, asynchronous, move |c, _| async move {
            c.is_locked(key).await.map_err(to_py)
        })
    }

    /// Waits until nobody holds `key` (at most `timeout` seconds; `None`: forever):
    /// "released" or "expired".
    #[pyo3(signature = (key, timeout, asynchronous))]
    fn wait_until_unlocked(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let key = key_of(key)?;
        let timeout = wait_of(timeout)?;
        self.call(py, asynchronous, move |c, _| async move {
            let outcome = match timeout {
                None => c.wait_until_unlocked(key).await,
                Some(d) => c.wait_until_unlocked_for(key, d).await,
            }
            .map_err(to_py)?;
            Ok(match outcome {
                UnlockOutcome::Released => "released",
                UnlockOutcome::Expired => "expired",
            })
        })
    }

    /// Campaigns for leadership of `key` under `label` (waits until elected).
    fn elect(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        label: String,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let key = key_of(key)?;
        self.call(py, asynchronous, move |c, p| async move {
            let guard = c.elect(key, label).await.map_err(to_py)?;
            Ok(NativeGuard::new(guard, p))
        })
    }

    /// The label of `key`'s leader, if it has one.
    fn leader(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        asynchronous: bool,
    ) -> PyResult<Py<PyAny>> {
        let key = key_of(key)?;
        self.call(py, asynchronous, move |c, _| async move {
            c.leader(key).await.map_err(to_py)
        })
    }

    /// For the benchmark (`python/bench/bench.py`): `n` lock + unlock cycles of `key` run in
    /// Rust on this client, no Python per cycle; the seconds they took. The binding's own
    /// cycles are compared with it: the difference is what the binding costs.
    fn rust_cycles(&self, py: Python<'_>, key: &Bound<'_, PyAny>, n: u32) -> PyResult<Py<PyAny>> {
        let key = key_of(key)?;
        self.call(py, false, move |c, _| async move {
            let start = std::time::Instant::now();
            for _ in 0..n {
                let g = c.lock(key.clone()).await.map_err(to_py)?;
                g.unlock().await.map_err(to_py)?;
            }
            Ok(start.elapsed().as_secs_f64())
        })
    }

    /// Closes this process's connections: the broker releases every lease they hold.
    fn close(&self, py: Python<'_>) {
        self.slot.close(py);
    }
}

/// One holder of a key, as `inspect` reports it.
#[pyclass(frozen, get_all, module = "lockbroker._native")]
#[derive(Clone)]
pub(crate) struct Holder {
    session: u64,
    fence: u64,
    mode: String,
    /// Seconds of TTL left.
    remaining: f64,
    owner: Option<String>,
    cached: bool,
}

/// What `inspect` reports of a key.
#[pyclass(frozen, get_all, module = "lockbroker._native")]
pub(crate) struct Info {
    key: String,
    holders: Vec<Holder>,
    holders_total: usize,
    waiters: u32,
    /// Seconds the key stays blocked by lock-delay.
    blocked_for: f64,
}

impl From<LockInfo> for Info {
    fn from(i: LockInfo) -> Info {
        Info {
            key: String::from_utf8_lossy(&i.key).into_owned(),
            holders: i
                .holders
                .iter()
                .map(|h| Holder {
                    session: h.session,
                    fence: h.fence,
                    mode: match h.mode {
                        Mode::Exclusive => "exclusive".into(),
                        Mode::Shared => "shared".into(),
                        Mode::Semaphore(n) => format!("semaphore({n})"),
                    },
                    remaining: h.remaining.as_secs_f64(),
                    owner: h.owner.clone(),
                    cached: h.cached,
                })
                .collect(),
            holders_total: i.holders_total,
            waiters: i.waiters,
            blocked_for: i.blocked_for.as_secs_f64(),
        }
    }
}
