//! Who the admin listener trusts, against the real binary (issue 23, findings 3 and 5), doing
//! what an attacker does:
//!
//! * a DNS-rebinding page (`Host: evil.example:PORT`), with raw requests and from headless
//!   Chromium told that `evil.example` is 127.0.0.1, reads nothing and releases nothing;
//! * a cross-origin `POST` (`Origin: http://evil.example`) is refused even with a valid token;
//! * another local user (a loopback peer without a token) cannot force-release a lock — the
//!   holder keeps it — while the token the broker wrote to `<data_dir>/admin-token` (0600) can;
//!   with `[auth] require = true` that peer cannot even list keys and principals;
//! * the status page of such a broker asks for a token and shows the locks once given one;
//! * 300 half-sent requests: the connection cap closes the excess at once, the header timeout
//!   closes the rest, and `/healthz` keeps answering from fresh connections throughout;
//!   a kept-alive connection left idle is closed after the header timeout too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use lockbroker_tests::Broker;
use lockbroker_tests::util::eventually;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chromedriver::{CHROMIUM, ChromeDriver};

const LIMIT: Duration = Duration::from_secs(10);
const OPS_TOKEN: &str = "0123456789abcdef-ops";

fn admin(broker: &Broker) -> SocketAddr {
    broker
        .admin
        .unwrap_or_else(|| panic!("no admin address in the banner {:?}", broker.banner))
}

/// The per-start token the broker wrote to its data dir.
fn token_file(broker: &Broker) -> String {
    let path = broker.data_dir.path().join("admin-token");
    let token = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned();
    assert!(token.len() >= 32, "a long random token: {token:?}");
    token
}

/// An answer: status (0 when the connection closed without one) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// Sends `head` (request line and headers, no blank line) and `body` as given, with
/// `Connection: close`; reads the whole answer (bounded).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> Answer {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let mut req = format!("{head}\r\nConnection: close\r\n");
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        // A reset counts as "no answer".
        let _ = s.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("the admin listener answered (or closed) within 10 s");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        body: body.to_owned(),
    }
}

fn release_body(key: &str) -> String {
    json!({ "key": key }).to_string()
}

/// The lock is still held by the same lease, as its holder's SDK sees it.
async fn still_held(holder: &lockbroker_sdk::Client, key: &str, fence: u64) {
    let info = holder.inspect(key.to_owned()).await.expect("inspect");
    assert_eq!(
        info.holders.first().map(|h| h.fence),
        Some(fence),
        "{key} is no longer held by fence {fence}: {info:?}"
    );
}

