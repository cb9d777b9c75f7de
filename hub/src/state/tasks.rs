//! Tasks and live queries in the replicated state (DESIGN §10): the audit trail of who
//! ran what on which envoys, and the hub's decisions about them — which targets are
//! released to their spokes (batch by batch), when dispatch stops (max failures,
//! cancel, expiry). Per-envoy results stay on the spokes; each spoke reports its
//! counts, which only grow, so a report applied twice or late changes nothing.
//!
//! A leader change loses nothing: the targets, how many are released and every count
//! are raft state, and the next leader continues from them. Envoys run each task id at
//! most once (`vigo_envoy::agent::tasks`), so a release sent again is harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ClusterState, Rejection};

/// 16 bytes chosen by the leader.
pub type TaskId = [u8; 16];

/// Tasks that may run at once.
pub const MAX_RUNNING: usize = 32;
/// Ended tasks kept for the audit trail (the oldest go first).
pub const MAX_ENDED_KEPT: usize = 256;
/// Envoys one task may target.
pub const MAX_TARGETS: usize = 200_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskAction {
    /// A program and its arguments; through `/bin/sh -c` only when `shell`.
    Exec {
        argv: Vec<String>,
        shell: bool,
    },
    /// One configcrate of the live policy, now.
    Apply {
        configcrate: String,
    },
    RefreshTraits,
    /// Read-only collectors (`package:NAME`, `service:NAME`, `file:PATH`, `trait:KEY`,
    /// `query:NAME`).
    Query {
        collectors: Vec<String>,
    },
}

impl TaskAction {
    pub fn kind(&self) -> &'static str {
        match self {
            TaskAction::Exec { .. } => "exec",
            TaskAction::Apply { .. } => "apply",
            TaskAction::RefreshTraits => "refresh_traits",
            TaskAction::Query { .. } => "query",
        }
    }
}

/// A number of envoys, or a share of the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Portion {
    Count(u32),
    /// 1–100.
    Percent(u8),
}

impl Portion {
    /// How many of `total`: a share rounds up, so any share of a non-empty set is at
    /// least one envoy.
    pub fn of(self, total: u32) -> u32 {
        match self {
            Portion::Count(n) => n.min(total),
            Portion::Percent(p) => (u64::from(total) * u64::from(p.min(100))).div_ceil(100) as u32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub action: TaskAction,
    /// The targets as the operator selected them, for the record.
    pub selector: String,
    /// Envoys in flight at once across the fleet; `None`: all at once.
    pub batch: Option<Portion>,
    /// A first batch of this many, which must end before any other is released.
    pub canary: Option<u32>,
    /// Failed and timed-out envoys at which no further batch is released.
    pub max_failures: Option<Portion>,
    /// How long each envoy may take.
    pub timeout_ms: u64,
}

/// Outcomes counted on one spoke (cumulative: they only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u32,
    pub failed: u32,
    pub timed_out: u32,
    /// The envoy refused the task (e.g. it does not run exec tasks).
    pub refused: u32,
    /// The envoy was not reached before the task's window closed.
    pub unreachable: u32,
}

impl Counts {
    /// Envoys with an outcome (saturating: counts come from spokes, a claim of
    /// `u32::MAX` must not wrap to a small number).
    pub fn ended(&self) -> u32 {
        u32::try_from(self.ended_wide()).unwrap_or(u32::MAX)
    }

    /// The sum without overflow, to hold a spoke's claim against its targets.
    fn ended_wide(&self) -> u64 {
        [
            self.ok,
            self.failed,
            self.timed_out,
            self.refused,
            self.unreachable,
        ]
        .iter()
        .map(|&n| u64::from(n))
        .sum()
    }

    pub fn failures(&self) -> u32 {
        self.failed.saturating_add(self.timed_out)
    }

    fn max(self, other: Counts) -> Counts {
        Counts {
            ok: self.ok.max(other.ok),
            failed: self.failed.max(other.failed),
            timed_out: self.timed_out.max(other.timed_out),
            refused: self.refused.max(other.refused),
            unreachable: self.unreachable.max(other.unreachable),
        }
    }

