//! The leader's dispatch of tasks (DESIGN §10), a few times a second while tasks run:
//!
//! 1. decide — end tasks past their window, and release the next batch of each
//!    running task (`TaskRecord::next_release`), each decision a raft entry with its
//!    time, so a copy's window is the same whichever leader signs it;
//! 2. sign — one copy per released target not yet sent to its spoke by this leader,
//!    with the cluster's bundle-signing key, valid from its release for the task's
//!    timeout;
//! 3. sync — one `SyncTasks` call per spoke: the running task ids (a spoke drops
//!    copies of any other: cancelled, ended), the tasks cancelled lately (envoys
//!    running them are told to stop), the new copies, and back the spoke's counts,
//!    folded in through raft when they grew;
//! 4. write off — a spoke that has not answered until its targets' windows closed
//!    (plus a grace) has them counted unreachable.
//!
//! What this leader has sent lives only here: a new leader sends every released copy
//! again, and spokes keep the first copy of each (envoys run a task id once anyway).
//! A spoke that lost its copies (a restart) stops reporting the task, and is sent them
//! again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tracing::{debug, info, warn};
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::fanout::{self, fan_out};
use crate::node::{Leader, Node};
use crate::state::tasks::{Counts, TaskAction};
use crate::state::{ClusterState, Command, TaskId, TaskRecord, TaskState};

/// How often the leader dispatches.
pub const TICK: Duration = Duration::from_millis(250);
const SYNC_DEADLINE: Duration = Duration::from_secs(5);
/// After the last window of a task closes, how long a silent spoke has before its
/// targets are counted unreachable (spokes end their copies `GRACE_MS` after the
/// window, and report within a tick).
pub const WRITE_OFF_GRACE_MS: u64 = 15_000;
/// How long after a cancel spokes are told of it (envoys running it stop; a spoke
/// that was away meanwhile learns it when back).
const TELL_CANCELLED_MS: u64 = 600_000;
/// Copies sent to one spoke in one sync at most (the rest go in the next).
const MAX_COPIES_PER_SYNC: usize = 20_000;

/// How far (an index into the task's targets) each spoke has been sent copies.
type Sent = HashMap<(TaskId, String), u32>;

/// Copies to sign for one spoke: (envoy, released at, not after) in target order, and
/// how far they go.
struct Work {
    task: TaskId,
    action: TaskAction,
    timeout_ms: u64,
    copies: Vec<(u64, u64, u64)>,
    issued_ms: u64,
    upto: u32,
}

pub async fn run(node: Arc<Node>) {
    let mut sent = Sent::new();
    // Spokes must learn the running set once per leadership, even with nothing
    // running (a cancel the previous leader did not pass on).
    let mut quiet = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !matches!(node.leader(), Ok(Leader::Here)) {
            sent.clear();
            quiet = false;
            continue;
        }
        publish_gauges(&node);
        let now = now_ms();
        let running = node.read(|s| s.tasks.iter().filter(|t| active(t, now)).count());
        if running == 0 && quiet {
            continue;
        }
        match dispatch(&node, &mut sent).await {
            Ok(all_answered) => quiet = running == 0 && all_answered,
            Err(e) => warn!(error = %e, "task dispatch: trying again"),
        }
    }
}

/// One round; true when every spoke answered.
async fn dispatch(node: &Arc<Node>, sent: &mut Sent) -> Result<bool, HubError> {
    decide(node).await?;
    let now = now_ms();
    let (running, cancelled, work, signer) = node.read(|s| {
        let running: Vec<TaskId> = s.tasks.running().map(|t| t.id).collect();
        let cancelled: Vec<bytes::Bytes> = s
            .tasks
            .iter()
            .filter(|t| {
                matches!(t.state, TaskState::Cancelled { .. })
                    && now.saturating_sub(t.ended_ms) < TELL_CANCELLED_MS
            })
            .map(|t| t.id.to_vec().into())
            .collect();
        (
            running,
            cancelled,
            plan(s, sent, now),
            s.bundle_keys.signer(),
        )
    });
    let requests = match signer {
        Some(key) => sign_all(key, running.clone(), cancelled.clone(), work).await?,
        None if running.is_empty() => HashMap::new(),
        None => {
            return Err(HubError::Internal(
                "the cluster has no bundle-signing key".into(),
            ));
        }
    };
    let requests = Arc::new(requests);
    let spokes = fanout::targets(node, None)?;
    let (answers, missing) = fan_out(node, spokes, SYNC_DEADLINE, |t, mut c| {
        let request = requests
            .get(&t.id)
            .map(|(r, _)| r.clone())
            .unwrap_or_else(|| pb::SyncTasksRequest {
                running: running.iter().map(|id| id.to_vec().into()).collect(),
                dispatch: Vec::new(),
                cancelled: cancelled.clone(),
            });
        async move { c.sync_tasks(request).await.map(tonic::Response::into_inner) }
    })
    .await;
    let all_answered = missing.is_empty();
    for (spoke, answer) in answers {
        if let Some((_, reached)) = requests.get(&spoke) {
            for (task, upto, issued_ms) in reached {
                sent.insert((*task, spoke.clone()), *upto);
                metrics::histogram!("vigo_hub_task_dispatch_seconds")
                    .record(now_ms().saturating_sub(*issued_ms) as f64 / 1000.0);
            }
        }
        take_counts(node, sent, &spoke, &running, answer).await;
    }
    let silent: HashSet<String> = missing.into_iter().map(|m| m.spoke).collect();
    write_off(node, &silent, now).await;
    Ok(all_answered)
}

