//! Trait sets, stored once per distinct content and shared by every envoy that has it.
//!
//! A set arrives staged (known, referenced by nobody), is adopted by the envoys whose
//! hash moves to it, and is dropped from memory when the last one moves away. New sets
//! reach disk with the flush that carries the states referring to them; sets no state
//! refers to are deleted from disk at start-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use vigo_common::traits::TraitMap;
use vigo_proto::v1 as pb;

struct Entry {
    traits: Arc<TraitMap>,
    refs: u64,
    /// Flushes this set has waited through while staged and unadopted.
    idle_flushes: u8,
}

#[derive(Default)]
struct Inner {
    sets: HashMap<[u8; 32], Entry>,
    unpersisted: Vec<[u8; 32]>,
}

#[derive(Default)]
pub struct TraitsStore {
    inner: Mutex<Inner>,
}

impl TraitsStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a verified set known before any envoy refers to it.
    pub fn stage(&self, hash: [u8; 32], traits: TraitMap) {
        let mut inner = self.lock();
        if let std::collections::hash_map::Entry::Vacant(slot) = inner.sets.entry(hash) {
            slot.insert(Entry {
                traits: Arc::new(traits),
                refs: 0,
                idle_flushes: 0,
            });
            inner.unpersisted.push(hash);
        }
    }

    /// A set loaded from disk at start-up.
    pub fn restore(&self, hash: [u8; 32], traits: TraitMap) {
        self.lock().sets.insert(
            hash,
            Entry {
                traits: Arc::new(traits),
                refs: 0,
                idle_flushes: 0,
            },
        );
    }

    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.lock().sets.contains_key(hash)
    }

    /// An envoy moves from set `from` to set `to` (zero hash: no set). False, and no
    /// move, when `to` is not known (the envoy must send it again).
    pub fn adopt(&self, from: &[u8; 32], to: &[u8; 32]) -> bool {
        let mut inner = self.lock();
        match inner.sets.get_mut(to) {
            Some(e) => e.refs += 1,
            None => return false,
        }
        if let Some(e) = inner.sets.get_mut(from) {
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 {
                inner.sets.remove(from);
            }
        }
        true
    }

    /// An envoy that referred to set `hash` is gone (handed off to another spoke).
    pub fn release(&self, hash: &[u8; 32]) {
        let mut inner = self.lock();
        if let Some(e) = inner.sets.get_mut(hash) {
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 {
                inner.sets.remove(hash);
            }
        }
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<TraitMap>> {
        self.lock().sets.get(hash).map(|e| e.traits.clone())
    }

    /// Distinct sets held in memory.
    pub fn len(&self) -> usize {
        self.lock().sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets not yet on disk, encoded, for the flush that is about to run. A staged set
    /// nobody adopted waits for the next flush (its check-in may be mid-way), and is
    /// forgotten at the one after.
    pub fn take_unpersisted(&self) -> Vec<([u8; 32], Vec<u8>)> {
        let mut inner = self.lock();
        let hashes = std::mem::take(&mut inner.unpersisted);
        let mut out = Vec::with_capacity(hashes.len());
        let mut waiting = Vec::new();
        for h in hashes {
            let Some(e) = inner.sets.get_mut(&h) else {
                continue;
            };
            if e.refs > 0 {
                out.push((h, encode(&e.traits)));
            } else if e.idle_flushes == 0 {
                e.idle_flushes = 1;
                waiting.push(h);
            } else {
                inner.sets.remove(&h);
            }
        }
        inner.unpersisted = waiting;
        out
    }
}

impl TraitsStore {
    /// Sets whose flush failed go out with the next one.
    pub fn requeue(&self, hashes: Vec<[u8; 32]>) {
        self.lock().unpersisted.extend(hashes);
    }
}

pub fn encode(traits: &TraitMap) -> Vec<u8> {
    pb::Traits {
        values: traits.clone(),
    }
    .encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Option<TraitMap> {
    pb::Traits::decode(bytes).ok().map(|t| t.values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_live_while_referenced() {
        let store = TraitsStore::default();
        let a = [1u8; 32];
        let b = [2u8; 32];
        store.stage(a, TraitMap::from([("os".into(), "debian".into())]));
        assert!(store.adopt(&[0; 32], &a));
        assert!(store.adopt(&[0; 32], &a));
        assert_eq!(store.take_unpersisted().len(), 1);
        store.stage(b, TraitMap::new());
        assert!(store.adopt(&a, &b));
        assert!(store.contains(&a), "still one envoy on a");
        assert!(store.adopt(&a, &b));
        assert!(!store.contains(&a), "last envoy left a");
        // A staged set nobody adopted is not written.
        store.stage([3; 32], TraitMap::new());
        let written: Vec<_> = store
            .take_unpersisted()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        assert_eq!(written, vec![b]);
        assert!(
            store.contains(&[3; 32]),
            "kept for one flush: its check-in may be mid-way"
        );
        assert!(store.take_unpersisted().is_empty());
        assert!(
            !store.contains(&[3; 32]),
            "forgotten after the second flush"
        );
        assert!(
            !store.adopt(&b, &[3; 32]),
            "an unknown set cannot be adopted"
        );
    }
}