/// Finding 3: a page reached by DNS rebinding sends `Host: evil.example:PORT`. It gets neither
/// the API, the page, the metrics nor a release — even with a valid token, since a token could
/// be typed into the wrong tab — while the health probes still answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_host_gets_no_api_and_releases_nothing() {
    let broker = Broker::start();
    let addr = admin(&broker);
    let port = addr.port();
    let holder = broker.client().await;
    let guard = holder
        .lock("rebind/payroll")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let fence = guard.fence();
    let evil = format!("Host: evil.example:{port}");

    let listed = raw(addr, &format!("GET /api/locks HTTP/1.1\r\n{evil}"), "").await;
    assert_eq!(listed.status, 421, "{listed:?}");
    assert!(!listed.body.contains("payroll"), "{listed:?}");
    for path in ["/api/sessions", "/", "/metrics", "/status.js"] {
        let a = raw(addr, &format!("GET {path} HTTP/1.1\r\n{evil}"), "").await;
        assert_eq!(a.status, 421, "GET {path}: {a:?}");
    }
    let released = raw(
        addr,
        &format!("POST /api/release HTTP/1.1\r\n{evil}"),
        &release_body("rebind/payroll"),
    )
    .await;
    assert_eq!(released.status, 421, "{released:?}");
    let token = token_file(&broker);
    let with_token = raw(
        addr,
        &format!("POST /api/release HTTP/1.1\r\n{evil}\r\nAuthorization: Bearer {token}"),
        &release_body("rebind/payroll"),
    )
    .await;
    assert_eq!(with_token.status, 421, "{with_token:?}");
    // No Host at all (HTTP/1.0) is refused too.
    let hostless = raw(addr, "GET /api/locks HTTP/1.0", "").await;
    assert_eq!(hostless.status, 421, "{hostless:?}");
    assert!(!guard.is_lost());
    still_held(&holder, "rebind/payroll", fence).await;

    // Health probes answer whatever the Host.
    let h = raw(addr, &format!("GET /healthz HTTP/1.1\r\n{evil}"), "").await;
    assert_eq!(h.status, 200, "{h:?}");
    eventually("readyz 200 for any Host", LIMIT, || async {
        (raw(addr, &format!("GET /readyz HTTP/1.1\r\n{evil}"), "")
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
    // The names a local user or a tunnel sends are allowed: `localhost` and IP literals, on
    // any port (ssh -L 9000:127.0.0.1:PORT sends port 9000).
    for host in [
        format!("localhost:{port}"),
        "LocalHost:9000".to_owned(),
        format!("127.0.0.1:{port}"),
        "[::1]:9000".to_owned(),
    ] {
        let a = raw(
            addr,
            &format!("GET /api/locks HTTP/1.1\r\nHost: {host}"),
            "",
        )
        .await;
        assert_eq!(a.status, 200, "Host: {host}: {a:?}");
        assert!(a.body.contains("rebind/payroll"), "{a:?}");
    }
}

/// `[admin] hosts` adds the names a proxy forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_hosts_are_allowed_and_others_not() {
    let broker = Broker::start_with_config("[admin]\nhosts = [\"locks.internal.example\"]\n");
    let addr = admin(&broker);
    let ok = raw(
        addr,
        "GET /api/locks HTTP/1.1\r\nHost: LOCKS.internal.example",
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let ok = raw(
        addr,
        "GET / HTTP/1.1\r\nHost: locks.internal.example:8443",
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let no = raw(
        addr,
        "GET /api/locks HTTP/1.1\r\nHost: locks.internal.example.evil.example",
        "",
    )
    .await;
    assert_eq!(no.status, 421, "{no:?}");
}

/// Finding 3: a cross-origin POST is refused even when it carries a valid token; the same
/// origin (or none, as the CLI and curl send) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_post_is_refused_even_with_a_token() {
    let broker = Broker::start_with_config(&format!(
        "[admin]\ntokens = {{ \"{OPS_TOKEN}\" = \"ops\" }}\n"
    ));
    let addr = admin(&broker);
    let holder = broker.client().await;
    let guard = holder
        .lock("origin/k")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let fence = guard.fence();
    let host = format!("Host: 127.0.0.1:{}", addr.port());
    let auth = format!("Authorization: Bearer {OPS_TOKEN}");
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let a = raw(
            addr,
            &format!("POST /api/release HTTP/1.1\r\n{host}\r\n{auth}\r\nOrigin: {origin}"),
            &release_body("origin/k"),
        )
        .await;
        assert_eq!(a.status, 403, "Origin: {origin}: {a:?}");
    }
    assert!(!guard.is_lost());
    still_held(&holder, "origin/k", fence).await;
    let same = raw(
        addr,
        &format!(
            "POST /api/release HTTP/1.1\r\n{host}\r\n{auth}\r\nOrigin: http://127.0.0.1:{}",
            addr.port()
        ),
        &release_body("origin/k"),
    )
    .await;
    assert_eq!(same.status, 200, "{same:?}");
    tokio::time::timeout(LIMIT, guard.lost())
        .await
        .expect("the holder was told");
}

/// Finding 3: with the dev defaults (no tokens, no auth) a loopback peer still lists locks
/// without a token, but a forced release needs one: without, the holder keeps its lock; with
/// the per-start token from `<data_dir>/admin-token` (mode 0600), the release happens; a
/// clean stop removes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_release_needs_a_token_and_the_holder_keeps_its_lock() {
    use std::os::unix::fs::PermissionsExt;
    let mut broker = Broker::start();
    let addr = admin(&broker);
    let holder = broker.client().await;
    let guard = holder
        .lock("local/job")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let fence = guard.fence();
    let host = format!("Host: 127.0.0.1:{}", addr.port());

    let refused = raw(
        addr,
        &format!("POST /api/release HTTP/1.1\r\n{host}"),
        &release_body("local/job"),
    )
    .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("admin-token"), "{refused:?}");
    assert!(!guard.is_lost());
    still_held(&holder, "local/job", fence).await;

    // Reading is still zero-config from loopback.
    let listed = raw(addr, &format!("GET /api/locks HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(listed.body.contains("local/job"));

    let path = broker.data_dir.path().join("admin-token");
    let mode = std::fs::metadata(&path)
        .expect("admin-token")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let token = token_file(&broker);
    let released = raw(
        addr,
        &format!("POST /api/release HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {token}"),
        &release_body("local/job"),
    )
    .await;
    assert_eq!(released.status, 200, "{released:?}");
    tokio::time::timeout(LIMIT, guard.lost())
        .await
        .expect("the holder was told at once");

    // A clean stop removes the run's token.
    broker.signal("TERM");
    let exited = tokio::task::block_in_place(|| broker.wait_exit(LIMIT));
    assert!(exited.is_some(), "the broker did not stop within {LIMIT:?}");
    assert!(!path.exists(), "{} outlived the broker", path.display());
}

/// Finding 3: with `[auth] require = true` a loopback peer without a token gets no keys,
/// principals or sessions; metrics and health stay open; the data dir's token reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_required_a_loopback_peer_lists_nothing_without_a_token() {
    let broker = Broker::start_with_config(
        "[auth]\nrequire = true\ntokens = { \"quic-token-0123456789\" = \"svc-payroll\" }\n",
    );
    let addr = admin(&broker);
    let client = broker
        .client_builder()
        .token("quic-token-0123456789")
        .connect()
        .await
        .expect("connect with a token");
    let _guard = client.lock("secret/payroll").await.expect("lock");
    let host = format!("Host: 127.0.0.1:{}", addr.port());
    for path in ["/api/locks", "/api/sessions"] {
        let a = raw(addr, &format!("GET {path} HTTP/1.1\r\n{host}"), "").await;
        assert_eq!(a.status, 401, "GET {path}: {a:?}");
        assert!(
            !a.body.contains("payroll"),
            "GET {path} leaked a key or principal: {a:?}"
        );
    }
    for path in ["/metrics", "/healthz", "/"] {
        let a = raw(addr, &format!("GET {path} HTTP/1.1\r\n{host}"), "").await;
        assert_eq!(a.status, 200, "GET {path}: {a:?}");
    }
    let token = token_file(&broker);
    let a = raw(
        addr,
        &format!("GET /api/locks HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {token}"),
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.body.contains("secret/payroll") && a.body.contains("svc-payroll"),
        "{a:?}"
    );
}

