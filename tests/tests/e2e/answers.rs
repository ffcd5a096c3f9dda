//! Every answer the broker counts reaches a client that reads (issue 23, finding 11): clients
//! that pipeline thousands of acquires through a small receive window — so the broker's stream
//! is blocked by flow control most of the time — get every `Granted`, and none of them is
//! closed as a slow reader while it reads.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_tests::Broker;
use lockbroker_tests::raw::RawConn;

const SESSIONS: usize = 4;
const ACQUIRES: usize = 20_000;
const PER_WRITE: usize = 500;

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
        let keys = (1..=ACQUIRES)
            .map(|id| Bytes::from(format!("answers/{session}/{id}")))
            .collect();
        tasks.push(tokio::spawn(c.pipeline_acquires(
            keys,
            PER_WRITE,
            120_000,
            Duration::from_secs(90),
        )));
    }
    for (session, t) in tasks.into_iter().enumerate() {
        let p = t.await.expect("session task");
        p.conn.close(0u32.into(), b"done");
        let (granted, other) = (p.granted, p.other);
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
