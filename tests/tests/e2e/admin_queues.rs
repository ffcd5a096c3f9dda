//! Hostile input at the admin API (issue 23, findings 9 and 12), against the real binary:
//! keys that name no holder but are blocked by a queued multi-key request show that request,
//! and an operator can cancel it or end its session; keys that are not UTF-8 page to the end
//! and are released by their bytes; the empty key, which the broker grants, can be released.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::http;
use lockbroker_tests::util::{eventually, run_bounded};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "0123456789abcdef-ops";

fn ops_broker() -> Broker {
    Broker::start_with_config(&format!(
        "[admin]\ntokens = {{ \"{TOKEN}\" = \"ops-alice\" }}\n"
    ))
}

fn admin(broker: &Broker) -> std::net::SocketAddr {
    broker
        .admin
        .unwrap_or_else(|| panic!("no admin address in the banner {:?}", broker.banner))
}

async fn post(broker: &Broker, path: &str, body: &Value) -> http::Response {
    let auth = format!("Bearer {TOKEN}");
    http::post_json(admin(broker), path, &[("Authorization", &auth)], body).await
}

async fn get(broker: &Broker, path: &str) -> http::Response {
    let auth = format!("Bearer {TOKEN}");
    http::request(
        admin(broker),
        "GET",
        path,
        &[("Authorization", &auth)],
        None,
    )
    .await
}

/// The listing of `key`, if it is live.
async fn listed(broker: &Broker, key: &str) -> Option<Value> {
    let page = get(broker, &format!("/api/locks?prefix={key}")).await;
    assert_eq!(page.status, 200, "{page:?}");
    page.json()["locks"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["key"] == json!(key)).cloned())
}

/// Finding 9: one held key and a queued 64-key `lock_all` naming it block 63 free keys. The
/// operator sees, for a blocked key without holders, which request it waits for (the CLI
/// prints the `cancel` command), cancels it — the `lock_all` fails with `Cancelled` and is not
/// retried — and the user waiting on a blocked key is granted at once. Ending the holder's
/// session revokes its lease (its guard is told) and closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_blocked_by_a_queued_group_shows_it_and_the_operator_unblocks_it() {
    let broker = ops_broker();
    let holder = broker.client().await;
    let grouper = broker.client().await;
    let bystander = broker.client().await;
    let held = holder
        .lock("hol/00")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock hol/00");
    let keys: Vec<String> = (0..64).map(|i| format!("hol/{i:02}")).collect();
    let group = tokio::spawn(async move {
        grouper
            .lock_all(keys)
            .wait(Duration::from_secs(60))
            .await
            .map(|g| g.len())
    });
    // The group is queued on every key it names: hol/05 has no holder but a queue.
    let blocked = eventually("the group queued on hol/05", LIMIT, || async {
        let l = listed(&broker, "hol/05").await?;
        l["next_in_line"].is_object().then_some(l)
    })
    .await;
    assert_eq!(blocked["holders"], json!([]), "{blocked}");
    assert_eq!(blocked["next_in_line"]["keys"], json!(64), "{blocked}");
    let session = blocked["next_in_line"]["session"]
        .as_u64()
        .expect("session");
    let request = blocked["next_in_line"]["request"]
        .as_u64()
        .expect("request");
    // A user of a free key waits behind it (FIFO), for now.
    let waiting = tokio::spawn(async move {
        bystander
            .lock("hol/05")
            .wait(Duration::from_secs(60))
            .await
            .map(|g| g.fence())
    });
    // `lockbroker locks` names the request and the command that removes it.
    let url = format!("http://{}", admin(&broker));
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(lockbroker_tests::lockbroker_bin());
        cmd.args(args).arg("--admin").arg(&url);
        cmd
    };
    let data_dir = broker.data_dir.path().to_str().expect("a UTF-8 path");
    let out = run_bounded(
        cli(&["locks", "--prefix", "hol/05", "--data-dir", data_dir]),
        LIMIT,
    )
    .await;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("lockbroker cancel {session} {request}")),
        "{shown}"
    );
    // A forced release of the blocked key revokes nothing (nobody holds it)...
    let nothing = post(&broker, "/api/release", &json!({ "key": "hol/05" })).await;
    assert_eq!(nothing.json()["revoked"], json!([]), "{nothing:?}");
    // ...the cancel does, with the CLI and the broker's per-start token.
    let out = run_bounded(
        cli(&[
            "cancel",
            &session.to_string(),
            &request.to_string(),
            "--data-dir",
            data_dir,
        ]),
        LIMIT,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = tokio::time::timeout(LIMIT, group)
        .await
        .expect("the lock_all answered")
        .expect("join");
    assert!(matches!(failed, Err(Error::Cancelled(_))), "{failed:?}");
    let fence = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("the bystander is granted once the group left")
        .expect("join")
        .expect("granted");
    assert!(fence > 0);
    // Cancelling it again: nothing is queued under that id.
    let again = post(
        &broker,
        "/api/cancel",
        &json!({ "session": session, "request": request }),
    )
    .await;
    assert_eq!(again.status, 404, "{again:?}");

    // Ending the holder's session: its lease is revoked (its guard told), the key is free.
    let holder_session =
        listed(&broker, "hol/00").await.expect("hol/00 is held")["holders"][0]["session"]
            .as_u64()
            .expect("hol/00's holder");
    let refused = run_bounded(
        cli(&[
            "end-session",
            &holder_session.to_string(),
            "--data-dir",
            data_dir,
        ]),
        LIMIT,
    )
    .await;
    assert!(!refused.status.success(), "ended without --force");
    let ended = post(
        &broker,
        "/api/end-session",
        &json!({ "session": holder_session }),
    )
    .await;
    assert_eq!(ended.status, 200, "{ended:?}");
    assert_eq!(
        ended.json()["revoked"][0]["key"],
        json!("hol/00"),
        "{ended:?}"
    );
    let why = tokio::time::timeout(LIMIT, held.lost())
        .await
        .expect("the holder was told");
    assert!(why.to_string().contains("operator"), "{why}");
    let other = broker.client().await;
    let taken = other.try_lock("hol/00").await.expect("hol/00 is free");
    assert!(taken.fence() > held.fence());
    let gone = post(
        &broker,
        "/api/end-session",
        &json!({ "session": holder_session }),
    )
    .await;
    assert_eq!(gone.status, 404, "the session is closed: {gone:?}");
}

