//! Writes made exactly once: an admin write carries its caller's request id into the
//! log, and the state machine remembers the outcome of the last [`KEEP`] ids. A retried
//! request — the caller was told "outcome unknown", or a hub re-sent a forward after a
//! leader change — gets the first outcome back and changes nothing again.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Applied, ClusterState, Command, Rejection};

/// Request ids remembered (oldest forgotten first).
pub const KEEP: usize = 10_000;
/// Longest request id accepted.
pub const MAX_ID: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub request: String,
    /// Who made the request: another caller's id is not theirs to replay.
    pub by: String,
    /// What was asked: the same id with another request is refused.
    pub digest: [u8; 32],
    pub applied: Applied,
}

/// Who asked for a write, and under which request id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTag {
    pub request: String,
    pub by: String,
    /// SHA-256 of the request as the caller sent it: one id, one request.
    pub digest: [u8; 32],
}

impl Command {
    /// This command as step `step` of the tagged request (one request may commit a few
    /// commands: each is made once).
    pub fn once(self, tag: &RequestTag, step: &str) -> Command {
        Command::Once {
            request: format!("{}/{step}", tag.request),
            by: tag.by.clone(),
            digest: tag.digest,
            command: Box::new(self),
        }
    }
}

/// Outcomes in the order they were applied, with an index (rebuilt when a snapshot is
/// read, never serialized).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<Outcome>", into = "Vec<Outcome>")]
pub struct Requests {
    order: VecDeque<Outcome>,
    index: HashMap<String, usize>,
    /// Outcomes forgotten so far: `index` values are positions plus this.
    forgotten: usize,
}

impl From<Vec<Outcome>> for Requests {
    fn from(list: Vec<Outcome>) -> Self {
        let index = list
            .iter()
            .enumerate()
            .map(|(i, o)| (o.request.clone(), i))
            .collect();
        Self {
            order: list.into(),
            index,
            forgotten: 0,
        }
    }
}

impl From<Requests> for Vec<Outcome> {
    fn from(r: Requests) -> Self {
        r.order.into()
    }
}

impl PartialEq for Requests {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Requests {
    pub fn get(&self, request: &str) -> Option<&Outcome> {
        let at = self.index.get(request)?.checked_sub(self.forgotten)?;
        self.order.get(at)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn remember(&mut self, outcome: Outcome) {
        self.index
            .insert(outcome.request.clone(), self.forgotten + self.order.len());
        self.order.push_back(outcome);
        while self.order.len() > KEEP {
            if let Some(old) = self.order.pop_front() {
                self.index.remove(&old.request);
                self.forgotten += 1;
            }
        }
    }
}

impl ClusterState {
    /// Applies `command` once per request id.
    pub(super) fn apply_once(
        &mut self,
        request: String,
        by: String,
        digest: [u8; 32],
        command: Command,
    ) -> Applied {
        if let Some(first) = self.requests.get(&request) {
            if first.by != by {
                return Applied::Refused(Rejection::RequestIdTaken(request));
            }
            if first.digest != digest {
                return Applied::Refused(Rejection::RequestIdReused(request));
            }
            return first.applied.clone();
        }
        let applied = self.apply_command(command);
        self.requests.remember(Outcome {
            request,
            by,
            digest,
            applied: applied.clone(),
        });
        applied
    }
}
