//! Enrollment tokens: defined in the config by the SHA-256 of their secret, with a use
//! count (durable in redb) and an optional expiry.
//!
//! A use is reserved before an enrollment's durable write and committed or released
//! after it, so concurrent enrollments can never overspend a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use vigo_common::enrollment::{Denied, Terms};
use vigo_common::hostname::Scope;

use crate::config::TokenConfig;
use crate::error::SpokeError;

pub fn hash_secret(secret: &str) -> [u8; 32] {
    vigo_common::traits::sha256(secret.as_bytes())
}

/// A fresh token secret: "vgt_" and 40 hex digits (160 random bits).
pub fn new_secret() -> String {
    format!("vgt_{}", hex::encode(rand::random::<[u8; 20]>()))
}

struct Token {
    name: String,
    uses: u64,
    expires: Option<SystemTime>,
    allow_rekey: bool,
    scope: Option<Scope>,
}

#[derive(Default)]
struct Book {
    tokens: HashMap<[u8; 32], Token>,
    used: HashMap<[u8; 32], u64>,
    reserved: HashMap<[u8; 32], u64>,
}

pub struct TokenBook {
    book: Mutex<Book>,
}

/// A token use held for one enrollment in progress.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub hash: [u8; 32],
    pub name: String,
    pub allow_rekey: bool,
}

impl TokenBook {
    /// `used` are the use counts recovered from the store.
    pub fn new(configs: &[TokenConfig], used: HashMap<[u8; 32], u64>) -> Self {
        let tokens = configs
            .iter()
            .filter_map(|t| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut hash).ok()?;
                Some((
                    hash,
                    Token {
                        name: t.name.clone(),
                        uses: t.uses,
                        expires: t.expires,
                        allow_rekey: t.allow_rekey,
                        // Checked when the config loaded; a scope that does not build
                        // (None) admits nothing rather than everything.
                        scope: Scope::new(&t.hostnames).ok(),
                    },
                ))
            })
            .collect();
        Self {
            book: Mutex::new(Book {
                tokens,
                used,
                reserved: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the token is known, unexpired and may enroll `hostname`, without spending
    /// a use (a retried enrollment of an already enrolled envoy).
    pub fn check(
        &self,
        secret: &str,
        hostname: &str,
        now: SystemTime,
    ) -> Result<Reservation, SpokeError> {
        self.admit(secret, hostname, now, false)
    }

    /// Reserves one use of the token.
    pub fn reserve(
        &self,
        secret: &str,
        hostname: &str,
        now: SystemTime,
    ) -> Result<Reservation, SpokeError> {
        self.admit(secret, hostname, now, true)
    }

    /// The shared token rules (`vigo_common::enrollment::Terms`) over this book.
    fn admit(
        &self,
        secret: &str,
        hostname: &str,
        now: SystemTime,
        spend: bool,
    ) -> Result<Reservation, SpokeError> {
        let hash = hash_secret(secret);
        let mut book = self.lock();
        let token = book.tokens.get(&hash).ok_or(Denied::UnknownToken)?;
        let terms = Terms {
            name: &token.name,
            uses: token.uses,
            taken: book.used.get(&hash).copied().unwrap_or(0)
                + book.reserved.get(&hash).copied().unwrap_or(0),
            expires_ms: token
                .expires
                .map_or(0, |e| vigo_common::time::unix_ms(e).max(1)),
            revoked: false,
            scope: token.scope.as_ref(),
        };
        let now_ms = vigo_common::time::unix_ms(now);
        if spend {
            terms.admit_new(hostname, now_ms)?;
        } else {
            terms.admit(hostname, now_ms)?;
        }
        let reservation = Reservation {
            hash,
            name: token.name.clone(),
            allow_rekey: token.allow_rekey,
        };
        if spend {
            *book.reserved.entry(hash).or_default() += 1;
        }
        Ok(reservation)
    }

    /// The enrollment is durable: the use is spent.
    pub fn commit(&self, r: &Reservation) {
        let mut book = self.lock();
        Self::unreserve(&mut book, r);
        *book.used.entry(r.hash).or_default() += 1;
    }

    /// The enrollment failed: the use is returned.
    pub fn release(&self, r: &Reservation) {
        Self::unreserve(&mut self.lock(), r);
    }

    fn unreserve(book: &mut Book, r: &Reservation) {
        if let Some(n) = book.reserved.get_mut(&r.hash) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(secret: &str, uses: u64, expires: Option<SystemTime>) -> TokenConfig {
        TokenConfig {
            name: "t".into(),
            sha256: hex::encode(hash_secret(secret)),
            uses,
            expires,
            allow_rekey: false,
            hostnames: Vec::new(),
        }
    }

    #[test]
    fn uses_are_counted_across_reservations() {
        let book = TokenBook::new(&[config("s", 2, None)], HashMap::new());
        let now = SystemTime::now();
        let a = book.reserve("s", "h1", now).unwrap();
        let b = book.reserve("s", "h1", now).unwrap();
        assert!(matches!(
            book.reserve("s", "h1", now),
            Err(SpokeError::Enroll(Denied::TokenSpent(_)))
        ));
        book.release(&b);
        book.commit(&a);
        let c = book.reserve("s", "h1", now).unwrap();
        book.commit(&c);
        assert!(matches!(
            book.reserve("s", "h1", now),
            Err(SpokeError::Enroll(Denied::TokenSpent(_)))
        ));
        assert!(matches!(
            book.reserve("x", "h1", now),
            Err(SpokeError::Enroll(Denied::UnknownToken))
        ));
    }

    #[test]
    fn expired_and_stored_uses_are_honoured() {
        let past = SystemTime::now() - Duration::from_secs(1);
        let book = TokenBook::new(&[config("old", 5, Some(past))], HashMap::new());
        assert!(matches!(
            book.reserve("old", "h1", SystemTime::now()),
            Err(SpokeError::Enroll(Denied::TokenExpired(_)))
        ));
        let used = HashMap::from([(hash_secret("s"), 1)]);
        let book = TokenBook::new(&[config("s", 1, None)], used);
        assert!(matches!(
            book.reserve("s", "h1", SystemTime::now()),
            Err(SpokeError::Enroll(Denied::TokenSpent(_)))
        ));
        assert!(book.check("s", "h1", SystemTime::now()).is_ok());
    }

    #[test]
    fn a_scoped_token_enrolls_only_matching_hostnames() {
        let scoped = TokenConfig {
            hostnames: vec!["web-*".into()],
            ..config("s", 5, None)
        };
        let book = TokenBook::new(&[scoped], HashMap::new());
        let now = SystemTime::now();
        assert!(matches!(
            book.reserve("s", "db-1", now),
            Err(SpokeError::Enroll(Denied::TokenScope { .. }))
        ));
        assert!(book.reserve("s", "web-1", now).is_ok());
        // A scope that does not build admits nothing.
        let broken = TokenConfig {
            hostnames: vec!["web-[".into()],
            ..config("b", 5, None)
        };
        let book = TokenBook::new(&[broken], HashMap::new());
        assert!(book.check("b", "web-1", now).is_err());
    }
}
