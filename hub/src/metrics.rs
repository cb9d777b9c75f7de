//! The hub's Prometheus gauges: raft's view of this node, pins per spoke, and the
//! fleet's compliance as last rolled up from the spokes.

use vigo_common::fleet_query::STATUSES as FLEET_STATUSES;
use vigo_proto::admin::v1 as api;

use crate::node::Node;

/// What a spoke claimed that the hub refused (DESIGN §9: a spoke's answers are claims).
#[derive(Clone, Copy, Debug)]
pub enum Claim {
    /// More task outcomes than targets released to it.
    TaskCounts,
    /// A compliance status outside the closed set.
    Status,
    /// A task target pinned to another spoke.
    TaskTarget,
    /// A config version the cluster never published.
    ConfigVersion,
}

impl Claim {
    fn label(self) -> &'static str {
        match self {
            Claim::TaskCounts => "task_counts",
            Claim::Status => "status",
            Claim::TaskTarget => "task_target",
            Claim::ConfigVersion => "config_version",
        }
    }
}

/// Counts a refused claim of `spoke`.
pub fn claim_refused(spoke: &str, claim: Claim) {
    metrics::counter!(
        "vigo_hub_spoke_claims_refused_total",
        "spoke" => spoke.to_string(),
        "claim" => claim.label()
    )
    .increment(1);
}

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
        // Every spoke's series exist from its registration on (a spoke without pins
        // shows 0, not nothing); the roll-up's and fan-out's values are left as they are.
        for spoke in s.spokes.keys() {
            metrics::gauge!("vigo_hub_spoke_pins", "spoke" => spoke.clone()).set(0.0);
            metrics::counter!("vigo_hub_fanout_missing_total", "spoke" => spoke.clone())
                .increment(0);
            let _ = metrics::histogram!("vigo_hub_fanout_seconds", "spoke" => spoke.clone());
            for status in FLEET_STATUSES {
                let _ = metrics::gauge!("vigo_fleet_spoke_envoys", "spoke" => spoke.clone(), "status" => status);
            }
        }
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

/// The per-spoke series this node exported last, to zero when it stops leading.
static EXPORTED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Fleet and per-spoke envoys by compliance status, from a roll-up on the leader.
pub fn publish_compliance(fleet: &api::StatusCounts, spokes: &[api::NamedCounts]) {
    for (status, n) in &fleet.by_status {
        metrics::gauge!("vigo_fleet_envoys", "status" => status.clone()).set(*n as f64);
    }
    let mut exported = EXPORTED.lock().unwrap_or_else(|p| p.into_inner());
    for spoke in spokes {
        for (status, n) in &spoke.counts.clone().unwrap_or_default().by_status {
            metrics::gauge!("vigo_fleet_spoke_envoys", "spoke" => spoke.name.clone(), "status" => status.clone())
                .set(*n as f64);
            let series = (spoke.name.clone(), status.clone());
            if !exported.contains(&series) {
                exported.push(series);
            }
        }
    }
}

/// Zeroes the roll-up on a node that does not lead: only the leader's counts are the
/// fleet's, so a sum over hub nodes stays right across leader changes.
pub fn withdraw_compliance() {
    for status in FLEET_STATUSES {
        metrics::gauge!("vigo_fleet_envoys", "status" => status).set(0.0);
    }
    let exported = EXPORTED.lock().unwrap_or_else(|p| p.into_inner());
    for (spoke, status) in exported.iter() {
        metrics::gauge!("vigo_fleet_spoke_envoys", "spoke" => spoke.clone(), "status" => status.clone())
            .set(0.0);
    }
}

