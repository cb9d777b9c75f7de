//! Tasks on the spoke (DESIGN §10). The hub's leader sends signed per-envoy copies
//! (`SyncTasks`); the spoke relays each to its envoy — at once on the envoy's stream
//! when it holds one, else by answering its next check-in `open_stream` and sending the
//! copy first on the stream it opens — takes the envoy's signed result (`ReportTask`),
//! stores it durably, and counts outcomes for the hub.
//!
//! The spoke relays tasks and cannot mint one: the envoy verifies the hub's signature.
//! What the spoke decides itself is the end of a copy's window: an envoy without a
//! result by the copy's `not_after` plus [`GRACE_MS`] is counted timed out when the
//! copy was sent to it, unreachable when it was not. A result after that is refused,
//! so a count never goes down.
//!
//! Memory: per copy, its signed bytes until it is answered or ends, and an outcome;
//! result bodies (output, query rows) live in redb only. The newest [`KEEP_TASKS`]
//! tasks are kept; the results of older ones are deleted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use vigo_common::EnvoyId;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use crate::error::SpokeError;
use crate::store::{Store, WriteOp, WriteOutcome, encode_task_result};
use crate::streams::Streams;

/// Tasks whose results a spoke keeps.
pub const KEEP_TASKS: usize = 64;
/// How long after a copy's window an envoy's result may still arrive (its upload).
pub const GRACE_MS: u64 = 5_000;
/// The largest result an envoy sends: 64 KiB of each output stream, rows, the rest.
pub const MAX_RESULT_BODY: usize = vigo_common::limits::MAX_TASK_RESULT;
/// Rows of results in one page at most.
pub const MAX_PAGE: u32 = 1000;
/// Bytes of results in one page: past them the page ends (with at least one row).
pub const MAX_PAGE_BYTES: usize = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok = 1,
    Failed = 2,
    TimedOut = 3,
    Refused = 4,
    Unreachable = 5,
}

impl Outcome {
    /// What an envoy may report (unreachable is the spoke's to decide).
    pub fn reported(status: &str) -> Option<Outcome> {
        match status {
            "ok" => Some(Outcome::Ok),
            "failed" => Some(Outcome::Failed),
            "timed_out" => Some(Outcome::TimedOut),
            "refused" => Some(Outcome::Refused),
            _ => None,
        }
    }

    fn from_byte(b: u8) -> Option<Outcome> {
        [
            Outcome::Ok,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Refused,
            Outcome::Unreachable,
        ]
        .into_iter()
        .find(|o| *o as u8 == b)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
        }
    }
}

/// One envoy's copy of a task.
struct Copy {
    /// Until it is answered or its task ends.
    signed: Option<pb::SignedTask>,
    not_after_ms: u64,
    /// The stream generation it was last queued on.
    sent_on: Option<u64>,
    outcome: Option<Outcome>,
    /// The outcome came from the envoy (its result is on disk).
    stored: bool,
}

#[derive(Default)]
struct Task {
    copies: BTreeMap<u64, Copy>,
    /// The hub counts it running.
    running: bool,
    /// Copies came since this spoke started: only then are its counts reported (a
    /// spoke that lost its copies in a restart is sent them again).
    dispatched_here: bool,
    /// Envoys running it were told it was cancelled.
    cancel_sent: bool,
}

impl Task {
    fn progress(&self, id: u128) -> pb::TaskProgress {
        let mut p = pb::TaskProgress {
            task_id: id.to_be_bytes().to_vec().into(),
            ..Default::default()
        };
        for c in self.copies.values() {
            p.held += 1;
            p.delivered += u32::from(c.sent_on.is_some());
            match c.outcome {
                Some(Outcome::Ok) => p.ok += 1,
                Some(Outcome::Failed) => p.failed += 1,
                Some(Outcome::TimedOut) => p.timed_out += 1,
                Some(Outcome::Refused) => p.refused += 1,
                Some(Outcome::Unreachable) => p.unreachable += 1,
                None => {}
            }
        }
        p
    }
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<u128, Task>,
    /// Task ids, oldest first.
    order: VecDeque<u128>,
    /// Envoy → its copies still to deliver or answer.
    waiting: HashMap<u64, u32>,
}

impl Inner {
    fn settle(&mut self, envoy: u64) {
        if let Some(n) = self.waiting.get_mut(&envoy) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&envoy);
            }
        }
    }
}

