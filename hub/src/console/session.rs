//! Console sessions: an API token, typed once into the log-in form, exchanged for a
//! signed cookie. The cookie holds the token's SHA-256 (never the secret), when the
//! session ends and a random nonce, with an HMAC over them under a key every hub node
//! derives from the cluster CA — so any node accepts it and nobody can forge one.
//!
//! A session is checked on every request against the leader's state: a token revoked
//! or expired ends its sessions at once. The CSRF token of a session is an HMAC of its
//! nonce, so every form carries a value a cross-site page cannot know. The log-in form
//! itself is protected by a double-submit cookie.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use vigo_common::refusal::{Kind, Refusal};
use vigo_common::time::now_ms;

use super::{Console, Page, Refused, State, html_answer, layout, read_form};

use crate::admin::Caller;

/// `__Host-`: only ever set over HTTPS, for the whole origin, by this origin.
const SESSION_COOKIE: &str = "__Host-vigo-session";
const LOGIN_COOKIE: &str = "__Host-vigo-login";
/// How long a session lasts at most (less when the token expires sooner).
pub const SESSION_TTL_MS: u64 = 8 * 3600 * 1000;

/// A logged-in caller, proven by its cookie and checked against fresh state.
pub struct Session {
    pub caller: Caller,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

impl Session {
    /// Whether the form's CSRF token is this session's.
    pub fn check_csrf(&self, given: &str) -> Result<(), Refused> {
        if constant_time_eq(given.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(Refused::new(
                Kind::Forbidden,
                "the form's CSRF token is missing or not this session's; reload the page and try again",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key that signs session cookies and derives CSRF tokens; the same on every hub
/// node (derived from the cluster CA key), so a session works on whichever node answers.
pub struct Keys(ring::hmac::Key);

impl Keys {
    pub fn new(secret: &[u8; 32]) -> Self {
        Keys(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn sign(&self, payload: &[u8]) -> String {
        hex::encode(ring::hmac::sign(&self.0, payload).as_ref())
    }

    /// The cookie value of a session for the token `hash` ending at `expires_ms`.
    fn seal(&self, hash: &[u8; 32], expires_ms: u64) -> String {
        let mut payload = Vec::with_capacity(56);
        payload.extend_from_slice(hash);
        payload.extend_from_slice(&expires_ms.to_be_bytes());
        payload.extend_from_slice(&rand::random::<[u8; 16]>());
        format!("{}.{}", hex::encode(&payload), self.sign(&payload))
    }

    /// The token hash, end and nonce of a cookie value, if this cluster signed it.
    fn open(&self, value: &str) -> Option<([u8; 32], u64, [u8; 16])> {
        let (payload, tag) = value.split_once('.')?;
        let payload = hex::decode(payload).ok()?;
        let tag = hex::decode(tag).ok()?;
        ring::hmac::verify(&self.0, &payload, &tag).ok()?;
        if payload.len() != 56 {
            return None;
        }
        let hash: [u8; 32] = payload[..32].try_into().ok()?;
        let expires = u64::from_be_bytes(payload[32..40].try_into().ok()?);
        let nonce: [u8; 16] = payload[40..].try_into().ok()?;
        Some((hash, expires, nonce))
    }

    fn csrf_of(&self, nonce: &[u8; 16]) -> String {
        let mut input = b"csrf\0".to_vec();
        input.extend_from_slice(nonce);
        self.sign(&input)
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age_s: u64) -> (header::HeaderName, HeaderValue) {
    let text =
        format!("{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; Secure; SameSite=Strict");
    (
        header::SET_COOKIE,
        HeaderValue::from_str(&text).expect("cookie text is ASCII"),
    )
}

impl FromRequestParts<Arc<Console>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Response> {
        let not_logged_in = |why: &str| -> Response {
            if parts.method == Method::GET {
                Redirect::to("/console/login").into_response()
            } else {
                Refused::new(Kind::Unauthenticated, format!("{why}; log in again")).into_response()
            }
        };
        let Some((hash, expires, nonce)) =
            cookie(&parts.headers, SESSION_COOKIE).and_then(|v| console.keys.open(v))
        else {
            return Err(not_logged_in("no console session"));
        };
        let now = now_ms();
        if expires <= now {
            return Err(not_logged_in("the session has ended"));
        }
        let Some(token) = console.api.node.read(|s| s.api_token(&hash, now).cloned()) else {
            return Err(not_logged_in(
                "the session's API token was revoked or has expired",
            ));
        };
        let caller = Caller::token_holder(&token, hash);
        if let Err(e) = console.api.check_fresh(&caller).await {
            return Err(match e.kind() {
                Kind::Unauthenticated => not_logged_in(&e.to_string()),
                _ => Refused::from(e).into_response(),
            });
        }
        Ok(Session {
            caller,
            csrf: console.keys.csrf_of(&nonce),
        })
    }
}

/// The log-in form, with a fresh double-submit token in a cookie and a hidden field.
pub async fn login_page() -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let page = html_answer(layout::login_page(&nonce, None));
    ([set_cookie(LOGIN_COOKIE, &nonce, 3600)], page).into_response()
}

/// Exchanges an API token for a session cookie.
pub async fn log_in(
    axum::extract::State(console): State,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match log_in_checked(&console, &headers, body).await {
        Ok(cookie) => ([cookie], Redirect::to("/console/")).into_response(),
        Err(refused) if refused.kind == Kind::Unauthenticated => {
            let nonce = hex::encode(rand::random::<[u8; 16]>());
            let mut response = (
                StatusCode::UNAUTHORIZED,
                [set_cookie(LOGIN_COOKIE, &nonce, 3600)],
                html_answer(layout::login_page(&nonce, Some(&refused.message))),
            )
                .into_response();
            response.extensions_mut().insert(refused.kind);
            response
        }
        Err(refused) => refused.into_response(),
    }
}

/// Order: the form's double-submit cookie (a post from another site has none) before
/// the body is read, the body under the form limits, the nonce against the cookie, the
/// token against the leader's state.
async fn log_in_checked(
    console: &Console,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(header::HeaderName, HeaderValue), Refused> {
    let stale = || {
        Refused::new(
            Kind::Forbidden,
            "the log-in form is stale or was not sent from this console; reload it",
        )
    };
    let expected = cookie(headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() {
        return Err(stale());
    }
    let form = read_form(body).await?;
    if !constant_time_eq(expected.as_bytes(), form.get("login_csrf").as_bytes()) {
        return Err(stale());
    }
    let secret = form.get("token");
    let hash = vigo_common::traits::sha256(secret.as_bytes());
    let now = now_ms();
    let token = console
        .api
        .node
        .read(|s| s.api_token(&hash, now).cloned())
        .ok_or_else(|| {
            Refused::new(
                Kind::Unauthenticated,
                "unknown, revoked or expired API token",
            )
        })?;
    let caller = Caller::token_holder(&token, hash);
    console.api.check_fresh(&caller).await?;
    let mut expires = now + SESSION_TTL_MS;
    if token.expires_ms != 0 {
        expires = expires.min(token.expires_ms);
    }
    tracing::info!(token = %token.name, role = token.role.as_str(), "console log-in");
    let value = console.keys.seal(&hash, expires);
    Ok(set_cookie(SESSION_COOKIE, &value, (expires - now) / 1000))
}

/// Ends the session in this browser (the cookie is cleared; revoking the token ends
/// every session made with it).
pub async fn log_out(session: Session, body: axum::body::Body) -> Result<Response, Refused> {
    let form = read_form(body).await?;
    session.check_csrf(form.get("csrf"))?;
    Ok((
        [set_cookie(SESSION_COOKIE, "", 0)],
        Redirect::to("/console/login"),
    )
        .into_response())
}

/// A page for a logged-in caller: what every GET handler returns.
pub fn render(session: &Session, title: &str, nav: layout::Nav, body: maud::Markup) -> Page {
    Ok(html_answer(layout::page(session, title, nav, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_opens_only_as_sealed_by_this_key() {
        let keys = Keys::new(&[7; 32]);
        let value = keys.seal(&[1; 32], 42);
        let (hash, expires, nonce) = keys.open(&value).expect("opens");
        assert_eq!((hash, expires), ([1; 32], 42));
        // Two sessions of one token differ, and so do their CSRF tokens.
        let (_, _, other) = keys.open(&keys.seal(&[1; 32], 42)).unwrap();
        assert_ne!(keys.csrf_of(&nonce), keys.csrf_of(&other));
        // Another cluster's key, a changed byte, a longer expiry, a cut tag: refused.
        assert!(Keys::new(&[8; 32]).open(&value).is_none());
        let (payload, tag) = value.split_once('.').unwrap();
        let mut bytes = hex::decode(payload).unwrap();
        bytes[39] ^= 1;
        assert!(
            keys.open(&format!("{}.{tag}", hex::encode(&bytes)))
                .is_none()
        );
        assert!(keys.open(&format!("{payload}.{}", &tag[..40])).is_none());
        assert!(keys.open(payload).is_none());
        assert!(keys.open("").is_none());
        // A well-signed payload of the wrong length (not one this code makes).
        let short = hex::encode([0u8; 10]);
        assert!(
            keys.open(&format!("{short}.{}", keys.sign(&[0u8; 10])))
                .is_none()
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x__Host-vigo-session=evil; __Host-vigo-session=good"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("good"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), None);
    }

    #[test]
    fn csrf_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
