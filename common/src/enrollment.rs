//! The enrollment rules, in one place for both paths that enroll (a standalone spoke,
//! and the hub's leader and state machine), so the same request gets the same answer
//! wherever it lands.
//!
//! In order: the request's own checks (token and CSR sizes, hostname, key), then the
//! token's terms (revoked, expired, hostname scope, uses left), then the hostname guard
//! (one hostname, one active envoy: the same key is a retry, a new key needs a token
//! that allows re-keying).

use serde::{Deserialize, Serialize};

use crate::hostname::Scope;
use crate::refusal::{Kind, Refusal};

/// Bytes of an enrollment token secret.
pub const MAX_TOKEN: usize = 256;
/// Bytes of a certificate signing request.
pub const MAX_CSR: usize = 16 << 10;

/// Why an enrollment is refused. Serializable: the hub's state machine answers with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Denied {
    #[error("malformed {what}: {why}")]
    Malformed { what: String, why: String },
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("enrollment token {0:?} is revoked")]
    TokenRevoked(String),
    #[error("enrollment token {0:?} has expired")]
    TokenExpired(String),
    #[error("enrollment token {0:?} is used up")]
    TokenSpent(String),
    #[error("enrollment token {name:?} enrolls only hostnames matching {patterns}")]
    TokenScope { name: String, patterns: String },
    #[error(
        "hostname {hostname:?} is enrolled as envoy {id:016x} with another key; re-enrolling it needs a token with allow_rekey"
    )]
    HostnameTaken { hostname: String, id: u64 },
}

impl Refusal for Denied {
    fn kind(&self) -> Kind {
        match self {
            Denied::Malformed { .. } => Kind::Malformed,
            Denied::TooLarge { .. } => Kind::TooLarge,
            Denied::UnknownToken => Kind::Unauthenticated,
            Denied::TokenRevoked(_)
            | Denied::TokenExpired(_)
            | Denied::TokenSpent(_)
            | Denied::TokenScope { .. } => Kind::Forbidden,
            Denied::HostnameTaken { .. } => Kind::Precondition,
        }
    }
}

/// An enrollment request that passed its own checks.
pub struct Checked {
    pub hostname: String,
    pub key: ed25519_dalek::VerifyingKey,
    /// SHA-256 of the token secret: tokens are stored by it.
    pub token: [u8; 32],
}

/// The request's own checks, before any state is read.
pub fn check_request(
    token: &str,
    hostname: &str,
    public_key: &[u8],
    csr: &[u8],
) -> Result<Checked, Denied> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(Denied::Malformed {
            what: "token".into(),
            why: format!("must be 1..{MAX_TOKEN} bytes"),
        });
    }
    if csr.len() > MAX_CSR {
        return Err(Denied::TooLarge {
            what: "certificate signing request".into(),
            size: csr.len(),
            limit: MAX_CSR,
        });
    }
    let malformed = |what: &str, e: crate::Error| Denied::Malformed {
        what: what.into(),
        why: e.to_string(),
    };
    let hostname = crate::hostname::normalize(hostname).map_err(|e| malformed("hostname", e))?;
    let key =
        crate::signing::parse_public_key(public_key).map_err(|e| malformed("public_key", e))?;
    Ok(Checked {
        hostname,
        key,
        token: crate::traits::sha256(token.as_bytes()),
    })
}

/// An enrollment token's terms as either path stores them.
pub struct Terms<'a> {
    pub name: &'a str,
    pub uses: u64,
    /// Uses spent, plus those held by enrollments in flight.
    pub taken: u64,
    /// Unix ms; 0 = never.
    pub expires_ms: u64,
    pub revoked: bool,
    /// `None` when the token's patterns do not build: it admits nothing.
    pub scope: Option<&'a Scope>,
}

impl Terms<'_> {
    /// Whether the token may enroll `hostname` at `now_ms`, uses aside (a retried
    /// enrollment spends none).
    pub fn admit(&self, hostname: &str, now_ms: u64) -> Result<(), Denied> {
        if self.revoked {
            return Err(Denied::TokenRevoked(self.name.to_string()));
        }
        if self.expires_ms != 0 && now_ms >= self.expires_ms {
            return Err(Denied::TokenExpired(self.name.to_string()));
        }
        if !self.scope.is_some_and(|s| s.admits(hostname)) {
            return Err(Denied::TokenScope {
                name: self.name.to_string(),
                patterns: self
                    .scope
                    .map_or("(none that compile)".into(), |s| s.patterns().join(", ")),
            });
        }
        Ok(())
    }

    /// [`Terms::admit`], and a use left to spend.
    pub fn admit_new(&self, hostname: &str, now_ms: u64) -> Result<(), Denied> {
        self.admit(hostname, now_ms)?;
        if self.taken >= self.uses {
            return Err(Denied::TokenSpent(self.name.to_string()));
        }
        Ok(())
    }
}

