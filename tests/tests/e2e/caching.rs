//! Lock caching, the broker's part (issue 25): a client that asks for a cacheable lease — a
//! fence block — gets it with its block; when another client asks for the key, the broker
//! pushes `Recall` to the holder once, and the next grant of the key is above the whole block
//! once the holder gives the lease back. Driven over raw QUIC frames as a caching client would
//! send them (the SDK does not cache yet) and an ordinary SDK client as the other party.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{Acquire, Frame, Hello, Mode, Release, WaitSpec};
use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::raw::RawConn;

/// A raw session that said Hello.
async fn raw_session(broker: &Broker) -> RawConn {
    let mut c = RawConn::connect(broker.addr, &broker.ca()).await;
    c.send_frame(&Frame::Hello(Hello {
        token: None,
        client: "caching-client".into(),
    }))
    .await;
    match c.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Welcome(_)) => c,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacheable_lease_is_recalled_when_another_client_asks_and_later_fences_pass_its_block() {
    let broker = Broker::start();
    let key = Bytes::from_static(b"cache/k");
    let mut holder = raw_session(&broker).await;
    holder
        .send_frame(&Frame::Acquire(Acquire {
            id: 1,
            key: key.clone(),
            mode: Mode::Exclusive,
            ttl_ms: 30_000,
            wait: WaitSpec::NoWait,
            owner: Bytes::from_static(b"cache-holder"),
            ticket: 0,
            fence_block: 16,
        }))
        .await;
    let granted = match holder.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => g,
        other => panic!("expected Granted, got {other:?}"),
    };
    assert_eq!(granted.fence_block, 16, "the block asked for");

    // Another client tries the key: refused, and the holder is asked to give it back.
    let other = broker.client().await;
    assert_eq!(other.try_lock("cache/k").await.err(), Some(Error::Busy));
    match holder.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Recall { key: k, fence }) => {
            assert_eq!((k, fence), (key.clone(), granted.fence));
        }
        other => panic!("expected Recall, got {other:?}"),
    }
    // A waiter queues; the lease was recalled already: no second recall.
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move { other.lock("cache/k").wait(Duration::from_secs(20)).await })
    };
    lockbroker_tests::util::wait_for_waiters(&broker.client().await, "cache/k", 1).await;
    assert_eq!(holder.next_frame(Duration::from_millis(300)).await, None);

    // The holder's local work is done: it gives the lease back; the waiter gets a fence above
    // every token of the block.
    holder
        .send_frame(&Frame::Release(Release {
            id: 2,
            key: key.clone(),
            fence: granted.fence,
            ack: true,
            secret: granted.secret,
        }))
        .await;
    assert_eq!(
        holder.next_frame(Duration::from_secs(5)).await,
        Some(Frame::Ok { id: 2 })
    );
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is granted")
        .expect("waiter task")
        .expect("waiter lock");
    assert!(
        guard.fence() >= granted.fence + 16,
        "fence {} inside the recalled lease's block [{}, {})",
        guard.fence(),
        granted.fence,
        granted.fence + 16
    );
    guard.unlock().await.expect("unlock");
}

/// An ordinary lease (no block) is never recalled: its holder is not a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_lease_is_not_recalled() {
    let broker = Broker::start();
    let mut holder = raw_session(&broker).await;
    holder
        .send_frame(&Frame::Acquire(Acquire {
            id: 1,
            key: Bytes::from_static(b"plain/k"),
            mode: Mode::Exclusive,
            ttl_ms: 30_000,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 0,
        }))
        .await;
    match holder.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => assert_eq!(g.fence_block, 1),
        other => panic!("expected Granted, got {other:?}"),
    }
    let other = broker.client().await;
    assert_eq!(other.try_lock("plain/k").await.err(), Some(Error::Busy));
    assert_eq!(holder.next_frame(Duration::from_millis(500)).await, None);
}
