//! Sessions per principal, counted once a session has authenticated: each principal has at
//! most `limits.max_sessions_per_principal` (default `max_connections`), and — when the broker
//! knows authenticated principals — the anonymous principal as a whole at most its share of
//! `max_connections` (`limits.anonymous_share_percent`), so a flood of anonymous sessions
//! from however many addresses leaves room for authenticated clients. A session past its
//! principal's cap is told `LimitExceeded` naming the limit and closed. A [`PrincipalSlot`]
//! holds the place until the session ends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{ANONYMOUS, Config};

/// Open sessions by principal.
pub struct PrincipalSessions {
    counts: Mutex<HashMap<String, usize>>,
    /// Cap of an authenticated principal.
    cap: usize,
    /// Cap of the anonymous principal.
    anonymous_cap: usize,
}

/// One session's place in its principal's count; freed when dropped.
pub struct PrincipalSlot {
    owner: Arc<PrincipalSessions>,
    principal: String,
}

impl PrincipalSessions {
    pub fn new(cfg: &Config) -> Arc<PrincipalSessions> {
        let anonymous = cfg.has_authenticated_principals();
        Arc::new(PrincipalSessions {
            counts: Mutex::default(),
            cap: cfg.limits.session_cap(false),
            anonymous_cap: cfg.limits.session_cap(anonymous),
        })
    }

    /// Counts a session of `principal`, or says which limit it would pass.
    pub fn admit(self: &Arc<Self>, principal: &str) -> Result<PrincipalSlot, String> {
        let anonymous = principal == ANONYMOUS;
        let cap = if anonymous {
            self.anonymous_cap
        } else {
            self.cap
        };
        let mut counts = self.counts.lock();
        let open = counts.get(principal).copied().unwrap_or(0);
        if open >= cap {
            let limit = if anonymous && cap < self.cap {
                "limits.anonymous_share_percent of limits.max_connections"
            } else {
                "limits.max_sessions_per_principal"
            };
            return Err(format!(
                "sessions: {open} open as principal {principal:?} ({limit})"
            ));
        }
        *counts.entry(principal.to_owned()).or_default() += 1;
        Ok(PrincipalSlot {
            owner: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock();
        if let Some(n) = counts.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_sessions_stop_at_their_share_and_others_have_their_own_cap() {
        let mut cfg = Config::default();
        cfg.limits.max_connections = 10;
        cfg.limits.max_sessions_per_principal = Some(3);
        cfg.auth.tokens.insert("t".into(), "alice".into());
        let p = PrincipalSessions::new(&cfg);
        let anon: Vec<_> = (0..3).map(|_| p.admit(ANONYMOUS).expect("anon")).collect();
        let _alice: Vec<_> = (0..3).map(|_| p.admit("alice").expect("alice")).collect();
        assert!(p.admit("alice").is_err_and(|e| e.contains("per_principal")));
        assert!(p.admit(ANONYMOUS).is_err());
        drop(anon);
        let _again = p.admit(ANONYMOUS).expect("a place was freed");

        cfg.limits.max_sessions_per_principal = None;
        let p = PrincipalSessions::new(&cfg);
        let _anon: Vec<_> = (0..5).map(|_| p.admit(ANONYMOUS).expect("anon")).collect();
        assert!(
            p.admit(ANONYMOUS)
                .is_err_and(|e| e.contains("anonymous_share_percent"))
        );
        // Without authenticated principals, anonymous is every client: no share.
        cfg.auth.tokens.clear();
        let p = PrincipalSessions::new(&cfg);
        let _all: Vec<_> = (0..10).map(|_| p.admit(ANONYMOUS).expect("all")).collect();
    }
}
