//! `NativeGuard`: one held lease. Its fence, key and lost state are read without a round
//! trip; `unlock` and `extend` run blocking or as asyncio futures; `lost` is an asyncio future
//! that resolves when the lease is lost. A guard used in a process it was not made in
//! (inherited across `fork()`) reads as lost and is never released or dropped there: the lease
//! is the parent's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbroker_sdk::Guard;
use pyo3::prelude::*;
use tokio::sync::RwLock;

use crate::bridge;
use crate::errors::{NotLocked, forked, to_py};
use crate::process::Process;

#[pyclass(frozen, module = "lockbroker._native")]
pub(crate) struct NativeGuard {
    /// The lease; `None` once unlocked. Read-locked while an `extend` runs, write-locked to
    /// unlock.
    guard: Arc<RwLock<Option<Guard>>>,
    process: Arc<Process>,
    fence: u64,
    key: String,
    mode: String,
}

impl NativeGuard {
    pub(crate) fn new(guard: Guard, process: Arc<Process>) -> NativeGuard {
        NativeGuard {
            fence: guard.fence(),
            key: guard.key_str().into_owned(),
            mode: format!("{:?}", guard.mode()).to_lowercase(),
            guard: Arc::new(RwLock::new(Some(guard))),
            process,
        }
    }

    /// Refuses a guard inherited across `fork()`.
    fn here(&self) -> PyResult<()> {
        if self.process.is_current() {
            Ok(())
        } else {
            Err(forked())
        }
    }

    /// Runs `op` on the held guard: blocking or as an asyncio future.
    fn with_guard<T, F>(&self, py: Python<'_>, asynchronous: bool, fut: F) -> PyResult<Py<PyAny>>
    where
        F: std::future::Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        self.here()?;
        if asynchronous {
            bridge::awaitable(py, &self.process, fut)
        } else {
            bridge::block(py, &self.process, fut)
        }
    }
}

fn unlocked() -> PyErr {
    NotLocked::new_err("the guard was already unlocked")
}

#[pymethods]
impl NativeGuard {
    /// The lease's fencing token: pass it to the resource the lock protects.
    #[getter]
    fn fence(&self) -> u64 {
        self.fence
    }

    #[getter]
    fn key(&self) -> &str {
        &self.key
    }

    #[getter]
    fn mode(&self) -> &str {
        &self.mode
    }

    /// Whether the lease can no longer be guaranteed (also after `fork()`, in the child).
    fn is_lost(&self) -> bool {
        if !self.process.is_current() {
            return true;
        }
        match self.guard.try_read() {
            Ok(g) => g.as_ref().is_some_and(Guard::is_lost),
            // Being unlocked.
            Err(_) => false,
        }
    }

    /// Seconds until the lease would be reported lost if not renewed (0 once past).
    fn remaining(&self) -> f64 {
        if !self.process.is_current() {
            return 0.0;
        }
        match self.guard.try_read() {
            Ok(g) => g.as_ref().map_or(0.0, |g| {
                g.lost_at()
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            }),
            Err(_) => 0.0,
        }
    }

    /// Releases the lock (acknowledged by the broker).
    fn unlock(&self, py: Python<'_>, asynchronous: bool) -> PyResult<Py<PyAny>> {
        let guard = self.guard.clone();
        self.with_guard(py, asynchronous, async move {
            let held = guard.write().await.take();
            match held {
                Some(g) => g.unlock().await.map_err(to_py),
                None => Err(unlocked()),
            }
        })
    }

    /// Renews the lease now with a new TTL in seconds.
    fn extend(&self, py: Python<'_>, ttl: f64, asynchronous: bool) -> PyResult<Py<PyAny>> {
        let ttl = Duration::try_from_secs_f64(ttl).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!("not a duration in seconds: {ttl}"))
        })?;
        let guard = self.guard.clone();
        self.with_guard(py, asynchronous, async move {
            let held = guard.read().await;
            match held.as_ref() {
                Some(g) => g.extend(ttl).await.map_err(to_py),
                None => Err(unlocked()),
            }
        })
    }

    /// An asyncio future resolved with the `LeaseLost` error when the lease is lost (never,
    /// while it is safe).
    fn lost(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let watch = match self.guard.try_read() {
            Ok(g) => g.as_ref().map(Guard::lost_watch),
            Err(_) => None,
        };
        let Some(watch) = watch else {
            return Err(unlocked());
        };
        self.with_guard(py, true, async move {
            let e = watch.await;
            Python::attach(|py| Ok(to_py(e).into_value(py)))
        })
    }
}

impl Drop for NativeGuard {
    fn drop(&mut self) {
        if !self.process.is_current() {
            // Inherited across fork(): the lease, its connection and runtime are the
            // parent's. Never dropped here.
            std::mem::forget(self.guard.clone());
            return;
        }
        // Dropped without unlock: the SDK guard releases it (fire-and-forget), within the
        // runtime its connection lives on.
        let _in_runtime = self.process.rt.enter();
        if let Some(lock) = Arc::get_mut(&mut self.guard) {
            drop(lock.get_mut().take());
        }
    }
}
