//! Revocations in the replicated state: envoys by id, hub, spoke and admin
//! certificates by serial. Each gets the next sequence number, so a spoke that knows
//! the revocations up to `n` asks for those after `n` (at heartbeat, or when a push
//! arrives out of order) and ends with the same list as every hub node.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::ClusterState;

/// What is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Revoked {
    Envoy(u64),
    /// A node or admin certificate, by its serial number (lowercase hex, no leading
    /// zeros: `vigo_common::pki::serial_hex`).
    Certificate(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub seq: u64,
    pub target: Revoked,
    pub at_ms: u64,
    pub reason: String,
    pub by: String,
}

/// Every revocation, in order (`list[i].seq == i + 1`), with a set for lookups
/// (rebuilt when a snapshot is read, never serialized).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<Revocation>", into = "Vec<Revocation>")]
pub struct Revocations {
    list: Vec<Revocation>,
    index: HashSet<Revoked>,
}

impl From<Vec<Revocation>> for Revocations {
    fn from(list: Vec<Revocation>) -> Self {
        let index = list.iter().map(|r| r.target.clone()).collect();
        Self { list, index }
    }
}

impl From<Revocations> for Vec<Revocation> {
    fn from(r: Revocations) -> Self {
        r.list
    }
}

impl PartialEq for Revocations {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Revocations {
    pub fn seq(&self) -> u64 {
        self.list.len() as u64
    }

    pub fn contains(&self, target: &Revoked) -> bool {
        self.index.contains(target)
    }

    /// The revocations after `seq`, at most `limit` of them.
    pub fn since(&self, seq: u64, limit: usize) -> &[Revocation] {
        let from = (seq as usize).min(self.list.len());
        let to = from.saturating_add(limit).min(self.list.len());
        &self.list[from..to]
    }

    pub fn find(&self, target: &Revoked) -> Option<&Revocation> {
        self.list.iter().rev().find(|r| &r.target == target)
    }

    /// Serials of the revoked certificates.
    pub fn certificates(&self) -> impl Iterator<Item = &str> {
        self.list.iter().filter_map(|r| match &r.target {
            Revoked::Certificate(serial) => Some(serial.as_str()),
            Revoked::Envoy(_) => None,
        })
    }

    fn push(&mut self, target: Revoked, at_ms: u64, reason: String, by: &str) {
        if !self.index.insert(target.clone()) {
            return;
        }
        let seq = self.seq() + 1;
        self.list.push(Revocation {
            seq,
            target,
            at_ms,
            reason,
            by: by.to_string(),
        });
    }
}

impl ClusterState {
    pub(super) fn revoke(&mut self, target: Revoked, at_ms: u64, reason: String, by: &str) {
        self.revocations.push(target, at_ms, reason, by);
    }

    pub fn is_envoy_revoked(&self, id: u64) -> bool {
        self.revocations.contains(&Revoked::Envoy(id))
    }

    pub fn is_certificate_revoked(&self, serial: &str) -> bool {
        self.revocations
            .contains(&Revoked::Certificate(serial.to_string()))
    }
}