pub struct SpokeTasks {
    inner: Mutex<Inner>,
    /// Envoys with copies waiting: zero in the common case, so a check-in pays one
    /// atomic load for tasks.
    waiting_envoys: AtomicUsize,
    streams: Arc<Streams>,
    store: Store,
}

fn task_key(raw: &[u8]) -> Result<u128, SpokeError> {
    <[u8; 16]>::try_from(raw)
        .map(u128::from_be_bytes)
        .map_err(|_| SpokeError::malformed("task_id", format!("{} bytes, not 16", raw.len())))
}

impl SpokeTasks {
    pub fn new(store: Store, streams: Arc<Streams>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            waiting_envoys: AtomicUsize::new(0),
            streams,
            store,
        }
    }

    /// At start-up: the outcomes stored before a restart come back; copies do not (the
    /// hub sends them again).
    pub fn restore(&self) -> Result<(), SpokeError> {
        let mut inner = self.lock();
        for (task, envoy, byte) in self.store.task_outcomes()? {
            let entry = inner.tasks.entry(task).or_default();
            entry.copies.insert(
                envoy,
                Copy {
                    signed: None,
                    not_after_ms: 0,
                    sent_on: None,
                    outcome: Outcome::from_byte(byte),
                    stored: true,
                },
            );
        }
        inner.order = inner.tasks.keys().copied().collect();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_waiting(&self, inner: &Inner) {
        self.waiting_envoys
            .store(inner.waiting.len(), Ordering::Relaxed);
        metrics::gauge!("vigo_tasks_waiting_envoys").set(inner.waiting.len() as f64);
    }

    /// Whether copies wait for this envoy (the check-in answer then says `open_stream`).
    pub fn has_waiting(&self, envoy: EnvoyId) -> bool {
        self.waiting_envoys.load(Ordering::Relaxed) > 0
            && self.lock().waiting.contains_key(&envoy.get())
    }

    /// The envoy's copies not yet sent on its current stream: what a new stream sends
    /// first (`generation` is the stream's), marked sent on it.
    pub fn unsent(&self, envoy: EnvoyId, generation: Option<u64>) -> Vec<pb::StreamEvent> {
        let mut inner = self.lock();
        if !inner.waiting.contains_key(&envoy.get()) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for task in inner.tasks.values_mut() {
            if let Some(copy) = task.copies.get_mut(&envoy.get())
                && copy.outcome.is_none()
                && copy.sent_on.is_none_or(|g| Some(g) != generation)
                && let Some(signed) = &copy.signed
            {
                out.push(pb::StreamEvent {
                    task: Some(signed.clone()),
                    ..Default::default()
                });
                copy.sent_on = generation.or(copy.sent_on);
            }
        }
        out
    }

    /// At a check-in of an envoy holding a stream: queues what that stream has not
    /// carried yet (a copy that found the queue full, or came while it reconnected).
    pub fn resend(&self, envoy: EnvoyId) {
        let Some(generation) = self.streams.generation(envoy) else {
            return;
        };
        for event in self.unsent(envoy, Some(generation)) {
            if self.streams.send(envoy, event).is_none() {
                break;
            }
        }
    }

    /// The leader's sync: forget what no longer runs, take new copies (sent at once on
    /// open streams), and answer every dispatched task's counts.
    pub async fn sync(
        &self,
        req: pb::SyncTasksRequest,
    ) -> Result<pb::SyncTasksResponse, SpokeError> {
        let running = req
            .running
            .iter()
            .map(|r| task_key(r))
            .collect::<Result<std::collections::HashSet<u128>, _>>()?;
        let mut dispatch = Vec::with_capacity(req.dispatch.len());
        for d in req.dispatch {
            let id = task_key(&d.task_id)?;
            if !running.contains(&id) {
                return Err(SpokeError::malformed(
                    "dispatch",
                    "a task that is not running",
                ));
            }
            dispatch.push((id, d.copies));
        }
        let cancelled = req
            .cancelled
            .iter()
            .filter_map(|r| task_key(r).ok())
            .collect::<Vec<u128>>();
        let mut to_send = Vec::new();
        let (dropped, stops) = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            self.end_tasks(inner, &running);
            let stops = to_stop(inner, &cancelled);
            for (id, copies) in dispatch {
                self.take_copies(inner, id, copies, &mut to_send);
            }
            self.publish_waiting(inner);
            (evict(inner), stops)
        };
        self.send_now(to_send);
        for (envoy, id) in stops {
            let event = pb::StreamEvent {
                cancel_task_id: id.to_be_bytes().to_vec().into(),
                ..Default::default()
            };
            self.streams.send(envoy, event);
        }
        let progress = self
            .lock()
            .tasks
            .iter()
            .filter(|(_, t)| t.dispatched_here)
            .map(|(id, t)| t.progress(*id))
            .collect();
        if !dropped.is_empty() {
            self.store
                .write(WriteOp::DropTaskResults { tasks: dropped })
                .await?;
        }
        Ok(pb::SyncTasksResponse { progress })
    }

    /// Tasks the hub no longer runs: their copies not yet answered go undelivered.
    fn end_tasks(&self, inner: &mut Inner, running: &std::collections::HashSet<u128>) {
        let mut settled = Vec::new();
        for (id, task) in inner.tasks.iter_mut() {
            if running.contains(id) || !task.running {
                continue;
            }
            task.running = false;
            for (envoy, copy) in task.copies.iter_mut() {
                if copy.signed.take().is_some() && copy.outcome.is_none() {
                    settled.push(*envoy);
                }
            }
        }
        for envoy in settled {
            inner.settle(envoy);
        }
    }

    fn take_copies(
        &self,
        inner: &mut Inner,
        id: u128,
        copies: Vec<pb::TaskCopy>,
        to_send: &mut Vec<(EnvoyId, u128, pb::SignedTask)>,
    ) {
        if !inner.tasks.contains_key(&id) {
            inner.order.push_back(id);
        }
        let task = inner.tasks.entry(id).or_default();
        task.running = true;
        task.dispatched_here = true;
        let mut waiting = Vec::new();
        for c in copies {
            let (Some(envoy), Some(signed)) = (EnvoyId::new(c.envoy_id), c.task) else {
                continue;
            };
            if task.copies.contains_key(&envoy.get()) {
                // Sent again (a new leader, a retried sync): the first copy stands.
                continue;
            }
            to_send.push((envoy, id, signed.clone()));
            task.copies.insert(
                envoy.get(),
                Copy {
                    signed: Some(signed),
                    not_after_ms: c.not_after_ms,
                    sent_on: None,
                    outcome: None,
                    stored: false,
                },
            );
            waiting.push(envoy.get());
        }
        for envoy in waiting {
            *inner.waiting.entry(envoy).or_default() += 1;
        }
    }

    /// Sends new copies on the streams open now, and marks them sent.
    fn send_now(&self, to_send: Vec<(EnvoyId, u128, pb::SignedTask)>) {
        let mut sent = Vec::new();
        for (envoy, id, signed) in to_send {
            let event = pb::StreamEvent {
                task: Some(signed),
                ..Default::default()
            };
            if let Some(generation) = self.streams.send(envoy, event) {
                sent.push((envoy, id, generation));
            }
        }
        let sent_count = sent.len() as u64;
        let mut inner = self.lock();
        for (envoy, id, generation) in sent {
            if let Some(copy) = inner
                .tasks
                .get_mut(&id)
                .and_then(|t| t.copies.get_mut(&envoy.get()))
            {
                copy.sent_on = Some(generation);
            }
        }
        metrics::counter!("vigo_tasks_sent_on_stream_total").increment(sent_count);
    }

    /// Ends the copies whose window closed without a result: timed out when the copy
    /// was sent, unreachable when not. Called about every second.
    pub fn expire(&self, now_ms: u64) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut settled = Vec::new();
        for task in inner.tasks.values_mut() {
            for (envoy, copy) in task.copies.iter_mut() {
                if copy.outcome.is_none()
                    && copy.not_after_ms > 0
                    && now_ms > copy.not_after_ms.saturating_add(GRACE_MS)
                {
                    copy.outcome = Some(if copy.sent_on.is_some() {
                        Outcome::TimedOut
                    } else {
                        Outcome::Unreachable
                    });
                    if copy.signed.take().is_some() {
                        settled.push(*envoy);
                    }
                }
            }
        }
        for envoy in settled {
            inner.settle(envoy);
        }
        self.publish_waiting(inner);
    }

    /// An envoy's result: checked against the copy it was sent, stored durably, then
    /// counted. Returns whether it was stored before (a retried report).
    /// Whether the spoke takes this result: a copy it sent the envoy, a known status,
    /// within its window. `Ok(None)` for a result stored already (a retry); the
    /// gateway asks before it takes the request's sequence number, so a refused report
    /// changes nothing, as every other refusal.
    pub fn check(
        &self,
        envoy: EnvoyId,
        body: &pb::TaskResultBody,
    ) -> Result<Option<(u128, Outcome)>, SpokeError> {
        let id = task_key(&body.task_id)?;
        let outcome = Outcome::reported(&body.status).ok_or_else(|| {
            SpokeError::malformed(
                "status",
                format!("{:?}: ok, failed, timed_out or refused", body.status),
            )
        })?;
        let inner = self.lock();
        let copy = inner
            .tasks
            .get(&id)
            .and_then(|t| t.copies.get(&envoy.get()))
            .ok_or_else(|| SpokeError::NoSuchTask(hex::encode(id.to_be_bytes())))?;
        match copy.outcome {
            Some(_) if copy.stored => Ok(None),
            Some(decided) => Err(SpokeError::TaskWindowClosed(decided.as_str())),
            None => Ok(Some((id, outcome))),
        }
    }

    pub async fn report(
        &self,
        envoy: EnvoyId,
        hostname: &str,
        body: pb::TaskResultBody,
        now_ms: u64,
    ) -> Result<bool, SpokeError> {
        let Some((id, outcome)) = self.check(envoy, &body)? else {
            return Ok(true);
        };
        let row = result_row(envoy, hostname, &body, outcome, now_ms);
        let written = self
            .store
            .write(WriteOp::PutTaskResult {
                task: id,
                envoy: envoy.get(),
                outcome: outcome as u8,
                row: encode_task_result(&row),
            })
            .await?;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut settled = false;
        if let Some(copy) = inner
            .tasks
            .get_mut(&id)
            .and_then(|t| t.copies.get_mut(&envoy.get()))
            && copy.outcome.is_none()
        {
            copy.outcome = Some(outcome);
            copy.stored = true;
            settled = copy.signed.take().is_some();
        }
        if settled {
            inner.settle(envoy.get());
        }
        self.publish_waiting(inner);
        metrics::counter!("vigo_task_results_total", "outcome" => outcome.as_str()).increment(1);
        Ok(written == WriteOutcome::DuplicateResult)
    }
}

