//! `AcquireAll`: an atomic multi-key exclusive lock. Every key passes the policy (key and TTL)
//! as an acquire would; in cluster mode the keys must share one shard (a common `{tag}`); the
//! sync Redis mirror does not take part (refused: its grants are confirmed one key at a time).
//! The table grants all keys in one step or none (`Table::acquire_all`); the answer — now, or
//! pushed as `GrantedAll` when the request's turn comes — is delivered by the broker core.

use lockbroker_proto::{AcquireAll, ErrorCode, MAX_KEYS_PER_ACQUIRE, Mode, shard_of};

use crate::server::policy::Op;
use crate::server::session::Session;
use crate::table::TableError;
use crate::table::serve::{self, Outcome, Request};

pub(super) async fn apply(s: &Session, a: AcquireAll) {
    if s.broker.refuses_multi_key() {
        s.fail(
            a.id,
            ErrorCode::Unavailable,
            "atomic multi-key locks are not available with the sync Redis mirror",
        );
        return;
    }
    // Before any policy call: a frame may name thousands of keys.
    if a.keys.len() > MAX_KEYS_PER_ACQUIRE {
        s.handle.answer_table_error(
            a.id,
            &TableError::LimitExceeded("keys in one request (at most 64)"),
        );
        return;
    }
    let mut keys = Vec::with_capacity(a.keys.len());
    let mut ttl = None;
    let mut graces = Vec::new();
    for key in &a.keys {
        let Some(decided) = s
            .decide(a.id, key, Mode::Exclusive, a.ttl_ms, Op::Acquire)
            .await
        else {
            return;
        };
        let Some(grace_until) = s.local(a.id, &decided.key) else {
            return;
        };
        if let Some(until) = grace_until {
            graces.push((decided.key.clone(), until));
        }
        // The shortest TTL any key's policy allows is the TTL of every lease.
        ttl = Some(ttl.map_or(decided.ttl, |t: std::time::Duration| t.min(decided.ttl)));
        keys.push(decided.key);
    }
    if let Some(map) = s.broker.shard_map() {
        let first = keys.first().map(|k| shard_of(k, map.shards));
        if keys.iter().any(|k| Some(shard_of(k, map.shards)) != first) {
            s.fail(
                a.id,
                ErrorCode::InvalidMode,
                "the keys of a multi-key lock must share one shard: give them a common {tag} \
                 (e.g. acct/{42}/a and acct/{42}/b)",
            );
            return;
        }
    }
    let Some(ttl) = ttl else {
        s.handle
            .answer_table_error(a.id, &TableError::InvalidKeys("no key named"));
        return;
    };
    let result = s.broker.with_table(|t, now, out| {
        for (key, until) in &graces {
            t.hold_key_until(key, *until)?;
        }
        let request = Request::acquire_all(s.id, &a, keys, ttl, now);
        serve::apply(t, now, s.id, request, out)
    });
    match result {
        Ok(Outcome::GrantedAll(grants)) => s.broker.deliver_grants(s.id, a.id, grants),
        Ok(_) => {}
        Err(e) => {
            if let Some(m) = s.broker.metrics.as_deref() {
                m.table_error(&e);
            }
            s.handle.answer_table_error(a.id, &e)
        }
    }
}
