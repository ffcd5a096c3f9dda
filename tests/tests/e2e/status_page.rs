//! The status page in a real browser: headless Chromium driven through chromedriver
//! (`chromedriver.rs`) watches a key appear with its holder when an SDK client locks it and
//! vanish when it unlocks; the page is saved as `target/artifacts/status-page.png`. On a
//! large table (issue 23, finding 4) the page polls every 5 s instead of every second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use lockbroker_tests::Broker;

use crate::chromedriver::ChromeDriver;

/// `target/` of this build (the test binary lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<exe>")
        .to_path_buf()
}

/// Polls the text of the page's element `id` until `check` holds (bounded); returns it.
async fn text_until(
    page: &fantoccini::Client,
    id: &str,
    what: &str,
    limit: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let text = page
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("the page's #{id}: {e}"))
            .text()
            .await
            .expect("its text");
        if check(&text) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; #{id} shows: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_held_key_and_its_holder_then_not() {
    let broker = Broker::start();
    let admin = broker.admin.expect("the admin address in the banner");
    let driver = ChromeDriver::start();
    let page = driver.session().await;
    let limit = Duration::from_secs(20);

    let client = broker.client().await;
    let guard = client
        .lock("billing/nightly-export")
        .ttl(Duration::from_secs(30))
        .await
        .expect("lock");
    let fence = guard.fence().to_string();
    // A second session waits, so the page has a waiter to show.
    let waiter_client = broker.client().await;
    let waiter = tokio::spawn(async move {
        let r = waiter_client
            .lock("billing/nightly-export")
            .wait(Duration::from_secs(60))
            .await;
        (waiter_client, r)
    });

    // A client that caches its locks keeps another key after its unlock: shown as cached.
    let cacher = broker
        .client_builder()
        .cache_locks(Duration::from_secs(60))
        .connect()
        .await
        .expect("connect a caching client");
    cacher
        .lock("billing/rates")
        .await
        .expect("lock")
        .unlock()
        .await
        .expect("unlock");

    page.goto(&format!("http://{admin}/"))
        .await
        .expect("open the status page");
    let shown = text_until(
        &page,
        "locks",
        "the key, its holder and fence, and the cached key",
        limit,
        |t| {
            t.contains("billing/nightly-export")
                && t.contains("anonymous")
                && t.contains(&fence)
                && t.contains("billing/rates")
                && t.contains("exclusive · cached")
        },
    )
    .await;
    assert!(shown.contains("billing/"), "grouped by prefix: {shown}");
    // Let one more refresh draw rates and the chart, then keep a picture.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let png = page.screenshot().await.expect("a screenshot");
    let dir = target_dir().join("artifacts");
    std::fs::create_dir_all(&dir).expect("target/artifacts");
    let path = dir.join("status-page.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    eprintln!("status page screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    guard.unlock().await.expect("unlock");
    // The caching client goes: its cached lease goes back.
    cacher.close().await;
    let (_waiter_client, second) = waiter.await.expect("join");
    second
        .expect("the waiter got the key")
        .unlock()
        .await
        .expect("unlock");
    text_until(&page, "locks", "the key to vanish", limit, |t| {
        !t.contains("billing/nightly-export") && t.contains("no key is held")
    })
    .await;
    page.close().await.expect("end the WebDriver session");
}

/// The wait between polls the page shows ("updated 2:23:22 PM · every 2 s" → 2).
fn poll_seconds(updated: &str) -> Option<u64> {
    let (_, after) = updated.split_once("every ")?;
    after.strip_suffix(" s")?.parse().ok()
}

/// An operator opens the status page of a broker holding 100,001 keys: the page says it
/// refreshes every 5 s or more (a small table: under 5 s, every second when polls are quick), so open pages do not scan a big table
/// every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_backs_off_on_a_large_table() {
    use bytes::Bytes;
    use lockbroker_tests::raw::RawConn;
    let broker = Broker::start_with_config("[limits]\nmax_leases_per_session = 200000\n");
    let admin = broker.admin.expect("the admin address in the banner");
    let driver = ChromeDriver::start();
    let page = driver.session().await;
    let limit = Duration::from_secs(20);
    page.goto(&format!("http://{admin}/"))
        .await
        .expect("open the status page");
    // A slow poll (a loaded machine) stretches the wait too (5× what the poll took), so the
    // small table is shown by a wait under 5 s, the large one by a wait of at least 5 s.
    text_until(&page, "updated", "a poll on the small table", limit, |t| {
        poll_seconds(t).is_some_and(|s| s < 5)
    })
    .await;

    let keys = (0..100_001)
        .map(|i| Bytes::from(format!("big/{i:06}")))
        .collect();
    let raw = RawConn::hello(broker.addr, &broker.ca()).await;
    let held = raw
        .pipeline_acquires(keys, 1000, 600_000, Duration::from_secs(60))
        .await;
    assert_eq!(held.granted, 100_001, "{:?}", held.other);
    text_until(&page, "updated", "the page to back off", limit, |t| {
        poll_seconds(t).is_some_and(|s| s >= 5)
    })
    .await;
    page.close().await.expect("end the WebDriver session");
}
