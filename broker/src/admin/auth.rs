//! Who may use the admin listener: a loopback peer, or a request carrying
//! `Authorization: Bearer <token>` with a token of `[admin.tokens]` (compared in constant
//! time, as QUIC tokens are: `server/auth.rs`). `X-Forwarded-For` and the like are ignored:
//! the peer is the TCP peer. The health probes (`/healthz`, `/readyz`) are open to all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Admin;

/// Who made an admin request (named in audit lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// A loopback peer (no token needed).
    Loopback(SocketAddr),
    /// A peer with the admin token of this name.
    Token { name: String, peer: SocketAddr },
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Loopback(peer) => write!(f, "loopback peer {peer}"),
            Who::Token { name, peer } => write!(f, "admin token \"{name}\" from {peer}"),
        }
    }
}

/// Why an admin request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an admin token is required from a non-loopback peer (Authorization: Bearer <token>)")]
    NoToken,
    #[error("unknown admin token")]
    BadToken,
}

/// Decides whether `peer`, sending `authorization` (the header's value), may use the admin
/// endpoints, given the configured `tokens` (token → name).
pub fn authorize(
    peer: SocketAddr,
    authorization: Option<&str>,
    tokens: &BTreeMap<String, String>,
) -> Result<Who, Refusal> {
    let bearer = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        return match crate::server::auth::lookup(tokens.iter(), token) {
            Some(name) => Ok(Who::Token {
                name: name.to_owned(),
                peer,
            }),
            // A wrong token is refused even from loopback: it is a mistake worth seeing.
            None => Err(Refusal::BadToken),
        };
    }
    if peer.ip().is_loopback() {
        return Ok(Who::Loopback(peer));
    }
    Err(Refusal::NoToken)
}

/// Middleware: refuses unauthorized requests with 401 and passes [`Who`] on to handlers.
pub(super) async fn require(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match authorize(peer, header, &admin.broker.cfg.admin.tokens) {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(refusal) => {
            tracing::warn!(%peer, path = %req.uri().path(), "admin request refused: {refusal}");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(serde_json::json!({ "error": refusal.to_string() })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_needs_no_token_and_others_need_a_known_one() {
        let tokens: BTreeMap<String, String> =
            [("0123456789abcdef-ops".to_owned(), "ops".to_owned())].into();
        let lo: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:5000".parse().expect("addr");
        let remote: SocketAddr = "10.1.2.3:5000".parse().expect("addr");
        assert_eq!(authorize(lo, None, &tokens), Ok(Who::Loopback(lo)));
        assert_eq!(authorize(lo6, None, &tokens), Ok(Who::Loopback(lo6)));
        assert_eq!(authorize(remote, None, &tokens), Err(Refusal::NoToken));
        assert_eq!(
            authorize(remote, Some("Bearer wrong-token-0000000"), &tokens),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            authorize(remote, Some("Bearer 0123456789abcdef-op"), &tokens),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            authorize(remote, Some("Basic 0123456789abcdef-ops"), &tokens),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            authorize(remote, Some("Bearer 0123456789abcdef-ops"), &tokens),
            Ok(Who::Token {
                name: "ops".into(),
                peer: remote
            })
        );
        assert_eq!(
            authorize(lo, Some("Bearer nope-nope-nope-nope"), &tokens),
            Err(Refusal::BadToken)
        );
        // No tokens configured: only loopback.
        let none = BTreeMap::new();
        assert_eq!(
            authorize(remote, Some("Bearer 0123456789abcdef-ops"), &none),
            Err(Refusal::BadToken)
        );
    }
}
