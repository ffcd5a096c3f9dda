//! Which source addresses count as one client for the per-address limits
//! (`limits.max_connections_per_ip`, `limits.handshake_rate_per_ip`): an IPv4 address alone,
//! but an IPv6 address by its /64 — one host or site is usually given a whole /64, and would
//! otherwise have 2^64 addresses to spread a flood over. An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4 peer) is its IPv4 address.

use std::net::{IpAddr, Ipv6Addr};

/// The group `ip` is counted in: itself for IPv4, its /64 prefix for IPv6.
pub fn source_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> IpAddr {
        source_group(s.parse().expect("ip"))
    }

    #[test]
    fn ipv6_groups_by_64_ipv4_and_mapped_addresses_stay_alone() {
        // One /64: the same group, whatever the interface identifier.
        assert_eq!(g("2001:db8:1:2::1"), g("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(g("2001:db8:1:2::1"), g("2001:db8:1:2::"));
        assert_eq!(g("2001:db8:1:2:abcd::7").to_string(), "2001:db8:1:2::");
        // Neighbouring /64s are different clients.
        assert_ne!(g("2001:db8:1:2::1"), g("2001:db8:1:3::1"));
        // IPv4 per address; an IPv4-mapped IPv6 address is its IPv4 address (not one /64 for
        // every IPv4 client of a dual-stack socket).
        assert_ne!(g("10.0.0.1"), g("10.0.0.2"));
        assert_eq!(g("::ffff:10.0.0.1"), g("10.0.0.1"));
        assert_ne!(g("::ffff:10.0.0.1"), g("::ffff:10.0.0.2"));
        // Loopback: 127/8 addresses stay apart; ::1 is the only IPv6 loopback address and
        // falls in ::/64.
        assert_ne!(g("127.0.0.1"), g("127.0.0.2"));
        assert_eq!(g("::1").to_string(), "::");
    }
}
