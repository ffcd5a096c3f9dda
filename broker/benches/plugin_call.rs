//! Per-call cost of policy plugins through `PluginHost::evaluate`, with the real compiled
//! plugins (run `plugins/build.sh` first). A plain timing loop (`harness = false`):
//!
//! ```sh
//! plugins/build.sh && cargo bench -p lockbroker --bench plugin_call
//! ```
//!
//! Prints ns per `evaluate` for: no plugins (the fast path), the template key policy, the ACL
//! key policy, ttl-clamp, ACL + ttl-clamp chained (the `policy` bench's chain), and ACL (with
//! rewrite) + ttl-clamp chained.
//!
//! For instruction counts (callgrind), `LB_ONLY=<label substring>` runs only the matching
//! measurements and `LB_CALLS=<n>` sets the calls per round (default 100000; one round then):
//!
//! ```sh
//! LOCKBROKER_PLUGIN_POOL_SLOTS=16 LB_ONLY="policy bench" LB_CALLS=20000 \
//!     valgrind --tool=callgrind target/release/deps/plugin_call-<hash>
//! ```
//!
//! (valgrind cannot reserve the default instance pool's address space: the broker's
//! `LOCKBROKER_PLUGIN_POOL_SLOTS` shrinks it, and each plugin then gets 2 instances.)

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lockbroker::plugins::{
    LockMode, Operation, PluginHost, PluginKind, PluginSettings, PolicyRequest,
};

fn dist(stem: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{stem}.wasm"));
    if !path.is_file() {
        eprintln!("{} is missing: run plugins/build.sh first", path.display());
        std::process::exit(2);
    }
    path
}

fn measure(rt: &tokio::runtime::Runtime, label: &str, mut plugins: Vec<PluginSettings>) {
    if std::env::var("LB_ONLY").is_ok_and(|only| !label.contains(&only)) {
        return;
    }
    if std::env::var_os("LOCKBROKER_PLUGIN_POOL_SLOTS").is_some() {
        for p in &mut plugins {
            p.max_instances = 2;
        }
    }
    let calls: Option<usize> = std::env::var("LB_CALLS").ok().and_then(|n| n.parse().ok());
    let cache = std::env::temp_dir().join("lockbroker-bench-cache");
    let host = match PluginHost::load(plugins, &cache) {
        Ok(host) => host,
        Err(e) => {
            eprintln!("{label}: {e}");
            std::process::exit(1);
        }
    };
    let req = PolicyRequest {
        key: b"orders/12345",
        mode: LockMode::Exclusive,
        ttl: Duration::from_millis(5000),
        principal: "alice",
        op: Operation::Acquire,
    };
    rt.block_on(async {
        for _ in 0..10_000 {
            black_box(host.evaluate(req).await.ok());
        }
        let mut best = f64::MAX;
        let rounds = if calls.is_some() { 1 } else { 5 };
        for _ in 0..rounds {
            let n = calls.unwrap_or(100_000);
            let started = Instant::now();
            for _ in 0..n {
                black_box(host.evaluate(black_box(req)).await.ok());
            }
            best = best.min(started.elapsed().as_nanos() as f64 / n as f64);
        }
        println!(
            "{label:<40} {best:>9.0} ns/evaluate (best of {rounds} x {})",
            calls.unwrap_or(100_000)
        );
    });
    assert_eq!(
        host.stats().plugins.iter().map(|p| p.errors).sum::<u64>(),
        0
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let acl = || {
        PluginSettings::new("acl", dist("key_prefix_acl"), PluginKind::KeyPolicy)
            .with_config("rules", "alice=orders/:rw,tenant/:rw;bob=reports/:r")
    };
    let ttl = || {
        PluginSettings::new("ttl", dist("ttl_clamp"), PluginKind::TtlPolicy)
            .with_config("max_ms", "60000")
            .with_config("rules", "orders/=min:1000")
    };
    measure(&rt, "no plugins (fast path)", vec![]);
    measure(
        &rt,
        "template key policy",
        vec![PluginSettings::new(
            "t",
            dist("template_key_policy"),
            PluginKind::KeyPolicy,
        )],
    );
    measure(&rt, "key-prefix-acl", vec![acl()]);
    measure(&rt, "ttl-clamp", vec![ttl()]);
    measure(
        &rt,
        "acl + ttl-clamp chained (policy bench)",
        vec![acl(), ttl()],
    );
    measure(
        &rt,
        "acl + ttl-clamp chained, decision cache (policy bench)",
        vec![acl().with_decision_cache(64), ttl().with_decision_cache(64)],
    );
    measure(
        &rt,
        "acl (rewrite) + ttl-clamp chained",
        vec![
            acl().with_config("rewrite_prefix", "tenant/{principal}/"),
            ttl(),
        ],
    );
}
