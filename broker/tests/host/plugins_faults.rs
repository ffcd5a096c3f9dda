//! Fault containment with the real `fault_key` / `fault_ttl` plugins: a trap, a panic, an
//! infinite loop, a memory bomb and garbage results each deny that request with a clear reason
//! (fail closed), recycle the instance and bump a counter, while every other request keeps being
//! served; `on_error = "allow"` lets such requests through instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbroker::plugins::{LockMode, OnError, PluginHost, PluginKind, PluginStat};

use crate::support::plugins::*;

fn fault_host(on_error: OnError) -> (PluginHost, tempfile::TempDir) {
    let cache = tempdir();
    let mut key = settings("faulty", "fault_key", PluginKind::KeyPolicy);
    key.on_error = on_error;
    let mut ttl = settings("faulty-ttl", "fault_ttl", PluginKind::TtlPolicy);
    ttl.on_error = on_error;
    let host = PluginHost::load(vec![key, ttl], cache.path()).expect("load fault plugins");
    (host, cache)
}

fn stat(host: &PluginHost, name: &str) -> PluginStat {
    host.stats().get(name).cloned().expect("plugin has stats")
}

/// Evaluates `key` and asserts it was denied with a reason containing every `needles`, within
/// a generous bound (the time budget is 1 ms; the bound only proves the call returns).
async fn assert_denied(host: &PluginHost, key: &[u8], needles: &[&str]) {
    let started = Instant::now();
    let reason = host
        .evaluate(excl("svc", key))
        .await
        .expect_err("a faulting plugin must deny");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    for needle in needles {
        assert!(
            reason.contains(needle),
            "reason `{reason}` lacks `{needle}`"
        );
    }
}

async fn assert_still_serving(host: &PluginHost) {
    for _ in 0..3 {
        let out = host
            .evaluate(excl("svc", b"orders/1"))
            .await
            .expect("good requests pass");
        assert_eq!(&*out.key, b"orders/1");
    }
}

#[tokio::test]
async fn trap_denies_recycles_and_keeps_serving() {
    let (host, _cache) = fault_host(OnError::Deny);
    assert_still_serving(&host).await;
    assert_denied(
        &host,
        b"fault/trap",
        &["plugin `faulty` failed", "trapped", "unreachable"],
    )
    .await;
    assert_still_serving(&host).await;
    let s = stat(&host, "faulty");
    assert_eq!((s.traps, s.recycled, s.errors), (1, 1, 1), "{s:?}");
    assert!(
        s.instances_created >= 2,
        "a new instance replaced the trapped one: {s:?}"
    );
}

#[tokio::test]
async fn panic_message_is_quoted_in_the_reason() {
    let (host, _cache) = fault_host(OnError::Deny);
    assert_denied(&host, b"fault/panic", &["trapped", "deliberate panic"]).await;
    assert_still_serving(&host).await;
    assert_eq!(stat(&host, "faulty").traps, 1);
}

#[tokio::test]
async fn infinite_loop_is_interrupted_at_the_time_budget() {
    let (host, _cache) = fault_host(OnError::Deny);
    let started = Instant::now();
    assert_denied(
        &host,
        b"fault/spin",
        &["plugin `faulty` failed", "time budget of 1ms"],
    )
    .await;
    let took = started.elapsed();
    assert_still_serving(&host).await;
    let s = stat(&host, "faulty");
    assert_eq!((s.timeouts, s.traps, s.recycled), (1, 0, 1), "{s:?}");
    eprintln!("spin interrupted after {took:?}");
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    // A time budget the bomb cannot reach first on a loaded machine (a debug build filling
    // 16 MiB took over 1 ms in CI): the memory limit is what this test is about.
    let cache = tempdir();
    let mut key = settings("faulty", "fault_key", PluginKind::KeyPolicy);
    key.time_budget = Duration::from_secs(1);
    let host = PluginHost::load(vec![key], cache.path()).expect("load the fault plugin");
    assert_denied(
        &host,
        b"fault/bomb",
        &["plugin `faulty` failed", "memory limit of 16384 KiB"],
    )
    .await;
    assert_still_serving(&host).await;
    let s = stat(&host, "faulty");
    assert_eq!((s.memory_exceeded, s.recycled), (1, 1), "{s:?}");
}

#[tokio::test]
async fn garbage_results_are_refused() {
    let (host, _cache) = fault_host(OnError::Deny);
    assert_denied(&host, b"fault/empty", &["invalid result", "empty key"]).await;
    assert_denied(&host, b"fault/huge", &["invalid result", "2048-byte key"]).await;
    assert_denied(
        &host,
        b"fault/ttl-zero",
        &["plugin `faulty-ttl` failed", "TTL of 0 ms"],
    )
    .await;
    assert_still_serving(&host).await;
    assert_eq!(stat(&host, "faulty").invalid_results, 2);
    assert_eq!(stat(&host, "faulty-ttl").invalid_results, 1);
    assert_eq!(stat(&host, "faulty-ttl").recycled, 1);
}

