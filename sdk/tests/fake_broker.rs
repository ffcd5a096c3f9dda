//! The connection layer against a scripted in-process broker: answers routed by request id,
//! cancel on a dropped acquire, a grant for an abandoned acquire released (and ordered before
//! the next acquire of its key), requests woken when the connection ends, reconnecting; an
//! answer the client cannot read (too large, malformed) fails its request, not the connection.

use std::future::{Future, IntoFuture, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use lockbroker_proto::{ErrorCode, Frame, Granted, Limits, LockInfo, Welcome, decode, encode};
use lockbroker_sdk::{Client, Error};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A self-signed certificate for `localhost` (the client runs in `insecure_dev_mode`).
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUawtGO+D3r+P8pez+05pr7m5yUv8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTE2MDIwNFoYDzIxMjYxMTAx
MTYwMjA0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARY8uHJ3sZ17cP5SsizQvoMH9TYWVVg923QJ0gI42C4zUS0t+L580UZ
wUCjjW3V+MUzWdQKALIMr8r4Y3Gt8njjo28wbTAdBgNVHQ4EFgQUznk15dDoFl+3
e6GOQ4pkzqYIcp4wHwYDVR0jBBgwFoAUznk15dDoFl+3e6GOQ4pkzqYIcp4wDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAMv3m6EPCVcxl3eZvTA3fb/HWpFddbI0ozukFNjiQlV+AiEA
qvLJY6uuo+AsMjRulIoF2N7SdH3YmNMm7kI9RTRoXqU=
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgj/wQDZaDmmUkraI0
LTriOMyU4/praoJarCjQPHQIjC6hRANCAARY8uHJ3sZ17cP5SsizQvoMH9TYWVVg
923QJ0gI42C4zUS0t+L580UZwUCjjW3V+MUzWdQKALIMr8r4Y3Gt8njj
-----END PRIVATE KEY-----
";

/// How long a scripted step may wait for the client.
const STEP: Duration = Duration::from_secs(5);

/// A broker that only says Welcome; each test scripts the rest through [`Session`]s.
struct Fake {
    addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    _endpoint: quinn::Endpoint,
}

/// One accepted client connection and its control stream.
struct Session {
    quic: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Fake {
    async fn start() -> Fake {
        let certs = CertificateDer::pem_slice_iter(CERT.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tls.alpn_protocols = vec![lockbroker_proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, sessions) = mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            let mut next_session = 1;
            while let Some(incoming) = accepting.accept().await {
                let Ok(quic) = incoming.await else { continue };
                let Ok((send, recv)) = quic.accept_bi().await else {
                    continue;
                };
                let mut s = Session {
                    quic,
                    send,
                    recv,
                    buf: BytesMut::new(),
                };
                assert!(matches!(s.next().await, Frame::Hello(_)));
                s.send(Frame::Welcome(Welcome {
                    session: next_session,
                    broker_id: 1,
                    epoch: 1,
                    max_frame: 64 * 1024,
                    max_key: 1024,
                    default_ttl_ms: 30_000,
                    principal: "anonymous".into(),
                }))
                .await;
                next_session += 1;
                if tx.send(s).is_err() {
                    return;
                }
            }
        });
        Fake {
            addr,
            sessions,
            _endpoint: endpoint,
        }
    }

    async fn client(&self) -> Client {
        self.client_at(&format!("quic://{}", self.addr)).await
    }

    async fn client_at(&self, url: &str) -> Client {
        Client::builder()
            .broker(url)
            .insecure_dev_mode()
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("connect to the fake broker")
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(STEP, self.sessions.recv())
            .await
            .expect("a client connects")
            .expect("the fake broker runs")
    }
}

impl Session {
    /// The next frame from the client.
    async fn next(&mut self) -> Frame {
        let limits = Limits::default();
        loop {
            if let Some((frame, n)) = decode(&self.buf, &limits).expect("a well-formed frame") {
                self.buf.advance(n);
                return frame;
            }
            let read = tokio::time::timeout(STEP, self.recv.read_buf(&mut self.buf))
                .await
                .expect("the client sends a frame in time");
            assert!(read.expect("stream open") > 0, "client closed the stream");
        }
    }

    /// Asserts the client sends nothing for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(frame) = tokio::time::timeout(d, self.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        encode(&frame, &mut out);
        self.send.write_all(&out).await.unwrap();
    }

    /// Writes raw bytes (a frame the client may not be able to read).
    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Expects an `Inspect`; returns its request id.
    async fn inspect(&mut self) -> u64 {
        match self.next().await {
            Frame::Inspect { id, .. } => id,
            other => panic!("expected Inspect, got {other:?}"),
        }
    }

    async fn acquire(&mut self) -> lockbroker_proto::Acquire {
        match self.next().await {
            Frame::Acquire(a) => a,
            other => panic!("expected Acquire, got {other:?}"),
        }
    }

    async fn grant(&mut self, id: u64, fence: u64, rewritten: Option<&'static str>) {
        self.send(Frame::Granted(Granted {
            id,
            fence,
            ttl_ms: 30_000,
            rewritten: rewritten.map(|k| Bytes::from_static(k.as_bytes())),
            secret: Default::default(),
            fence_block: 1,
        }))
        .await;
    }

    /// Expects a fire-and-forget release of `key` with `fence`.
    async fn released(&mut self, key: &str, fence: u64) {
        match self.next().await {
            Frame::Release(r) => {
                assert_eq!((&r.key[..], r.fence, r.ack), (key.as_bytes(), fence, false));
            }
            other => panic!("expected Release of {key} fence {fence}, got {other:?}"),
        }
    }
}

