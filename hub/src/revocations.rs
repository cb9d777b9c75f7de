//! Revocations leave the hub two ways: pushed to every spoke as soon as one commits, and
//! fetched by a spoke whose heartbeat shows it is behind (`HubSpokes.GetRevocations`).
//! Either way a spoke applies them in order and durably, so it refuses a revoked envoy
//! or certificate within seconds, and again after a restart from an old copy of its data.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use vigo_proto::v1 as pb;

use crate::fanout;
use crate::node::Node;
use crate::state::{ClusterState, Revocation, Revoked, SpokeState};

/// Revocations in one list (a spoke far behind pages through).
pub const PAGE: usize = 1000;
/// Rounds of "send what is missing" a push makes to one spoke.
const PUSH_ROUNDS: usize = 8;
const PUSH_DEADLINE: Duration = Duration::from_secs(5);

pub fn to_proto(r: &Revocation) -> pb::Revocation {
    pb::Revocation {
        seq: r.seq,
        target: Some(match &r.target {
            Revoked::Envoy(id) => pb::revocation::Target::EnvoyId(*id),
            Revoked::Certificate(s) => pb::revocation::Target::CertificateSerial(s.clone()),
        }),
        at_ms: r.at_ms,
        reason: r.reason.clone(),
        by: r.by.clone(),
    }
}

/// The revocations after `after` (one page), as spokes take them.
pub fn list(state: &ClusterState, after: u64) -> pb::RevocationList {
    pb::RevocationList {
        after,
        revocations: state
            .revocations
            .since(after, PAGE)
            .iter()
            .map(to_proto)
            .collect(),
        last_seq: state.revocations.seq(),
    }
}

/// Sends the newest revocations to every spoke that is not removed, in the background.
/// A spoke that is down or behind catches up at its next heartbeat.
pub fn push(node: Arc<Node>) {
    let spokes: Vec<(String, String)> = node.read(|s| {
        s.spokes
            .values()
            .filter(|sp| sp.state != SpokeState::Removed)
            .map(|sp| (sp.id.clone(), sp.address.clone()))
            .collect()
    });
    for (id, address) in spokes {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(why) = push_one(&node, &address).await {
                warn!(spoke = %id, %why, "revocations not pushed; the spoke takes them at its next heartbeat");
            }
        });
    }
}

async fn push_one(node: &Node, address: &str) -> Result<(), String> {
    let mut client = fanout::client(node, address).map_err(|e| e.to_string())?;
    let last = node.read(|s| s.revocations.seq());
    let mut after = last.saturating_sub(1);
    for _ in 0..PUSH_ROUNDS {
        let list = node.read(|s| list(s, after));
        let last = list.last_seq;
        let at = client
            .apply_revocations(fanout::within(list, PUSH_DEADLINE))
            .await
            .map_err(|s| vigo_common::net::status_chain(&s))?
            .into_inner()
            .seq;
        if at >= last {
            debug!(%address, seq = at, "revocations pushed");
            return Ok(());
        }
        after = at;
    }
    Err(format!("still behind after {PUSH_ROUNDS} rounds"))
}