/// The envoys to tell that a task was cancelled: those it was sent to and that have not
/// answered (once per task).
fn to_stop(inner: &mut Inner, cancelled: &[u128]) -> Vec<(EnvoyId, u128)> {
    let mut out = Vec::new();
    for id in cancelled {
        let Some(task) = inner.tasks.get_mut(id).filter(|t| !t.cancel_sent) else {
            continue;
        };
        task.cancel_sent = true;
        for (envoy, copy) in &task.copies {
            if copy.sent_on.is_some() && copy.outcome.is_none() {
                out.extend(EnvoyId::new(*envoy).map(|e| (e, *id)));
            }
        }
    }
    out
}

/// Drops the oldest tasks beyond [`KEEP_TASKS`] that no longer run; their ids, for
/// their results to go from disk.
fn evict(inner: &mut Inner) -> Vec<u128> {
    let mut dropped = Vec::new();
    let mut i = 0;
    while inner.order.len() - dropped.len() > KEEP_TASKS && i < inner.order.len() {
        let id = inner.order[i];
        if inner.tasks.get(&id).is_some_and(|t| !t.running) {
            inner.tasks.remove(&id);
            dropped.push(id);
        }
        i += 1;
    }
    inner.order.retain(|id| !dropped.contains(id));
    dropped
}

fn result_row(
    envoy: EnvoyId,
    hostname: &str,
    body: &pb::TaskResultBody,
    outcome: Outcome,
    now_ms: u64,
) -> api::TaskResult {
    api::TaskResult {
        envoy_id: envoy.to_string(),
        hostname: hostname.to_string(),
        spoke: String::new(),
        status: outcome.as_str().into(),
        exit_code: body.exit_code.unwrap_or(-1),
        stdout: body.stdout.clone(),
        stderr: body.stderr.clone(),
        output_dropped: body.output_dropped,
        rows: body
            .rows
            .iter()
            .map(|r| api::TaskQueryRow {
                collector: r.collector.clone(),
                fields: r.fields.clone(),
                error: r.error.clone(),
            })
            .collect(),
        message: body.message.clone(),
        duration_ms: body.duration_ms,
        received_ms: now_ms,
    }
}

mod results;
#[cfg(test)]
mod tests;
