//! Every answer the broker counts reaches a client that reads (issue 23, finding 11): clients
//! that pipeline thousands of acquires through a small receive window — so the broker's stream
//! is blocked by flow control most of the time — get every `Granted`, and none of them is
//! closed as a slow reader while it reads.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{Acquire, Frame, Limits, Mode, WaitSpec, decode, encode};
use lockbroker_tests::Broker;
use lockbroker_tests::raw::RawConn;

const SESSIONS: usize = 4;
const ACQUIRES: u64 = 20_000;
const PER_WRITE: u64 = 500;

/// A session's whole pipeline: writes `ACQUIRES` acquires of its own keys in writes of
/// `PER_WRITE` while reading answers; returns how many `Granted` arrived (bounded wait).
async fn pipeline(c: RawConn, session: usize) -> (u64, Option<String>) {
    let RawConn {
        conn,
        mut send,
        mut recv,
        ..
    } = c;
    let writer = tokio::spawn(async move {
        let mut id = 1u64;
        while id <= ACQUIRES {
            let mut batch = Vec::new();
            for _ in 0..PER_WRITE.min(ACQUIRES - id + 1) {
                let frame = Frame::Acquire(Acquire {
                    id,
                    key: Bytes::from(format!("answers/{session}/{id}")),
                    mode: Mode::Exclusive,
                    ttl_ms: 120_000,
                    wait: WaitSpec::NoWait,
                    owner: Bytes::new(),
                });
                encode(&frame, &mut batch);
                id += 1;
            }
            if send.write_all(&batch).await.is_err() {
                return send;
            }
        }
        send
    });
    let limits = Limits {
        max_frame: 1 << 20,
        max_key: 1 << 20,
    };
    let mut buf = Vec::new();
    let mut granted = 0u64;
    let mut other = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while granted < ACQUIRES && other.is_none() {
        while let Ok(Some((f, n))) = decode(&buf, &limits) {
            buf.drain(..n);
            match f {
                Frame::Granted(_) => granted += 1,
                f => other = Some(format!("{f:?}")),
            }
        }
        if granted == ACQUIRES || other.is_some() {
            break;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, recv.read(&mut chunk)).await {
            Ok(Ok(Some(n))) => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => {
                other = Some(format!("the stream ended: {:?}", conn.close_reason()));
            }
            Err(_) => break,
        }
    }
    let _send = writer.await;
    conn.close(0u32.into(), b"done");
    (granted, other)
}

/// The user's action: four clients each pipeline 20,000 acquires and read the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_acquires_through_a_small_window_all_get_their_answers() {
    let b = Broker::start_with_config("[limits]\nmax_leases_per_session = 100000\n");
    let mut tasks = Vec::new();
    for session in 0..SESSIONS {
        let mut transport = quinn::TransportConfig::default();
        // Small windows: the broker's control stream is blocked by flow control most of the
        // time, so its writer waits for the stream while the read loop keeps answering.
        transport.stream_receive_window(8_192u32.into());
        transport.receive_window(16_384u32.into());
        let c = RawConn::hello_with(b.addr, &b.ca(), Some(transport)).await;
        tasks.push(tokio::spawn(pipeline(c, session)));
    }
    for (session, t) in tasks.into_iter().enumerate() {
        let (granted, other) = t.await.expect("session task");
        assert!(
            other.is_none(),
            "session {session}: an answer other than Granted after {granted}: {other:?}"
        );
        assert_eq!(
            granted, ACQUIRES,
            "session {session}: {granted} of {ACQUIRES} grants arrived within 90 s"
        );
    }
}
