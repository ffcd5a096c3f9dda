//! Criterion micro-benchmarks of the wire codec: encode + decode of the hot-path frames
//! (`Acquire`, `Granted`, fire-and-forget `Release`), and decode of a coalesced batch.
//!
//! `cargo bench -p lockbroker-proto --bench codec`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lockbroker_proto::{
    Acquire, Frame, Granted, LeaseSecret, Limits, Mode, Release, WaitSpec, decode, encode,
};

fn frames() -> Vec<(&'static str, Frame)> {
    let key = Bytes::from_static(b"jobs/nightly-report");
    vec![
        (
            "Acquire",
            Frame::Acquire(Acquire {
                id: 42,
                key: key.clone(),
                mode: Mode::Exclusive,
                ttl_ms: 30_000,
                wait: WaitSpec::Millis(5_000),
                owner: Bytes::new(),
                ticket: 0,
                fence_block: 1,
            }),
        ),
        (
            "Granted",
            Frame::Granted(Granted {
                id: 42,
                fence: (7 << 40) | 123_456,
                ttl_ms: 30_000,
                rewritten: None,
                secret: LeaseSecret([0x5a; 16]),
                fence_block: 1,
            }),
        ),
        (
            "Release",
            Frame::Release(Release {
                id: 43,
                key,
                fence: (7 << 40) | 123_456,
                ack: false,
                secret: LeaseSecret([0x5a; 16]),
            }),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("codec");
    for (name, frame) in frames() {
        let mut buf = Vec::with_capacity(256);
        g.bench_function(format!("encode+decode {name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&frame), &mut buf);
                let decoded = decode(black_box(&buf), &limits);
                black_box(decoded.ok().flatten());
            })
        });
        g.bench_function(format!("encode {name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&frame), &mut buf);
                black_box(&buf);
            })
        });
    }
    // A coalesced write of 64 Acquire frames, decoded frame by frame as the server does.
    let mut batch = Vec::new();
    for (_, f) in frames().into_iter().take(1).cycle().take(64) {
        encode(&f, &mut batch);
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode 64 coalesced Acquire", |b| {
        b.iter(|| {
            let mut at = 0;
            while let Ok(Some((f, n))) = decode(&batch[at..], &limits) {
                black_box(f);
                at += n;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
