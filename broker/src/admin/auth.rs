//! Who may use the admin listener, checked in this order:
//!
//! 1. **Host** — every request but the health probes must name this listener by a name a
//!    DNS-rebinding page cannot send: `localhost`, an IP address (any port: tunnels change
//!    it), or one of `[admin] hosts`; else 421. A page that rebinds its own name to 127.0.0.1
//!    sends `Host: its-name:PORT` and is refused.
//! 2. **Origin** — a request other than `GET`/`HEAD` carrying `Origin` must come from the
//!    origin it is sent to (`http(s)://<its Host>`), else 403. curl and the CLI send none.
//! 3. **Token** — `Authorization: Bearer <token>`, with a token of `[admin.tokens]` or the
//!    per-start token this broker wrote to `<data_dir>/admin-token` (mode 0600: only the
//!    broker's user can read it), compared in constant time as QUIC tokens are
//!    (`server/auth.rs`). What needs one ([`Need`]):
//!    * the status page's files and the health probes: nothing;
//!    * `/metrics`: a loopback peer or a token;
//!    * `GET /api/*`: a loopback peer or a token — but only a token when this broker
//!      authenticates its clients or has admin tokens ([`Gate::strict`]): other local users
//!      must not list keys and principals of a broker that refuses them locks, and behind a
//!      same-host proxy every remote request comes from loopback;
//!    * `POST /api/release`, `/api/cancel`, `/api/end-session`: always a token.
//!
//! `X-Forwarded-For` and the like are ignored: the peer is the TCP peer. A wrong token is
//! refused even where none is needed: it is a mistake worth seeing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Config;

/// The per-start token's file in the data dir.
pub const TOKEN_FILE: &str = "admin-token";

/// Who made an admin request (named in audit lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// A loopback peer without a token (where none is needed).
    Loopback(SocketAddr),
    /// A peer with the admin token of this name.
    Token { name: String, peer: SocketAddr },
    /// A peer with the per-start token of `<data_dir>/admin-token`.
    TokenFile(SocketAddr),
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Loopback(peer) => write!(f, "loopback peer {peer}"),
            Who::Token { name, peer } => write!(f, "admin token \"{name}\" from {peer}"),
            Who::TokenFile(peer) => write!(f, "the data dir's admin-token from {peer}"),
        }
    }
}

/// What a route needs besides an allowed `Host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A loopback peer, or a token.
    LoopbackOrToken,
    /// A token, whoever the peer.
    Token,
}

/// Why an admin request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an admin token is required from a non-loopback peer (Authorization: Bearer <token>)")]
    NoToken,
    #[error(
        "an admin token is required, from loopback too (Authorization: Bearer <token>): a token \
         of [admin] tokens, or the one the broker wrote to <data_dir>/admin-token at start \
         (the CLI's --data-dir DIR reads it)"
    )]
    TokenRequired,
    #[error("unknown admin token")]
    BadToken,
    #[error(
        "Host {0:?} is not a name of this admin listener (localhost, an IP address, or one of \
         [admin] hosts)"
    )]
    Host(String),
    #[error("cross-origin request refused (Origin {0:?})")]
    Origin(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NoToken | Refusal::TokenRequired | Refusal::BadToken => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Origin(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// Errors setting up the per-start token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot draw a random admin token")]
    Random,
    #[error("cannot write the admin token to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The admin listener's rules, fixed at start.
pub struct Gate {
    /// `[admin] tokens`: token → name.
    tokens: BTreeMap<String, String>,
    /// The per-start token (also in [`Gate::token_file`]).
    file_token: String,
    token_file: PathBuf,
    /// `GET /api/*` needs a token from loopback too.
    strict: bool,
    /// `[admin] hosts`, lower case, without a trailing dot.
    hosts: Vec<String>,
}

impl Gate {
    /// The rules of `cfg`, with a fresh random token written to `<data_dir>/admin-token`.
    pub fn create(cfg: &Config) -> Result<Gate, TokenError> {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| TokenError::Random)?;
        let file_token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let token_file = cfg.data_dir.join(TOKEN_FILE);
        crate::private_files::write_private(&token_file, format!("{file_token}\n").as_bytes())
            .map_err(|source| TokenError::Write {
                path: token_file.clone(),
                source,
            })?;
        Ok(Gate {
            tokens: cfg.admin.tokens.clone(),
            file_token,
            token_file,
            strict: Gate::is_strict(cfg),
            hosts: cfg.admin.hosts.iter().map(|h| normal(h)).collect(),
        })
    }

    /// Loopback is not enough for `GET /api/*` when admin tokens are configured or QUIC
    /// clients must authenticate.
    pub fn is_strict(cfg: &Config) -> bool {
        !cfg.admin.tokens.is_empty() || cfg.auth.require || cfg.tls.require_client_cert
    }

    /// Whether loopback peers need a token for `GET /api/*`.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The per-start token's file.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// What `GET /api/*` needs.
    pub(super) fn api_read(&self) -> Need {
        if self.strict {
            Need::Token
        } else {
            Need::LoopbackOrToken
        }
    }

    fn authorize(
        &self,
        peer: SocketAddr,
        authorization: Option<&str>,
        need: Need,
    ) -> Result<Who, Refusal> {
        authorize(peer, authorization, &self.tokens, &self.file_token, need)
    }
}

/// A name as compared: lower case, no trailing dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The name part of a `Host` value (`name`, `name:port`, `[v6]` or `[v6]:port`); `None` if
/// it is not of that form.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (v6, after.strip_prefix(':'))
    } else if let Some((name, port)) = host.split_once(':') {
        (name, Some(port))
    } else {
        (host, None)
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    (!name.is_empty()).then_some(name)
}

