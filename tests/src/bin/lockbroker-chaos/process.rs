//! Child processes of the orchestrator: each dies with it (`PR_SET_PDEATHSIG` = SIGKILL, set
//! between fork and exec), and is signalled through its own handle.
//!
//! Linux sends the parent-death signal when the *thread* that forked the child ends, so the
//! orchestrator spawns every child from its main thread (it runs a current-thread runtime).

use std::io;

use tokio::process::{Child, Command};

/// Makes the child get SIGKILL when this process dies; refuses to start it if we are gone.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe
    // functions prctl(2) and getppid(2); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `sig` to a child that has not been reaped yet; false if it is gone.
pub fn signal(child: &Child, sig: libc::c_int) -> bool {
    let Some(pid) = child.id() else {
        return false;
    };
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: plain kill(2) on the pid of our own unreaped child (so it cannot be reused).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// SIGKILLs a child and reaps it.
pub async fn kill_and_reap(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}
