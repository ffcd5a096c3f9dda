//! The Redis representation of a lease, shared by writing, resync and restore.
//!
//! * An exclusive lease on `key` is the string `<prefix><key>` = `lb:<fence>` with `PX` = the
//!   remaining TTL: exactly what redlock-style clients (`SET key token NX PX ttl`) write, so
//!   they and the broker see the same locks.
//! * A shared or semaphore lease (several holders per key, which a single redlock string
//!   cannot express) is the string `<prefix><key>#<token>` = `<token>`, token `lb:<fence>:s`
//!   (shared) or `lb:<fence>:n<N>` (semaphore of N). Redis clients do not see these as locks.
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

/// Parses a stored value: `Some((fence, mode))` if it is a broker token.
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
    Some((fence.parse().ok()?, mode))
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
        assert_eq!(match_pattern(b"a*b"), b"a\\*b*".to_vec());
    }
}