type Acquiring = lockbroker_sdk::LockFuture;

/// Polls an acquire once, which sends it, and leaves it pending.
async fn start(acquire: lockbroker_sdk::LockRequest) -> Acquiring {
    let mut fut = acquire.into_future();
    poll_fn(|cx| {
        assert!(
            Pin::new(&mut fut).poll(cx).is_pending(),
            "answered without a broker answer"
        );
        Poll::Ready(())
    })
    .await;
    fut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_routed_by_request_id() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;
    // A burst of concurrent requests (queued and coalesced by the writer task), answered in
    // reverse order.
    let asks: Vec<_> = (0..32)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.inspect(format!("key/{i}")).await })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..32 {
        match s.next().await {
            Frame::Inspect { id, key } => seen.push((id, key)),
            other => panic!("expected Inspect, got {other:?}"),
        }
    }
    for (id, key) in seen.into_iter().rev() {
        let waiters = key[4..].iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'));
        s.send(Frame::LockInfo(LockInfo {
            id,
            key,
            holders: Vec::new(),
            holders_total: 0,
            waiters,
            blocked_ms: 0,
            position: 0,
        }))
        .await;
    }
    for (i, ask) in asks.into_iter().enumerate() {
        let info = ask.await.unwrap().unwrap();
        assert_eq!(info.key, format!("key/{i}"));
        assert_eq!(info.waiters, i as u32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_crossing_the_cancel_is_released_and_does_not_hold_back_the_next_acquire() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;

    let first = start(client.lock("k")).await;
    let a1 = s.acquire().await;
    drop(first);
    assert_eq!(s.next().await, Frame::Cancel { id: a1.id });

    // Ownership is per lease: acquiring the key again goes out at once, unresolved abandoned
    // acquire or not (it queues behind it on the broker)...
    let again = tokio::spawn({
        let c = client.clone();
        async move { c.lock("k").await }
    });
    let a2 = s.acquire().await;
    assert_eq!(&a2.key[..], b"k");
    // ...and the broker granted the abandoned one before reading the cancel: it is given back.
    s.grant(a1.id, 7, None).await;
    s.released("k", 7).await;
    s.grant(a2.id, 8, None).await;
    let guard = again.await.unwrap().expect("second acquire granted");
    assert_eq!(guard.fence(), 8);

    // Dropping the guard releases fire-and-forget.
    drop(guard);
    s.released("k", 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_abandoned_acquire_is_resolved_without_a_release() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;

    let first = start(client.lock("k")).await;
    let a1 = s.acquire().await;
    drop(first);
    assert_eq!(s.next().await, Frame::Cancel { id: a1.id });
    let again = tokio::spawn({
        let c = client.clone();
        async move { c.lock("k").no_wait().await }
    });
    let a2 = s.acquire().await;
    s.send(Frame::Error {
        id: a1.id,
        code: ErrorCode::Cancelled,
        message: "cancelled".into(),
    })
    .await;
    s.send(Frame::Error {
        id: a2.id,
        code: ErrorCode::Busy,
        message: "held".into(),
    })
    .await;
    assert_eq!(again.await.unwrap().unwrap_err(), Error::Busy);
    // The swallowed `Cancelled` answer released nothing.
    s.quiet_for(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_arrived_before_the_acquire_was_dropped_is_released() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;

    let acquiring = start(client.lock("k")).await;
    let a = s.acquire().await;
    // Granted (under a policy-rewritten key) while nobody polls the acquire.
    s.grant(a.id, 9, Some("tenant/k")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(acquiring);
    s.released("tenant/k", 9).await;
    // Answered: nothing to cancel.
    s.quiet_for(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_the_connection_wakes_every_waiter_and_the_next_call_reconnects() {
    let mut fake = Fake::start().await;
    // By name: resolved again on the reconnect.
    let client = fake
        .client_at(&format!("quic://localhost:{}", fake.addr.port()))
        .await;
    let mut s = fake.session().await;
    assert_eq!(client.session_id().await.unwrap(), 1);

    let waiting = tokio::spawn({
        let c = client.clone();
        async move { c.lock("w").await }
    });
    s.acquire().await;
    // An abandoned acquire, and a new acquire of its key queued behind it.
    let abandoned = start(client.lock("k")).await;
    let a = s.acquire().await;
    drop(abandoned);
    assert_eq!(s.next().await, Frame::Cancel { id: a.id });
    let held_back = tokio::spawn({
        let c = client.clone();
        async move { c.lock("k").await }
    });
    s.acquire().await;

    s.quic.close(0u32.into(), b"bye");
    let woken = tokio::time::timeout(STEP, waiting).await.unwrap().unwrap();
    assert!(matches!(woken, Err(Error::Disconnected(_))), "{woken:?}");
    let woken = tokio::time::timeout(STEP, held_back)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(woken, Err(Error::Disconnected(_))), "{woken:?}");

    let session = tokio::spawn({
        let c = client.clone();
        async move { c.session_id().await }
    });
    let _s2 = fake.session().await;
    assert_eq!(session.await.unwrap().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ended_push_makes_its_guard_lost_at_once() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;
    let (first, second) = (
        tokio::spawn({
            let c = client.clone();
            async move { c.lock("a").no_renew().await }
        }),
        tokio::spawn({
            let c = client.clone();
            async move { c.lock("b").no_renew().await }
        }),
    );
    let (x, y) = (s.acquire().await, s.acquire().await);
    let (ida, idb) = if &x.key[..] == b"a" {
        (x.id, y.id)
    } else {
        (y.id, x.id)
    };
    s.grant(ida, 7, None).await;
    s.grant(idb, 8, None).await;
    let a = first.await.unwrap().expect("a granted");
    let b = second.await.unwrap().expect("b granted");
    // 30 s leases: only the push can end `a` now, and it must not touch `b`.
    s.send(Frame::LeaseEnded {
        key: Bytes::from_static(b"a"),
        fence: 7,
        reason: lockbroker_proto::EndReason::Mirror,
        message: "held in Redis by someone else".into(),
    })
    .await;
    let lost = tokio::time::timeout(STEP, a.lost())
        .await
        .expect("a lost at once");
    assert!(
        matches!(&lost, Error::Lost(why) if why.contains("Redis")),
        "{lost:?}"
    );
    assert!(a.is_lost());
    assert!(!b.is_lost());
}

/// A grant after a long wait is renewed before it is handed out; if the broker no longer has
/// the lease by then (the process was paused between the grant and the renewal), `lock()`
/// says `Lost` — it used to return a puzzling `NotLocked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_gone_before_its_first_renewal_is_reported_lost() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;
    let mut locking = tokio::spawn({
        let c = client.clone();
        async move { c.lock("k").ttl(Duration::from_millis(1000)).await }
    });
    let a = s.acquire().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.send(Frame::Granted(Granted {
        id: a.id,
        fence: 3,
        ttl_ms: 1000,
        rewritten: None,
        secret: Default::default(),
        fence_block: 1,
    }))
    .await;
    // The guard's watchdog may renew at once too (a third of the TTL is gone): every renewal
    // is answered that the lease is gone, until `lock()` answers.
    let r = loop {
        tokio::select! {
            r = &mut locking => break r.unwrap(),
            frame = s.next() => match frame {
                Frame::Extend(e) => {
                    s.send(Frame::Error {
                        id: e.id,
                        code: ErrorCode::NotLocked,
                        message: "key is not locked".into(),
                    })
                    .await
                }
                // The guard `lock()` drops on the way out releases (fire-and-forget).
                Frame::Release(r) => assert_eq!((r.fence, r.ack), (3, false)),
                other => panic!("expected a renewal, got {other:?}"),
            },
        }
    };
    assert!(matches!(&r, Err(Error::Lost(_))), "{:?}", r.err());
}

/// One answer the client cannot read — larger than the frame limit the broker announced, or
/// malformed — fails the request it answers, and only that: the connection, and with it the
/// leases of its session, stay. (It used to end the connection, orphaning every lease of the
/// session until its TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_answer_fails_its_request_not_the_connection() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;
    // A lease of this session, which must outlive the bad answers.
    let locking = tokio::spawn({
        let c = client.clone();
        async move { c.lock("held").no_renew().await }
    });
    let a = s.acquire().await;
    s.grant(a.id, 5, None).await;
    let guard = locking.await.unwrap().expect("granted");

    // Oversized: a well-formed answer of 70 KB, beyond the 64 KiB the Welcome announced.
    let asking = tokio::spawn({
        let c = client.clone();
        async move { c.inspect("big").await }
    });
    let id = s.inspect().await;
    s.send(Frame::error(id, ErrorCode::Denied, "x".repeat(70_000)))
        .await;
    let err = tokio::time::timeout(STEP, asking)
        .await
        .expect("the request fails in time")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("exceeds the limit of 65536 bytes")),
        "{err:?}"
    );

    // Malformed: an answer with one byte too many.
    let asking = tokio::spawn({
        let c = client.clone();
        async move { c.inspect("bad").await }
    });
    let id = s.inspect().await;
    let mut bad = Vec::new();
    encode(&Frame::Pong { id }, &mut bad);
    bad.push(0);
    bad[0] += 1;
    s.send_bytes(&bad).await;
    let err = tokio::time::timeout(STEP, asking)
        .await
        .expect("the request fails in time")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("trailing bytes")),
        "{err:?}"
    );

    // A frame of an unknown kind names no request: skipped, and nothing fails.
    s.send_bytes(&[2, 0, 0, 0, lockbroker_proto::PROTOCOL_VERSION, 200])
        .await;

    // The same connection still carries requests: the lease is renewed on it.
    let (renewed, ()) = tokio::join!(guard.extend(Duration::from_secs(30)), async {
        match s.next().await {
            Frame::Extend(e) => {
                assert_eq!(e.fence, 5);
                s.send(Frame::Extended {
                    id: e.id,
                    ttl_ms: 30_000,
                })
                .await;
            }
            other => panic!("expected Extend, got {other:?}"),
        }
    });
    renewed.expect("renewed on the same connection");
    assert!(!guard.is_lost());
    // ...and answers: a truncated holders list says how many holders there are.
    let asking = tokio::spawn({
        let c = client.clone();
        async move { c.inspect("wide").await }
    });
    let id = s.inspect().await;
    s.send(Frame::LockInfo(LockInfo {
        id,
        key: Bytes::from_static(b"wide"),
        holders: vec![lockbroker_proto::HolderInfo {
            session: 9,
            fence: 11,
            mode: lockbroker_proto::Mode::Shared,
            remaining_ms: 1000,
            owner: Bytes::new(),
            cached: false,
        }],
        holders_total: 3000,
        waiters: 0,
        blocked_ms: 0,
        position: 0,
    }))
    .await;
    let info = asking.await.unwrap().expect("inspect answered");
    assert_eq!((info.holders.len(), info.holders_total), (1, 3000));
    assert!(info.is_locked() && info.is_truncated());
    assert_eq!(info.owner(), None);
    assert_eq!(client.session_id().await.unwrap(), 1, "no reconnect");
    assert!(fake.sessions.try_recv().is_err(), "no second connection");
}

