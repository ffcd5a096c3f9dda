//! Criterion micro-benchmarks of the lock table (no I/O, no locks): an uncontended
//! acquire+release cycle (target ≤ 150 ns), with and without many other leases held, and a
//! contended handoff (release granting the next waiter).
//!
//! `cargo bench -p lockbroker --bench table`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use lockbroker::table::{AcquireRequest, Mode, Table, TableConfig, Wait};

const TTL: Duration = Duration::from_secs(30);

/// Keys as the server has them: slices of one received buffer.
fn keys(n: usize) -> Vec<Bytes> {
    let buf = Bytes::from(
        (0..n)
            .flat_map(|i| format!("jobs/key-{i:05}").into_bytes())
            .collect::<Vec<u8>>(),
    );
    (0..n).map(|i| buf.slice(i * 14..i * 14 + 14)).collect()
}

fn request(session: u64, req: u64, key: Bytes, wait: Wait) -> AcquireRequest {
    AcquireRequest {
        session,
        req,
        key,
        mode: Mode::Exclusive,
        ttl: TTL,
        wait,
        owner: None,
        ticket: 0,
        fence_block: 1,
    }
}

fn table(background: usize) -> Table {
    let mut t = Table::new(TableConfig {
        max_leases_per_session: 2_000_000,
        ..TableConfig::default()
    });
    let now = Instant::now();
    let mut out = Vec::new();
    for i in 0..background {
        let _ = t.acquire(
            now,
            request(2, i as u64, Bytes::from(format!("held/{i}")), Wait::No),
            &mut out,
        );
        out.clear();
    }
    t
}

fn acquire_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    for (label, nkeys, background) in [
        ("acquire+release/1 key", 1usize, 0usize),
        ("acquire+release/1000 keys", 1000, 0),
        ("acquire+release/1000 keys, 100k held", 1000, 100_000),
    ] {
        let ks = keys(nkeys);
        let mut t = table(background);
        let now = Instant::now();
        let mut out = Vec::with_capacity(8);
        let mut i = 0u64;
        g.bench_function(label, |b| {
            b.iter(|| {
                i += 1;
                let key = ks[i as usize % ks.len()].clone();
                let grant = t.acquire(now, request(1, i, key, Wait::No), &mut out);
                if let Ok(Some(grant)) = grant {
                    let _ = t.release(now, 1, &grant.key, grant.fence, &mut out);
                }
                black_box(&out);
                out.clear();
            })
        });
    }
    // Contended: session 1 holds, session 2 queues; each release grants the waiter, who then
    // releases and session 1 re-queues — two handoffs per iteration.
    let key = keys(1).remove(0);
    let mut t = table(0);
    let now = Instant::now();
    let mut out = Vec::with_capacity(8);
    let mut fence = t
        .acquire(now, request(1, 0, key.clone(), Wait::No), &mut out)
        .ok()
        .flatten()
        .map(|g| g.fence)
        .unwrap_or_default();
    out.clear();
    let mut holder = 1u64;
    let mut i = 1u64;
    g.bench_function("handoff to a queued waiter", |b| {
        b.iter(|| {
            i += 1;
            let other = 3 - holder;
            let _ = t.acquire(now, request(other, i, key.clone(), Wait::Forever), &mut out);
            let _ = t.release(now, holder, &key, fence, &mut out);
            for e in out.drain(..) {
                if let lockbroker::table::Effect::Granted { grant, .. } = e {
                    fence = grant.fence;
                }
            }
            holder = other;
        })
    });
    g.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
