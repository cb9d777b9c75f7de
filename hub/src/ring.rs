//! The consistent-hash ring that places new envoys on spokes.
//!
//! `hashring` has no virtual nodes, so each spoke is added as `VNODES × weight` points
//! of its own; a hostname goes to the spoke owning the next point. The ring only decides
//! first placement: once placed, the replicated pin is the truth.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use vigo_common::limits::MAX_SPOKE_WEIGHT;

use hashring::HashRing;

/// Points per unit of weight.
pub const VNODES: u32 = 256;

#[derive(Clone, Debug)]
struct Point {
    spoke: String,
    index: u32,
}

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.spoke.hash(state);
        self.index.hash(state);
    }
}

pub struct Ring {
    ring: HashRing<Point>,
}

/// The ring of a replicated state, built when first asked for after the spokes changed
/// (a ring of heavy spokes is tens of thousands of points: not rebuilt per enrollment).
/// It is derived data: never serialized, equal to any other cache, empty when cloned.
#[derive(Default)]
pub struct RingCache(Mutex<Option<Arc<Ring>>>);

impl RingCache {
    pub fn get(&self, build: impl FnOnce() -> Ring) -> Arc<Ring> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cached.get_or_insert_with(|| Arc::new(build())).clone()
    }

    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Clone for RingCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for RingCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for RingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingCache")
    }
}

impl Ring {
    /// A ring over `(spoke id, weight)`; the same spokes always make the same ring.
    pub fn new<'a>(spokes: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut ring = HashRing::new();
        let points: Vec<Point> = spokes
            .into_iter()
            .flat_map(|(spoke, weight)| {
                // Weights are bounded where they enter (config, registration, the admin
                // API); clamping here keeps a bad entry from costing memory or wrapping.
                let points = VNODES.saturating_mul(weight.clamp(1, MAX_SPOKE_WEIGHT));
                (0..points).map(move |index| Point {
                    spoke: spoke.to_string(),
                    index,
                })
            })
            .collect();
        ring.batch_add(points);
        Self { ring }
    }

    /// The spoke a new envoy with this hostname goes to.
    pub fn place(&self, hostname: &str) -> Option<&str> {
        self.ring.get(&hostname).map(|p| p.spoke.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spread(ring: &Ring, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for i in 0..n {
            *counts
                .entry(ring.place(&format!("host-{i}")).unwrap().to_string())
                .or_default() += 1;
        }
        counts
    }

    #[test]
    fn placement_is_stable_balanced_and_weighted() {
        let ring = Ring::new([("a", 1), ("b", 1), ("c", 1)]);
        let again = Ring::new([("c", 1), ("a", 1), ("b", 1)]);
        assert_eq!(
            ring.place("web-1"),
            again.place("web-1"),
            "order does not matter"
        );
        let counts = spread(&ring, 30_000);
        for (spoke, n) in &counts {
            assert!((8_000..12_000).contains(n), "{spoke}: {n} of 30000");
        }
        let weighted = Ring::new([("a", 2), ("b", 1), ("c", 1)]);
        let counts = spread(&weighted, 40_000);
        assert!(counts["a"] > counts["b"] + 5_000, "{counts:?}");
    }

    /// A weight that would once have built 2^32 points (or wrapped to none) is held to
    /// the bound: the ring stays small and both spokes get envoys.
    #[test]
    fn hostile_weights_neither_explode_nor_wrap() {
        let ring = Ring::new([("a", 1 << 24), ("b", u32::MAX)]);
        let placed: std::collections::BTreeSet<_> = (0..2000)
            .filter_map(|i| ring.place(&format!("h{i}")).map(str::to_string))
            .collect();
        assert_eq!(placed.len(), 2);
    }

    #[test]
    fn adding_a_spoke_moves_only_its_share() {
        let three = Ring::new([("a", 1), ("b", 1), ("c", 1)]);
        let four = Ring::new([("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let moved = (0..10_000)
            .filter(|i| {
                let h = format!("host-{i}");
                three.place(&h) != four.place(&h)
            })
            .count();
        assert!(
            moved < 3_500,
            "{moved} of 10000 moved; about a quarter should"
        );
        assert!(Ring::new([]).place("x").is_none());
    }
}