/// A length prefix no answer could have (beyond the SDK's resynchronisation bound) means the
/// stream cannot be followed any further: the connection ends and its requests are woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_length_prefix_ends_the_connection() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;
    let asking = tokio::spawn({
        let c = client.clone();
        async move { c.inspect("k").await }
    });
    let id = s.inspect().await;
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[lockbroker_proto::PROTOCOL_VERSION, 17]);
    bytes.extend_from_slice(&id.to_le_bytes());
    s.send_bytes(&bytes).await;
    let err = tokio::time::timeout(STEP, asking)
        .await
        .expect("the request ends in time")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
}

/// `extend` while the watchdog's renewal is in flight: the two never cross. The extend waits
/// for the renewal's answer before sending its own, so the renewal's older TTL cannot land
/// after it and undo it (an e2e run saw `ttl()` back at 2 s right after `extend(20 s)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_never_crosses_a_renewal_in_flight() {
    let mut fake = Fake::start().await;
    let client = fake.client().await;
    let mut s = fake.session().await;
    let locking = tokio::spawn({
        let c = client.clone();
        async move { c.lock("k").ttl(Duration::from_millis(900)).await }
    });
    let a = s.acquire().await;
    s.send(Frame::Granted(Granted {
        id: a.id,
        fence: 4,
        ttl_ms: 900,
        rewritten: None,
        secret: Default::default(),
        fence_block: 1,
    }))
    .await;
    let guard = locking.await.unwrap().expect("granted");
    // The watchdog renews after a third of the TTL; hold its answer back.
    let renewal = match s.next().await {
        Frame::Extend(e) => e,
        other => panic!("expected the watchdog's renewal, got {other:?}"),
    };
    assert_eq!(renewal.ttl_ms, 900);
    let guard = std::sync::Arc::new(guard);
    let extending = tokio::spawn({
        let g = guard.clone();
        async move { g.extend(Duration::from_secs(20)).await }
    });
    // While the renewal is unanswered, the extend is not sent.
    s.quiet_for(Duration::from_millis(150)).await;
    s.send(Frame::Extended {
        id: renewal.id,
        ttl_ms: 900,
    })
    .await;
    let extend = match s.next().await {
        Frame::Extend(e) => e,
        other => panic!("expected the extend, got {other:?}"),
    };
    assert_eq!(extend.ttl_ms, 20_000);
    s.send(Frame::Extended {
        id: extend.id,
        ttl_ms: 20_000,
    })
    .await;
    extending.await.unwrap().expect("extended");
    assert_eq!(guard.ttl(), Duration::from_secs(20));
}
