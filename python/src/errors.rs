//! The exceptions: `LockError`, the base of every error the package raises, and one subclass
//! per kind of SDK error, each carrying the broker's (or the SDK's) message.

use lockbroker_sdk::Error;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(lockbroker, LockError, PyException, "Any lockbroker error.");
create_exception!(
    lockbroker,
    Busy,
    LockError,
    "The key is held and the lock did not wait."
);
create_exception!(
    lockbroker,
    Timeout,
    LockError,
    "The wait ran out before the lock was granted."
);
create_exception!(
    lockbroker,
    LeaseLost,
    LockError,
    "The lease can no longer be guaranteed: another holder may have the key now."
);
create_exception!(
    lockbroker,
    NotOwner,
    LockError,
    "The lease is held by someone else."
);
create_exception!(
    lockbroker,
    NotLocked,
    LockError,
    "Nobody holds the key (the lease ended)."
);
create_exception!(
    lockbroker,
    Unavailable,
    LockError,
    "No broker can serve the request now (unreachable, restarting, failing over)."
);
create_exception!(
    lockbroker,
    Denied,
    LockError,
    "A broker policy or authentication refused it."
);
create_exception!(
    lockbroker,
    LimitExceeded,
    LockError,
    "A per-client limit was hit."
);
create_exception!(
    lockbroker,
    InvalidRequest,
    LockError,
    "The request itself is invalid."
);
create_exception!(
    lockbroker,
    Cancelled,
    LockError,
    "An operator cancelled the waiting request."
);
create_exception!(
    lockbroker,
    ProtocolError,
    LockError,
    "The broker broke the protocol."
);

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LockError", py.get_type::<LockError>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("LeaseLost", py.get_type::<LeaseLost>())?;
    m.add("NotOwner", py.get_type::<NotOwner>())?;
    m.add("NotLocked", py.get_type::<NotLocked>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("Denied", py.get_type::<Denied>())?;
    m.add("LimitExceeded", py.get_type::<LimitExceeded>())?;
    m.add("InvalidRequest", py.get_type::<InvalidRequest>())?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    Ok(())
}

/// The Python exception of an SDK error.
pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Busy => Busy::new_err(msg),
        Error::Timeout => Timeout::new_err(msg),
        Error::Lost(_) => LeaseLost::new_err(msg),
        Error::NotOwner => NotOwner::new_err(msg),
        Error::NotLocked => NotLocked::new_err(msg),
        Error::Denied(_) | Error::Tls(_) => Denied::new_err(msg),
        Error::Disconnected(_) | Error::Unavailable(_) | Error::Connect(_) => {
            Unavailable::new_err(msg)
        }
        Error::LimitExceeded(_) => LimitExceeded::new_err(msg),
        Error::Invalid(_) => InvalidRequest::new_err(msg),
        Error::Cancelled(_) => Cancelled::new_err(msg),
        Error::Protocol(_) => ProtocolError::new_err(msg),
    }
}

/// A guard used in a process it was not created in (inherited across `fork()`).
pub(crate) fn forked() -> PyErr {
    LeaseLost::new_err(
        "lease lost: the guard was inherited across fork(); the lease is the parent's",
    )
}
