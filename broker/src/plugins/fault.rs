//! `Fault`: how a plugin call failed (trap, timeout, memory, garbage, no instance), classified
//! from wasmtime's error and the instance's state, and turned into a deny reason.

use std::fmt;
use std::time::Duration;

use super::state::HostState;

/// A failed plugin call. Every fault denies the request (unless `on_error = "allow"`) and
/// discards the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, ...).
    Trap(String),
    /// The call ran past its time budget and was interrupted.
    Timeout(Duration),
    /// The guest tried to grow its memory past the limit (in bytes).
    Memory(usize),
    /// The guest returned a result the host refuses.
    Invalid(String),
    /// No instance could be created.
    Instantiate(String),
    /// Every instance the plugin may have was busy for the whole time budget. Overload, not a
    /// plugin fault: the request is refused whatever `on_error` says.
    Overloaded(usize),
}

impl Fault {
    /// Classifies the error of a failed call on an instance whose state is `state`.
    /// `stderr_mark` is the instance's stderr position before the call.
    pub fn classify(
        err: &wasmtime::Error,
        state: &HostState,
        budget: Duration,
        stderr_mark: u64,
    ) -> Fault {
        if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
            if *trap == wasmtime::Trap::Interrupt {
                return Fault::Timeout(budget);
            }
            if state.limiter.hit {
                return Fault::Memory(state.limiter.limit());
            }
            return Fault::Trap(with_stderr(trap.to_string(), state, stderr_mark));
        }
        if state.limiter.hit {
            return Fault::Memory(state.limiter.limit());
        }
        Fault::Trap(with_stderr(
            format!("{}", err.root_cause()),
            state,
            stderr_mark,
        ))
    }

    /// The deny reason for plugin `name`.
    pub fn reason(&self, name: &str) -> String {
        format!("plugin `{name}` failed: {self}")
    }
}

/// Appends what the guest wrote to stderr during the call (e.g. a panic message), on one line,
/// without Rust's "run with RUST_BACKTRACE" note, at most 300 bytes.
fn with_stderr(mut msg: String, state: &HostState, mark: u64) -> String {
    let text = state.stderr.text_since(mark);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if lines.is_empty() {
        return msg;
    }
    let mut quoted = lines[lines.len().saturating_sub(2)..].join(" ");
    if quoted.len() > 300 {
        let mut cut = quoted.len() - 300;
        while !quoted.is_char_boundary(cut) {
            cut += 1;
        }
        quoted = format!("…{}", &quoted[cut..]);
    }
    msg.push_str(" (stderr: ");
    msg.push_str(&quoted);
    msg.push(')');
    msg
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Trap(detail) => write!(f, "trapped: {detail}"),
            Fault::Timeout(budget) => write!(f, "exceeded its time budget of {budget:?}"),
            Fault::Overloaded(n) => write!(
                f,
                "overloaded: all {n} instances were busy for the whole time budget"
            ),
            Fault::Memory(limit) => {
                write!(f, "exceeded its memory limit of {} KiB", limit / 1024)
            }
            Fault::Invalid(detail) => write!(f, "returned an invalid result: {detail}"),
            Fault::Instantiate(detail) => write!(f, "could not be instantiated: {detail}"),
        }
    }
}
