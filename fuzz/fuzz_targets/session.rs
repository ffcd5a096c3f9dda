//! A broker session fed arbitrary frame sequences in-process (no QUIC): the input is a series
//! of `[session tag][frame bytes]`; whatever decodes is applied by four sessions of a real
//! broker through its command layer, and the lock table's invariants are checked after every
//! frame (`lockbroker::server::fuzzing`). Never panics, whatever the frames.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lockbroker::broker::Broker;
use lockbroker::server::fuzzing;
use lockbroker_proto::{Limits, decode};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fn broker() -> &'static Arc<Broker> {
    static B: OnceLock<Arc<Broker>> = OnceLock::new();
    B.get_or_init(|| runtime().block_on(async { fuzzing::broker() }))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame: 4096,
        max_key: 256,
    };
    let mut frames = Vec::new();
    while let Some((&who, tail)) = rest.split_first() {
        match decode(tail, &limits) {
            Ok(Some((frame, used))) => {
                frames.push((who, frame));
                rest = &tail[used..];
            }
            _ => break,
        }
        if frames.len() >= 64 {
            break;
        }
    }
    runtime().block_on(fuzzing::run(broker(), frames, flags & 1 == 1));
});
