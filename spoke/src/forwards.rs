//! Where envoys that moved to another spoke went: read by every check-in (an envoy
//! that moved is redirected, its request verified with the key it moved with), written
//! by hand-offs, restored from the store at start-up. Kept apart from the hand-off code
//! so the check-in path does not reach admin code.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ed25519_dalek::VerifyingKey;
use vigo_common::EnvoyId;
use vigo_common::signing::parse_public_key;

use crate::store::StoredForward;

/// Envoys that moved away: where they went, and the key their redirected check-ins
/// are verified with.
#[derive(Default)]
pub struct Forwards {
    map: RwLock<HashMap<u64, (VerifyingKey, Arc<str>)>>,
}

impl Forwards {
    pub fn get(&self, id: EnvoyId) -> Option<(VerifyingKey, Arc<str>)> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.get())
            .cloned()
    }

    pub(crate) fn set(&self, id: u64, key: VerifyingKey, address: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (key, address.into()));
    }

    pub(crate) fn clear(&self, id: u64) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Loads the forwarding rows at start-up.
    pub fn restore(&self, rows: HashMap<u64, StoredForward>) {
        for (id, row) in rows {
            if let Ok(key) = parse_public_key(&row.public_key) {
                self.set(id, key, &row.address);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
