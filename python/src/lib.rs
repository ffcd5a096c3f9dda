//! `lockbroker._native`: the Python package's native part, thin PyO3 bindings over the Rust SDK
//! (no second protocol implementation). The Python layer (`py/lockbroker/`) gives it Python's
//! idioms — context managers, `async with`, keyword arguments; this crate only runs the SDK.
//!
//! - `process.rs`: the tokio runtime and SDK client of the current process, re-created after
//!   `fork()` (the parent's are the parent's: never touched, never dropped, in a child).
//! - `bridge.rs`: a Rust future as an asyncio future of the caller's loop (cancelling it
//!   drops the Rust future: an acquire leaves the broker's queue), and blocking calls with the
//!   GIL released.
//! - `loop_driver.rs`: the pending asyncio futures of one loop, polled on the loop's thread
//!   when the SDK wakes them (a bell the loop reads), so a reply costs one wake-up of the loop.
//! - `client.rs`, `guard.rs`: the `NativeClient` and `NativeGuard` classes.
//! - `errors.rs`: the exception hierarchy (`LockError` and its subclasses).
//! - `metrics.rs`: the SDK's client metrics, recorded in this process and read from Python.

mod bridge;
mod client;
mod errors;
mod guard;
mod loop_driver;
mod metrics;
mod process;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::NativeClient>()?;
    m.add_class::<guard::NativeGuard>()?;
    m.add_class::<loop_driver::Canceller>()?;
    m.add_class::<loop_driver::LoopDriver>()?;
    m.add_class::<client::Info>()?;
    m.add_class::<client::Holder>()?;
    m.add_function(wrap_pyfunction!(metrics::enable_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::metrics_snapshot, m)?)?;
    errors::register(m)?;
    Ok(())
}
