//! Broker addresses as configured: host and port, not socket addresses. Every connect and
//! every reconnect resolves them again with `tokio::net::lookup_host` (never a blocking call
//! on the runtime), so a broker that moved to another address is found after a reconnect; each
//! address a host resolves to is tried in order.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};

/// A broker address as configured: a host (name or IP literal, also the TLS server name) and
/// a port. Resolved on every connect.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// The socket addresses the host resolves to now, in the resolver's order, without
    /// duplicates (IP literals resolve to themselves without a lookup).
    pub(crate) async fn resolve(&self) -> Result<Vec<SocketAddr>> {
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Connect(format!("cannot resolve {}: {e}", self.host)))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(Error::Connect(format!("{} has no address", self.host)));
        }
        Ok(addrs)
    }

    /// [`Target::resolve`], failing after `limit`.
    pub(crate) async fn resolve_within(&self, limit: Duration) -> Result<Vec<SocketAddr>> {
        tokio::time::timeout(limit, self.resolve())
            .await
            .map_err(|_| Error::Connect(format!("{self:?}: resolving timed out")))?
    }
}

/// Parses `quic://host:port` (the scheme and the port are optional) into a [`Target`]. Does
/// not resolve the host.
pub(crate) fn parse_url(url: &str) -> Result<Target> {
    let rest = url.strip_prefix("quic://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| Error::Invalid(format!("bad port in broker URL {url:?}")))?,
        ),
        _ => (rest, lockbroker_proto::DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Invalid(format!("no host in broker URL {url:?}")));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::{Target, parse_url};

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn urls_parse_with_and_without_scheme_and_port() {
        assert_eq!(
            parse_url("quic://127.0.0.1:7421").unwrap(),
            target("127.0.0.1", 7421)
        );
        assert_eq!(parse_url("127.0.0.1").unwrap(), target("127.0.0.1", 7420));
        assert_eq!(
            parse_url("quic://[::1]:9000/").unwrap(),
            target("::1", 9000)
        );
        assert_eq!(
            parse_url("quic://localhost:7420").unwrap(),
            target("localhost", 7420)
        );
        assert!(parse_url("quic://127.0.0.1:notaport").is_err());
        assert!(parse_url("quic://").is_err());
        assert_eq!(format!("{:?}", target("::1", 9000)), "[::1]:9000");
    }

    #[test]
    fn parsing_does_not_resolve() {
        // A name no resolver knows parses fine: it is looked up when connecting.
        assert_eq!(
            parse_url("quic://broker.invalid:7420").unwrap(),
            target("broker.invalid", 7420)
        );
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_async_resolver() {
        let addrs = target("localhost", 7421).resolve().await.unwrap();
        assert!(!addrs.is_empty());
        for a in &addrs {
            assert!(a.ip().is_loopback(), "{a}");
            assert_eq!(a.port(), 7421);
        }
        let mut unique = addrs.clone();
        unique.dedup();
        assert_eq!(unique.len(), addrs.len());
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves() {
        let addrs = target("127.0.0.1", 9).resolve().await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:9".parse().unwrap()]);
        let addrs = target("::1", 9).resolve().await.unwrap();
        assert_eq!(addrs, vec!["[::1]:9".parse().unwrap()]);
    }
}
