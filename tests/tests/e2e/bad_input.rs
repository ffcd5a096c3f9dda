//! Hostile and broken input: garbage bytes, oversized keys and frames, unknown protocol
//! versions and out-of-order frames on raw QUIC connections each get one `Error` frame and a
//! closed connection, never a crash, while well-behaved SDK clients carry on. The SDK refuses
//! oversized keys itself, and refuses to connect with a missing, broken or wrong CA.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{
    Acquire, ErrorCode, Frame, Hello, Mode, PROTOCOL_VERSION, WaitSpec, encode,
};
use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::util::inspect;

const LIMIT: Duration = Duration::from_secs(10);

/// Expects a connection-level `Error` frame with one of `codes`, then the broker closing the
/// connection. Returns the error message.
async fn expect_fatal(conn: &mut RawConn, codes: &[ErrorCode], what: &str) -> String {
    let message = match conn.next_frame(LIMIT).await {
        Some(Frame::Error { id, code, message }) => {
            assert!(
                codes.contains(&code),
                "{what}: got code {code:?} ({message}), expected one of {codes:?}"
            );
            assert_eq!(id, 0, "{what}: a connection-level error carries id 0");
            assert!(code.is_fatal(), "{what}: {code:?} should be fatal");
            message
        }
        other => panic!("{what}: expected an Error frame, got {other:?}"),
    };
    assert!(
        conn.closed(LIMIT).await.is_some(),
        "{what}: the broker did not close the connection"
    );
    message
}

