//! Moving envoys between spokes (reassign one, drain a spoke), run on the leader. Per
//! batch, each step recorded in the replicated state (`crate::state::OpenMove`): open
//! the move, export the records from the old spoke, import them durably on the new
//! one, move the pins, hand them off on the old spoke (which forgets them, redirects
//! their next check-in, and answers their records as they are then, imported again so
//! reports that came in meanwhile are kept), close the move.
//!
//! A failure stops the move where it is, every completed batch consistent. The move
//! stays open: a second move of those envoys elsewhere is refused, and running the same
//! move again — or the leader's resumer, on whichever node leads — finishes it from its
//! phase, since every step is idempotent.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::info;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::fanout::{self, Target};
use crate::node::Node;
use crate::state::{Command, MovePhase, SpokeState};

/// Envoys per export / import / pin move / hand-off round.
pub const BATCH: usize = 500;
const STEP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

fn spoke_target(node: &Node, id: &str) -> Result<Target, HubError> {
    node.read(|s| {
        s.spokes.get(id).map(|sp| Target {
            id: sp.id.clone(),
            address: sp.address.clone(),
        })
    })
    .ok_or_else(|| HubError::NotFound(format!("unknown spoke {id:?}")))
}

/// Why one batch did not move.
enum BatchError {
    /// A message of the batch exceeds what a spoke or the hub accepts: split it.
    TooLarge,
    Failed(HubError),
}

impl From<HubError> for BatchError {
    fn from(e: HubError) -> Self {
        BatchError::Failed(e)
    }
}

fn step_failed(spoke: &Target, step: &str, status: tonic::Status) -> BatchError {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => BatchError::TooLarge,
        code => BatchError::Failed(HubError::SpokeUnreachable {
            spoke: spoke.id.clone(),
            why: format!("{step}: {code:?}: {}", status.message()),
        }),
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    fanout::within(msg, STEP_DEADLINE)
}

/// Moves `envoys` from spoke `from` to spoke `to`, from the phase their move is in.
async fn move_batch(
    node: &Node,
    from: &Target,
    to: &Target,
    envoys: &[u64],
) -> Result<(), BatchError> {
    node.propose_ok(Command::BeginMove {
        envoys: envoys.to_vec(),
        from: from.id.clone(),
        to: to.id.clone(),
        at_ms: vigo_common::time::now_ms(),
    })
    .await?;
    let copying: Vec<u64> = node.read(|s| {
        envoys
            .iter()
            .copied()
            .filter(|e| {
                s.moves
                    .get(e)
                    .is_some_and(|m| m.phase == MovePhase::Copying)
            })
            .collect()
    });
    let mut old = fanout::client(node, &from.address)?;
    let mut new = fanout::client(node, &to.address)?;
    if !copying.is_empty() {
        let export = old
            .export_envoys(request(pb::ExportEnvoysRequest {
                envoy_ids: copying.clone(),
            }))
            .await
            .map_err(|s| step_failed(from, "export", s))?
            .into_inner();
        new.import_envoys(request(export))
            .await
            .map_err(|s| step_failed(to, "import", s))?;
        node.propose_ok(Command::MovePins(
            copying.iter().map(|id| (*id, to.id.clone())).collect(),
        ))
        .await?;
    }
    let handed = old
        .hand_off(request(pb::HandOffRequest {
            envoy_ids: envoys.to_vec(),
            spoke_address: to.address.clone(),
        }))
        .await
        .map_err(|s| step_failed(from, "hand-off", s))?
        .into_inner();
    if let Some(last) = handed.last.filter(|l| !l.envoys.is_empty()) {
        new.import_envoys(request(last))
            .await
            .map_err(|s| step_failed(to, "import after hand-off", s))?;
    }
    node.propose_ok(Command::EndMove {
        envoys: envoys.to_vec(),
    })
    .await?;
    Ok(())
}

/// Closes the open moves that can no longer finish and need not: pinned to their new
/// spoke while the old one was removed (nothing is left to hand off), or still copying
/// towards a spoke that is no longer active (the pin never moved).
async fn close_moot(node: &Node) -> Result<(), HubError> {
    let moot: Vec<u64> = node.read(|s| {
        let active = |id: &str| {
            s.spokes
                .get(id)
                .is_some_and(|sp| sp.state == SpokeState::Active)
        };
        let removed = |id: &str| {
            s.spokes
                .get(id)
                .is_none_or(|sp| sp.state == SpokeState::Removed)
        };
        s.moves
            .iter()
            .filter(|(_, m)| match m.phase {
                MovePhase::Pinned => removed(&m.from),
                MovePhase::Copying => !active(&m.to),
            })
            .map(|(id, _)| *id)
            .collect()
    });
    if !moot.is_empty() {
        info!(
            envoys = moot.len(),
            "closing moves that cannot finish (a spoke left)"
        );
        node.propose_ok(Command::EndMove { envoys: moot }).await?;
    }
    Ok(())
}

