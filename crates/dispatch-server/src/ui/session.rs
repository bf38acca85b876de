//! Dashboard sessions: who is looking, what they may do, and the CSRF
//! token of their forms.
//!
//! With tokens (`--tokens`), the sign-in form takes a bearer token; a
//! known one opens a session kept here, in a bounded map with an expiry,
//! named by a random id in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` over TLS). The session holds the token itself, because the
//! dashboard's actions are API requests made with it (see `ui::act`): the
//! API's scope table and audit log see the same token a script would send.
//! Every request checks the token again, so a token taken out of the file
//! ends its sessions.
//!
//! Without tokens (a loopback server in development) there is no sign-in:
//! everyone acts, and the forms carry one CSRF token drawn at start.
//!
//! CSRF: every form carries its session's token, compared in constant
//! time on every POST; the cookie is `SameSite=Strict`; and a POST whose
//! `Origin` names another host is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::auth::Tokens;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "dispatch_session";

/// The cookie of a message shown once on the next page.
pub(crate) const FLASH_COOKIE: &str = "dispatch_flash";

/// Most sessions kept; past it the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;

/// How long a session lasts after sign-in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

struct Session {
    token: String,
    csrf: String,
    expires: Instant,
    created: Instant,
}

/// The viewer of one request.
#[derive(Clone, Debug)]
pub(crate) struct Viewer {
    /// The session id (`None` without tokens).
    pub(crate) id: Option<String>,
    /// The bearer token its actions carry (`None` without tokens).
    pub(crate) token: Option<String>,
    /// The token's name, as the audit log shows it.
    pub(crate) who: Option<String>,
    /// May act: the admin scope, or no tokens at all.
    pub(crate) admin: bool,
    /// The CSRF token its forms carry.
    pub(crate) csrf: String,
}

/// Every open session.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    /// The forms' CSRF token when the server has no tokens (empty, and so
    /// never matched, without randomness).
    open_csrf: String,
}

/// 32 random bytes in hex; `None` when the operating system gives none
/// (then no session opens and no form is accepted: ids and CSRF tokens
/// must be impossible to guess).
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the dashboard's paths.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

impl Sessions {
    pub(crate) fn new() -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            open_csrf: random_hex().unwrap_or_default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for a known `token`: its id, to set as the cookie;
    /// `None` without randomness.
    pub(crate) fn open(&self, token: String) -> Option<String> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                token,
                csrf,
                expires: now + SESSION_TTL,
                created: now,
            },
        );
        Some(id)
    }

    /// Ends a session.
    pub(crate) fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The viewer of a request: without tokens, anyone (who may act);
    /// with tokens, the holder of a live session whose token is still
    /// known, else `None` (sign in first).
    pub(crate) fn viewer(&self, tokens: Option<&Tokens>, headers: &HeaderMap) -> Option<Viewer> {
        let Some(tokens) = tokens else {
            return Some(Viewer {
                id: None,
                token: None,
                who: None,
                admin: true,
                csrf: self.open_csrf.clone(),
            });
        };
        let id = cookie(headers, COOKIE)?;
        let (token, csrf) = {
            let mut map = self.lock();
            let s = map.get(id)?;
            if s.expires <= Instant::now() {
                map.remove(id);
                return None;
            }
            (s.token.clone(), s.csrf.clone())
        };
        let Some((who, admin)) = tokens.identify(&token) else {
            // The token is no longer accepted: neither is its session.
            self.close(id);
            return None;
        };
        Some(Viewer {
            id: Some(id.to_owned()),
            token: Some(token),
            who: Some(who),
            admin,
            csrf,
        })
    }
}

/// Why a POST is refused before it acts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The form's CSRF token is missing or wrong, or it came from another
    /// site.
    Forged,
    /// The viewer may only look.
    ReadOnly,
}

/// Checks a POST: sent from a page of this server, with the viewer's CSRF
/// token, by a viewer who may act.
pub(crate) fn check_post(
    viewer: &Viewer,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<(), Refusal> {
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin_host != host {
            return Err(Refusal::Forged);
        }
    }
    let given = form_csrf.unwrap_or_default();
    if viewer.csrf.is_empty() || !bool::from(given.as_bytes().ct_eq(viewer.csrf.as_bytes())) {
        return Err(Refusal::Forged);
    }
    if !viewer.admin {
        return Err(Refusal::ReadOnly);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Scope, generate_token, token_line};
    use axum::http::HeaderValue;

    fn tokens() -> (Tokens, String, String) {
        let (admin, reader) = (generate_token().unwrap(), generate_token().unwrap());
        let text = format!(
            "{}\n{}\n",
            token_line(&admin, &[Scope::Admin], Some("ops")),
            token_line(&reader, &[Scope::Submit], Some("viewer"))
        );
        (Tokens::parse(&text).unwrap(), admin, reader)
    }

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_session_knows_its_token_and_a_forged_form_is_refused() {
        let (tokens, admin, reader) = tokens();
        let sessions = Sessions::new();
        assert!(sessions.viewer(Some(&tokens), &HeaderMap::new()).is_none());
        assert!(
            sessions
                .viewer(Some(&tokens), &with_cookie("nope"))
                .is_none()
        );
        let id = sessions.open(admin).unwrap();
        let v = sessions.viewer(Some(&tokens), &with_cookie(&id)).unwrap();
        assert_eq!(v.who.as_deref(), Some("ops"));
        assert!(v.admin);
        let h = with_cookie(&id);
        assert_eq!(check_post(&v, &h, Some(&v.csrf)), Ok(()));
        assert_eq!(check_post(&v, &h, None), Err(Refusal::Forged));
        assert_eq!(check_post(&v, &h, Some("0")), Err(Refusal::Forged));
        let mut cross = h.clone();
        cross.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
        cross.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert_eq!(check_post(&v, &cross, Some(&v.csrf)), Err(Refusal::Forged));
        cross.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7070"),
        );
        assert_eq!(check_post(&v, &cross, Some(&v.csrf)), Ok(()));

        let rid = sessions.open(reader).unwrap();
        let r = sessions.viewer(Some(&tokens), &with_cookie(&rid)).unwrap();
        assert!(!r.admin);
        assert_ne!(r.csrf, v.csrf);
        assert_eq!(
            check_post(&r, &with_cookie(&rid), Some(&r.csrf)),
            Err(Refusal::ReadOnly)
        );
        sessions.close(&id);
        assert!(sessions.viewer(Some(&tokens), &with_cookie(&id)).is_none());
        // A token no longer in the file ends its session.
        let (others, _, _) = self::tokens();
        assert!(sessions.viewer(Some(&others), &with_cookie(&rid)).is_none());
        assert!(sessions.viewer(Some(&tokens), &with_cookie(&rid)).is_none());
    }

    #[test]
    fn without_tokens_everyone_acts_with_the_process_csrf_token() {
        let sessions = Sessions::new();
        let v = sessions.viewer(None, &HeaderMap::new()).unwrap();
        assert!(v.admin && v.who.is_none());
        assert_eq!(v.csrf.len(), 64);
        assert_eq!(check_post(&v, &HeaderMap::new(), Some(&v.csrf)), Ok(()));
        assert_eq!(
            check_post(&v, &HeaderMap::new(), Some("x")),
            Err(Refusal::Forged)
        );
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new();
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.open("t".into());
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }
}
