//! The Redis representation of a lease, shared by writing, resync and restore.
//!
//! * An exclusive lease on `key` is the string `<prefix><key>` = `lb:<fence>` with `PX` = the
//!   remaining TTL: exactly what redlock-style clients (`SET key token NX PX ttl`) write, so
//!   they and the broker see the same locks.
//! * A shared or semaphore lease (several holders per key, which a single redlock string
//!   cannot express) is the string `<prefix><key>#<token>` = `<token>`, token `lb:<fence>:s`
//!   (shared) or `lb:<fence>:n<N>` (semaphore of N). Redis clients do not see these as locks.
//!
//! Only values that are exactly such a token (see [`parse_token`]) are broker leases: resync
//! deletes and restore re-installs nothing else.
//!
//! Fences are compared as decimal strings (length, then bytes), never as Lua numbers, which
//! are doubles and lose precision above 2^53.

use crate::lockbroker::plugin::types::LockMode;

/// The token stored for a lease.
pub fn token(fence: u64, mode: LockMode) -> Vec<u8> {
    match mode {
        LockMode::Exclusive => format!("lb:{fence}"),
        LockMode::Shared => format!("lb:{fence}:s"),
        LockMode::Semaphore(n) => format!("lb:{fence}:n{n}"),
    }
    .into_bytes()
}

/// The Redis key of a lease.
pub fn redis_key(prefix: &[u8], key: &[u8], token: &[u8], mode: LockMode) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len() + token.len() + 1);
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    if !matches!(mode, LockMode::Exclusive) {
        k.push(b'#');
        k.extend_from_slice(token);
    }
    k
}

/// The smallest fence a broker hands out: every broker epoch is at least 1 (the epoch file
/// starts at 1), and a fence is `(epoch << 40) | counter`.
pub const MIN_FENCE: u64 = 1 << 40;

/// Parses a stored value: `Some((fence, mode))` if it is exactly a token the mirror writes,
/// i.e. `token(fence, mode)` gives back the same bytes (no sign, no leading zeros, a semaphore
/// of at least one permit) and the fence is a broker fence (`>= MIN_FENCE`). Anything else,
/// e.g. a hand-written `lb:5`, is not a broker token.
pub fn parse_token(v: &[u8]) -> Option<(u64, LockMode)> {
    let rest = std::str::from_utf8(v.strip_prefix(b"lb:")?).ok()?;
    let (fence, mode) = match rest.split_once(':') {
        None => (rest, LockMode::Exclusive),
        Some((f, "s")) => (f, LockMode::Shared),
        Some((f, m)) => (f, LockMode::Semaphore(m.strip_prefix('n')?.parse().ok()?)),
    };
    if fence.is_empty() || !fence.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fence: u64 = fence.parse().ok()?;
    if fence < MIN_FENCE || matches!(mode, LockMode::Semaphore(0)) || token(fence, mode) != v {
        return None;
    }
    Some((fence, mode))
}

/// True if `v` starts like a broker token (`lb:`), whether or not it is one: such a value that
/// [`parse_token`] refuses is worth reporting, other values belong to other Redis clients.
pub fn looks_like_token(v: &[u8]) -> bool {
    v.starts_with(b"lb:")
}

/// `bytes` for a log line: UTF-8 (lossy) with control characters escaped, at most 200 bytes.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s: String = String::from_utf8_lossy(cut).escape_debug().collect();
    if bytes.len() > MAX {
        s.push('…');
    }
    s
}

/// The lock key of a stored lease: Redis key `name` holding token `value` (parsed as `mode`).
pub fn lock_key<'a>(
    prefix: &[u8],
    name: &'a [u8],
    value: &[u8],
    mode: LockMode,
) -> Option<&'a [u8]> {
    let rest = name.strip_prefix(prefix)?;
    let key = match mode {
        LockMode::Exclusive => rest,
        _ => rest.strip_suffix(value)?.strip_suffix(b"#")?,
    };
    (!key.is_empty()).then_some(key)
}

/// `prefix` as a SCAN MATCH pattern matching every key that starts with it.
pub fn match_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p.push(b'*');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for mode in [
            LockMode::Exclusive,
            LockMode::Shared,
            LockMode::Semaphore(4),
        ] {
            let t = token(1 << 40 | 7, mode);
            let (f, m) = parse_token(&t).unwrap();
            assert_eq!(f, 1 << 40 | 7);
            assert_eq!(format!("{m:?}"), format!("{mode:?}"));
            let name = redis_key(b"lk:", b"a#b", &t, mode);
            assert_eq!(lock_key(b"lk:", &name, &t, mode), Some(&b"a#b"[..]));
        }
        assert!(parse_token(b"c0ffee").is_none());
        assert!(parse_token(b"lb:").is_none());
        assert!(parse_token(b"lb:12:x").is_none());
    }

    #[test]
    fn only_exact_broker_tokens_parse() {
        let f = MIN_FENCE + 5;
        assert!(parse_token(format!("lb:{f}").as_bytes()).is_some());
        assert!(parse_token(format!("lb:{}", u64::MAX).as_bytes()).is_some());
        for bad in [
            "lb:5".to_string(),                    // below every broker fence
            "lb:0".to_string(),                    // fence 0
            format!("lb:{}", MIN_FENCE - 1),       // epoch 0
            format!("lb:0{f}"),                    // leading zero
            format!("lb:+{f}"),                    // sign
            format!("lb:{f}:n0"),                  // semaphore of no permit
            format!("lb:{f}:n+2"),                 // sign in the permit count
            format!("lb:{f}:n02"),                 // leading zero in the permit count
            format!("lb:{f}:s:s"),                 // trailing garbage
            format!("lb:{f} "),                    // trailing space
            "lb:18446744073709551616".to_string(), // above u64::MAX
        ] {
            assert!(parse_token(bad.as_bytes()).is_none(), "{bad} parsed");
            assert!(looks_like_token(bad.as_bytes()));
        }
        assert!(!looks_like_token(b"c0ffee"));
        assert_eq!(show(b"a\nb"), "a\\nb");
        assert_eq!(match_pattern(b"a*b"), b"a\\*b*".to_vec());
    }
}
