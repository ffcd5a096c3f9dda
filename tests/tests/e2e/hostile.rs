//! What an unfriendly neighbour or client could do, against the real binary (issue 13):
//! files and secrets others could read or plant.

use std::os::unix::fs::PermissionsExt;

use lockbroker_tests::{Broker, TempDir};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data dir (broker key, dev key, precompiled plugin code) is the broker user's alone: a
/// fresh one is 0700 and its keys 0600, and a data dir created open by someone else's umask
/// is tightened at start.
#[test]
fn the_data_dir_and_its_keys_are_owner_only() {
    let dir = TempDir::new("private");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let b = Broker::start_in(dir, "");
    let data = b.data_dir.path();
    assert_eq!(mode(data), 0o700, "data dir");
    assert_eq!(mode(&data.join("dev-key.pem")), 0o600, "dev key");
    assert_eq!(mode(&data.join("broker.key")), 0o600, "broker key");
}
