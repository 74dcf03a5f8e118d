//! Who is calling the console: a key sent with the request, or a browser's session started by
//! signing in with one. Sessions live in this process only (a restart signs everyone out), are
//! bounded in number, expire, and each carries the CSRF token its forms must send back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

pub use crate::auth::presented_key;
use crate::auth::ApiKeys;

/// Sessions held at most; the oldest is dropped to make room.
const MAX_SESSIONS: usize = 10_000;

/// A caller and what its key may do in the console.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's configured name (never the key).
    pub name: String,
    pub read: bool,
    pub operate: bool,
    /// The token its forms carry; `None` for a key sent with each request (no cookie, so no
    /// cross-site forgery to guard against).
    pub csrf: Option<String>,
}

impl Caller {
    /// Everyone, when `online.auth` is off.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anyone (online.auth is off)".into(),
            read: true,
            operate: true,
            csrf: Some(anonymous_csrf().to_string()),
        }
    }

    /// The holder of `key`, if it is one of the configured keys.
    pub fn from_key(keys: &ApiKeys, key: &str) -> Option<Caller> {
        let (name, may) = keys.identify(key, &["ConsoleRead", "ConsoleOperate"])?;
        Some(Caller {
            name,
            read: may[0],
            operate: may[0] && may[1],
            csrf: None,
        })
    }

    /// Whether a form's token is this caller's.
    pub fn csrf_ok(&self, sent: Option<&str>) -> bool {
        match &self.csrf {
            None => true,
            Some(token) => sent.is_some_and(|sent| constant_time_eq(sent, token)),
        }
    }
}

/// With auth off: one token for the process, so a page on another site still cannot post a form
/// here (it cannot read the token).
fn anonymous_csrf() -> &'static str {
    static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(random_token);
    &TOKEN
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Session {
    caller: Caller,
    expires: Instant,
}

/// The signed-in browsers.
pub struct Sessions {
    lifetime: Duration,
    held: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Self {
        Sessions {
            lifetime,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for `caller`; its token (the cookie's value).
    pub fn start(&self, mut caller: Caller) -> String {
        let token = random_token();
        caller.csrf = Some(random_token());
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, s| s.expires > now);
        if held.len() >= MAX_SESSIONS {
            if let Some(oldest) = held
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
            {
                held.remove(&oldest);
            }
        }
        held.insert(
            token.clone(),
            Session {
                caller,
                expires: now + self.lifetime,
            },
        );
        token
    }

    /// The caller of a live session.
    pub fn get(&self, token: &str) -> Option<Caller> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(token)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.caller.clone())
    }

    pub fn end(&self, token: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

/// The value of cookie `name`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            name: "ops".into(),
            read: true,
            operate: false,
            csrf: None,
        }
    }

    #[test]
    fn a_session_carries_its_caller_and_a_csrf_token_until_it_ends() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let token = sessions.start(caller());
        let held = sessions.get(&token).expect("live");
        assert_eq!(held.name, "ops");
        assert!(!held.operate);
        let csrf = held.csrf.clone().expect("a session has a token");
        assert!(held.csrf_ok(Some(&csrf)));
        assert!(!held.csrf_ok(Some("0000")));
        assert!(!held.csrf_ok(None));
        assert!(sessions.get("not-a-token").is_none());
        sessions.end(&token);
        assert!(sessions.get(&token).is_none());
    }

    #[test]
    fn an_expired_session_is_gone() {
        let sessions = Sessions::new(Duration::ZERO);
        let token = sessions.start(caller());
        assert!(sessions.get(&token).is_none());
    }

    #[test]
    fn cookies_and_keys_are_read_from_their_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; recsys_console=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "recsys_console"), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        assert_eq!(presented_key(&headers), None);
        headers.insert("authorization", "bearer k1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k1"));
    }
}
