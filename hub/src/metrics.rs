//! The hub's Prometheus gauges: raft's view of this node, pins per spoke, and the
//! fleet's compliance as last rolled up from the spokes.

use vigo_proto::admin::v1 as api;

use crate::node::Node;

/// Raft term, leader, log and applied index; pins (refreshed before each scrape).
pub fn publish_raft(node: &Node) {
    let m = node.raft.metrics().borrow().clone();
    metrics::gauge!("vigo_hub_raft_term").set(m.current_term as f64);
    metrics::gauge!("vigo_hub_raft_leader").set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("vigo_hub_raft_is_leader").set(if m.current_leader == Some(node.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("vigo_hub_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("vigo_hub_raft_commit_index").set(commit_index(node) as f64);
    metrics::gauge!("vigo_hub_raft_applied_index")
        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
    node.read(|s| {
        metrics::gauge!("vigo_hub_pins").set(s.pins.len() as f64);
        for (spoke, n) in s.pin_counts() {
            metrics::gauge!("vigo_hub_spoke_pins", "spoke" => spoke.to_string()).set(n as f64);
        }
    });
}

/// The highest log index known committed here: on the leader, the index a quorum of
/// voters has matched; elsewhere the applied index (entries apply as soon as a follower
/// learns they are committed).
pub fn commit_index(node: &Node) -> u64 {
    let m = node.raft.metrics().borrow().clone();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let Some(replication) = &m.replication else {
        return applied;
    };
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|v| {
            replication
                .get(v)
                .copied()
                .flatten()
                .map(|l| l.index)
                .unwrap_or(0)
        })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched
        .get(voters.len() / 2)
        .copied()
        .unwrap_or(applied)
        .max(applied)
}

/// Fleet and per-spoke envoys by compliance status, from a roll-up.
pub fn publish_compliance(fleet: &api::StatusCounts, spokes: &[api::NamedCounts]) {
    for (status, n) in &fleet.by_status {
        metrics::gauge!("vigo_fleet_envoys", "status" => status.clone()).set(*n as f64);
    }
    for spoke in spokes {
        for (status, n) in &spoke.counts.clone().unwrap_or_default().by_status {
            metrics::gauge!("vigo_fleet_spoke_envoys", "spoke" => spoke.name.clone(), "status" => status.clone())
                .set(*n as f64);
        }
    }
}