fn acquire(id: u64, key: Vec<u8>) -> Frame {
    Frame::Acquire(Acquire {
        id,
        key: Bytes::from(key),
        mode: Mode::Exclusive,
        ttl_ms: 0,
        wait: WaitSpec::NoWait,
        owner: Bytes::new(),
        ticket: 0,
        fence_block: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_an_error_frame_and_a_close_while_others_carry_on() {
    let broker = Broker::start();
    let good = broker.client().await;
    let held = good.lock("bad/held").await.expect("good client locks");

    let cases: &[(&str, &[u8], &[ErrorCode])] = &[
        (
            "unknown frame kind",
            &[3, 0, 0, 0, PROTOCOL_VERSION, 0xc8, 7],
            &[ErrorCode::Malformed],
        ),
        (
            "length shorter than a header",
            &[1, 0, 0, 0, PROTOCOL_VERSION],
            &[ErrorCode::Malformed],
        ),
        (
            "random bytes with a small length",
            b"\x06\x00\x00\x00\x2a\x99\x13\x37\x00\xff",
            &[ErrorCode::Malformed, ErrorCode::UnsupportedVersion],
        ),
        (
            "text",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[
                ErrorCode::Malformed,
                ErrorCode::UnsupportedVersion,
                ErrorCode::FrameTooLarge,
            ],
        ),
    ];
    for (what, bytes, codes) in cases {
        // Garbage as the very first bytes …
        let mut raw = RawConn::connect(broker.addr, &broker.ca()).await;
        raw.send_bytes(bytes).await;
        expect_fatal(&mut raw, codes, &format!("{what} before Hello")).await;
        // … and after a proper handshake.
        let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
        raw.send_bytes(bytes).await;
        expect_fatal(&mut raw, codes, &format!("{what} after Hello")).await;
        // The well-behaved client is unaffected.
        let g = good
            .lock(format!("bad/after-{what}"))
            .no_wait()
            .await
            .expect("good client still locks");
        g.unlock().await.expect("good client still unlocks");
    }
    // A frame whose body is cut short of its fields.
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    let mut b = Vec::new();
    encode(&acquire(1, b"k".to_vec()), &mut b);
    let short = (b.len() - 4 - 3) as u32; // drop the last 3 bytes of the body
    b.truncate(b.len() - 3);
    b[..4].copy_from_slice(&short.to_le_bytes());
    raw.send_bytes(&b).await;
    expect_fatal(&mut raw, &[ErrorCode::Malformed], "truncated Acquire").await;

    // The good client's lease survived all of it.
    let info = inspect(&good, "bad/held").await;
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].fence, held.fence());
    held.unlock().await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_key_and_frame_and_unknown_version_are_refused() {
    let broker = Broker::start();
    let good = broker.client().await;

    // A 2000-byte key (limit 1 KiB).
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    raw.send_frame(&acquire(1, vec![b'k'; 2000])).await;
    let msg = expect_fatal(&mut raw, &[ErrorCode::KeyTooLarge], "2000-byte key").await;
    assert!(msg.contains("2000"), "message should name the size: {msg}");

    // A frame of another protocol version.
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    let mut b = Vec::new();
    encode(&Frame::Ping { id: 1 }, &mut b);
    b[4] = lockbroker_proto::PROTOCOL_VERSION + 1;
    raw.send_bytes(&b).await;
    expect_fatal(
        &mut raw,
        &[ErrorCode::UnsupportedVersion],
        "next-version frame",
    )
    .await;

    // A frame announcing 10 MB: refused from its length prefix, before it is buffered.
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    let len: u32 = 10 * 1024 * 1024;
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(&[lockbroker_proto::PROTOCOL_VERSION, 3, 0, 0, 0, 0]);
    raw.send_bytes(&b).await;
    expect_fatal(&mut raw, &[ErrorCode::FrameTooLarge], "10 MB frame").await;

    // A well-formed frame on a healthy session still works after all that.
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    raw.send_frame(&Frame::Ping { id: 7 }).await;
    assert_eq!(raw.next_frame(LIMIT).await, Some(Frame::Pong { id: 7 }));
    raw.send_frame(&acquire(8, vec![b'k'; 1024])).await;
    assert!(
        matches!(raw.next_frame(LIMIT).await, Some(Frame::Granted(g)) if g.id == 8),
        "a key of exactly 1 KiB is allowed"
    );
    let g = good
        .lock("bad/fine")
        .no_wait()
        .await
        .expect("sdk client works");
    g.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_out_of_order_are_protocol_errors() {
    let broker = Broker::start();

    // A request before Hello.
    let mut raw = RawConn::connect(broker.addr, &broker.ca()).await;
    raw.send_frame(&Frame::Ping { id: 1 }).await;
    expect_fatal(&mut raw, &[ErrorCode::ProtocolOrder], "Ping before Hello").await;

    let mut raw = RawConn::connect(broker.addr, &broker.ca()).await;
    raw.send_frame(&acquire(1, b"k".to_vec())).await;
    expect_fatal(
        &mut raw,
        &[ErrorCode::ProtocolOrder],
        "Acquire before Hello",
    )
    .await;

    // Hello twice.
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    raw.send_frame(&Frame::Hello(Hello {
        token: None,
        client: "again".into(),
    }))
    .await;
    expect_fatal(&mut raw, &[ErrorCode::ProtocolOrder], "second Hello").await;

    // A frame only the broker sends.
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    raw.send_frame(&Frame::Ok { id: 3 }).await;
    expect_fatal(&mut raw, &[ErrorCode::ProtocolOrder], "client sends Ok").await;

    // A session that dies of a protocol error loses nothing it did not have, and others work.
    let good = broker.client().await;
    let g = good.try_lock("order/k").await.expect("sdk client works");
    g.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_refuses_oversized_keys_and_keeps_working() {
    let broker = Broker::start();
    let c = broker.client().await;
    let big = vec![b'x'; 2000];
    assert!(matches!(
        c.lock(big.clone()).no_wait().await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.inspect(big.clone()).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.wait_until_unlocked(big.clone()).await,
        Err(Error::Invalid(_))
    ));
    // Same connection, still healthy.
    let session = c.session_id().await.unwrap();
    let g = c
        .lock("sdk/ok")
        .no_wait()
        .await
        .expect("client still works");
    assert_eq!(inspect(&c, "sdk/ok").await.owner(), Some(session));
    assert_eq!(
        c.session_id().await.unwrap(),
        session,
        "no reconnect needed"
    );
    g.unlock().await.unwrap();

    // The SDK follows the limit the broker announces, not the protocol default.
    let small = Broker::start_with_config("[limits]\nmax_key_bytes = 16\n");
    let c = small.client().await;
    let g = c.lock(vec![b'k'; 16]).no_wait().await.expect("16-byte key");
    assert!(matches!(
        c.lock(vec![b'k'; 17]).no_wait().await,
        Err(Error::Invalid(_))
    ));
    g.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_with_a_bad_or_wrong_ca_fails_clearly() {
    let broker = Broker::start();
    let other = Broker::start();
    let tmp = lockbroker_tests::TempDir::new("ca");

    // Missing file.
    let missing = tmp.path().join("missing.pem");
    let r = broker.client_builder_with_ca(&missing).connect().await;
    match r {
        Err(Error::Invalid(m)) => assert!(m.contains("CA file"), "message: {m}"),
        other => panic!("missing CA file: {other:?}"),
    }

    // A file with no certificate in it.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    match broker.client_builder_with_ca(&junk).connect().await {
        Err(Error::Invalid(m)) => {
            assert!(m.to_lowercase().contains("certificate"), "message: {m}")
        }
        other => panic!("junk CA file: {other:?}"),
    }

    // Another broker's dev certificate: the handshake fails on the broker's certificate.
    let start = std::time::Instant::now();
    match broker.client_builder_with_ca(&other.ca()).connect().await {
        // A TLS failure, named as one (not an outage or a generic connect error).
        Err(Error::Tls(m)) => assert!(
            m.to_lowercase().contains("certificate"),
            "the error should say the certificate is not trusted: {m}"
        ),
        other => panic!("wrong CA: {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "a certificate failure should not wait for a timeout ({:?})",
        start.elapsed()
    );

    // The right CA still works.
    let c = broker.client().await;
    c.try_lock("ca/k").await.unwrap().unlock().await.unwrap();
}

/// A multi-key acquire naming more keys than allowed is refused for that request alone: the
/// connection, and the session's lease, carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_key_acquire_of_too_many_keys_is_refused_and_the_session_carries_on() {
    use lockbroker_proto::{AcquireAll, ErrorCode, Frame, WaitSpec};
    let broker = Broker::start();
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    let keys: Vec<bytes::Bytes> = (0..200).map(|i| format!("many/{i}").into()).collect();
    raw.send_frame(&Frame::AcquireAll(AcquireAll {
        id: 1,
        keys,
        ttl_ms: 0,
        wait: WaitSpec::NoWait,
        owner: bytes::Bytes::new(),
    }))
    .await;
    match raw.next_frame(std::time::Duration::from_secs(5)).await {
        Some(Frame::Error {
            id: 1,
            code,
            message,
        }) => {
            assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
            assert!(message.contains("keys in one request"), "{message}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    raw.send_frame(&Frame::Ping { id: 2 }).await;
    assert_eq!(
        raw.next_frame(std::time::Duration::from_secs(5)).await,
        Some(Frame::Pong { id: 2 })
    );
}