/// Ends tasks past their window and releases the batches that are due.
async fn decide(node: &Node) -> Result<(), HubError> {
    let now = now_ms();
    let (expired, releases) = node.read(|s| {
        let expired = s.tasks.running().any(|t| t.expires_ms < now);
        let releases: Vec<(TaskId, u32)> = s
            .tasks
            .running()
            .filter_map(|t| t.next_release().map(|upto| (t.id, upto)))
            .collect();
        (expired, releases)
    });
    if expired {
        node.propose_ok(Command::ExpireTasks { at_ms: now }).await?;
    }
    for (id, upto) in releases {
        debug!(task = %hex::encode(id), upto, "releasing targets");
        // A task that ended meanwhile refuses: nothing to do.
        let _ = node
            .propose(Command::ReleaseTask {
                id,
                upto,
                at_ms: now,
            })
            .await?;
    }
    Ok(())
}

/// The copies each spoke is due, by spoke.
fn plan(s: &ClusterState, sent: &Sent, now: u64) -> HashMap<String, Vec<Work>> {
    let mut out: HashMap<String, Vec<Work>> = HashMap::new();
    for t in s.tasks.running() {
        // How far each spoke of the task was sent; targets before the least of them
        // need nothing.
        let mut from: HashMap<&str, u32> = HashMap::new();
        for (_, spoke) in &t.targets {
            if !from.contains_key(spoke.as_str()) {
                let f = sent.get(&(t.id, spoke.clone())).copied().unwrap_or(0);
                from.insert(spoke, f);
            }
        }
        let start = from.values().copied().min().unwrap_or(0);
        let mut per_spoke: HashMap<&str, Work> = HashMap::new();
        let released = t.targets.iter().enumerate().take(t.released as usize);
        for (index, (envoy, spoke)) in released.skip(start as usize) {
            let index = index as u32;
            let spoke_from = from.get(spoke.as_str()).copied().unwrap_or(0);
            if index < spoke_from || t.written_off.contains(spoke) {
                continue;
            }
            let work = per_spoke.entry(spoke).or_insert_with(|| Work {
                task: t.id,
                action: t.spec.action.clone(),
                timeout_ms: t.spec.timeout_ms,
                copies: Vec::new(),
                issued_ms: 0,
                upto: spoke_from,
            });
            if work.copies.len() >= MAX_COPIES_PER_SYNC {
                continue;
            }
            let released_at = t.released_at(index).unwrap_or(now);
            let not_after = t.not_after(index).unwrap_or(released_at);
            work.copies.push((*envoy, released_at, not_after));
            work.issued_ms = work.issued_ms.max(released_at);
            work.upto = index + 1;
        }
        for (spoke, mut work) in per_spoke {
            // Targets of other spokes after this spoke's last copy need nothing from it.
            if work.copies.len() < MAX_COPIES_PER_SYNC {
                work.upto = t.released;
            }
            out.entry(spoke.to_string()).or_default().push(work);
        }
    }
    out
}

/// The spokes' sync requests, copies signed (off the async workers: thousands of
/// signatures), with what each reaches: (task, upto, issued).
async fn sign_all(
    key: SigningKey,
    running: Vec<TaskId>,
    cancelled: Vec<bytes::Bytes>,
    work: HashMap<String, Vec<Work>>,
) -> Result<HashMap<String, (pb::SyncTasksRequest, Vec<(TaskId, u32, u64)>)>, HubError> {
    tokio::task::spawn_blocking(move || {
        let running: Vec<bytes::Bytes> = running.iter().map(|id| id.to_vec().into()).collect();
        work.into_iter()
            .map(|(spoke, tasks)| {
                let reached = tasks
                    .iter()
                    .map(|w| (w.task, w.upto, w.issued_ms))
                    .collect();
                let dispatch = tasks
                    .into_iter()
                    .map(|w| pb::TaskDispatch {
                        task_id: w.task.to_vec().into(),
                        copies: w
                            .copies
                            .iter()
                            .map(|&(envoy, issued_ms, not_after)| {
                                let body = crate::tasks::body(
                                    &w.action,
                                    &w.task,
                                    envoy,
                                    issued_ms,
                                    not_after,
                                    w.timeout_ms,
                                );
                                pb::TaskCopy {
                                    envoy_id: envoy,
                                    task: Some(crate::tasks::sign(&key, &body)),
                                    not_after_ms: not_after,
                                }
                            })
                            .collect(),
                    })
                    .collect();
                let request = pb::SyncTasksRequest {
                    running: running.clone(),
                    dispatch,
                    cancelled: cancelled.clone(),
                };
                (spoke, (request, reached))
            })
            .collect()
    })
    .await
    .map_err(|e| HubError::Internal(format!("signing task copies stopped: {e}")))
}