/// Every metric family of the hub, with its HELP text, registered at start so each is
/// scraped from the first scrape on.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    vigo_common::net::describe_metrics();
    vigo_common::telemetry::describe_metrics();
    describe_gauge!("vigo_hub_raft_term", "This node's raft term");
    describe_gauge!(
        "vigo_hub_raft_leader",
        "The raft leader's node id as this node knows it (0: none)"
    );
    describe_gauge!(
        "vigo_hub_raft_is_leader",
        "1 on the raft leader, 0 elsewhere"
    );
    describe_gauge!(
        "vigo_hub_raft_last_log_index",
        "Index of the last raft log entry this node holds"
    );
    describe_gauge!(
        "vigo_hub_raft_commit_index",
        "Highest raft log index known committed on this node"
    );
    describe_gauge!(
        "vigo_hub_raft_applied_index",
        "Highest raft log index applied to this node's state"
    );
    describe_gauge!(
        "vigo_hub_snapshot_bytes",
        "Size of the last raft snapshot this node built or installed"
    );
    describe_gauge!(
        "vigo_hub_pins",
        "Envoys pinned to a spoke in the replicated state"
    );
    describe_gauge!(
        "vigo_hub_spoke_pins",
        "Envoys pinned to each spoke, by spoke"
    );
    describe_gauge!(
        "vigo_fleet_envoys",
        "Fleet envoys by compliance status, as last rolled up from the spokes; exported by the raft leader only (0 elsewhere), so sum() over hubs is the fleet"
    );
    describe_gauge!(
        "vigo_fleet_spoke_envoys",
        "Envoys by spoke and compliance status, as last rolled up; exported by the raft leader only (0 elsewhere)"
    );
    describe_counter!(
        "vigo_hub_admin_requests_total",
        "Admin API calls, by route and code (ok or the refusal kind)"
    );
    describe_histogram!(
        "vigo_hub_admin_request_seconds",
        "Time to answer an admin API call, by route"
    );
    describe_counter!(
        "vigo_hub_enrollments_total",
        "Envoys enrolled through this hub node"
    );
    describe_counter!(
        "vigo_hub_enrollment_refusals_total",
        "Enrollments this hub node refused"
    );
    describe_histogram!(
        "vigo_hub_enroll_batch_size",
        "Enrollments committed in one raft entry"
    );
    describe_histogram!(
        "vigo_hub_register_batch_size",
        "Enrolled envoys registered on their spoke in one RegisterEnvoys call"
    );
    describe_histogram!(
        "vigo_hub_fanout_seconds",
        "Time of a fan-out query across the spokes"
    );
    describe_counter!(
        "vigo_hub_fanout_missing_total",
        "Spokes that did not answer a fan-out in time, by spoke"
    );
    describe_gauge!(
        "vigo_hub_tasks",
        "Tasks and live queries by state (running, finished, stopped, cancelled, expired); exported by the raft leader"
    );
    describe_histogram!(
        "vigo_hub_task_dispatch_seconds",
        "From a batch's release to its copies being taken by their spoke"
    );
    describe_counter!(
        "vigo_hub_task_results_total",
        "Envoy outcomes of tasks counted by the leader (ok, failed, timed out, refused, unreachable)"
    );
    metrics::counter!("vigo_hub_task_results_total").increment(0);
    describe_counter!(
        "vigo_hub_spoke_claims_refused_total",
        "Answers of a spoke the hub refused as impossible (task counts beyond its released targets, unknown status names, targets pinned elsewhere, unpublished config versions), by spoke and claim"
    );
    let _ = metrics::histogram!("vigo_hub_task_dispatch_seconds");
    for state in ["running", "finished", "stopped", "cancelled", "expired"] {
        metrics::gauge!("vigo_hub_tasks", "state" => state).set(0.0);
    }
    for name in [
        "vigo_hub_enrollments_total",
        "vigo_hub_enrollment_refusals_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        "vigo_hub_raft_term",
        "vigo_hub_raft_leader",
        "vigo_hub_raft_is_leader",
        "vigo_hub_raft_last_log_index",
        "vigo_hub_raft_commit_index",
        "vigo_hub_raft_applied_index",
        "vigo_hub_snapshot_bytes",
        "vigo_hub_pins",
    ] {
        metrics::gauge!(name).set(0.0);
    }
    let _ = metrics::histogram!("vigo_hub_enroll_batch_size");
    let _ = metrics::histogram!("vigo_hub_register_batch_size");
    for status in FLEET_STATUSES {
        metrics::gauge!("vigo_fleet_envoys", "status" => status).set(0.0);
    }
    crate::admin::grpc::register_routes();
}
