//! Certificates revoked by serial, as every server of a node checks them: per call,
//! before the admission table, so a revocation reaches connections already open.
//!
//! The hub fills the set from its replicated state, a spoke from the revocations the
//! hub sends it; lookups take a read lock for one hash probe.

use std::collections::HashSet;
use std::sync::RwLock;

#[derive(Debug, Default)]
pub struct RevokedCerts {
    serials: RwLock<HashSet<Box<str>>>,
}

impl RevokedCerts {
    pub fn contains(&self, serial: &str) -> bool {
        !serial.is_empty()
            && self
                .serials
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(serial)
    }

    /// Adds serials (spelled as `pki::serial_hex` spells them).
    pub fn extend<'a>(&self, serials: impl IntoIterator<Item = &'a str>) {
        let mut set = self.serials.write().unwrap_or_else(|p| p.into_inner());
        set.extend(serials.into_iter().map(Box::from));
    }

    /// Makes the set exactly `serials` (a hub that installed a snapshot).
    pub fn replace<'a>(&self, serials: impl IntoIterator<Item = &'a str>) {
        let fresh: HashSet<Box<str>> = serials.into_iter().map(Box::from).collect();
        *self.serials.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    pub fn len(&self) -> usize {
        self.serials.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
