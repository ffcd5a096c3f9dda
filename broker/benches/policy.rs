//! What policy plugins cost on the lock path, side by side in one run (a plain timing
//! program, `harness = false`; needs the plugins built):
//!
//! ```sh
//! plugins/build.sh && cargo bench -p lockbroker --bench policy
//! ```
//!
//! Starts three in-process brokers — no plugins, both example plugins chained
//! (`key-prefix-acl` then `ttl-clamp`), and the same chain with `decision_cache = 4096` (the
//! bench's keys repeat, so nearly every request is a hit) — and prints, in alternating rounds:
//! 1. lock throughput (lock + acknowledged unlock cycles/s, 4 connections × 16 lockers), and the
//!    ratio plugins / none (target ≥ 0.9×);
//! 2. sequential acquire latency p50/p99 and the p50 difference (target ≤ +5 µs).
//!
//! `LB_BENCH_SECS` (default 3) sets the length of each throughput round.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use lockbroker::config::Config;
use lockbroker::plugins::{PluginHost, PluginKind, PluginSettings};
use lockbroker::server::policy::Policy;
use support::{acquire_latencies, alternate_throughput, median, pct, start_broker};

fn plugin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/dist/{name}.wasm"));
    if !p.is_file() {
        eprintln!("{} is missing: run plugins/build.sh first", p.display());
        std::process::exit(2);
    }
    p
}

fn chain(cache: usize) -> Vec<PluginSettings> {
    vec![
        PluginSettings::new("acl", plugin("key_prefix_acl"), PluginKind::KeyPolicy)
            .with_config("rules", "default=bench/:rw,pol/:rw,warmup/:rw")
            .with_decision_cache(cache),
        PluginSettings::new("clamp", plugin("ttl_clamp"), PluginKind::TtlPolicy)
            .with_config("max_ms", "60000")
            .with_decision_cache(cache),
    ]
}

fn main() {
    let (rt, secs) = support::runtime_and_round_secs();
    rt.block_on(async {
        let cache = tempfile::tempdir().expect("tempdir");
        let host = Arc::new(PluginHost::load(chain(0), cache.path()).expect("load plugins"));
        let cached =
            Arc::new(PluginHost::load(chain(4096), cache.path()).expect("load plugins"));
        let none = start_broker("none", Config::default(), Policy::default()).await;
        let with = start_broker(
            "plugins",
            Config::default(),
            Policy::with_plugins(host.clone()),
        )
        .await;
        let with_cache = start_broker(
            "cached",
            Config::default(),
            Policy::with_plugins(cached.clone()),
        )
        .await;
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "policy benchmark: {cores} cores, in-process brokers, 4 clients x 16 lockers, {secs} s rounds"
        );
        let (mut a, mut b) = alternate_throughput(&none, &with, secs, "bench/").await;
        let (_, mut c) = alternate_throughput(&none, &with_cache, secs, "bench/").await;
        let (n, w, wc) = (median(&mut a), median(&mut b), median(&mut c));
        println!("throughput, lock+unlock cycles/s (median of 3 rounds):");
        println!("  no plugins         {n:>10.0}   rounds {a:.0?}");
        println!("  acl + ttl-clamp    {w:>10.0}   rounds {b:.0?}");
        println!("  ratio              {:>10.2}×  (target >= 0.9)", w / n);
        println!("  + decision cache   {wc:>10.0}   rounds {c:.0?}");
        println!("  ratio              {:>10.2}×", wc / n);

        let samples = 3_000;
        let (mut p50n, mut p50w, mut p50c) = (Vec::new(), Vec::new(), Vec::new());
        let (mut lat_n, mut lat_w, mut lat_c) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..3 {
            let ln = acquire_latencies(&none, samples, &format!("pol/{round}")).await;
            let lw = acquire_latencies(&with, samples, &format!("pol/{round}")).await;
            let lc = acquire_latencies(&with_cache, samples, &format!("pol/{round}")).await;
            p50n.push(pct(&ln, 0.5));
            p50w.push(pct(&lw, 0.5));
            p50c.push(pct(&lc, 0.5));
            lat_n = ln;
            lat_w = lw;
            lat_c = lc;
        }
        let (mn, mw, mc) = (median(&mut p50n), median(&mut p50w), median(&mut p50c));
        println!("acquire latency, one client, sequential ({samples} samples x 3 rounds), µs:");
        println!("  no plugins         p50 {mn:>7.1}  p99 {:>7.1} (last round)", pct(&lat_n, 0.99));
        println!("  acl + ttl-clamp    p50 {mw:>7.1}  p99 {:>7.1} (last round)", pct(&lat_w, 0.99));
        println!("  p50 difference     {:>+7.1} µs  (target <= +5)", mw - mn);
        println!("  + decision cache   p50 {mc:>7.1}  p99 {:>7.1} (last round)", pct(&lat_c, 0.99));
        println!("  p50 difference     {:>+7.1} µs", mc - mn);
        println!("  plugin stats: {}", host.stats());
        println!("  with decision cache: {}", cached.stats());
    });
}