/// Finding 12: keys that are not UTF-8 are listed with `key_b64`, page to the end with the
/// opaque cursor (before: the lossy cursor returned the same page forever), and are released
/// by their bytes; the empty key is granted and can be released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_page_to_the_end_and_the_empty_key_can_be_released() {
    let broker = ops_broker();
    let client = broker.client().await;
    let keys: Vec<Vec<u8>> = (0u8..5).map(|i| vec![b'b', 0xff, 0xfe, i]).collect();
    let mut guards = Vec::new();
    for k in &keys {
        guards.push(client.lock(k.clone()).await.expect("lock a binary key"));
    }
    let empty = client.lock(Vec::new()).await.expect("lock the empty key");

    // Page one key at a time, bounded: each page must move on.
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..=keys.len() + 1 {
        let mut path = "/api/locks?limit=1&prefix_b64=".to_owned() + &STANDARD.encode(b"b");
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let page = get(&broker, &path).await;
        assert_eq!(page.status, 200, "{page:?}");
        let body = page.json();
        for l in body["locks"].as_array().expect("locks") {
            assert_eq!(l["binary"], json!(true), "{l}");
            let b = STANDARD
                .decode(l["key_b64"].as_str().expect("key_b64"))
                .expect("base64");
            seen.push(b);
        }
        match body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, keys, "every binary key once, in order");

    // Released by its bytes: the holder is told.
    let released = post(
        &broker,
        "/api/release",
        &json!({ "key_b64": STANDARD.encode(&keys[2]) }),
    )
    .await;
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(
        released.json()["revoked"][0]["fence"],
        json!(guards[2].fence().to_string())
    );
    tokio::time::timeout(LIMIT, guards[2].lost())
        .await
        .expect("the binary key's holder was told");
    // The empty key too.
    let released = post(&broker, "/api/release", &json!({ "key": "" })).await;
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(
        released.json()["revoked"][0]["fence"],
        json!(empty.fence().to_string())
    );
    tokio::time::timeout(LIMIT, empty.lost())
        .await
        .expect("the empty key's holder was told");
    // Both or neither is a bad request.
    let both = post(
        &broker,
        "/api/release",
        &json!({ "key": "a", "key_b64": "YQ==" }),
    )
    .await;
    assert_eq!(both.status, 400, "{both:?}");
}
