//! Who this hub node has heard from lately, kept out of the raft log: spokes (every
//! heartbeat that reaches the node, forwarded ones included, so the leader hears them
//! all) and the other hub nodes (every raft RPC they answered).
//!
//! The replicated state says which spokes exist and what they serve; whether one is
//! alive right now is this node's observation, refreshed every heartbeat (2 s by
//! default) and never written through raft.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A spoke not heard from for this long is shown unhealthy (the spoke's default
/// heartbeat is 2 s: four missed in a row).
pub const SPOKE_HEALTHY_WITHIN: Duration = Duration::from_secs(8);
/// A hub node that has answered no raft RPC for this long is shown unreachable.
pub const PEER_REACHABLE_WITHIN: Duration = Duration::from_secs(3);

/// A spoke's served config version is written through raft at most this often: a
/// spoke flipping between two versions cannot make every heartbeat an fsynced entry.
pub const CONFIG_RECORD_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Liveness {
    spokes: Mutex<HashMap<String, Instant>>,
    peers: Mutex<HashMap<u64, Instant>>,
    config_recorded: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    pub fn saw_spoke(&self, id: &str) {
        let mut spokes = self.spokes.lock().unwrap_or_else(|p| p.into_inner());
        match spokes.get_mut(id) {
            Some(at) => *at = Instant::now(),
            None => {
                spokes.insert(id.to_string(), Instant::now());
            }
        }
    }

    /// How long ago the spoke was last heard from here, if it ever was.
    pub fn spoke_silent_for(&self, id: &str) -> Option<Duration> {
        let spokes = self.spokes.lock().unwrap_or_else(|p| p.into_inner());
        spokes.get(id).map(Instant::elapsed)
    }

    /// Whether a change of the config version `id` serves may be written now (at most
    /// one write per [`CONFIG_RECORD_EVERY`] per spoke); taking the turn when it may.
    pub fn config_record_due(&self, id: &str) -> bool {
        let mut recorded = self
            .config_recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = recorded
            .get(id)
            .is_none_or(|at| at.elapsed() >= CONFIG_RECORD_EVERY);
        if due {
            recorded.insert(id.to_string(), Instant::now());
        }
        due
    }

    pub fn heard_from(&self, node: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.insert(node, Instant::now());
    }

    /// How long ago hub node `node` last answered this one, if it ever did.
    pub fn peer_silent_for(&self, node: u64) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&node).map(Instant::elapsed)
    }
}
