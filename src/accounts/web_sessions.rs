//! Signed-in people's sessions (PCI DSS 8.2.8: re-authentication after 15 minutes idle):
//! a random token in an `HttpOnly; Secure; SameSite=Strict` cookie, kept here only as its
//! SHA-256, with a CSRF token the pages send back on every state change; ended by sign-out,
//! by `idle` without a request, by `max` in all, or when the account is disabled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::User;
use crate::vault::token::random_base62;

/// The cookie that carries the session token.
pub const COOKIE: &str = "tw_session";

struct Entry {
    user: User,
    csrf: String,
    started: Instant,
    last_seen: Instant,
}

/// A live session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Live {
    pub user: User,
    pub csrf: String,
    /// When it ends if no request comes first.
    pub idle_ends: Instant,
}

/// Why a token no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Unknown,
    Idle,
    TooLong,
}

pub struct WebSessions {
    idle: Duration,
    max: Duration,
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl WebSessions {
    pub fn new(idle: Duration, max: Duration) -> WebSessions {
        WebSessions { idle, max, map: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `user`: its cookie token and its CSRF token.
    pub fn open(&self, user: User, now: Instant) -> (String, Live) {
        let token = random_base62(43);
        let csrf = random_base62(32);
        let live = Live { user: user.clone(), csrf: csrf.clone(), idle_ends: now + self.idle };
        self.lock().insert(key(&token), Entry { user, csrf, started: now, last_seen: now });
        (token, live)
    }

    /// The session a request's token names, now seen again (its idle clock restarts).
    pub fn touch(&self, token: &str, now: Instant) -> Result<Live, Ended> {
        let mut map = self.lock();
        let k = key(token);
        let e = map.get_mut(&k).ok_or(Ended::Unknown)?;
        let ended = if now.saturating_duration_since(e.last_seen) >= self.idle {
            Some(Ended::Idle)
        } else if now.saturating_duration_since(e.started) >= self.max {
            Some(Ended::TooLong)
        } else {
            None
        };
        if let Some(why) = ended {
            map.remove(&k);
            return Err(why);
        }
        e.last_seen = now;
        Ok(Live { user: e.user.clone(), csrf: e.csrf.clone(), idle_ends: now + self.idle })
    }

    /// Sign-out: the user whose session it was.
    pub fn close(&self, token: &str) -> Option<User> {
        self.lock().remove(&key(token)).map(|e| e.user)
    }

    /// Ends every session of a user (a disabled account).
    pub fn end_user(&self, user_id: &str) {
        self.lock().retain(|_, e| e.user.id != user_id);
    }

    /// Drops sessions that can no longer be used; how many are left.
    pub fn purge(&self, now: Instant) -> usize {
        let mut map = self.lock();
        map.retain(|_, e| {
            now.saturating_duration_since(e.last_seen) < self.idle
                && now.saturating_duration_since(e.started) < self.max
        });
        map.len()
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::actor::Role;

    fn alice() -> User {
        User {
            id: "u1".into(),
            username: "alice".into(),
            role: Role::Agent,
            merchant: crate::merchant::MerchantId::default_merchant(),
            team: None,
            source: super::super::Source::Builtin,
        }
    }

    #[test]
    fn a_session_ends_when_idle_too_long_or_open_too_long_or_signed_out() {
        let s = WebSessions::new(Duration::from_secs(900), Duration::from_secs(3600));
        let t = Instant::now();
        let (token, live) = s.open(alice(), t);
        assert_eq!(live.idle_ends, t + Duration::from_secs(900));
        let later = t + Duration::from_secs(899);
        assert_eq!(
            s.touch(&token, later).unwrap().idle_ends,
            later + Duration::from_secs(900),
            "each request restarts it"
        );
        assert_eq!(s.touch(&token, later + Duration::from_secs(900)).unwrap_err(), Ended::Idle);
        assert_eq!(s.touch(&token, later).unwrap_err(), Ended::Unknown, "gone once ended");

        let (token, _) = s.open(alice(), t);
        for k in 1..=5 {
            assert!(s.touch(&token, t + Duration::from_secs(600 * k)).is_ok(), "busy for {} s", 600 * k);
        }
        assert_eq!(s.touch(&token, t + Duration::from_secs(3600)).unwrap_err(), Ended::TooLong);

        let (token, _) = s.open(alice(), t);
        assert_eq!(s.close(&token).map(|u| u.username), Some("alice".into()));
        assert_eq!(s.touch(&token, t).unwrap_err(), Ended::Unknown);
        let (token, _) = s.open(alice(), t);
        s.end_user("u1");
        assert_eq!(s.touch(&token, t).unwrap_err(), Ended::Unknown);
        assert_eq!(s.touch("not-a-token", t).unwrap_err(), Ended::Unknown);
    }
}
