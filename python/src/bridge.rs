//! A Rust future for a Python caller: run to completion with the GIL released (the blocking
//! API), or as an asyncio future of the caller's running loop (the asyncio API), polled on the
//! loop's thread (`loop_driver.rs`); cancelling it (a task's `cancel()`, `asyncio.timeout`)
//! drops the SDK's future: a waiting acquire leaves the broker's queue, and a grant that
//! crosses the cancel is released.

use std::future::Future;

use parking_lot::Mutex;
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;

use crate::loop_driver::{BoxFuture, LoopDriver, Outcome};
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

/// `fut` as an asyncio future of the running loop, polled on the loop's thread by its
/// [`LoopDriver`]: once now (a request that completes at once — an embedded or a cached grant
/// — resolves the future without a wake-up, and one that must wait has sent its frame), then
/// whenever the SDK wakes it. Cancelling the asyncio future drops `fut`.
pub(crate) fn awaitable<T, F>(py: Python<'_>, p: &Process, fut: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_fut = event_loop.call_method0("create_future")?;
    let driver = driver_of(py, &event_loop)?;
    let fut: BoxFuture = Box::pin(async move {
        let out = fut.await;
        Box::new(move |py: Python<'_>| out.and_then(|v| v.into_py_any(py))) as Outcome
    });
    driver
        .bind(py)
        .get()
        .submit(py, p.rt.clone(), fut, &py_fut)?;
    Ok(py_fut.unbind())
}

/// The last loop's driver, with the loop (held, so that no other loop can take its address)
/// and the process it was made in. Most programs run one loop: its await skips the registry.
static LAST_DRIVER: Mutex<Option<LastDriver>> = Mutex::new(None);

/// A loop, the process it ran in, its driver.
type LastDriver = (Py<PyAny>, u32, Py<LoopDriver>);

/// `event_loop`'s driver (`lockbroker._bridge.driver` makes and registers one).
fn driver_of(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<LoopDriver>> {
    let pid = std::process::id();
    if let Some((l, p, d)) = LAST_DRIVER.lock().as_ref()
        && l.is(event_loop)
        && *p == pid
    {
        return Ok(d.clone_ref(py));
    }
    let driver: Py<LoopDriver> = py
        .import("lockbroker._bridge")?
        .call_method1("driver", (event_loop,))?
        .cast_into::<LoopDriver>()?
        .unbind();
    let last = (event_loop.clone().unbind(), pid, driver.clone_ref(py));
    // The replaced loop and driver are dropped after the lock is let go.
    let replaced = LAST_DRIVER.lock().replace(last);
    drop(replaced);
    Ok(driver)
}
