//! The asyncio futures of one event loop, polled on the loop's own thread. A pending future's
//! waker files it in a ready list and, when the list was empty, rings a bell — one byte on a
//! socket pair whose read end the loop watches (`loop.add_reader`); the loop's reader callback
//! ([`LoopDriver::run`]) polls what is ready, in the runtime's context, and resolves the asyncio
//! futures it completes. A reply thus costs one wake-up of the loop (as a socket read of its own
//! would), not a task on the runtime plus a `call_soon_threadsafe` under the GIL from one of
//! the runtime's threads. Wakers need no GIL; futures are only polled and dropped on the
//! loop's thread.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;
use pyo3::prelude::*;

/// What a completed future turns into, given the GIL: the asyncio future's result or exception.
pub(crate) type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;
/// A future of the SDK, its output erased to an [`Outcome`].
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One pending future: the Rust side, the asyncio side, and the runtime it must be polled in.
struct Pending {
    fut: BoxFuture,
    py_fut: Py<PyAny>,
    rt: tokio::runtime::Handle,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // However it ends (cancelled, completed, its loop gone), the SDK's future is dropped in
        // its runtime's context: a waiting acquire leaves the queue, a guard releases its lease.
        let _in_runtime = self.rt.enter();
        drop(std::mem::replace(
            &mut self.fut,
            Box::pin(std::future::pending()),
        ));
    }
}

/// What wakers share with the loop's thread.
struct Bell {
    /// Ids of the futures woken since the loop last looked.
    ready: Mutex<Vec<u64>>,
    /// The write end of the socket pair.
    ring: UnixStream,
}

impl Bell {
    fn wake(&self, id: u64) {
        let first = {
            let mut ready = self.ready.lock();
            ready.push(id);
            ready.len() == 1
        };
        // A full socket already has a byte for the loop to read: nothing is lost.
        if first {
            let _ = (&self.ring).write(&[1]);
        }
    }
}

/// The waker of pending future `id`.
struct FutureWaker {
    bell: Arc<Bell>,
    id: u64,
}

impl Wake for FutureWaker {
    fn wake(self: Arc<Self>) {
        self.bell.wake(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.bell.wake(self.id);
    }
}

/// The futures of one loop (`lockbroker._bridge.driver(loop)` makes and registers one).
pub(crate) struct Inner {
    bell: Arc<Bell>,
    /// The read end of the socket pair (the loop's reader).
    listen: UnixStream,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
}

#[pyclass(frozen, module = "lockbroker._native")]
pub(crate) struct LoopDriver {
    inner: Arc<Inner>,
    #[pyo3(get)]
    pid: u32,
}

#[pymethods]
impl LoopDriver {
    #[new]
    fn new() -> PyResult<Self> {
        let (ring, listen) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        listen.set_nonblocking(true)?;
        Ok(LoopDriver {
            inner: Arc::new(Inner {
                bell: Arc::new(Bell {
                    ready: Mutex::new(Vec::new()),
                    ring,
                }),
                listen,
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
            pid: std::process::id(),
        })
    }

    /// The descriptor the loop watches for readability.
    fn fileno(&self) -> i32 {
        self.inner.listen.as_raw_fd()
    }

    /// The loop's reader callback: polls every woken future, resolves those that completed.
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        // Drain the bell before taking the list: a wake after the drain rings it again.
        let mut sink = [0u8; 64];
        while matches!((&self.inner.listen).read(&mut sink), Ok(n) if n > 0) {}
        let ready = std::mem::take(&mut *self.inner.bell.ready.lock());
        for id in ready {
            self.inner.poll(py, id)?;
        }
        Ok(())
    }
}

impl LoopDriver {
    /// Polls `fut` once now (a request that completes at once resolves `py_fut` without a
    /// wake-up; one that must wait has sent its frame) and keeps it to poll when woken.
    pub(crate) fn submit(
        &self,
        py: Python<'_>,
        rt: tokio::runtime::Handle,
        fut: BoxFuture,
        py_fut: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let pending = Pending {
            fut,
            py_fut: py_fut.clone().unbind(),
            rt,
        };
        if let Some(pending) = self.inner.poll_pending(py, id, pending)? {
            self.inner.pending.lock().insert(id, pending);
            let canceller = Canceller {
                driver: Arc::downgrade(&self.inner),
                id,
            };
            py_fut.call_method1("add_done_callback", (canceller,))?;
        }
        Ok(())
    }
}

impl Inner {
    /// Polls pending future `id` if it is still pending (a wake may come after it completed).
    fn poll(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        // Taken out while polled: nothing holds the map's lock across the SDK's code.
        let Some(pending) = self.pending.lock().remove(&id) else {
            return Ok(());
        };
        if let Some(pending) = self.poll_pending(py, id, pending)? {
            self.pending.lock().insert(id, pending);
        }
        Ok(())
    }

    /// Polls `p`; resolves its asyncio future and returns `None` if it completed.
    fn poll_pending(&self, py: Python<'_>, id: u64, mut p: Pending) -> PyResult<Option<Pending>> {
        let waker = Waker::from(Arc::new(FutureWaker {
            bell: self.bell.clone(),
            id,
        }));
        // In the runtime's context throughout: a result dropped unresolved (a guard whose
        // asyncio future was cancelled meanwhile) releases its lease through the runtime.
        let rt = p.rt.clone();
        let _in_runtime = rt.enter();
        let Poll::Ready(outcome) = p.fut.as_mut().poll(&mut Context::from_waker(&waker)) else {
            return Ok(Some(p));
        };
        let py_fut = p.py_fut.bind(py);
        // Cancelled meanwhile: the value (a guard) is dropped, which releases its lease.
        if py_fut.call_method0("done")?.is_truthy()? {
            return Ok(None);
        }
        match outcome(py) {
            Ok(v) => py_fut.call_method1("set_result", (v,))?,
            Err(e) => py_fut.call_method1("set_exception", (e.into_value(py),))?,
        };
        Ok(None)
    }
}

/// The done-callback of a pending asyncio future: if it was cancelled (a task's `cancel()`,
/// `asyncio.timeout`), drops the Rust future — a waiting acquire leaves the broker's queue.
#[pyclass(frozen, module = "lockbroker._native")]
pub(crate) struct Canceller {
    driver: Weak<Inner>,
    id: u64,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()?
            && let Some(inner) = self.driver.upgrade()
        {
            // Dropped (`Pending::drop`) after the map's lock is let go.
            let pending = inner.pending.lock().remove(&self.id);
            drop(pending);
        }
        Ok(())
    }
}
