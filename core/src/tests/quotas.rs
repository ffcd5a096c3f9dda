//! Per-principal caps (`quotas.rs`, issue 23 finding 6): live keys, leases and queue records
//! of one principal stop at its caps while another principal's requests still pass; a
//! multi-key acquire counts one record per key; the caps are freed as leases end and requests
//! leave their queues; the unnamed principal is uncapped.

use super::harness::*;
use crate::*;

fn capped(caps: PrincipalCaps) -> H {
    let mut h = H::with(TableConfig {
        principal_caps: PrincipalCaps::UNLIMITED,
        ..TableConfig::default()
    });
    h.t.set_principal_caps(b"anonymous", caps);
    h.t.set_principal(1, b"anonymous");
    h.t.set_principal(2, b"anonymous");
    h.t.set_principal(3, b"alice");
    h
}

#[test]
fn a_principal_at_its_key_cap_creates_no_key_and_others_still_do() {
    let mut h = capped(PrincipalCaps {
        keys: 2,
        ..PrincipalCaps::UNLIMITED
    });
    h.lock(1, b"a", Mode::Exclusive, 1000);
    h.lock(2, b"b", Mode::Exclusive, 1000);
    // Two sessions of one principal share its cap.
    assert_eq!(
        h.one(1, 10, b"c", Wait::No),
        Err(TableError::LimitExceeded(KEYS_OF_PRINCIPAL))
    );
    assert_eq!(
        h.all(2, 11, &[b"c", b"d"], Wait::No),
        Err(TableError::LimitExceeded(KEYS_OF_PRINCIPAL))
    );
    h.lock(3, b"c", Mode::Exclusive, 1000);
    // A key that lives already costs no new key.
    h.queue_one(1, 12, b"c");
    // A key that goes idle frees its place.
    let f = h.lock(3, b"e", Mode::Exclusive, 1000);
    h.t.release(h.now, 3, &key(b"e"), f, &mut h.out)
        .expect("release");
    let fa = h.t.inspect(b"a").expect("held").holders[0].fence;
    h.t.release(h.now, 1, &key(b"a"), fa, &mut h.out)
        .expect("release");
    h.t.check_invariants();
    h.lock(1, b"f", Mode::Exclusive, 1000);
}

#[test]
fn leases_and_queue_records_stop_at_the_cap_and_come_back() {
    let mut h = capped(PrincipalCaps {
        leases: 2,
        queued: 3,
        ..PrincipalCaps::UNLIMITED
    });
    h.lock(1, b"s", Mode::Shared, 1000);
    h.lock(2, b"s", Mode::Shared, 1000);
    assert_eq!(
        h.acq(1, 20, b"s", Mode::Shared, 1000, Wait::No),
        Err(TableError::LimitExceeded(LEASES_OF_PRINCIPAL))
    );
    h.lock(3, b"s", Mode::Shared, 1000);
    h.lock(3, b"x", Mode::Exclusive, 1000);
    h.lock(3, b"y", Mode::Exclusive, 1000);
    // A two-key group is two records, a single acquire one: three in all.
    assert_eq!(h.all(1, 21, &[b"x", b"y"], Wait::Forever), Ok(None));
    h.queue_one(2, 22, b"x");
    assert_eq!(
        h.one(2, 23, b"y", Wait::Forever),
        Err(TableError::LimitExceeded(QUEUED_OF_PRINCIPAL))
    );
    // Another principal queues freely.
    h.queue_one(3, 24, b"x");
    // A retry outside the table counts too.
    assert!(h.t.begin_outside_retry(1).is_err());
    assert!(h.t.cancel(h.now, 1, 21, &mut h.out));
    let p = h.t.begin_outside_retry(1).expect("room again");
    h.t.end_outside_retry(p);
    h.queue_one(2, 23, b"y");
    // A closed session gives its principal's records and (clean) leases back.
    h.t.close_session(h.now, 2, true, &mut h.out);
    h.t.check_invariants();
    h.lock(1, b"s", Mode::Shared, 1000);
}

#[test]
fn the_unnamed_principal_is_uncapped() {
    let mut h = H::with(TableConfig {
        principal_caps: PrincipalCaps {
            keys: 1,
            leases: 1,
            queued: 1,
        },
        ..TableConfig::default()
    });
    h.lock(7, b"a", Mode::Exclusive, 1000);
    h.lock(7, b"b", Mode::Exclusive, 1000);
    h.t.set_principal(8, b"bob");
    h.lock(8, b"c", Mode::Exclusive, 1000);
    assert_eq!(
        h.one(8, 30, b"d", Wait::No),
        Err(TableError::LimitExceeded(KEYS_OF_PRINCIPAL))
    );
}
