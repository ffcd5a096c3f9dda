//! Throughput probe (not a test): `cargo test --release -p lockbroker --lib table::bench --
//! --ignored --nocapture` prints ns per uncontended acquire+release cycle. No assertions on time.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn cycles(t: &mut Table, keys: &[Bytes], n: usize) -> Duration {
    let now = Instant::now();
    let mut out = Vec::with_capacity(8);
    let start = Instant::now();
    for i in 0..n {
        let key = keys[i % keys.len()].clone();
        let g = t
            .acquire(
                now,
                AcquireRequest {
                    session: 1,
                    req: i as u64,
                    key,
                    mode: Mode::Exclusive,
                    ttl: Duration::from_secs(30),
                    wait: Wait::No,
                },
                &mut out,
            )
            .ok()
            .flatten();
        if let Some(g) = g {
            let _ = t.release(now, 1, &g.key, g.fence, &mut out);
        }
        black_box(&out);
        out.clear();
    }
    start.elapsed()
}

#[test]
#[ignore = "throughput probe; run in release with --ignored --nocapture"]
fn acquire_release_cycle() {
    const N: usize = 2_000_000;
    // Keys as the server will have them: slices of a received buffer (shared `Bytes`).
    let buf = Bytes::from(
        (0..1000)
            .flat_map(|i| format!("jobs/key-{i:05}").into_bytes())
            .collect::<Vec<u8>>(),
    );
    let keys: Vec<Bytes> = (0..1000).map(|i| buf.slice(i * 14..i * 14 + 14)).collect();
    for (label, ks, background) in [
        ("one key", &keys[..1], 0usize),
        ("1000 keys", &keys[..], 0),
        ("1000 keys, 100k other leases held", &keys[..], 100_000),
    ] {
        let mut t = Table::new(TableConfig {
            max_leases_per_session: 1_000_000,
            ..TableConfig::default()
        });
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..background {
            let _ = t.acquire(
                now,
                AcquireRequest {
                    session: 2,
                    req: i as u64,
                    key: Bytes::from(format!("held/{i}")),
                    mode: Mode::Exclusive,
                    ttl: Duration::from_secs(30),
                    wait: Wait::No,
                },
                &mut out,
            );
            out.clear();
        }
        cycles(&mut t, ks, N / 10);
        let d = cycles(&mut t, ks, N);
        println!(
            "{label}: {:.1} ns per acquire+release",
            d.as_nanos() as f64 / N as f64
        );
    }
}
