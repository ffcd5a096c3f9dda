//! Hot reload and the precompiled-artifact cache, with the real plugins: a reload under load
//! swaps behaviour with zero failed evaluations, a bad new file is rejected while the old one
//! keeps running, the file watcher picks changes up, and a second load uses the cache.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockbroker::plugins::{
    PluginError, PluginHost, PluginKind, PluginSettings, cache_file_name, watch_every,
};

use crate::support::plugins::*;

/// Replaces `dst` with `src` atomically (copy to a temporary name, then rename), as a deploy
/// tool should.
fn swap_file(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("incoming");
    std::fs::copy(src, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, dst).expect("rename plugin into place");
}

/// A key policy named `p` whose file (in `dir`) starts as the template; the settings also
/// carry the ACL's `rules`, so swapping in the ACL changes behaviour: bob loses `orders/`.
fn reloadable(dir: &Path) -> PluginSettings {
    let file = dir.join("p.wasm");
    swap_file(&plugin("template_key_policy"), &file);
    PluginSettings::new("p", file, PluginKind::KeyPolicy)
        .with_config("rules", "alice=orders/:rw")
        .with_config("deny_prefix", "forbidden/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_has_zero_failed_evaluations() {
    let dir = tempdir();
    // What this test checks is the swap, not the time budget (`plugins_faults` does):
    // on a 2-core CI machine the reload compiles the new version with cranelift, and another
    // test may compile in parallel, while two workers call the plugin; a worker preempted
    // across three 500 µs epoch ticks would exceed the default 1 ms budget and be denied for
    // a reason unrelated to the swap. A 25 ms budget keeps CPU contention out of the result.
    let mut settings = reloadable(dir.path());
    settings.time_budget = Duration::from_millis(25);
    let file = settings.path.clone();
    let host = Arc::new(PluginHost::load(vec![settings], &dir.path().join("cache")).unwrap());
    assert!(
        host.evaluate(excl("bob", b"orders/1")).await.is_ok(),
        "template allows bob"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (host, stop, done) = (host.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // allowed by the old and the new version alike
                if let Err(e) = host.evaluate(excl("alice", b"orders/1")).await {
                    failures.push(e);
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = done.load(Ordering::Relaxed);

    swap_file(&plugin("key_prefix_acl"), &file);
    let reloader = host.clone();
    let report = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .unwrap()
        .expect("the new version loads");
    assert_eq!(report.reloaded, vec!["p".to_string()]);

    // new behaviour, observed while the workers keep going
    let deny = host.evaluate(excl("bob", b"orders/1")).await.unwrap_err();
    assert!(deny.contains("bob"), "{deny}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    let total = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "failed evaluations during reload: {failures:?}"
    );
    assert!(
        total > before && before > 0,
        "workers ran before and after ({before}, {total})"
    );
    let s = host.stats();
    let p = s.get("p").unwrap();
    assert_eq!((p.errors, p.reloads), (0, 1), "{s}");
    eprintln!("{total} evaluations across the reload, none failed");
}

#[tokio::test]
async fn bad_new_version_is_rejected_and_the_old_one_keeps_running() {
    let dir = tempdir();
    let settings = reloadable(dir.path());
    let file = settings.path.clone();
    let host = PluginHost::load(vec![settings], &dir.path().join("cache")).unwrap();

    // unchanged file: nothing happens
    let report = host.reload().unwrap();
    assert!(report.reloaded.is_empty());
    assert_eq!(report.unchanged, vec!["p".to_string()]);

    // a component built against lockbroker:plugin@0.2.0
    swap_file(&plugin("version_mismatch"), &file);
    let err = host.reload().unwrap_err();
    assert!(matches!(err, PluginError::VersionMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("p.wasm") && err.to_string().contains("0.2.0"),
        "{err}"
    );
    // the template still answers
    assert!(host.evaluate(excl("bob", b"orders/1")).await.is_ok());
    let deny = host
        .evaluate(excl("bob", b"forbidden/1"))
        .await
        .unwrap_err();
    assert!(deny.starts_with("template:"), "{deny}");

    // garbage, and a component of the wrong world
    std::fs::write(&file, b"\0asm garbage").unwrap();
    let err = host.reload().unwrap_err();
    assert!(matches!(err, PluginError::Invalid { .. }), "{err}");
    swap_file(&plugin("ttl_clamp"), &file);
    let err = host.reload().unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{err}");
    assert!(
        host.evaluate(excl("bob", b"orders/1")).await.is_ok(),
        "old version still serving"
    );

    let p = host.stats().get("p").cloned().unwrap();
    assert_eq!(
        (p.rejected_reloads, p.reloads, p.errors),
        (3, 0, 0),
        "{p:?}"
    );

    // a good version afterwards is accepted
    swap_file(&plugin("key_prefix_acl"), &file);
    assert_eq!(host.reload().unwrap().reloaded, vec!["p".to_string()]);
    assert!(host.evaluate(excl("bob", b"orders/1")).await.is_err());
}

#[tokio::test]
async fn watcher_reloads_a_changed_file() {
    let dir = tempdir();
    let settings = reloadable(dir.path());
    let file = settings.path.clone();
    let host = Arc::new(PluginHost::load(vec![settings], &dir.path().join("cache")).unwrap());
    let watcher = watch_every(host.clone(), Duration::from_millis(50));
    assert!(host.evaluate(excl("bob", b"orders/1")).await.is_ok());

    swap_file(&plugin("key_prefix_acl"), &file);
    let started = Instant::now();
    while host.evaluate(excl("bob", b"orders/1")).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "watcher never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host.stats().get("p").unwrap().reloads, 1);

    // the watcher ends when the host goes away
    drop(host);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops after the host is dropped")
        .unwrap();
}

#[test]
fn second_load_uses_the_precompiled_cache() {
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let settings = || {
        vec![
            settings("acl", "key_prefix_acl", PluginKind::KeyPolicy).with_config("rules", "a=:rw"),
            settings("ttl", "ttl_clamp", PluginKind::TtlPolicy),
        ]
    };

    let first = PluginHost::load(settings(), &cache).unwrap();
    for p in &first.stats().plugins {
        assert_eq!(
            (p.compiles, p.cache_hits, p.from_cache),
            (1, 0, false),
            "{p:?}"
        );
    }
    for stem in ["key_prefix_acl", "ttl_clamp"] {
        let bytes = std::fs::read(plugin(stem)).unwrap();
        let artifact = cache.join(cache_file_name(&bytes).unwrap());
        assert!(artifact.is_file(), "{} was not cached", artifact.display());
    }
    drop(first);

    let second = PluginHost::load(settings(), &cache).unwrap();
    for p in &second.stats().plugins {
        assert_eq!(
            (p.compiles, p.cache_hits, p.from_cache),
            (0, 1, true),
            "{p:?}"
        );
    }

    // a corrupt artifact is discarded and recompiled, not trusted
    let bytes = std::fs::read(plugin("key_prefix_acl")).unwrap();
    std::fs::write(cache.join(cache_file_name(&bytes).unwrap()), b"corrupt").unwrap();
    let third = PluginHost::load(settings(), &cache).unwrap();
    let acl = third.stats().get("acl").cloned().unwrap();
    assert_eq!((acl.compiles, acl.from_cache), (1, false), "{acl:?}");

    // an unwritable cache dir only costs the caching
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let host = PluginHost::load(settings(), &not_a_dir).expect("loads without a usable cache");
    assert_eq!(host.stats().get("acl").unwrap().compiles, 1);
}

/// The cache holds native code the broker runs: an artifact that others could have written
/// (world-writable, or in a world-writable directory) is compiled again rather than loaded, and
/// the fresh artifact is written 0600 into a 0700 directory.
#[test]
fn a_cache_artifact_others_could_write_is_not_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let settings = || vec![settings("ttl", "ttl_clamp", PluginKind::TtlPolicy)];
    drop(PluginHost::load(settings(), &cache).unwrap());
    let bytes = std::fs::read(plugin("ttl_clamp")).unwrap();
    let artifact = cache.join(cache_file_name(&bytes).unwrap());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&artifact), 0o600);
    assert_eq!(mode(&cache), 0o700);

    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
    let host = PluginHost::load(settings(), &cache).unwrap();
    let ttl = host.stats().get("ttl").cloned().unwrap();
    assert_eq!((ttl.compiles, ttl.from_cache), (1, false), "{ttl:?}");
    assert_eq!(mode(&artifact), 0o600, "replaced by a private artifact");
    drop(host);

    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let host = PluginHost::load(settings(), &cache).unwrap();
    let ttl = host.stats().get("ttl").cloned().unwrap();
    assert_eq!((ttl.compiles, ttl.from_cache), (1, false), "{ttl:?}");
    assert_eq!(mode(&cache), 0o700, "the directory is made private again");
    drop(host);

    let host = PluginHost::load(settings(), &cache).unwrap();
    assert!(host.stats().get("ttl").unwrap().from_cache);
}
