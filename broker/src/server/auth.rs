//! Who a session is: its client certificate's subject, else the name bound to its token, else
//! `anonymous` (unless the config requires authentication).
//!
//! Token lookup takes the same time whichever token is sent and however much of it matches a
//! configured one: the SHA-256 of the token is compared with every configured token's in
//! constant time, with no early exit (a map lookup would compare byte by byte and stop at the
//! first difference — a timing oracle for guessing a token).

use sha2::{Digest, Sha256};

use crate::broker::Broker;

/// Names the session's principal.
pub(super) fn authenticate(
    broker: &Broker,
    token: Option<&str>,
    cert_principal: Option<String>,
) -> Result<String, String> {
    if let Some(p) = cert_principal {
        return Ok(p);
    }
    let auth = &broker.cfg.auth;
    match token {
        Some(t) => match lookup(auth.tokens.iter(), t) {
            Some(name) => Ok(name.to_owned()),
            None => Err("unknown auth token".to_owned()),
        },
        None if auth.require => {
            Err("authentication required: send a token or a client certificate".to_owned())
        }
        None => Ok(crate::config::ANONYMOUS.to_owned()),
    }
}

/// The principal of `token` among `(token, principal)` pairs, in time independent of where
/// and how much the token matches.
pub(crate) fn lookup<'a>(
    tokens: impl Iterator<Item = (&'a String, &'a String)>,
    token: &str,
) -> Option<&'a str> {
    let given = Sha256::digest(token.as_bytes());
    let mut found = None;
    for (known, principal) in tokens {
        let known = Sha256::digest(known.as_bytes());
        if ct_eq(&given, &known) {
            found = Some(principal.as_str());
        }
    }
    found
}

/// Equal byte strings of the same length, compared without an early exit.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_token_finds_its_principal_and_nothing_else_matches() {
        let tokens: BTreeMap<String, String> = [
            ("s3cret-token-a".to_owned(), "svc-a".to_owned()),
            ("s3cret-token-b".to_owned(), "svc-b".to_owned()),
        ]
        .into();
        assert_eq!(lookup(tokens.iter(), "s3cret-token-b"), Some("svc-b"));
        assert_eq!(lookup(tokens.iter(), "s3cret-token-a"), Some("svc-a"));
        assert_eq!(lookup(tokens.iter(), "s3cret-token-"), None);
        assert_eq!(lookup(tokens.iter(), "s3cret-token-c"), None);
        assert_eq!(lookup(tokens.iter(), ""), None);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
