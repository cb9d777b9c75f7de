//! Envoy identities as they appear on the wire (`fixed64`), in logs and in certificates.

use std::fmt;
use std::str::FromStr;

/// An envoy's identity: a random non-zero 64-bit number, shown as 16 hex digits.
///
/// A number rather than a string keeps every hot-path lookup allocation-free.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvoyId(u64);

impl EnvoyId {
    pub const fn new(raw: u64) -> Option<Self> {
        if raw == 0 { None } else { Some(Self(raw)) }
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// A fresh random identity; callers check it against the ids they hold.
    pub fn random() -> Self {
        loop {
            if let Some(id) = Self::new(rand::random()) {
                return id;
            }
        }
    }
}

impl fmt::Display for EnvoyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for EnvoyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvoyId({self})")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("envoy id must be 16 hex digits and not all zero, got {0:?}")]
pub struct ParseEnvoyIdError(String);

impl FromStr for EnvoyId {
    type Err = ParseEnvoyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseEnvoyIdError(s.to_string());
        if s.len() != 16 {
            return Err(bad());
        }
        let raw = u64::from_str_radix(s, 16).map_err(|_| bad())?;
        Self::new(raw).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = EnvoyId::new(0x00ab_cdef_0123_4567).unwrap();
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!("00abcdef01234567".parse::<EnvoyId>().unwrap(), id);
    }

    #[test]
    fn rejects_zero_short_and_non_hex() {
        assert!(EnvoyId::new(0).is_none());
        assert!("0000000000000000".parse::<EnvoyId>().is_err());
        assert!("abc".parse::<EnvoyId>().is_err());
        assert!("zzzzzzzzzzzzzzzz".parse::<EnvoyId>().is_err());
    }
}
