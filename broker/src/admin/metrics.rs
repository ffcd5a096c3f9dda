//! `GET /metrics`: the Prometheus text format (0.0.4) through `prometheus-client`. The
//! core's lock metrics (`broker::metrics`: counters and histograms recorded on the lock path)
//! and the plugins' call-duration histograms are registered by handle; gauges and the plugin,
//! mirror and cluster counters are read at scrape time into a fresh registry. Labels are fixed
//! sets or configured plugin names — never a lock key or a principal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Admin;
use crate::mirror::Mirror;

/// When the mirror queue was last seen empty (sampled every [`LAG_SAMPLE`]).
#[derive(Debug)]
pub(super) struct LagProbe {
    last_empty: Mutex<Instant>,
}

impl Default for LagProbe {
    fn default() -> Self {
        LagProbe {
            last_empty: Mutex::new(Instant::now()),
        }
    }
}

/// How often the mirror's queue is sampled for its lag.
const LAG_SAMPLE: Duration = Duration::from_millis(100);

/// Samples the mirror queue: its lag is how long it has been non-empty.
pub(super) async fn sample_lag(admin: Arc<Admin>, mirror: Arc<Mirror>) {
    let mut tick = tokio::time::interval(LAG_SAMPLE);
    loop {
        tick.tick().await;
        if mirror.queue_depth() == 0 {
            *admin.lag.last_empty.lock() = Instant::now();
        }
    }
}

/// The handler.
pub(super) async fn scrape(State(admin): State<Arc<Admin>>) -> Response {
    match encode(&admin) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed").into_response(),
    }
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