/// A Chromium session whose resolver maps `evil.example` to 127.0.0.1: what a page does
/// after DNS rebinding.
async fn rebinding_browser(driver: &ChromeDriver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage",
                     "--host-resolver-rules=MAP evil.example 127.0.0.1",
                     "--disable-features=HttpsUpgrades"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    fantoccini::ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("a WebDriver session on chromedriver")
}

/// Finding 3 in a real browser: a page at `http://evil.example:PORT/` (resolved to loopback)
/// fetches `/api/locks` and posts `/api/release` as same-origin requests: both refused, the
/// lock stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_page_in_chromium_reads_nothing_and_releases_nothing() {
    let broker = Broker::start();
    let addr = admin(&broker);
    let holder = broker.client().await;
    let guard = holder
        .lock("browser/payroll")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let fence = guard.fence();
    let driver = ChromeDriver::start();
    let page = rebinding_browser(&driver).await;
    page.goto(&format!("http://evil.example:{}/", addr.port()))
        .await
        .expect("open the rebound page");
    let got = page
        .execute(
            "return Promise.all([
               fetch('/api/locks').then(async r => [r.status, await r.text()]),
               fetch('/api/release', { method: 'POST',
                 headers: { 'Content-Type': 'application/json' },
                 body: JSON.stringify({ key: 'browser/payroll' }) })
                 .then(async r => [r.status, await r.text()]),
             ]);",
            vec![],
        )
        .await
        .expect("run the page's script");
    eprintln!("rebound page's requests: {got}");
    assert_eq!(got[0][0], json!(421), "{got}");
    assert!(
        !got[0][1].as_str().unwrap_or("").contains("payroll"),
        "{got}"
    );
    assert_eq!(got[1][0], json!(421), "{got}");
    assert!(!guard.is_lost());
    still_held(&holder, "browser/payroll", fence).await;
    page.close().await.expect("end the WebDriver session");
}