    fn add(self, other: Counts) -> Counts {
        Counts {
            ok: self.ok.saturating_add(other.ok),
            failed: self.failed.saturating_add(other.failed),
            timed_out: self.timed_out.saturating_add(other.timed_out),
            refused: self.refused.saturating_add(other.refused),
            unreachable: self.unreachable.saturating_add(other.unreachable),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Running,
    /// Every target has an outcome.
    Finished,
    /// Max failures reached: nothing more was released.
    Stopped,
    Cancelled {
        by: String,
    },
    /// The window closed with targets still without an outcome.
    Expired,
}

impl TaskState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Finished => "finished",
            TaskState::Stopped => "stopped",
            TaskState::Cancelled { .. } => "cancelled",
            TaskState::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub requested_by: String,
    pub created_ms: u64,
    /// Envoys refuse the task after this instant; the hub ends it then.
    pub expires_ms: u64,
    /// Envoy id → its spoke, resolved when the task was created. Dispatch releases
    /// them in this order (ascending ids: random, so batches mix the spokes).
    pub targets: Vec<(u64, String)>,
    /// How many of `targets`, in order, have been released to their spokes.
    pub released: u32,
    /// Each release: how far it went and when. A target's copy is valid from its
    /// release for the task's timeout (`TaskRecord::not_after`), whichever leader signs it.
    pub releases: Vec<(u32, u64)>,
    /// Spokes that did not answer until their targets' windows closed: their targets
    /// without an outcome were counted unreachable, and the spoke's counts are not
    /// taken any more.
    pub written_off: std::collections::BTreeSet<String>,
    /// Counts by spoke, as each spoke last reported them.
    pub counts: BTreeMap<String, Counts>,
    pub state: TaskState,
    pub ended_ms: u64,
    /// Targets per spoke, counted on first use: derived from `targets`, which never
    /// change, so never written (a listing of every task stays cheap under the state
    /// lock).
    #[serde(skip)]
    per_spoke: std::sync::OnceLock<Vec<(String, u64)>>,
}

impl TaskRecord {
    /// A task as the leader proposes it: running, nothing released or counted yet.
    pub fn new(
        id: TaskId,
        spec: TaskSpec,
        requested_by: String,
        created_ms: u64,
        expires_ms: u64,
        targets: Vec<(u64, String)>,
    ) -> Self {
        Self {
            id,
            spec,
            requested_by,
            created_ms,
            expires_ms,
            targets,
            released: 0,
            releases: Vec::new(),
            written_off: Default::default(),
            counts: BTreeMap::new(),
            state: TaskState::Running,
            ended_ms: 0,
            per_spoke: Default::default(),
        }
    }

    /// How many targets each spoke holds, by spoke.
    pub fn per_spoke(&self) -> &[(String, u64)] {
        self.per_spoke.get_or_init(|| {
            let mut out: BTreeMap<&str, u64> = BTreeMap::new();
            for (_, spoke) in &self.targets {
                *out.entry(spoke).or_default() += 1;
            }
            out.into_iter().map(|(s, n)| (s.to_string(), n)).collect()
        })
    }

    pub fn total(&self) -> Counts {
        self.counts
            .values()
            .fold(Counts::default(), |a, c| a.add(*c))
    }

    fn target_count(&self) -> u32 {
        self.targets.len() as u32
    }

    /// How many of the released targets are on `spoke`: the most outcomes it can know.
    pub fn released_on(&self, spoke: &str) -> u32 {
        let released = self.targets.iter().take(self.released as usize);
        released.filter(|(_, s)| s == spoke).count() as u32
    }