/// Finishes every open move (a leader that took over from one that stopped midway).
/// Runs under the node's move lock, like every move.
pub async fn resume(node: &Node) -> Result<u64, HubError> {
    let _one = node.moving.lock().await;
    let open: Vec<(u64, String, String)> = node.read(|s| {
        s.moves
            .iter()
            .map(|(envoy, m)| (*envoy, m.from.clone(), m.to.clone()))
            .collect()
    });
    if open.is_empty() {
        return Ok(0);
    }
    close_moot(node).await?;
    let open: Vec<(u64, String, String)> = node.read(|s| {
        s.moves
            .iter()
            .map(|(envoy, m)| (*envoy, m.from.clone(), m.to.clone()))
            .collect()
    });
    info!(envoys = open.len(), "resuming open moves");
    let result = run_moves(node, open).await?;
    Ok(result.moved)
}

/// Moves a batch, halving it while its messages are too large (long run histories).
async fn move_splitting(
    node: &Node,
    from: &Target,
    to: &Target,
    envoys: &[u64],
) -> Result<(), HubError> {
    let mut pending = vec![envoys];
    while let Some(batch) = pending.pop() {
        match move_batch(node, from, to, batch).await {
            Ok(()) => {}
            Err(BatchError::TooLarge) if batch.len() > 1 => {
                let (first, second) = batch.split_at(batch.len() / 2);
                pending.push(second);
                pending.push(first);
            }
            Err(BatchError::TooLarge) => {
                return Err(HubError::Precondition(format!(
                    "envoy {:016x}: its record is larger than one message may be",
                    batch[0]
                )));
            }
            Err(BatchError::Failed(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Moves each envoy of `plan` (envoy, from, to) to its new spoke, one move at a time
/// on this node.
pub async fn move_envoys(
    node: &Node,
    plan: Vec<(u64, String, String)>,
) -> Result<api::MoveResult, HubError> {
    let _one = node.moving.lock().await;
    run_moves(node, plan).await
}

async fn run_moves(
    node: &Node,
    plan: Vec<(u64, String, String)>,
) -> Result<api::MoveResult, HubError> {
    let started = Instant::now();
    let mut groups: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (envoy, from, to) in plan {
        groups.entry((from, to)).or_default().push(envoy);
    }
    let mut moved = 0;
    let mut to_counts: BTreeMap<String, u64> = BTreeMap::new();
    for ((from, to), envoys) in groups {
        let (from_t, to_t) = (spoke_target(node, &from)?, spoke_target(node, &to)?);
        for batch in envoys.chunks(BATCH) {
            move_splitting(node, &from_t, &to_t, batch).await?;
            moved += batch.len() as u64;
            *to_counts.entry(to.clone()).or_default() += batch.len() as u64;
        }
        info!(%from, %to, envoys = envoys.len(), "envoys moved");
    }
    Ok(api::MoveResult {
        moved,
        to: to_counts,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Marks a spoke draining (out of the ring) and moves every envoy pinned to it to the
/// spoke the ring (or a pattern override) now gives it.
pub async fn drain(node: &Node, spoke: &str) -> Result<api::MoveResult, HubError> {
    let state = node
        .read(|s| s.spokes.get(spoke).map(|sp| sp.state))
        .ok_or_else(|| HubError::NotFound(format!("unknown spoke {spoke:?}")))?;
    match state {
        SpokeState::Removed => {
            return Err(HubError::Precondition(format!("spoke {spoke} is removed")));
        }
        SpokeState::Active => {
            node.propose_ok(Command::SetSpokeState {
                id: spoke.to_string(),
                state: SpokeState::Draining,
            })
            .await?;
            info!(%spoke, "spoke draining: out of the ring");
        }
        SpokeState::Draining => {}
    }
    let plan = node.read(|s| {
        let ring = s.ring();
        // Moves from this spoke left open go where they were going.
        let open = s
            .moves
            .iter()
            .filter(|(_, m)| m.from == spoke)
            .map(|(id, m)| Ok((*id, m.from.clone(), m.to.clone())));
        let pinned = s
            .pins
            .iter()
            .filter(|(id, p)| p.spoke == spoke && !s.moves.contains_key(id))
            .map(|(id, p)| {
                s.place(&p.hostname, &ring)
                    .map(|to| (*id, spoke.to_string(), to))
                    .ok_or(HubError::NoActiveSpoke)
            });
        open.chain(pinned).collect::<Result<Vec<_>, _>>()
    })?;
    move_envoys(node, plan).await
}