/// Folds a spoke's counts into the raft record where they grew; a running task the
/// spoke no longer reports (it restarted) is sent to it again.
async fn take_counts(
    node: &Node,
    sent: &mut Sent,
    spoke: &str,
    running: &[TaskId],
    answer: pb::SyncTasksResponse,
) {
    let mut reported = HashSet::new();
    for p in answer.progress {
        let Ok(id) = TaskId::try_from(p.task_id.as_ref()) else {
            continue;
        };
        reported.insert(id);
        let counts = Counts {
            ok: p.ok,
            failed: p.failed,
            timed_out: p.timed_out,
            refused: p.refused,
            unreachable: p.unreachable,
        };
        let now = now_ms();
        let known = node.read(|s| {
            s.tasks.get(&id).filter(|t| active(t, now)).map(|t| {
                let known = t.counts.get(spoke).copied().unwrap_or_default();
                (known, t.check_counts(spoke, &counts))
            })
        });
        let Some((known, checked)) = known else {
            continue;
        };
        if let Err(refused) = checked {
            // A spoke's numbers are claims: beyond what it was released they are a
            // broken or hostile spoke, never a reason to release more.
            crate::metrics::claim_refused(spoke, crate::metrics::Claim::TaskCounts);
            debug!(%refused, "task counts refused");
            continue;
        }
        if counts_grew(&known, &counts) {
            let new = counts.ended().saturating_sub(known.ended());
            metrics::counter!("vigo_hub_task_results_total").increment(u64::from(new));
            let count = Command::CountTask {
                id,
                spoke: spoke.to_string(),
                counts,
                at_ms: now_ms(),
            };
            if let Err(e) = node.propose(count).await {
                warn!(error = %e, %spoke, "task counts not recorded; next round");
            }
        }
    }
    for id in running {
        let key = (*id, spoke.to_string());
        if !reported.contains(id) && sent.get(&key).is_some_and(|upto| *upto > 0) {
            info!(task = %hex::encode(id), %spoke, "the spoke lost a task's copies; sending them again");
            sent.remove(&key);
        }
    }
}

/// A task whose counts the leader still takes: running, or stopped or cancelled lately
/// with envoys sent it that have not answered yet.
fn active(t: &TaskRecord, now: u64) -> bool {
    t.state == TaskState::Running
        || (t.settling() && now.saturating_sub(t.ended_ms) < TELL_CANCELLED_MS)
}

fn counts_grew(known: &Counts, now: &Counts) -> bool {
    now.ok > known.ok
        || now.failed > known.failed
        || now.timed_out > known.timed_out
        || now.refused > known.refused
        || now.unreachable > known.unreachable
}

/// Counts the targets of spokes silent past their windows as unreachable — and of
/// spokes removed since the task began.
async fn write_off(node: &Node, silent: &HashSet<String>, now: u64) {
    let offs: Vec<(TaskId, String)> = node.read(|s| {
        let gone = |spoke: &str| {
            silent.contains(spoke)
                || s.spokes
                    .get(spoke)
                    .is_none_or(|sp| sp.state == crate::state::SpokeState::Removed)
        };
        let mut offs = Vec::new();
        for t in s.tasks.running() {
            let closed = t
                .last_not_after()
                .is_some_and(|at| now > at.saturating_add(WRITE_OFF_GRACE_MS));
            if !closed {
                continue;
            }
            let spokes: HashSet<&str> = t.targets.iter().map(|(_, s)| s.as_str()).collect();
            for spoke in spokes {
                if gone(spoke) && !t.written_off.contains(spoke) {
                    offs.push((t.id, spoke.to_string()));
                }
            }
        }
        offs
    });
    for (id, spoke) in offs {
        warn!(task = %hex::encode(id), %spoke, "the spoke did not answer until the task's window closed: its targets count unreachable");
        let _ = node
            .propose(Command::WriteOffTask {
                id,
                spoke,
                at_ms: now,
            })
            .await;
    }
}

/// Tasks by state, on the leader.
fn publish_gauges(node: &Node) {
    node.read(|s| {
        for state in ["running", "finished", "stopped", "cancelled", "expired"] {
            let n = s.tasks.iter().filter(|t| t.state.as_str() == state).count();
            metrics::gauge!("vigo_hub_tasks", "state" => state).set(n as f64);
        }
    });
}