#[tokio::test]
async fn ttl_policy_trap_and_refusal() {
    let (host, _cache) = fault_host(OnError::Deny);
    assert_denied(
        &host,
        b"fault/ttl-trap",
        &["plugin `faulty-ttl` failed", "trapped"],
    )
    .await;
    // a ttl policy's own error is a decision: denied with its reason, not counted as a fault
    assert_denied(&host, b"fault/ttl-error", &["fault: refused"]).await;
    let s = stat(&host, "faulty-ttl");
    assert_eq!((s.traps, s.errors), (1, 1), "{s:?}");
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn on_error_allow_lets_requests_through() {
    let (host, _cache) = fault_host(OnError::Allow);
    for key in [
        &b"fault/trap"[..],
        b"fault/spin",
        b"fault/bomb",
        b"fault/empty",
        b"fault/huge",
    ] {
        let out = host
            .evaluate(acquire("svc", key, LockMode::Exclusive, 0))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: fail-open plugin denied: {e}",
                    String::from_utf8_lossy(key)
                )
            });
        assert_eq!(&*out.key, key, "a failed rewrite is not applied");
    }
    let out = host
        .evaluate(acquire("svc", b"fault/ttl-zero", LockMode::Exclusive, 2500))
        .await
        .unwrap();
    assert_eq!(
        out.ttl,
        Duration::from_millis(2500),
        "failed ttl policy leaves the ttl as it was"
    );
    let s = stat(&host, "faulty");
    assert_eq!(s.failed_open, 5, "{s:?}");
    assert_eq!(s.errors, 5, "{s:?}");
    assert_eq!(stat(&host, "faulty-ttl").failed_open, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_concurrency_never_affect_good_requests() {
    let (host, _cache) = fault_host(OnError::Deny);
    let host = Arc::new(host);
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut good = 0;
            for i in 0..60u32 {
                let key: &[u8] = match (t + i) % 6 {
                    0 => b"fault/trap",
                    1 => b"fault/spin",
                    2 => b"fault/huge",
                    3 => b"fault/panic",
                    _ => b"orders/1",
                };
                let result = host.evaluate(excl("svc", key)).await;
                if key.starts_with(b"fault/") {
                    assert!(result.is_err(), "{}", String::from_utf8_lossy(key));
                } else {
                    assert!(result.is_ok(), "good request failed: {result:?}");
                    good += 1;
                }
            }
            good
        }));
    }
    let mut good = 0;
    for t in tasks {
        good += t.await.unwrap();
    }
    assert_eq!(good, 4 * 20);
    let s = stat(&host, "faulty");
    assert_eq!(s.errors, 4 * 40, "{s:?}");
    assert_eq!(s.recycled, s.errors, "{s:?}");
}

/// The decision cache remembers answers, never faults: a trapping or sleeping request is
/// called (and cut at its budget) every time, while a good request is called once.
#[tokio::test]
async fn decision_cache_never_remembers_faults() {
    let cache = tempdir();
    let key = settings("faulty", "fault_key", PluginKind::KeyPolicy).with_decision_cache(64);
    let host = PluginHost::load(vec![key], cache.path()).expect("load fault plugin");
    for _ in 0..3 {
        assert_denied(&host, b"fault/trap", &["plugin `faulty` failed"]).await;
        let started = Instant::now();
        assert_denied(&host, b"fault/sleep", &["time budget of 1ms"]).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_still_serving(&host).await;
    }
    let s = stat(&host, "faulty");
    assert_eq!((s.traps, s.timeouts), (3, 3), "{s:?}");
    // 3 traps + 3 timeouts + the good request once; its 8 repetitions come from the cache
    assert_eq!((s.calls, s.decision_cache_hits), (7, 8), "{s:?}");
}

/// The time budget is a wall-clock bound for policy plugins: a guest sleeping in WASI (a wait
/// in the host, where the epoch interruption cannot stop it) is cut at its budget, not after
/// its 5 s sleep (before: 5.0 s with a 1 ms budget).
#[tokio::test]
async fn a_plugin_sleeping_in_wasi_is_cut_at_its_budget() {
    let (host, _cache) = fault_host(OnError::Deny);
    let started = Instant::now();
    assert_denied(
        &host,
        b"fault/sleep",
        &["plugin `faulty` failed", "time budget of 1ms"],
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_still_serving(&host).await;
    assert_eq!(stat(&host, "faulty").timeouts, 1);
}

/// A plugin's calls in flight are bounded by its `max_instances`; past it a call waits within
/// its budget and is then refused as overload — even with `on_error = "allow"`, which lets
/// requests past a broken plugin but never past a busy one (before: pool exhaustion failed
/// open and skipped the ACL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_and_never_fails_open() {
    let dir = tempdir();
    // Each call takes 250 ms of its 300 ms budget, one at a time: of six at once, the later
    // ones cannot get an instance within their budget.
    let mut s = settings("busy", "fault_key", PluginKind::KeyPolicy).with_config("slow_ms", "250");
    s.on_error = OnError::Allow;
    s.time_budget = Duration::from_millis(300);
    s.max_instances = 1;
    let host = Arc::new(PluginHost::load(vec![s], &dir.path().join("cache")).unwrap());
    let mut calls = Vec::new();
    for _ in 0..6 {
        let host = host.clone();
        calls.push(tokio::spawn(async move {
            host.evaluate(excl("svc", b"fault/slow")).await.map(|_| ())
        }));
    }
    let mut refused = 0;
    for c in calls {
        match c.await.expect("task") {
            Ok(()) => {}
            Err(reason) => {
                assert!(reason.contains("overloaded"), "{reason}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 1, "no call was refused as overload");
    let st = stat(&host, "busy");
    assert_eq!(st.failed_open, 0, "{st:?}");
}