fn gauge_f64(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Everything, as Prometheus text.
pub(super) fn encode(admin: &Admin) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("lockbroker");
    if let Some(m) = &admin.broker.metrics {
        reg.register("grants", "Leases granted", m.grants.clone());
        reg.register(
            "releases",
            "Leases released (by their holder, a clean close or an operator)",
            m.releases.clone(),
        );
        reg.register(
            "expiries",
            "Leases that ran out their TTL",
            m.expiries.clone(),
        );
        reg.register(
            "revocations",
            "Leases ended by the broker (operator release, mirror conflict)",
            m.revocations.clone(),
        );
        reg.register(
            "lost_sessions",
            "Sessions that ended without a clean close",
            m.lost_sessions.clone(),
        );
        reg.register("denials", "Requests denied, by reason", m.denials.clone());
        reg.register(
            "limit_refusals",
            "Requests refused by a limit, by limit",
            m.limit_refusals.clone(),
        );
        reg.register(
            "connections",
            "QUIC connections open",
            m.connections.clone(),
        );
        reg.register(
            "quic_retries",
            "New connections sent a QUIC Retry (handshakes in progress past limits.retry_above_handshakes)",
            m.quic_retries.clone(),
        );
        reg.register(
            "acquire_wait_seconds",
            "From an acquire's arrival to its grant",
            m.acquire_wait.clone(),
        );
        reg.register(
            "hold_seconds",
            "From a grant to the lease's release or expiry (sampled: one lease in 16)",
            m.hold_time.clone(),
        );
        reg.register(
            "handoff_seconds",
            "From the release or expiry that freed a key to the next holder's grant",
            m.handoff.clone(),
        );
        reg.register(
            "recalls",
            "Cached leases recalled: another request wanted a key a client caches (lock caching)",
            m.recalls.clone(),
        );
        reg.register(
            "recall_seconds",
            "From a recall to the recalled lease's release, which grants the request that caused it",
            m.recall.clone(),
        );
        reg.register(
            "policy_chain_seconds",
            "One request's policy plugin chain",
            m.policy_duration.clone(),
        );
    }
    let t = admin.broker.totals();
    gauge(
        &mut reg,
        "keys",
        "Live keys (held, queued on, or blocked)",
        t.keys as u64,
    );
    gauge(&mut reg, "held_leases", "Leases held", t.leases as u64);
    gauge(&mut reg, "waiters", "Queued acquires", t.waiters as u64);
    gauge(
        &mut reg,
        "watchers",
        "Queued wait-until-unlocked watchers",
        t.watchers as u64,
    );
    gauge(&mut reg, "sessions", "Live sessions", t.sessions as u64);
    let outboxes = admin.broker.outbox_totals(Duration::from_secs(1));
    gauge(
        &mut reg,
        "outbox_queued_bytes",
        "Answers queued for all sessions and not yet taken by their streams",
        outboxes.queued as u64,
    );
    gauge(
        &mut reg,
        "outbox_stalled_sessions",
        "Sessions whose queued answers have not moved for a second or more",
        outboxes.stalled as u64,
    );
    counter(
        &mut reg,
        "horizon_write_failures",
        "Failed writes of the lease horizon file (grants and renewals are refused meanwhile)",
        admin.broker.horizon.failures(),
    );
    gauge(
        &mut reg,
        "horizon_writable",
        "1 unless the last write of the lease horizon file failed",
        u64::from(admin.broker.horizon.failing().is_none()),
    );
    gauge_f64(
        &mut reg,
        "restart_grace_seconds",
        "Time left of the restart grace (no new grants until the previous run's leases ended)",
        admin.broker.restart_grace_left().as_secs_f64(),
    );
    gauge(
        &mut reg,
        "admin_connections",
        "Admin HTTP connections open",
        admin.conns.open.load(Ordering::Relaxed) as u64,
    );
    counter(
        &mut reg,
        "admin_connections_shed",
        "Admin HTTP connections closed to stay within [admin] max_connections",
        admin.conns.shed.load(Ordering::Relaxed),
    );
    if let Some(host) = &admin.plugins {
        let calls = Family::<Vec<(&'static str, String)>, Counter>::default();
        let faults = Family::<Vec<(&'static str, String)>, Counter>::default();
        for p in host.stats().plugins {
            let labels = vec![("plugin", p.name.clone())];
            calls.get_or_create(&labels).inc_by(p.calls);
            faults.get_or_create(&labels).inc_by(p.errors);
        }
        reg.register("plugin_calls", "Calls into a plugin", calls);
        reg.register(
            "plugin_call_duration_seconds",
            "Wall time of each call into a plugin (faults and calls cut at their budget included)",
            host.call_durations().clone(),
        );
        reg.register(
            "plugin_faults",
            "Plugin calls that trapped, timed out, ran out of memory or returned garbage",
            faults,
        );
    }
    if let Some(mirror) = &admin.mirror {
        let s = mirror.stats();
        let depth = mirror.queue_depth();
        let lag = if depth == 0 {
            0.0
        } else {
            admin.lag.last_empty.lock().elapsed().as_secs_f64()
        };
        gauge(
            &mut reg,
            "mirror_queue_depth",
            "Lock events queued for the mirror",
            depth as u64,
        );
        gauge_f64(
            &mut reg,
            "mirror_lag_seconds",
            "How long the mirror queue has been non-empty (sampled every 100 ms)",
            lag,
        );
        gauge(
            &mut reg,
            "mirror_healthy",
            "1 unless a mirror resync is pending",
            u64::from(mirror.healthy()),
        );
        counter(
            &mut reg,
            "mirror_batches",
            "Mirror plugin calls that returned",
            s.batches,
        );
        counter(&mut reg, "mirror_resyncs", "Full mirror resyncs", s.resyncs);
        counter(
            &mut reg,
            "mirror_conflicts",
            "Holds the mirror refused (key held in Redis by someone else)",
            s.conflicts,
        );
        counter(
            &mut reg,
            "mirror_errors",
            "Failed mirror calls or events",
            s.errors,
        );
        counter(
            &mut reg,
            "mirror_dropped",
            "Lock events dropped (queue full or resync pending)",
            s.dropped,
        );
    }
    if let Some(cluster) = &admin.cluster {
        let (o, valid) = cluster.ownership();
        gauge(
            &mut reg,
            "shards_owned",
            "Shards served by this broker",
            u64::from(o.owned),
        );
        gauge(
            &mut reg,
            "shards_in_grace",
            "Shards served here in their takeover grace",
            u64::from(o.in_grace),
        );
        gauge(
            &mut reg,
            "shards_missing",
            "Shards this broker should serve but does not",
            u64::from(o.missing),
        );
        gauge(
            &mut reg,
            "cluster_lease_valid",
            "1 while this broker can vouch for its etcd lease",
            u64::from(valid),
        );
        counter(
            &mut reg,
            "ownership_changes",
            "Shards this broker started or stopped serving",
            o.changes,
        );
        gauge(
            &mut reg,
            "cluster_unowned_shards",
            "Shards of the whole cluster without a live owner, as this broker sees etcd",
            u64::from(o.unowned),
        );
        gauge(
            &mut reg,
            "cluster_ignored_keys",
            "etcd keys of the cluster ignored as invalid (no lease, bad URL or name)",
            u64::from(o.ignored_keys),
        );
        if let Some(r) = cluster.replication() {
            gauge(
                &mut reg,
                "replicated_shards",
                "Shards served here with replicas (cluster.replicas = 2)",
                u64::from(r.shards),
            );
            gauge(
                &mut reg,
                "replicated_shards_in_sync",
                "Of them, shards whose backup is in sync (a failover of these needs no grace)",
                u64::from(r.in_sync),
            );
            gauge(
                &mut reg,
                "replication_lag_changes",
                "Lease changes of the shards served here not yet acknowledged by their backups",
                r.lag,
            );
        }
    }
    let mut out = String::with_capacity(8 * 1024);
    prometheus_text::encode(&mut out, &reg)?;
    Ok(out)
}