/// With `[admin] tokens` set the status page asks for a token (the API answers it 401), keeps
/// it for the tab only, and then shows the held key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_of_a_token_broker_asks_for_the_token() {
    let broker = Broker::start_with_config(&format!(
        "[admin]\ntokens = {{ \"{OPS_TOKEN}\" = \"ops\" }}\n"
    ));
    let addr = admin(&broker);
    let client = broker.client().await;
    let _guard = client
        .lock("pager/duty")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let driver = ChromeDriver::start();
    let page = driver.session().await;
    page.goto(&format!("http://{addr}/"))
        .await
        .expect("open the status page");
    let form = eventually("the token prompt", Duration::from_secs(20), || async {
        let f = page.find(Locator::Id("token-form")).await.ok()?;
        f.is_displayed().await.ok()?.then_some(f)
    })
    .await;
    let locks = page
        .find(Locator::Id("locks"))
        .await
        .expect("the locks section")
        .text()
        .await
        .expect("its text");
    assert!(
        !locks.contains("pager/duty"),
        "shown without a token: {locks}"
    );
    page.find(Locator::Id("token"))
        .await
        .expect("the token field")
        .send_keys(OPS_TOKEN)
        .await
        .expect("type the token");
    form.find(Locator::Css("button"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("submit");
    eventually(
        "the held key on the page",
        Duration::from_secs(20),
        || async {
            let t = page
                .find(Locator::Id("locks"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            t.contains("pager/duty").then_some(())
        },
    )
    .await;
    page.close().await.expect("end the WebDriver session");
}

/// What became of one half-sent request.
struct HalfSent {
    sent: Instant,
    closed: Option<Instant>,
}

/// Finding 5: 300 connections each send `GET / HTTP/1.1\r\n` and nothing more. Over the cap
/// (256) connections are closed at once; the others after the header timeout (5 s); every
/// `/healthz` from a fresh connection meanwhile is answered, and quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_capped_and_timed_out_while_healthz_answers() {
    const N: usize = 300;
    const CAP: usize = 256;
    let broker = Broker::start();
    let addr = admin(&broker);
    assert_eq!(
        raw(addr, "GET /healthz HTTP/1.1\r\nHost: x", "")
            .await
            .status,
        200
    );

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // Sending may fail on a connection closed at accept: that is an answer too.
        let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
        let sent = Instant::now();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            // Bounded: 30 s is far past the header timeout.
            let closed = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(_) => {}
                    }
                }
            })
            .await
            .ok();
            HalfSent { sent, closed }
        }));
    }
    let opened_in = start.elapsed();

    // Probe /healthz from fresh connections until every half-sent one is closed.
    let mut probes = Vec::new();
    loop {
        let t = Instant::now();
        let a = tokio::time::timeout(
            Duration::from_secs(2),
            raw(addr, "GET /healthz HTTP/1.1\r\nHost: probe", ""),
        )
        .await;
        probes.push((
            t.duration_since(start),
            a.map(|a| a.status).ok(),
            t.elapsed(),
        ));
        if tasks.iter().all(|t| t.is_finished()) || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut outcomes = Vec::with_capacity(N);
    for t in tasks {
        outcomes.push(t.await.expect("join"));
    }

    let held_for: Vec<Option<Duration>> = outcomes
        .iter()
        .map(|o| o.closed.map(|c| c.duration_since(o.sent)))
        .collect();
    let at_once = held_for
        .iter()
        .filter(|d| d.is_some_and(|d| d < Duration::from_secs(1)))
        .count();
    let by_timeout: Vec<Duration> = held_for
        .iter()
        .filter_map(|d| *d)
        .filter(|d| *d >= Duration::from_secs(1))
        .collect();
    let never = held_for.iter().filter(|d| d.is_none()).count();
    let slowest_probe = probes.iter().map(|p| p.2).max().unwrap_or_default();
    let failed_probes: Vec<_> = probes.iter().filter(|p| p.1 != Some(200)).collect();
    eprintln!(
        "{N} half-sent requests opened in {opened_in:?}: {at_once} closed within 1 s, {} \
         closed after {:?}..{:?}, {never} still open after 30 s; {} /healthz probes, {} \
         failed, slowest {slowest_probe:?}",
        by_timeout.len(),
        by_timeout.iter().min(),
        by_timeout.iter().max(),
        probes.len(),
        failed_probes.len(),
    );
    assert!(
        failed_probes.is_empty(),
        "/healthz failed meanwhile: {failed_probes:?}"
    );
    assert_eq!(never, 0, "half-sent requests stayed open");
    assert!(
        at_once >= N - CAP,
        "only {at_once} of {N} closed at once with a cap of {CAP}"
    );
    assert!(by_timeout.len() <= CAP, "{} over the cap", by_timeout.len());
    assert!(
        by_timeout
            .iter()
            .all(|d| *d >= Duration::from_millis(4500) && *d < Duration::from_secs(15)),
        "closed by the header timeout (5 s): {by_timeout:?}"
    );
}

/// Finding 5: a kept-alive connection that sends nothing more is closed after the header
/// timeout (`[admin] header_timeout_ms`), so idle connections do not pile up either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let broker = Broker::start_with_config("[admin]\nheader_timeout_ms = 1000\n");
    let addr = admin(&broker);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle = Instant::now();
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return idle.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the idle connection was closed within 10 s");
    eprintln!("idle keep-alive connection closed after {closed:?}");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
        "{closed:?}"
    );
}
