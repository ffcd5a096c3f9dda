//! TEST ONLY. A key policy that misbehaves on purpose, for the host's fault tests. Keys that
//! don't start with `fault/` are allowed. For the others, the key picks the misbehaviour:
//!
//! * `fault/trap`  — executes `unreachable` (a trap);
//! * `fault/panic` — panics with a message (a trap after writing to stderr);
//! * `fault/spin`  — loops forever (the host's time budget must stop it);
//! * `fault/bomb`  — allocates memory without bound (the host's memory limit must stop it);
//!   it reserves 1 MiB blocks without touching them, so it hits the limit in microseconds;
//! * `fault/empty` — rewrites the key to an empty key (garbage);
//! * `fault/huge`  — rewrites the key to a 2 KiB key (garbage: keys are at most 1 KiB);
//! * `fault/slow`  — busy-waits `host.config("slow_ms")` ms (default 0) then allows;
//! * `fault/sleep` — sleeps 5 s in WASI (`std::thread::sleep`: a wait in the host, where no
//!   guest code runs for the epoch interruption to stop) then allows.
//!
//! Any other key (including other `fault/...` keys, e.g. those of `fault-ttl`) is allowed.

// The code `wit_bindgen::generate!` emits trips this lint (8-argument export shims).
#![allow(clippy::too_many_arguments)]

use lockbroker::plugin::host;

wit_bindgen::generate!({
    world: "key-policy",
    path: "../../../wit",
});

struct FaultKey;

impl Guest for FaultKey {
    fn check(req: LockRequest) -> KeyDecision {
        let Some(fault) = req.key.strip_prefix(b"fault/") else {
            return KeyDecision::Allow;
        };
        match fault {
            b"trap" => core::arch::wasm32::unreachable(),
            b"panic" => panic!("fault plugin: deliberate panic for key {:?}", req.key),
            b"spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            b"bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(Vec::with_capacity(1 << 20)));
                }
            }
            b"sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(5));
                KeyDecision::Allow
            }
            b"empty" => KeyDecision::Rewrite(Vec::new()),
            b"huge" => KeyDecision::Rewrite(vec![b'x'; 2048]),
            b"slow" => {
                let ms: u64 = host::config("slow_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let until = host::now_ms() + ms;
                while host::now_ms() < until {
                    std::hint::spin_loop();
                }
                KeyDecision::Allow
            }
            _ => KeyDecision::Allow,
        }
    }
}

export!(FaultKey);
