//! `lockbroker lock KEY -- CMD` as a supervisor, against the real binary and a real broker:
//! SIGTERM/SIGINT sent to `lock` reach CMD, `lock` exits with CMD's status and leaves the key
//! free at once; CMD does not outlive a SIGKILLed `lock`; SIGTERM while waiting for the lock
//! gives up the wait without running CMD; on lease loss CMD's whole process group is stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lockbroker_tests::{Broker, TempDir, cli};

const LIMIT: Duration = Duration::from_secs(60);

/// A `lockbroker lock` process, with the pid file its command writes. On drop, the process
/// and every pid listed in the pid file (and their groups) are SIGKILLed, whatever happened.
struct Running {
    child: Child,
    pidfile: PathBuf,
    /// Where its stderr goes: a file, not a pipe, since an orphaned command would keep a
    /// pipe open and a read to its end would wait for the orphan.
    stderr: PathBuf,
}

impl Running {
    /// Spawns `cmd`; `pidfile` is where its command writes pids, one a line.
    fn spawn(mut cmd: Command, pidfile: PathBuf) -> Running {
        let stderr = pidfile.with_extension("stderr");
        let file = std::fs::File::create(&stderr).expect("create stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let child = cmd.spawn().expect("spawn lockbroker lock");
        Running {
            child,
            pidfile,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (a name for kill(1), e.g. "TERM") to the `lock` process.
    fn signal(&self, sig: &str) {
        send(sig, &self.pid().to_string());
    }

    /// The pids the command wrote, once it has written `n` of them (bounded wait).
    fn command_pids(&mut self, n: usize) -> Vec<u32> {
        let start = Instant::now();
        loop {
            let pids = read_pids(&self.pidfile);
            if pids.len() >= n {
                return pids;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "lockbroker lock exited ({status:?}) before its command started: {}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < LIMIT,
                "the command did not start within {LIMIT:?} (pids so far: {pids:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for `lock` to exit; returns its status and stderr.
    fn wait(&mut self, limit: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, self.stderr());
            }
            assert!(
                start.elapsed() < limit,
                "lockbroker lock did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in read_pids(&self.pidfile) {
            send("KILL", &format!("-{pid}"));
            send("KILL", &pid.to_string());
        }
    }
}

/// kill -SIG -- TARGET, ignoring a target that is gone.
fn send(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stderr(Stdio::null())
        .status();
}

fn read_pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True while `pid` is a live process (a zombie, dead but not reaped, counts as gone).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Waits (bounded) until none of `pids` is alive; panics naming `what` otherwise.
fn assert_gone_within(pids: &[u32], limit: Duration, what: &str) {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            start.elapsed() < limit,
            "{what}: still running after {limit:?}: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this test process ignores `sig` (then `lock` would inherit that and, rightly,
/// not act on it).
fn ignored(sig: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// `lockbroker lock --wait 0 KEY -- true` succeeds: nobody holds KEY.
fn assert_free(broker: &Broker, key: &str) {
    let mut cmd = cli(broker);
    cmd.args(["lock", "--wait", "0s", key, "--", "true"])
        .stdin(Stdio::null());
    let out = cmd.output().expect("run lockbroker lock");
    assert!(
        out.status.success(),
        "{key} is not free: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lockbroker inspect KEY` output.
fn inspect(broker: &Broker, key: &str) -> String {
    let mut cmd = cli(broker);
    cmd.args(["inspect", key]).stdin(Stdio::null());
    let out = cmd.output().expect("run lockbroker inspect");
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigterm_is_forwarded_and_lock_exits_with_the_command_status() {
    let broker = Broker::start();
    let dir = TempDir::new("sig-term");
    let pidfile = dir.path().join("pids");
    // The shell and its background sleep both write their pids; TERM makes the shell exit 7.
    let script = format!(
        "echo $$ >> '{f}'; trap 'exit 7' TERM; sleep 30 & echo $! >> '{f}'; wait",
        f = pidfile.display()
    );
    let mut cmd = cli(&broker);
    cmd.args(["lock", "sig/term", "--", "sh", "-c", &script]);
    let mut lock = Running::spawn(cmd, pidfile);
    let pids = lock.command_pids(2);

    lock.signal("TERM");
    let (status, err) = lock.wait(LIMIT);
    assert_eq!(
        status.code(),
        Some(7),
        "lock should exit with the command's status after forwarding SIGTERM ({status:?}): {err}"
    );
    // The signal went to the command's process group: the background sleep got it too.
    assert_gone_within(&pids, Duration::from_secs(10), "the command's processes");
    // Released with an acknowledgement before exiting: free at once, not after the TTL.
    assert_free(&broker, "sig/term");
}

#[test]
fn sigint_ends_the_command_and_lock_exits_130() {
    let broker = Broker::start();
    let dir = TempDir::new("sig-int");
    let pidfile = dir.path().join("pids");
    let script = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
    let mut cmd = cli(&broker);
    // A test run started in the background of a non-interactive shell inherits SIGINT
    // ignored, and `lock` (rightly) keeps an ignored signal ignored: give `lock` the default
    // disposition, as an interactive shell would.
    if ignored(2) {
        use std::os::unix::process::CommandExt;
        // SAFETY: `signal` is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
    }
    cmd.args(["lock", "sig/int", "--", "sh", "-c", &script]);
    let mut lock = Running::spawn(cmd, pidfile);
    let pids = lock.command_pids(1);

    lock.signal("INT");
    let (status, err) = lock.wait(LIMIT);
    assert_eq!(
        status.code(),
        Some(128 + 2),
        "the command died of SIGINT, so lock should exit 130 ({status:?}): {err}"
    );
    assert_gone_within(&pids, Duration::from_secs(10), "the command");
    assert_free(&broker, "sig/int");
}

#[test]
fn the_command_does_not_outlive_a_sigkilled_lock() {
    let broker = Broker::start();
    let dir = TempDir::new("sig-kill");
    let pidfile = dir.path().join("pids");
    let script = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
    let mut cmd = cli(&broker);
    cmd.args(["lock", "sig/kill", "--", "sh", "-c", &script]);
    let mut lock = Running::spawn(cmd, pidfile);
    let pids = lock.command_pids(1);
    assert!(alive(pids[0]));

    lock.signal("KILL");
    let (status, _) = lock.wait(LIMIT);
    assert!(!status.success());
    assert_gone_within(
        &pids,
        Duration::from_secs(5),
        "the command of a SIGKILLed lock",
    );
}

#[test]
fn sigterm_while_waiting_gives_up_without_running_the_command() {
    let broker = Broker::start();
    let dir = TempDir::new("sig-wait");
    let holder_pids = dir.path().join("holder");
    let script = format!("echo $$ > '{}'; exec sleep 30", holder_pids.display());
    let mut cmd = cli(&broker);
    cmd.args(["lock", "sig/wait", "--", "sh", "-c", &script]);
    let mut holder = Running::spawn(cmd, holder_pids);
    holder.command_pids(1);

    let marker = dir.path().join("ran");
    let mut cmd = cli(&broker);
    cmd.args(["lock", "sig/wait", "--", "touch"]).arg(&marker);
    let mut waiter = Running::spawn(cmd, dir.path().join("none"));
    let start = Instant::now();
    while !inspect(&broker, "sig/wait").contains("waiters: 1") {
        assert!(start.elapsed() < LIMIT, "the second lock never queued");
        std::thread::sleep(Duration::from_millis(50));
    }

    waiter.signal("TERM");
    let (status, err) = waiter.wait(LIMIT);
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "lock should give up the wait and exit 143 ({status:?}): {err}"
    );
    assert!(!marker.exists(), "the command ran without the lock");
    // The wait was cancelled: no waiter is left queued, and the holder still holds.
    let info = inspect(&broker, "sig/wait");
    assert!(info.contains("waiters: 0"), "{info}");
    assert!(info.contains("state: locked"), "{info}");
}

#[test]
fn lease_loss_stops_the_whole_process_group() {
    let broker = Broker::start();
    let dir = TempDir::new("sig-lost");
    let pidfile = dir.path().join("pids");
    // The shell ignores SIGTERM and so does its background child: only SIGKILL to the group
    // after the grace ends them.
    let script = format!(
        "trap '' TERM; echo $$ >> '{f}'; sh -c \"trap '' TERM; exec sleep 60\" & echo $! >> '{f}'; wait",
        f = pidfile.display()
    );
    let mut cmd = cli(&broker);
    cmd.args([
        "lock",
        "--ttl",
        "2s",
        "--kill-grace",
        "500ms",
        "sig/lost",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut lock = Running::spawn(cmd, pidfile);
    let pids = lock.command_pids(2);

    // A frozen broker renews nothing: the lease is lost at its deadline (2 s).
    broker.signal("STOP");
    let stopped = Instant::now();
    let (status, err) = lock.wait(LIMIT);
    broker.signal("CONT");
    assert_eq!(status.code(), Some(1), "{status:?}: {err}");
    assert!(
        err.contains("lost"),
        "stderr should say the lease was lost: {err}"
    );
    assert_gone_within(&pids, Duration::from_secs(5), "the command's process group");
    // TTL + grace + slack for a loaded machine, far below the 60 s sleep.
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "took {:?}",
        stopped.elapsed()
    );
}
