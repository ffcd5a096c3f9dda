//! `--only table`: the lock table alone, in this process — ns per uncontended acquire+release
//! over 1000 keys (criterion's figure: `cargo bench -p lockbroker`).

use std::time::Instant;

use bytes::Bytes;
use lockbroker_core::{AcquireRequest, Mode, Table, TableConfig, Wait};

use crate::fixture::TTL;
use crate::opts::Opts;
use crate::report::{Report, Target};

pub fn run(opts: &Opts, report: &mut Report) {
    println!("\n== table: uncontended acquire+release in process ==");
    let buf = Bytes::from(
        (0..1000)
            .flat_map(|i| format!("jobs/key-{i:05}").into_bytes())
            .collect::<Vec<u8>>(),
    );
    let keys: Vec<Bytes> = (0..1000).map(|i| buf.slice(i * 14..i * 14 + 14)).collect();
    let mut t = Table::new(TableConfig::default());
    let now = Instant::now();
    let mut out = Vec::with_capacity(8);
    let mut run = |n: usize| {
        let start = Instant::now();
        for i in 0..n {
            let g = t
                .acquire(
                    now,
                    AcquireRequest {
                        session: 1,
                        req: i as u64,
                        key: keys[i % keys.len()].clone(),
                        mode: Mode::Exclusive,
                        ttl: TTL,
                        wait: Wait::No,
                        owner: None,
                        ticket: 0,
                        fence_block: 1,
                    },
                    &mut out,
                )
                .ok()
                .flatten();
            if let Some(g) = g {
                let _ = t.release(now, 1, &g.key, g.fence, &mut out);
            }
            std::hint::black_box(&out);
            out.clear();
        }
        start.elapsed().as_nanos() as f64 / n as f64
    };
    run(opts.table_cycles / 10);
    let ns = run(opts.table_cycles);
    println!("  {ns:.1} ns per acquire+release (1000 keys)");
    report.row(
        "table acquire+release, in process (ns; criterion: cargo bench -p lockbroker)",
        format!("{ns:.0}"),
        "150 (target)",
        Some(ns / 150.0),
        Some(Target::AtMost(1.0)),
    );
}
