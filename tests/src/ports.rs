//! Free loopback ports for servers a test stops and starts again on the same address (etcd
//! members, Redis, brokers with an advertised cluster URL).
//!
//! They are drawn *below* the kernel's ephemeral range (32768–60999 by default): a port the OS
//! handed out by `bind(0)` is in that range, and once its server is killed any outgoing
//! connection or client UDP socket may take it as its local port, so the restart fails with
//! "address in use". Ports below the range are only ever taken by explicit binds.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The range ports are drawn from (below the default ephemeral range).
const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// Next candidate: a per-process start (from the pid, so test binaries running side by side
/// start far apart) plus a counter.
fn candidate() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
    (FIRST + n) as u16
}

/// A loopback port where both a TCP listener and a UDP socket can bind right now.
fn free(check: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..COUNT {
        let port = candidate();
        if check(port) {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// A free TCP port on 127.0.0.1 outside the ephemeral range.
pub fn free_port() -> u16 {
    free(bindable)
}

/// A free UDP address on 127.0.0.1 outside the ephemeral range, for a broker that must keep
/// its address across restarts (its advertised cluster URL).
pub fn free_udp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free(bindable)))
}