/// Whether a request naming `host` may be served: `localhost`, an IP literal, or one of
/// `allowed` (normalised names).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    if name.parse::<IpAddr>().is_ok() {
        // An IP literal is what the client typed: no DNS name was rebound to reach us.
        return true;
    }
    let name = normal(name);
    name == "localhost" || allowed.contains(&name)
}

/// Whether `origin` (an `Origin` header) is the origin of a request to `host`.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// Decides whether `peer`, sending `authorization` (the header's value), may use a route that
/// needs `need`, given the configured `tokens` (token → name) and the per-start `file_token`.
pub fn authorize(
    peer: SocketAddr,
    authorization: Option<&str>,
    tokens: &BTreeMap<String, String>,
    file_token: &str,
    need: Need,
) -> Result<Who, Refusal> {
    let bearer = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        if let Some(name) = crate::server::auth::lookup(tokens.iter(), token) {
            return Ok(Who::Token {
                name: name.to_owned(),
                peer,
            });
        }
        let file = (file_token.to_owned(), String::new());
        if crate::server::auth::lookup(std::iter::once((&file.0, &file.1)), token).is_some() {
            return Ok(Who::TokenFile(peer));
        }
        return Err(Refusal::BadToken);
    }
    match need {
        Need::LoopbackOrToken if peer.ip().is_loopback() => Ok(Who::Loopback(peer)),
        Need::LoopbackOrToken => Err(Refusal::NoToken),
        Need::Token => Err(Refusal::TokenRequired),
    }
}

fn refuse(peer: SocketAddr, req: &Request, refusal: &Refusal) -> Response {
    tracing::warn!(%peer, method = %req.method(), path = %req.uri().path(), "admin request refused: {refusal}");
    let mut res = (
        refusal.status(),
        axum::Json(serde_json::json!({ "error": refusal.to_string() })),
    )
        .into_response();
    if refusal.status() == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    res
}

/// The host a request names: the authority of an absolute-form target, else `Host`.
fn requested_host(req: &Request) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Middleware on every route but the health probes: the `Host` and `Origin` checks.
pub(super) async fn check_host(
    State(gate): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let host = requested_host(&req).unwrap_or_default();
    if !host_allowed(&host, &gate.hosts) {
        return refuse(peer, &req, &Refusal::Host(host));
    }
    let writes = req.method() != Method::GET && req.method() != Method::HEAD;
    if let Some(origin) = req.headers().get(header::ORIGIN).filter(|_| writes) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        if !same_origin(&origin, &host) {
            return refuse(peer, &req, &Refusal::Origin(origin));
        }
    }
    next.run(req).await
}

