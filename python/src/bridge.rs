//! A Rust future for a Python caller: run to completion with the GIL released (the blocking
//! API), or as an asyncio future of the caller's running loop (the asyncio API). The asyncio
//! future is resolved from the runtime's thread through `loop.call_soon_threadsafe`; cancelling
//! it (a task's `cancel()`, `asyncio.timeout`) aborts the Rust task, which drops the SDK's
//! future: a waiting acquire leaves the broker's queue, and a grant that crosses the cancel is
//! released.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use tokio::task::AbortHandle;

use crate::process::Process;

/// Runs `fut` on `p`'s runtime until it completes, the GIL released meanwhile.
pub(crate) fn block<T, F>(py: Python<'_>, p: &Process, fut: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<T>> + Send,
    T: for<'py> IntoPyObject<'py> + Send,
{
    let value = py.detach(|| p.rt.block_on(fut))?;
    value.into_py_any(py)
}

/// `fut` as an asyncio future of the running loop. It is polled once here, on the caller's
/// thread (in the runtime's context): a request that completes at once — an embedded or a
/// cached grant — resolves the future without a thread hop, and one that must wait has sent its
/// frame already. The rest runs on the runtime, which resolves the future through the loop.
pub(crate) fn awaitable<T, F>(py: Python<'_>, p: &Process, fut: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_fut = event_loop.call_method0("create_future")?;
    let mut fut = Box::pin(fut);
    let first = {
        let _in_runtime = p.rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    if let Poll::Ready(out) = first {
        match out.and_then(|v| v.into_py_any(py)) {
            Ok(v) => py_fut.call_method1("set_result", (v,))?,
            Err(e) => py_fut.call_method1("set_exception", (e.into_value(py),))?,
        };
        return Ok(py_fut.unbind());
    }
    let resolve = py.import("lockbroker._bridge")?.getattr("resolve")?;
    let target = (
        event_loop.unbind(),
        py_fut.clone().unbind(),
        resolve.unbind(),
    );
    let task = p.rt.spawn(async move {
        let out = fut.await;
        Python::attach(|py| {
            let (event_loop, py_fut, resolve) = target;
            let (ok, value) = match out.and_then(|v| v.into_py_any(py)) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // A loop closed meanwhile has nobody left to tell.
            let _ =
                event_loop.call_method1(py, "call_soon_threadsafe", (resolve, py_fut, ok, value));
        });
    });
    let canceller = Canceller {
        task: Mutex::new(Some(task.abort_handle())),
    };
    py_fut.call_method1("add_done_callback", (canceller,))?;
    Ok(py_fut.unbind())
}

/// The done-callback of an asyncio future made by [`awaitable`]: aborts its task if the
/// future was cancelled.
#[pyclass(frozen, module = "lockbroker._native")]
pub(crate) struct Canceller {
    task: Mutex<Option<AbortHandle>>,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()?
            && let Some(task) = self.task.lock().take()
        {
            task.abort();
        }
        Ok(())
    }
}
