//! The frame decoder on arbitrary bytes: never panics, never reads past a frame, and every frame
//! it accepts encodes back to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbroker_proto::{Limits, decode, encode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame: 4096,
        max_key: 256,
    };
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        let mut again = Vec::new();
        encode(&frame, &mut again);
        match decode(&again, &Limits::default()) {
            Ok(Some((back, n))) => {
                assert_eq!(back, frame);
                assert_eq!(n, again.len());
            }
            other => panic!("re-encoded frame did not decode: {other:?}"),
        }
        rest = &rest[used..];
    }
});
