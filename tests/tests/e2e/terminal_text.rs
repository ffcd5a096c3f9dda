//! Issue 23 finding 10, terminal injection: owner labels and keys could carry ESC/OSC/BEL and
//! newlines, and `lockbroker locks`, `inspect` and `lock`'s waiting line printed them raw — a
//! label with a newline forged a `root / ops-approved` holder row. Now a label holding a
//! control or bidi-override character is refused at decode (and by the SDK before sending),
//! and every CLI output escapes keys, labels and principals.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{Acquire, ErrorCode, Frame, Mode, WaitSpec};
use lockbroker_sdk::Error;
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::util::run_bounded;
use lockbroker_tests::{Broker, cli, lockbroker_bin};

const LIMIT: Duration = Duration::from_secs(10);

/// An attacker's client (raw frames, no SDK) labels its lease with a forged second row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_with_control_characters_is_refused_at_decode() {
    let b = Broker::start();
    let mut raw = RawConn::hello(b.addr, &b.ca()).await;
    raw.send_frame(&Frame::Acquire(Acquire {
        id: 1,
        key: Bytes::from_static(b"tt/label"),
        mode: Mode::Exclusive,
        ttl_ms: 30_000,
        wait: WaitSpec::NoWait,
        owner: Bytes::from_static(b"me\nroot / ops-approved\x1b[2K"),
        ticket: 0,
        fence_block: 1,
    }))
    .await;
    match raw.next_frame(LIMIT).await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Malformed, "{message}");
            assert!(message.contains("control"), "{message}");
        }
        other => panic!("a forged label was answered with {other:?}"),
    }
    let c = b.client().await;
    let info = c.inspect("tt/label").await.expect("inspect");
    assert!(info.holders.is_empty(), "{info:?}");
    // The SDK refuses the same label before sending it.
    match c.lock("tt/label").owner("me\nroot").await {
        Err(Error::Invalid(why)) => assert!(why.contains("control"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// Keys are bytes and may hold anything; the CLI shows them escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_hostile_keys_escaped() {
    use lockbroker_tests::util::eventually;
    let b = Broker::start();
    let c = b.client().await;
    let key = "tt/\x1b]0;pwned\x07\nroot / ops-approved";
    let _g = c
        .lock(key)
        .ttl(Duration::from_secs(60))
        .await
        .expect("a key may hold any bytes");
    let url = format!("http://{}", b.admin.expect("admin"));
    let listed = eventually("the key listed", LIMIT, || async {
        let mut cmd = std::process::Command::new(lockbroker_bin());
        cmd.args(["locks", "--prefix", "tt/", "--admin", &url]);
        let out = run_bounded(cmd, LIMIT).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("pwned").then_some(text)
    })
    .await;
    for shown in [listed, {
        let mut cmd = cli(&b);
        cmd.args(["inspect", key]);
        String::from_utf8_lossy(&run_bounded(cmd, LIMIT).await.stdout).into_owned()
    }] {
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "raw control characters printed: {shown:?}"
        );
        assert!(shown.contains("\\u{1b}]0;pwned\\u{7}\\nroot"), "{shown}");
        assert!(
            !shown.lines().any(|l| l.starts_with("root / ops-approved")),
            "a forged row: {shown}"
        );
    }
}
