//! Moves of envoys between spokes (reassign, drain) as records in the replicated state,
//! so that any hub node that leads can finish one, and no envoy is moved twice at once.
//!
//! A move opens (`BeginMove`) before anything is copied, goes to `Pinned` when its pins
//! move (`MovePins`), and closes (`EndMove`) once the old spoke handed the envoys off.
//! While it is open, a move of the same envoy elsewhere is refused once its pin moved
//! (before, a move elsewhere replaces it: the abandoned copy is never pinned); the same
//! move again (an operator re-running it, a new leader resuming it) carries on from its
//! phase.

use serde::{Deserialize, Serialize};

use super::{Applied, ClusterState, Rejection, SpokeState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovePhase {
    /// Records are being copied to the new spoke; the pin still names the old one.
    Copying,
    /// The pin names the new spoke; the old one has yet to hand the envoy off.
    Pinned,
}

impl MovePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MovePhase::Copying => "copying",
            MovePhase::Pinned => "pinned",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMove {
    pub from: String,
    pub to: String,
    pub phase: MovePhase,
    pub started_ms: u64,
}

impl ClusterState {
    /// Opens a move of `envoys` from `from` to `to`, all or none. An envoy whose same
    /// move is open already stays as it is (a resumed move).
    pub(super) fn begin_moves(
        &mut self,
        envoys: &[u64],
        from: &str,
        to: &str,
        at_ms: u64,
    ) -> Applied {
        if !self
            .spokes
            .get(to)
            .is_some_and(|s| s.state == SpokeState::Active)
        {
            return Applied::Refused(Rejection::SpokeNotActive(to.to_string()));
        }
        for envoy in envoys {
            match self.moves.get(envoy) {
                Some(open) if open.from == from && open.to == to => {}
                // Not pinned anywhere new yet: a move elsewhere replaces it (the copy
                // on the abandoned target is never pinned, so never served).
                Some(open) if open.from == from && open.phase == MovePhase::Copying => {}
                Some(open) => {
                    return Applied::Refused(Rejection::MoveOpen {
                        envoy: *envoy,
                        from: open.from.clone(),
                        to: open.to.clone(),
                    });
                }
                None => match self.pins.get(envoy) {
                    Some(pin) if pin.spoke == from => {}
                    Some(pin) => {
                        return Applied::Refused(Rejection::NotOnSpoke {
                            envoy: *envoy,
                            spoke: from.to_string(),
                            pinned: pin.spoke.clone(),
                        });
                    }
                    None => return Applied::Refused(Rejection::NotPinned(*envoy)),
                },
            }
        }
        for envoy in envoys {
            let same = self.moves.get(envoy).is_some_and(|m| m.to == to);
            if !same {
                self.moves.insert(
                    *envoy,
                    OpenMove {
                        from: from.to_string(),
                        to: to.to_string(),
                        phase: MovePhase::Copying,
                        started_ms: at_ms,
                    },
                );
            }
        }
        Applied::Done
    }

    /// The pins of envoys with an open move moved: their moves are `Pinned`.
    pub(super) fn moves_pinned(&mut self, envoys: impl Iterator<Item = u64>) {
        for envoy in envoys {
            if let Some(open) = self.moves.get_mut(&envoy) {
                open.phase = MovePhase::Pinned;
            }
        }
    }

    pub(super) fn end_moves(&mut self, envoys: &[u64]) -> Applied {
        for envoy in envoys {
            self.moves.remove(envoy);
        }
        Applied::Done
    }
}
