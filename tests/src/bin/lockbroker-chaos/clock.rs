//! The one clock of every history: `CLOCK_MONOTONIC` in nanoseconds. On Linux it is
//! system-wide, so timestamps of different processes compare (it is also the clock behind
//! `std::time::Instant`, which the SDK's guards use).

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
