//! The status page in a real browser: headless Chromium driven through chromedriver
//! (`chromedriver.rs`) watches a key appear with its holder when an SDK client locks it and
//! vanish when it unlocks; the page is saved as `target/artifacts/status-page.png`.

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

/// Polls the page's text until `check` holds (bounded); returns the text.
async fn page_until(
    page: &fantoccini::Client,
    what: &str,
    limit: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let text = page
            .find(Locator::Id("locks"))
            .await
            .expect("the locks section")
            .text()
            .await
            .expect("its text");
        if check(&text) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; the locks section shows: {text:?}"
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

    page.goto(&format!("http://{admin}/"))
        .await
        .expect("open the status page");
    let shown = page_until(&page, "the key, its holder and fence", limit, |t| {
        t.contains("billing/nightly-export") && t.contains("anonymous") && t.contains(&fence)
    })
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
    let (_waiter_client, second) = waiter.await.expect("join");
    second
        .expect("the waiter got the key")
        .unlock()
        .await
        .expect("unlock");
    page_until(&page, "the key to vanish", limit, |t| {
        !t.contains("billing/nightly-export") && t.contains("no key is held")
    })
    .await;
    page.close().await.expect("end the WebDriver session");
}
