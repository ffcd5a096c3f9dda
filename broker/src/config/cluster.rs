//! `[cluster]`: several brokers forming one lock service on etcd (off unless `etcd` is set).
//!
//! ```toml
//! [cluster]
//! etcd = ["http://127.0.0.1:2379"]   # etcd endpoints; unset = single broker (the default)
//! name = "lockbroker"                # cluster name: the etcd key prefix /lockbroker/<name>/
//! key_file = "/etc/lockbroker/cluster.key"  # required: the cluster's lease-secret key (hex);
//!                                    # created if missing; every broker needs a copy
//! broker = "b1"                      # this broker's name (default: its advertised address)
//! advertise = "127.0.0.1:7420"       # the address clients reach it at (default: listen)
//! shards = 64                        # fixed for the life of the cluster
//! ownership_ttl_ms = 6000            # etcd lease of this broker's membership and shards
//! max_ttl_ms = 30000                 # lease TTL cap in cluster mode (bounds failover grace)
//! username = ""                      # etcd auth (optional)
//! password = ""
//! etcd_ca = "etcd-ca.pem"            # TLS to etcd (https:// endpoints): CA to trust
//! etcd_cert = "client.pem"           # client certificate for etcd's --client-cert-auth
//! etcd_key = "client-key.pem"        # ... and its key (optional, with etcd_cert)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `[cluster]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://host:port`). Empty: no cluster.
    pub etcd: Vec<String>,
    pub name: String,
    /// The cluster's lease-secret key: 32 bytes as 64 hex digits (required in cluster mode).
    /// Created (0600) by a broker that finds it missing; every broker of the cluster must
    /// have a copy of the same file. etcd keeps only a fingerprint of it.
    pub key_file: Option<PathBuf>,
    /// This broker's name among the members (default: its advertised address).
    pub broker: Option<String>,
    /// The address clients reach this broker at (default: `listen`).
    pub advertise: Option<SocketAddr>,
    pub shards: u32,
    pub ownership_ttl_ms: u64,
    /// The longest lease TTL granted in cluster mode: a new shard owner waits this (plus lock
    /// delay) for the previous owner's leases before granting anew.
    pub max_ttl_ms: u64,
    /// Copies of each shard's leases: 2, the default (the owner streams every change to a
    /// backup, the next member in rendezvous order, which takes the shard over without a
    /// grace: issue 24; a cluster of one member has no backup), or 1 (the owner only; a shard
    /// whose owner fails waits the takeover grace, and grants skip the backup's round trip).
    pub replicas: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to etcd: the CA certificate(s) (PEM) the `https://` endpoints are verified with.
    pub etcd_ca: Option<PathBuf>,
    /// TLS client certificate (PEM) for an etcd started with `--client-cert-auth`.
    pub etcd_cert: Option<PathBuf>,
    /// The key of `etcd_cert` (PEM).
    pub etcd_key: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd: Vec::new(),
            name: "lockbroker".into(),
            key_file: None,
            broker: None,
            advertise: None,
            shards: 64,
            ownership_ttl_ms: 6000,
            max_ttl_ms: 30_000,
            replicas: 2,
            username: None,
            password: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }
}

impl ClusterConfig {
    /// True when cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// The etcd lease TTL of this broker's membership and shard ownerships.
    pub fn ownership_ttl(&self) -> Duration {
        Duration::from_millis(self.ownership_ttl_ms)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.shards == 0 || self.shards > 65_536 {
            return Err("cluster.shards must be in 1..=65536".into());
        }
        if self.ownership_ttl_ms < 2000 || !self.ownership_ttl_ms.is_multiple_of(1000) {
            return Err("cluster.ownership_ttl_ms must be whole seconds, at least 2000".into());
        }
        if self.max_ttl_ms == 0 {
            return Err("cluster.max_ttl_ms must be > 0".into());
        }
        if !(1..=2).contains(&self.replicas) {
            return Err("cluster.replicas must be 1 or 2".into());
        }
        if self.name.is_empty() || self.name.contains('/') {
            return Err("cluster.name must be non-empty and contain no '/'".into());
        }
        if self.key_file.is_none() {
            return Err(
                "cluster.key_file is required in cluster mode: the file with the cluster's \
                 lease-secret key (a broker creates it if it is missing; copy it to every \
                 broker of the cluster)"
                    .into(),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("cluster.username and cluster.password go together".into());
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err("cluster.etcd_cert and cluster.etcd_key go together".into());
        }
        let https = self
            .etcd
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != self.etcd.len() {
            return Err("cluster.etcd endpoints are all https:// or none".into());
        }
        if https == 0 && (self.etcd_ca.is_some() || self.etcd_cert.is_some()) {
            return Err("cluster.etcd_ca / etcd_cert need https:// etcd endpoints".into());
        }
        Ok(())
    }
}
