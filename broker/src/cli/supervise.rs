//! Process supervision for `lockbroker lock KEY -- CMD` (Unix): the termination signals
//! `lock` receives, CMD in a process group of its own, and stopping that group.
//!
//! - [`Signals`] catches SIGTERM, SIGINT, SIGHUP and SIGQUIT (those not ignored at start: an
//!   ignored one, e.g. SIGHUP under `nohup`, stays ignored for `lock` and CMD), so none of them
//!   ends `lock` before it has stopped CMD and released the lease.
//! - [`Supervised::spawn`] starts CMD as the leader of a new process group, so a signal can be
//!   forwarded to CMD and everything it started, and so a terminal's Ctrl-C does not reach CMD
//!   twice. On Linux CMD gets `PR_SET_PDEATHSIG` = SIGKILL: if `lock` is SIGKILLed, CMD is
//!   killed too (its own children are not: they only go with the group on the lease-loss path).
//!   When `lock` runs in the foreground of a terminal, CMD's group is made the terminal's
//!   foreground group while it runs (as a shell does), so CMD can read the terminal and gets
//!   the terminal's Ctrl-C itself; `lock` takes the terminal back once CMD is done.

use std::io;
use std::os::fd::RawFd;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// The signals `lock` forwards to CMD.
const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Termination signals received by this process, from the moment [`Signals::install`] ran.
pub struct Signals {
    rx: mpsc::UnboundedReceiver<libc::c_int>,
}

impl Signals {
    /// Installs the handlers (within the tokio runtime).
    pub fn install() -> io::Result<Signals> {
        let (tx, rx) = mpsc::unbounded_channel();
        for sig in FORWARDED {
            if ignored(sig) {
                continue;
            }
            let mut stream = signal(SignalKind::from_raw(sig))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Signals { rx })
    }

    /// The next signal received (never resolves if all of them are ignored).
    pub async fn recv(&mut self) -> libc::c_int {
        match self.rx.recv().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }
}

/// Whether `sig` is ignored (SIG_IGN) in this process.
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: `sigaction` is plain data, for which all zeroes is a valid value; a null new
    // action makes sigaction(2) only read the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// A signal's name for messages.
pub fn name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

/// The exit code of a process ended by `sig`, as a shell reports it: 128 + n.
pub fn signal_exit_code(sig: libc::c_int) -> u8 {
    u8::try_from(128 + sig).unwrap_or(1)
}

/// CMD, running as the leader of its own process group.
pub struct Supervised {
    child: tokio::process::Child,
    /// CMD's process group id (= its pid).
    pgid: libc::pid_t,
    /// The terminal handed to CMD's group, taken back on drop.
    terminal: Option<RawFd>,
}

impl Supervised {
    /// Spawns `cmd` in a new process group (see the module docs). Must be called on a thread
    /// that lives as long as CMD should (the `block_on` thread or a runtime worker): Linux
    /// sends the parent-death signal when the thread that forked exits, not the process.
    pub fn spawn(mut cmd: tokio::process::Command) -> io::Result<Supervised> {
        let terminal = foreground_terminal();
        // As the child sees it: getppid() in the child is this process's pid.
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        cmd.process_group(0).kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe functions may be called: it calls setpgid, prctl, getppid, getpid,
        // sigemptyset, sigaddset, sigprocmask and tcsetpgrp, and neither allocates nor locks.
        unsafe {
            cmd.pre_exec(move || {
                #[cfg(target_os = "linux")]
                {
                    // prctl is variadic and reads unsigned longs: pass exactly those.
                    let (kill, zero): (libc::c_ulong, libc::c_ulong) = (libc::SIGKILL as _, 0);
                    if libc::prctl(libc::PR_SET_PDEATHSIG, kill, zero, zero, zero) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    // `lock` may have died before the prctl took effect: then nobody would
                    // ever send the signal, so do not run CMD at all.
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                }
                #[cfg(not(target_os = "linux"))]
                let _ = parent;
                if let Some(fd) = terminal {
                    // Be sure the group exists before handing it the terminal (std sets it
                    // up for process_group(0) too; doing it twice is harmless).
                    libc::setpgid(0, 0);
                    // tcsetpgrp from a background group raises SIGTTOU unless it is blocked.
                    let mut block: libc::sigset_t = std::mem::zeroed();
                    let mut old: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut block);
                    libc::sigaddset(&mut block, libc::SIGTTOU);
                    libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old);
                    // On failure CMD runs in the terminal's background: not worth failing.
                    libc::tcsetpgrp(fd, libc::getpid());
                    libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pgid = child
            .id()
            .and_then(|p| libc::pid_t::try_from(p).ok())
            .ok_or_else(|| io::Error::other("spawned command has no pid"))?;
        Ok(Supervised {
            child,
            pgid,
            terminal,
        })
    }

    /// Waits for CMD (the group leader) to exit. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends `sig` to CMD's whole process group (a group that is gone is no error).
    pub fn signal_group(&self, sig: libc::c_int) {
        // SAFETY: killpg(2) takes plain integers and touches no memory of ours.
        unsafe {
            libc::killpg(self.pgid, sig);
        }
    }

    /// Whether any process of CMD's group is left (an exited but unreaped one counts).
    fn group_alive(&self) -> bool {
        // SAFETY: as in `signal_group`; signal 0 only checks for existence.
        unsafe { libc::killpg(self.pgid, 0) == 0 }
    }

    /// Stops CMD's whole group: SIGTERM, then SIGKILL to whatever of it is left after
    /// `grace`. Returns once CMD itself has exited.
    pub async fn stop(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.signal_group(libc::SIGTERM);
        // Reap CMD first: an exited but unreaped leader still counts as a group member.
        let _ = tokio::time::timeout_at(deadline, self.child.wait()).await;
        while self.group_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.group_alive() {
            self.signal_group(libc::SIGKILL);
        }
        if let Err(e) = self.child.wait().await {
            eprintln!("lockbroker: waiting for the command: {e}");
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(fd) = self.terminal {
            take_terminal_back(fd, self.pgid);
        }
    }
}

/// The first of stdin, stdout and stderr that is a terminal this process is in the
/// foreground of, if any.
fn foreground_terminal() -> Option<RawFd> {
    // SAFETY: isatty, tcgetpgrp and getpgrp take plain integers and touch no memory of ours.
    (0..3).find(|&fd| unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() })
}

/// Makes this process's group the foreground group of terminal `fd` again, if CMD's group
/// (`pgid`) still is.
fn take_terminal_back(fd: RawFd, pgid: libc::pid_t) {
    // SAFETY: the sigset_t values are plain data, valid zeroed and initialised by
    // sigemptyset; the other calls take plain integers. SIGTTOU, which tcsetpgrp raises in a
    // background process, is blocked in this thread only and only around the call.
    unsafe {
        if libc::tcgetpgrp(fd) != pgid {
            return;
        }
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        libc::tcsetpgrp(fd, libc::getpgrp());
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}