/// Middleware: refuses requests without what `need` asks with 401 and passes [`Who`] on to
/// handlers.
pub(super) async fn require(
    State((gate, need)): State<(Arc<Gate>, Need)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match gate.authorize(peer, authorization, need) {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(refusal) => refuse(peer, &req, &refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "f00df00df00df00df00df00df00df00d";

    #[test]
    fn loopback_needs_no_token_where_allowed_and_others_need_a_known_one() {
        let tokens: BTreeMap<String, String> =
            [("0123456789abcdef-ops".to_owned(), "ops".to_owned())].into();
        let lo: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:5000".parse().expect("addr");
        let remote: SocketAddr = "10.1.2.3:5000".parse().expect("addr");
        let any = Need::LoopbackOrToken;
        let auth = |peer, h, need| authorize(peer, h, &tokens, FILE, need);
        assert_eq!(auth(lo, None, any), Ok(Who::Loopback(lo)));
        assert_eq!(auth(lo6, None, any), Ok(Who::Loopback(lo6)));
        assert_eq!(auth(remote, None, any), Err(Refusal::NoToken));
        assert_eq!(
            auth(remote, Some("Bearer wrong-token-0000000"), any),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            auth(remote, Some("Bearer 0123456789abcdef-op"), any),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            auth(remote, Some("Basic 0123456789abcdef-ops"), any),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            auth(remote, Some("Bearer 0123456789abcdef-ops"), any),
            Ok(Who::Token {
                name: "ops".into(),
                peer: remote
            })
        );
        assert_eq!(
            auth(lo, Some("Bearer nope-nope-nope-nope"), any),
            Err(Refusal::BadToken)
        );
        // Where a token is needed, loopback is not enough; either kind of token is.
        assert_eq!(auth(lo, None, Need::Token), Err(Refusal::TokenRequired));
        let file = format!("Bearer {FILE}");
        assert_eq!(auth(lo, Some(&file), Need::Token), Ok(Who::TokenFile(lo)));
        let prefix = format!("Bearer {}", &FILE[1..]);
        assert_eq!(auth(lo, Some(&prefix), Need::Token), Err(Refusal::BadToken));
        assert!(matches!(
            auth(remote, Some("Bearer 0123456789abcdef-ops"), Need::Token),
            Ok(Who::Token { .. })
        ));
        // No tokens configured: loopback, or the file's token.
        let none = BTreeMap::new();
        assert_eq!(
            authorize(
                remote,
                Some("Bearer 0123456789abcdef-ops"),
                &none,
                FILE,
                any
            ),
            Err(Refusal::BadToken)
        );
    }

    #[test]
    fn only_names_a_rebinding_page_cannot_send_are_allowed() {
        let allowed = vec!["locks.example.com".to_owned()];
        for ok in [
            "localhost",
            "localhost:7421",
            "LOCALHOST.:9000",
            "127.0.0.1:7421",
            "10.0.0.5",
            "[::1]:7421",
            "[::1]",
            "locks.example.com",
            "Locks.Example.Com:443",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for no in [
            "",
            "evil.example:7421",
            "localhost.evil.example",
            "locks.example.com.evil.example",
            "127.0.0.1.nip.io:7421",
            "localhost:",
            "localhost:http",
            "[::1",
            "::1",
            "localhost:7421:1",
        ] {
            assert!(!host_allowed(no, &allowed), "{no}");
        }
    }

    #[test]
    fn origins_must_be_the_requests_own() {
        assert!(same_origin("http://127.0.0.1:7421", "127.0.0.1:7421"));
        assert!(same_origin(
            "https://Locks.example.com",
            "locks.example.com"
        ));
        assert!(!same_origin("http://evil.example", "127.0.0.1:7421"));
        assert!(!same_origin("null", "127.0.0.1:7421"));
        assert!(!same_origin("http://127.0.0.1:1", "127.0.0.1:7421"));
        assert!(!same_origin("ftp://127.0.0.1:7421", "127.0.0.1:7421"));
    }
}