    /// A spoke's counts are claims: they are taken only while they stay within the
    /// targets the hub released to that spoke (DESIGN §9: a spoke cannot skip a
    /// task's canary, batches or failure limit with its numbers).
    pub fn check_counts(&self, spoke: &str, counts: &Counts) -> Result<(), Rejection> {
        let known = self.counts.get(spoke).copied().unwrap_or_default();
        let claimed = known.max(*counts).ended_wide();
        let released = self.released_on(spoke);
        if claimed > u64::from(released) {
            return Err(Rejection::TaskCounts {
                task: hex::encode(self.id),
                spoke: spoke.to_string(),
                claimed,
                released,
            });
        }
        Ok(())
    }

    /// When the target at `index` was released, if it was.
    pub fn released_at(&self, index: u32) -> Option<u64> {
        self.releases
            .iter()
            .find(|(upto, _)| index < *upto)
            .map(|(_, at)| *at)
    }

    /// Until when the copy of the target at `index` is valid: its release plus the
    /// task's timeout (delivery included), never past the task's own window.
    pub fn not_after(&self, index: u32) -> Option<u64> {
        self.released_at(index)
            .map(|at| at.saturating_add(self.spec.timeout_ms).min(self.expires_ms))
    }

    /// Stopped or cancelled with envoys sent it still without an outcome: their
    /// outcomes are still counted as they come.
    pub fn settling(&self) -> bool {
        matches!(self.state, TaskState::Stopped | TaskState::Cancelled { .. })
            && self.total().ended() < self.released
    }

    /// When the last released target's window closes.
    pub fn last_not_after(&self) -> Option<u64> {
        self.released.checked_sub(1).and_then(|i| self.not_after(i))
    }

    /// How far the leader should release now: the canary first, then a window of
    /// `batch` envoys in flight (released without an outcome); `None` when nothing
    /// more is due.
    pub fn next_release(&self) -> Option<u32> {
        if self.state != TaskState::Running {
            return None;
        }
        let total = self.target_count();
        let ended = self.total().ended();
        let upto = match (self.spec.canary, self.released) {
            (Some(canary), 0) => canary.clamp(1, total),
            // The canary batch must end before the rest begins.
            (Some(canary), released) if released <= canary && ended < released => return None,
            _ => match self.spec.batch {
                None => total,
                Some(batch) => ended.saturating_add(batch.of(total).max(1)).min(total),
            },
        };
        (upto > self.released).then_some(upto)
    }

    fn failure_limit_reached(&self) -> bool {
        self.spec
            .max_failures
            .is_some_and(|limit| self.total().failures() >= limit.of(self.target_count()).max(1))
    }
}

/// Running and ended tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tasks {
    by_id: BTreeMap<TaskId, TaskRecord>,
    /// Ended tasks, oldest first (to drop the oldest beyond [`MAX_ENDED_KEPT`]).
    ended: Vec<TaskId>,
}

impl Tasks {
    pub fn get(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &TaskRecord> {
        self.by_id.values()
    }

    pub fn running(&self) -> impl Iterator<Item = &TaskRecord> {
        self.by_id
            .values()
            .filter(|t| t.state == TaskState::Running)
    }

    fn end(&mut self, id: TaskId, state: TaskState, at_ms: u64) {
        if let Some(task) = self.by_id.get_mut(&id) {
            task.state = state;
            task.ended_ms = at_ms;
            self.ended.push(id);
        }
        while self.ended.len() > MAX_ENDED_KEPT {
            let oldest = self.ended.remove(0);
            self.by_id.remove(&oldest);
        }
    }

    fn running_mut(&mut self, id: &TaskId) -> Result<&mut TaskRecord, Rejection> {
        let task = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| Rejection::NoSuchTask(hex::encode(id)))?;
        if task.state != TaskState::Running {
            return Err(Rejection::TaskEnded(
                hex::encode(id),
                task.state.as_str().into(),
            ));
        }
        Ok(task)
    }
}

impl ClusterState {
    pub(super) fn create_task(&mut self, task: TaskRecord) -> Result<(), Rejection> {
        let tasks = &mut self.tasks;
        if tasks.by_id.contains_key(&task.id) {
            return Err(Rejection::TaskExists(hex::encode(task.id)));
        }
        if tasks.running().count() >= MAX_RUNNING {
            return Err(Rejection::TooManyTasks(MAX_RUNNING));
        }
        if task.targets.is_empty() || task.targets.len() > MAX_TARGETS {
            return Err(Rejection::TaskTargets(task.targets.len(), MAX_TARGETS));
        }
        let mut task = task;
        task.released = 0;
        task.releases.clear();
        task.written_off.clear();
        task.counts.clear();
        task.state = TaskState::Running;
        tasks.by_id.insert(task.id, task);
        Ok(())
    }

