//! The client side of the broker's admin HTTP API for the operator commands (`locks`,
//! `sessions`, `release --force`): one HTTP/1.1 request per connection over plain TCP (the
//! admin listener is loopback by default; remote brokers are reached through a tunnel or
//! proxy, with a bearer token). The token is `--admin-token`, or the one the broker wrote to
//! `<data_dir>/admin-token` at start (`--data-dir`): a forced release needs one even over
//! loopback, and so does listing on a broker that authenticates its clients.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How an operator command reaches the admin listener.
#[derive(Args, Debug, Clone)]
pub struct AdminConnection {
    /// The broker's admin address, as its banner prints it.
    #[arg(
        long = "admin",
        env = "LOCKBROKER_ADMIN",
        default_value = "http://127.0.0.1:7421"
    )]
    url: String,
    /// Admin token (`[admin] tokens`). Without it, the token in `<data-dir>/admin-token` is
    /// sent.
    #[arg(
        long = "admin-token",
        env = "LOCKBROKER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The broker's data dir, to send the admin token it wrote there at start (`admin-token`,
    /// readable by the broker's user only).
    #[arg(long = "data-dir", env = "LOCKBROKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Largest answer read (the API pages its lists).
const MAX_ANSWER: u64 = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

impl AdminConnection {
    /// `GET path` (with its query), the JSON answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.request("GET", path, None).await
    }

    /// `POST path` with a JSON body, the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.request("POST", path, Some(body.to_string())).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<serde_json::Value> {
        let host = self
            .url
            .strip_prefix("http://")
            .with_context(|| format!("--admin {}: an http:// address", self.url))?
            .trim_end_matches('/');
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if let Some(t) = self.token()? {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = &body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.as_deref().unwrap_or(""));
        let exchange = async {
            let mut stream = TcpStream::connect(host).await?;
            stream.write_all(req.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.take(MAX_ANSWER).read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("{}: no answer within {TIMEOUT:?}", self.url))?
            .with_context(|| format!("cannot reach the admin listener at {}", self.url))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("{}: not an HTTP answer", self.url))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: no HTTP status", self.url))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{}: the answer is not JSON (HTTP {status})", self.url))?;
        match status {
            200..=299 => Ok(json),
            401 => bail!(
                "the admin listener refused the request (HTTP 401: {}): pass --data-dir with \
                 the broker's data dir (its admin-token file), or --admin-token (or \
                 LOCKBROKER_ADMIN_TOKEN) with a token from [admin] tokens",
                json.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("no reason given")
            ),
            _ => bail!(
                "HTTP {status}: {}",
                json.get("error").and_then(|e| e.as_str()).unwrap_or(&body)
            ),
        }
    }
}

impl AdminConnection {
    /// The token to send: `--admin-token`, else the data dir's `admin-token`, else none.
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        let path = dir.join(lockbroker::admin::TOKEN_FILE);
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the admin token {} (the broker writes it at start; run as the \
                 broker's user)",
                path.display()
            )
        })?;
        Ok(Some(token.trim().to_owned()))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `s` percent-encoded for a query string.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
