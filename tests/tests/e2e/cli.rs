//! The `lockbroker` command line against a real broker: `lock KEY -- CMD` excludes other CLIs,
//! propagates the command's exit status, hands it LOCKBROKER_FENCE/LOCKBROKER_KEY, fails fast
//! with `--wait 0`; `inspect KEY` prints holders and fences; connection mistakes are explained.

use std::time::Duration;

use lockbroker_tests::util::run_bounded;
use lockbroker_tests::{Broker, TempDir, cli, lockbroker_bin};

const LIMIT: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clis_on_one_key_never_interleave() {
    let broker = Broker::start();
    let dir = TempDir::new("cli-excl");
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $LOCKBROKER_FENCE\" >> '{0}'; sleep 0.3; echo \"end $LOCKBROKER_FENCE\" >> '{0}'",
        log.display()
    );
    const CLIS: usize = 3;
    const ROUNDS: usize = 2;
    let mut tasks = Vec::new();
    for _ in 0..CLIS {
        let mut cmds = Vec::new();
        for _ in 0..ROUNDS {
            let mut cmd = cli(&broker);
            cmd.args(["lock", "--ttl", "5s", "cli/excl", "--", "sh", "-c", &script]);
            cmds.push(cmd);
        }
        tasks.push(tokio::spawn(async move {
            for cmd in cmds {
                let out = run_bounded(cmd, LIMIT).await;
                assert!(
                    out.status.success(),
                    "lockbroker lock failed: {:?} {}",
                    out.status,
                    text(&out.stderr)
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("cli task");
    }
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .expect("log written")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2 * CLIS * ROUNDS, "log: {lines:#?}");
    let mut last = 0u64;
    for pair in lines.chunks(2) {
        let start = pair[0]
            .strip_prefix("start ")
            .unwrap_or_else(|| panic!("interleaved critical sections: {lines:#?}"));
        let end = pair[1]
            .strip_prefix("end ")
            .unwrap_or_else(|| panic!("interleaved critical sections: {lines:#?}"));
        assert_eq!(start, end, "interleaved critical sections: {lines:#?}");
        let fence: u64 = start.parse().expect("LOCKBROKER_FENCE is a number");
        assert!(fence > last, "fences not increasing: {lines:#?}");
        last = fence;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_zero_on_a_held_key_exits_1() {
    let broker = Broker::start();
    let holder = broker.client().await;
    let g = holder.lock("cli/held").await.unwrap();
    let dir = TempDir::new("cli-wait0");
    let marker = dir.path().join("ran");

    let mut cmd = cli(&broker);
    cmd.args(["lock", "--wait", "0", "cli/held", "--", "touch"])
        .arg(&marker);
    let out = run_bounded(cmd, LIMIT).await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("could not lock") && err.contains("cli/held"),
        "stderr should explain: {err}"
    );
    assert!(
        err.contains("busy"),
        "stderr should say the lock is busy: {err}"
    );
    assert!(!marker.exists(), "the command ran without the lock");

    // A bounded wait times out the same way.
    let mut cmd = cli(&broker);
    cmd.args(["lock", "--wait", "300ms", "cli/held", "--", "touch"])
        .arg(&marker);
    let out = run_bounded(cmd, LIMIT).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    assert!(!marker.exists());

    // Once free, `--wait 0` runs the command.
    g.unlock().await.unwrap();
    let mut cmd = cli(&broker);
    cmd.args(["lock", "--wait", "0", "cli/held", "--", "touch"])
        .arg(&marker);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_exit_status_is_propagated() {
    let broker = Broker::start();
    let mut cmd = cli(&broker);
    cmd.args(["lock", "cli/exit", "--", "sh", "-c", "exit 7"]);
    let out = run_bounded(cmd, LIMIT).await;
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));

    let mut cmd = cli(&broker);
    cmd.args(["lock", "cli/exit", "--", "true"]);
    assert_eq!(run_bounded(cmd, LIMIT).await.status.code(), Some(0));

    // A child killed by a signal: 128 + signal, like a shell.
    let mut cmd = cli(&broker);
    cmd.args(["lock", "cli/exit", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(run_bounded(cmd, LIMIT).await.status.code(), Some(128 + 15));

    // A command that cannot be started fails, and does not leave the lock held.
    let mut cmd = cli(&broker);
    cmd.args(["lock", "cli/exit", "--", "/nonexistent/program"]);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/program"),
        "{}",
        text(&out.stderr)
    );
    let c = broker.client().await;
    let g = lockbroker_tests::util::eventually(
        "the key free after a failed spawn",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move { c.try_lock("cli/exit").await.ok() }
        },
    )
    .await;
    g.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_sees_its_fence_and_inspect_prints_the_holder() {
    let broker = Broker::start();
    let script = "echo \"fence=$LOCKBROKER_FENCE key=$LOCKBROKER_KEY\"; \"$LB_BIN\" inspect \"$LOCKBROKER_KEY\"";
    let mut cmd = cli(&broker);
    cmd.env("LB_BIN", lockbroker_bin())
        .args(["lock", "cli/fence", "--", "sh", "-c", script]);
    let out = run_bounded(cmd, LIMIT).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let first = stdout.lines().next().unwrap_or_default();
    let fence: u64 = first
        .strip_prefix("fence=")
        .and_then(|r| r.strip_suffix(" key=cli/fence"))
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("child did not see LOCKBROKER_FENCE/KEY: {stdout}"));
    assert!(fence > 0);
    // `inspect` run by the child shows the CLI holding the key with that fence.
    assert!(stdout.contains("key: cli/fence"), "{stdout}");
    assert!(stdout.contains("state: locked"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("holder: session=")
            && l.contains(&format!("fence={fence} "))
            && l.contains("mode=Exclusive")),
        "no holder line with fence {fence}: {stdout}"
    );
    assert!(stdout.contains("waiters: 0"), "{stdout}");

    // The CLI released on exit: the next holder gets a larger fence.
    let c = broker.client().await;
    let g = c
        .try_lock("cli/fence")
        .await
        .expect("released after the command");
    assert!(g.fence() > fence);

    // `inspect` of a key held by an SDK client, with a waiter.
    let w = broker.client().await;
    let waiting = tokio::spawn(async move { w.lock("cli/fence").wait(LIMIT).await });
    lockbroker_tests::util::wait_for_waiters(&c, "cli/fence", 1).await;
    let mut cmd = cli(&broker);
    cmd.args(["inspect", "cli/fence"]);
    let out = run_bounded(cmd, LIMIT).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let session = c.session_id().await.unwrap();
    assert!(
        stdout.contains(&format!(
            "holder: session={session} fence={} mode=Exclusive",
            g.fence()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("waiters: 1"), "{stdout}");
    g.unlock().await.unwrap();
    waiting.await.unwrap().unwrap().unlock().await.unwrap();

    // A free key.
    let mut cmd = cli(&broker);
    cmd.args(["inspect", "cli/free"]);
    let out = run_bounded(cmd, LIMIT).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("state: unlocked"), "{stdout}");
    assert!(!stdout.contains("holder:"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_clis_hold_the_key_together() {
    let broker = Broker::start();
    // Two shared holders run at the same time: each waits to see the other's mark.
    let dir = TempDir::new("cli-shared");
    let mut tasks = Vec::new();
    for me in ["a", "b"] {
        let other = if me == "a" { "b" } else { "a" };
        let script = format!(
            "touch '{d}/{me}'; i=0; while [ ! -e '{d}/{other}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -e '{d}/{other}' ]",
            d = dir.path().display()
        );
        let mut cmd = cli(&broker);
        cmd.args(["lock", "--shared", "cli/shared", "--", "sh", "-c", &script]);
        tasks.push(tokio::spawn(run_bounded(cmd, LIMIT)));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(
            out.status.success(),
            "shared holders did not overlap: {:?} {}",
            out.status,
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_mistakes_are_explained() {
    let broker = Broker::start();
    let other = Broker::start();

    // No CA at all.
    let mut cmd = cli(&broker);
    cmd.env_remove("LOCKBROKER_CA").args(["inspect", "k"]);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--ca"), "{}", text(&out.stderr));

    // Another broker's certificate.
    let mut cmd = cli(&broker);
    cmd.env("LOCKBROKER_CA", other.ca()).args(["inspect", "k"]);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).to_lowercase().contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    // Nothing listening: fails within the connect timeout, with an error.
    let dead = {
        let b = Broker::start();
        let url = b.url();
        drop(b);
        url
    };
    let mut cmd = cli(&broker);
    cmd.env("LOCKBROKER_URL", dead).args(["inspect", "k"]);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(!out.status.success());
    assert!(!out.stderr.is_empty());
}

/// `lockbroker completions SHELL` prints a script naming the subcommands, for each shell the
/// README lists; an unknown shell is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = std::process::Command::new(lockbroker_bin());
        cmd.args(["completions", shell]);
        let out = run_bounded(cmd, LIMIT).await;
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in ["serve", "lock", "inspect", "cluster"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
    let mut cmd = std::process::Command::new(lockbroker_bin());
    cmd.args(["completions", "cmd.exe"]);
    assert!(!run_bounded(cmd, LIMIT).await.status.success());
}

/// `serve --log-format json` writes each log line as one JSON object (for log shippers).
#[test]
fn serve_can_log_json_lines() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("jsonlog");
    // A data dir open to others makes the broker log a warning as it starts (it tightens it).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = std::process::Command::new(lockbroker_bin())
        .args(["serve", "--log-format", "json", "--log", "info", "--listen"])
        .arg(lockbroker_tests::etcd::free_udp_addr().to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = std::sync::mpsc::channel();
    let banner = tx.clone();
    std::thread::spawn(move || {
        let lines = BufReader::new(stdout.expect("stdout")).lines();
        for line in lines.map_while(Result::ok) {
            if line.starts_with("lockbroker listening on") {
                let _ = banner.send(None);
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr.expect("stderr"))
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(Some(line));
        }
    });
    // Until the banner (serving), then stop it and read what is left, bounded.
    let mut logs = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(None) => break,
            Ok(Some(line)) => logs.push(line),
            Err(e) => panic!("no banner within 60 s ({e}); logs: {logs:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        logs.extend(line);
    }
    assert!(
        logs.iter().any(|l| l.contains("the data dir was open")),
        "{logs:?}"
    );
    for line in &logs {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not a JSON log line: {line}"
        );
    }
}

/// `lockbroker elect KEY -- CMD`: the first candidate leads (its label is what
/// `Client::leader` reports), the second waits and runs its command only after the first's
/// ended — never both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_runs_the_command_only_while_leading() {
    let broker = Broker::start();
    let dir = TempDir::new("cli-elect");
    let log = dir.path().join("log");
    let script = |name: &str, secs: &str| {
        format!(
            "echo \"start {name}\" >> '{0}'; sleep {secs}; echo \"end {name}\" >> '{0}'",
            log.display()
        )
    };
    let mut a = cli(&broker);
    a.args(["elect", "--owner", "node-a", "svc/leader", "--", "sh", "-c"])
        .arg(script("a", "1.5"));
    let first = tokio::spawn(run_bounded(a, LIMIT));
    let client = broker.client().await;
    lockbroker_tests::util::eventually("node-a leads", LIMIT, || async {
        (client.leader("svc/leader").await.ok()??.as_str() == "node-a").then_some(())
    })
    .await;
    let mut b = cli(&broker);
    b.args(["elect", "--owner", "node-b", "svc/leader", "--", "sh", "-c"])
        .arg(script("b", "0.1"));
    let second = tokio::spawn(run_bounded(b, LIMIT));
    let (ra, rb) = (first.await.expect("join"), second.await.expect("join"));
    assert!(ra.status.success() && rb.status.success(), "{ra:?} {rb:?}");
    let lines = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        vec!["start a", "end a", "start b", "end b"],
        "{lines}"
    );
    assert_eq!(client.leader("svc/leader").await.expect("leader"), None);
}

/// `lockbroker lock K1 K2 -- CMD` locks both keys at once (CMD sees one fence per key) and
/// releases both when CMD ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_with_several_keys_holds_all_of_them() {
    let broker = Broker::start();
    let mut cmd = cli(&broker);
    cmd.args([
        "lock",
        "acct/1",
        "acct/2",
        "--",
        "sh",
        "-c",
        "echo \"$LOCKBROKER_KEY $LOCKBROKER_FENCE\"",
    ]);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let (keys, fences) = said.trim().split_once(' ').expect("keys and fences");
    assert_eq!(keys, "acct/1,acct/2");
    let fences: Vec<u64> = fences
        .split(',')
        .map(|f| f.parse().expect("fence"))
        .collect();
    assert_eq!(fences.len(), 2, "{said}");
    let c = broker.client().await;
    assert!(!c.is_locked("acct/1").await.expect("inspect"));
    assert!(!c.is_locked("acct/2").await.expect("inspect"));
    // Held elsewhere: --wait 0 fails without running the command.
    let g = c.lock("acct/2").await.expect("lock");
    let mut cmd = cli(&broker);
    cmd.args(["lock", "--wait", "0", "acct/1", "acct/2", "--", "true"]);
    let out = run_bounded(cmd, LIMIT).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("could not lock"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !c.is_locked("acct/1").await.expect("inspect"),
        "none of it was held"
    );
    drop(g);
}

/// On a terminal (a pseudo-terminal from `script`), `lockbroker lock` waiting for a held key
/// shows who holds it and its place in the queue, then runs the command once granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_on_a_terminal_shows_the_holder_and_the_queue_position() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("`script` (util-linux) is needed to give the CLI a terminal");
    }
    let broker = Broker::start();
    let holder = broker.client().await;
    let guard = holder.lock("tty/k").owner("holder-1").await.expect("lock");
    let line = format!(
        "{} lock --wait 20s tty/k -- true",
        lockbroker_bin().display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"])
        .env("LOCKBROKER_URL", broker.url())
        .env("LOCKBROKER_CA", broker.ca());
    let waiting = tokio::spawn(run_bounded(cmd, LIMIT));
    // Let the status line be drawn (first after 200 ms, then every second).
    let c = broker.client().await;
    lockbroker_tests::util::eventually("the CLI queued", LIMIT, || async {
        (c.inspect("tty/k").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    guard.unlock().await.expect("unlock");
    let out = waiting.await.expect("join");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown} {}", text(&out.stderr));
    assert!(
        shown.contains("waiting for \"tty/k\": held by holder-1"),
        "{shown:?}"
    );
    assert!(shown.contains("you are #1 of 1 waiting"), "{shown:?}");
}