    /// Releases targets up to `upto` (never fewer than already released) at `at_ms`.
    pub(super) fn release_task(
        &mut self,
        id: &TaskId,
        upto: u32,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let task = self.tasks.running_mut(id)?;
        let upto = upto.min(task.target_count());
        if upto > task.released {
            task.released = upto;
            task.releases.push((upto, at_ms));
        }
        Ok(())
    }

    /// Counts the targets of a spoke that stayed silent past their windows as
    /// unreachable (all of them: none more is released there), and takes no more counts
    /// from it.
    pub(super) fn write_off_task(
        &mut self,
        id: &TaskId,
        spoke: &str,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let task = self.tasks.running_mut(id)?;
        if !task.written_off.insert(spoke.to_string()) {
            return Ok(());
        }
        let on_spoke = task.targets.iter().filter(|(_, s)| s == spoke).count() as u32;
        let entry = task.counts.entry(spoke.to_string()).or_default();
        let unheard = on_spoke.saturating_sub(entry.ended());
        entry.unreachable = entry.unreachable.saturating_add(unheard);
        self.settle_task(id, at_ms);
        Ok(())
    }

    /// Folds in a spoke's counts (each field only grows), then ends the task when every
    /// target has an outcome, or stops it when its failures reach the limit.
    pub(super) fn count_task(
        &mut self,
        id: &TaskId,
        spoke: &str,
        counts: Counts,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let task = self
            .tasks
            .by_id
            .get_mut(id)
            .ok_or_else(|| Rejection::NoSuchTask(hex::encode(id)))?;
        // Envoys sent a task before it was stopped or cancelled finish it (or are told to
        // stop): their outcomes still count, the state stays.
        let settling = matches!(task.state, TaskState::Stopped | TaskState::Cancelled { .. });
        if task.state != TaskState::Running && !settling {
            return Err(Rejection::TaskEnded(
                hex::encode(id),
                task.state.as_str().into(),
            ));
        }
        if task.written_off.contains(spoke) {
            return Ok(());
        }
        task.check_counts(spoke, &counts)?;
        let entry = task.counts.entry(spoke.to_string()).or_default();
        *entry = entry.max(counts);
        if !settling {
            self.settle_task(id, at_ms);
        }
        Ok(())
    }

    /// Ends a running task when every target has an outcome, or stops it when its
    /// failures reach the limit.
    fn settle_task(&mut self, id: &TaskId, at_ms: u64) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let state = if task.total().ended() >= task.target_count() {
            Some(TaskState::Finished)
        } else if task.failure_limit_reached() {
            Some(TaskState::Stopped)
        } else {
            None
        };
        if let Some(state) = state {
            self.tasks.end(*id, state, at_ms);
        }
    }

    pub(super) fn cancel_task(
        &mut self,
        id: &TaskId,
        by: String,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        self.tasks.running_mut(id)?;
        self.tasks.end(*id, TaskState::Cancelled { by }, at_ms);
        Ok(())
    }

    /// Ends every running task whose window closed before `at_ms`.
    pub(super) fn expire_tasks(&mut self, at_ms: u64) {
        let expired: Vec<TaskId> = self
            .tasks
            .running()
            .filter(|t| t.expires_ms < at_ms)
            .map(|t| t.id)
            .collect();
        for id in expired {
            self.tasks.end(id, TaskState::Expired, at_ms);
        }
    }
}

#[cfg(test)]
mod tests;