/// What an enrollment does to the envoy a hostname has now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// No active envoy has this hostname.
    Fresh,
    /// The active envoy has this key: the same envoy again.
    Retry(u64),
    /// A new key replaces (and revokes) the active envoy `0`.
    Rekey(u64),
}

/// One hostname, one active envoy: `active` is the hostname's active envoy (id, key).
pub fn guard_hostname(
    hostname: &str,
    active: Option<(u64, &[u8; 32])>,
    key: &[u8; 32],
    allow_rekey: bool,
) -> Result<Guard, Denied> {
    match active {
        None => Ok(Guard::Fresh),
        Some((id, k)) if k == key => Ok(Guard::Retry(id)),
        Some((id, _)) if allow_rekey => Ok(Guard::Rekey(id)),
        Some((id, _)) => Err(Denied::HostnameTaken {
            hostname: hostname.to_string(),
            id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms<'a>(scope: Option<&'a Scope>) -> Terms<'a> {
        Terms {
            name: "t",
            uses: 2,
            taken: 0,
            expires_ms: 0,
            revoked: false,
            scope,
        }
    }

    #[test]
    fn request_checks_name_the_field() {
        let key = [7u8; 32];
        let long = "x".repeat(MAX_TOKEN + 1);
        let e = check_request(&long, "h", &key, b"").err().unwrap();
        assert_eq!(e.kind(), Kind::Malformed);
        let csr = vec![0u8; MAX_CSR + 1];
        let e = check_request("s", "h", &key, &csr).err().unwrap();
        assert_eq!(e.kind(), Kind::TooLarge);
        let e = check_request("s", "bad host!", &key, b"").err().unwrap();
        assert!(matches!(&e, Denied::Malformed { what, .. } if what == "hostname"));
        let e = check_request("s", "h", &[1, 2], b"").err().unwrap();
        assert!(matches!(&e, Denied::Malformed { what, .. } if what == "public_key"));
    }

    #[test]
    fn token_terms_in_order() {
        let any = Scope::new(&[]).unwrap();
        let web = Scope::new(&["web-*".to_string()]).unwrap();
        assert!(terms(Some(&any)).admit_new("db-1", 5).is_ok());
        let revoked = Terms {
            revoked: true,
            expires_ms: 1,
            ..terms(Some(&any))
        };
        assert!(matches!(
            revoked.admit("h", 5),
            Err(Denied::TokenRevoked(_))
        ));
        let expired = Terms {
            expires_ms: 5,
            ..terms(Some(&any))
        };
        assert!(matches!(
            expired.admit("h", 5),
            Err(Denied::TokenExpired(_))
        ));
        assert!(expired.admit("h", 4).is_ok());
        assert!(matches!(
            terms(Some(&web)).admit("db-1", 0),
            Err(Denied::TokenScope { .. })
        ));
        assert!(terms(Some(&web)).admit("web-1", 0).is_ok());
        assert!(
            terms(None).admit("web-1", 0).is_err(),
            "a broken scope admits nothing"
        );
        let spent = Terms {
            taken: 2,
            ..terms(Some(&any))
        };
        assert!(spent.admit("h", 0).is_ok(), "a retry spends no use");
        assert!(matches!(
            spent.admit_new("h", 0),
            Err(Denied::TokenSpent(_))
        ));
    }

    #[test]
    fn one_hostname_one_active_envoy() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(guard_hostname("h", None, &a, false), Ok(Guard::Fresh));
        assert_eq!(
            guard_hostname("h", Some((9, &a)), &a, false),
            Ok(Guard::Retry(9))
        );
        assert_eq!(
            guard_hostname("h", Some((9, &a)), &b, true),
            Ok(Guard::Rekey(9))
        );
        let taken = guard_hostname("h", Some((9, &a)), &b, false).unwrap_err();
        assert_eq!(taken.kind(), Kind::Precondition);
    }
}
