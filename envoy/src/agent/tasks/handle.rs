//! A task delivered on the stream, from admission to the result the spoke takes: admit
//! it (`super::admit` — its id is on disk before anything runs), run it off the async
//! workers within its window, and describe the outcome as a `TaskResultBody`.
//!
//! A task this envoy refuses by its own configuration (exec) is answered "refused".
//! One that fails the checks that make it a task at all — a bad signature, another
//! envoy's, expired — is logged and not answered: its sender gets nothing to learn from,
//! and a genuine copy ends at its window on the spoke. A copy delivered again is
//! dropped quietly: the first delivery's result stands.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use tracing::{info, warn};
use vigo_common::EnvoyId;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tonic::Code;
use vigo_common::signing::Domain;

use super::run::{TaskOutcome, TaskStatus, run_exec, run_query, timeout_of};
use super::{AdmitError, Admitted, TaskPolicy, TaskRefusal, admit};
use crate::agent::Agent;
use crate::agent::plan::{self, Facts};
use crate::agent::state::LocalState;
use crate::agent::traits;
use crate::client;

/// What the agent needs to run tasks.
#[derive(Clone)]
pub struct TaskContext {
    pub envoy: EnvoyId,
    pub hostname: String,
    pub trusted: Vec<VerifyingKey>,
    pub policy: TaskPolicy,
    pub local: Arc<LocalState>,
}

/// What became of a delivered task.
pub enum Taken {
    /// Admitted: this runs it (blocking) and gives its result; setting the flag it is
    /// given stops it.
    Run {
        id: [u8; 16],
        work: Box<dyn FnOnce(&AtomicBool) -> pb::TaskResultBody + Send>,
    },
    /// Answered at once (refused here).
    Answer(pb::TaskResultBody),
    /// Not a task to answer (logged).
    Dropped,
    /// Admitted, and asks the agent to refresh its traits (answered once sent).
    RefreshTraits(pb::TaskResultBody),
}

/// Admits a delivered task and starts it.
pub async fn take(ctx: &TaskContext, signed: pb::SignedTask) -> Taken {
    let admitting = ctx.clone();
    let kept = signed.clone();
    let admitted = tokio::task::spawn_blocking(move || {
        admit(
            &signed,
            admitting.envoy,
            &admitting.trusted,
            now_ms(),
            admitting.policy,
            &admitting.local,
        )
    })
    .await;
    let admitted = match admitted {
        Ok(Ok(a)) => a,
        Ok(Err(AdmitError::Refused(TaskRefusal::AlreadySeen(id)))) => {
            tracing::debug!(task = %id, "task delivered again; it ran once already");
            return Taken::Dropped;
        }
        Ok(Err(AdmitError::Refused(why @ TaskRefusal::ExecRefused))) => {
            return refused_here(&kept, &why);
        }
        Ok(Err(e)) => {
            warn!(error = %e, "task refused");
            return Taken::Dropped;
        }
        Err(e) => {
            warn!(error = %e, "task admission stopped");
            return Taken::Dropped;
        }
    };
    info!(task = %admitted.id_hex(), kind = kind(&admitted.body), "running a task");
    if matches!(
        admitted.body.action,
        Some(pb::task_body::Action::RefreshTraits(_))
    ) {
        let outcome = TaskOutcome::done("traits collected afresh; sent with this check-in");
        return Taken::RefreshTraits(result_body(&admitted, &outcome));
    }
    let ctx = ctx.clone();
    Taken::Run {
        id: admitted.id,
        work: Box::new(move |stop| {
            let outcome = run(&ctx, &admitted, stop);
            info!(task = %admitted.id_hex(), status = outcome.status.as_str(), "task finished");
            result_body(&admitted, &outcome)
        }),
    }
}

/// A task refused by this envoy's configuration, answered "refused". The checks ran up
/// to the configuration's, so the signature verified and the body decodes.
fn refused_here(signed: &pb::SignedTask, why: &TaskRefusal) -> Taken {
    let Ok(body) = <pb::TaskBody as prost::Message>::decode(signed.body.as_ref()) else {
        return Taken::Dropped;
    };
    info!(task = %hex::encode(&body.task_id), "{why}: answering refused");
    Taken::Answer(pb::TaskResultBody {
        task_id: body.task_id,
        status: "refused".into(),
        message: why.to_string(),
        exit_code: None,
        ..Default::default()
    })
}

fn kind(body: &pb::TaskBody) -> &'static str {
    match body.action {
        Some(pb::task_body::Action::Exec(_)) => "exec",
        Some(pb::task_body::Action::Apply(_)) => "apply",
        Some(pb::task_body::Action::RefreshTraits(_)) => "refresh_traits",
        Some(pb::task_body::Action::Query(_)) => "query",
        None => "none",
    }
}

/// How long the task may run: its own timeout, never past its window.
fn budget(body: &pb::TaskBody) -> Duration {
    let left = Duration::from_millis(body.not_after_ms.saturating_sub(now_ms()));
    timeout_of(body).min(left).max(Duration::from_millis(1))
}

fn run(ctx: &TaskContext, task: &Admitted, stop: &AtomicBool) -> TaskOutcome {
    use pb::task_body::Action;
    match &task.body.action {
        Some(Action::Exec(exec)) => {
            let env = BTreeMap::from([
                ("VIGO_TASK_ID".to_string(), task.id_hex()),
                ("VIGO_ENVOY_ID".to_string(), ctx.envoy.to_string()),
            ]);
            run_exec(exec, budget(&task.body), &env, stop)
        }
        Some(Action::Query(query)) => run_query(query, &traits::collect(&ctx.hostname)),
        Some(Action::Apply(apply)) => apply_configcrate(ctx, &apply.configcrate),
        // Admission refuses a task without an action; traits are the agent's to send.
        Some(Action::RefreshTraits(_)) | None => TaskOutcome::done(""),
    }
}

/// Applies one configcrate of the bundle in force now.
fn apply_configcrate(ctx: &TaskContext, name: &str) -> TaskOutcome {
    let started = Instant::now();
    let failed = |why: String| TaskOutcome::failed(why, started);
    let bundle = match crate::agent::load_bundle(&ctx.local, &ctx.trusted) {
        Ok(Some(b)) => b,
        Ok(None) => return failed("this envoy holds no bundle yet".into()),
        Err(e) => return failed(format!("reading the bundle: {e}")),
    };
    let modules = match bundle.decode_modules() {
        Ok(m) => m,
        Err(e) => return failed(e.to_string()),
    };
    let chosen: Vec<pb::Module> = modules.into_iter().filter(|m| m.name == name).collect();
    if chosen.is_empty() {
        return failed(format!(
            "configcrate {name:?} is not in this envoy's policy"
        ));
    }
    let traits = traits::collect(&ctx.hostname);
    let facts = Facts {
        hostname: &ctx.hostname,
        traits: &traits,
    };
    let results = plan::apply(&chosen, &bundle.manifest, &facts, false);
    let tally = plan::tally(&results);
    let lines: Vec<String> = results
        .iter()
        .map(|r| format!("{} {:?} {}", r.id, r.outcome, r.message))
        .collect();
    let mut outcome = if tally.failed + tally.skipped > 0 {
        TaskOutcome::failed(
            format!("{} failed, {} skipped", tally.failed, tally.skipped),
            started,
        )
    } else {
        TaskOutcome::done(&format!(
            "{} changed, {} in policy",
            tally.changed, tally.ok
        ))
    };
    outcome.stdout = lines.join("\n");
    outcome
}

/// The result an admitted task's outcome is reported as.
pub fn result_body(task: &Admitted, outcome: &TaskOutcome) -> pb::TaskResultBody {
    let mut body = pb::TaskResultBody {
        task_id: bytes::Bytes::copy_from_slice(&task.id),
        status: outcome.status.as_str().into(),
        exit_code: outcome.exit_code,
        stdout: outcome.stdout.clone(),
        stderr: outcome.stderr.clone(),
        output_dropped: outcome.output_dropped,
        rows: outcome
            .rows
            .iter()
            .map(|r| pb::QueryRow {
                collector: r.collector.clone(),
                fields: r.fields.clone(),
                error: r.error.clone().unwrap_or_default(),
            })
            .collect(),
        message: outcome.message.clone(),
        duration_ms: outcome.duration.as_millis().min(u128::from(u32::MAX)) as u32,
        ..Default::default()
    };
    super::fit::fit(&mut body);
    body
}

impl TaskOutcome {
    fn done(message: &str) -> Self {
        Self {
            status: TaskStatus::Ok,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            output_dropped: 0,
            rows: Vec::new(),
            message: message.to_string(),
            duration: Duration::ZERO,
        }
    }

    fn failed(message: String, started: Instant) -> Self {
        Self {
            status: TaskStatus::Failed,
            duration: started.elapsed(),
            ..Self::done(&message)
        }
    }
}

/// Tasks delivered and not yet started (bounded: a flood waits on the spoke, which
/// sends again), tasks running, and results not yet taken by the spoke.
pub struct TaskLoop {
    tx: mpsc::Sender<pb::StreamEvent>,
    rx: mpsc::Receiver<pb::StreamEvent>,
    running: JoinSet<pb::TaskResultBody>,
    /// The stop flag of each task running.
    stops: HashMap<[u8; 16], Arc<AtomicBool>>,
    results: VecDeque<pb::TaskResultBody>,
    pub policy: TaskPolicy,
}

pub enum TaskEvent {
    Delivered(pb::SignedTask),
    Cancelled([u8; 16]),
    Finished(Result<pb::TaskResultBody, JoinError>),
}

/// Tasks delivered and waiting to start, at most.
const WAITING: usize = 64;
/// Results waiting for the spoke, at most (the oldest go first).
const MAX_RESULTS: usize = 256;
const RESULT_DEADLINE: Duration = Duration::from_secs(10);

impl Default for TaskLoop {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskLoop {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(WAITING);
        Self {
            tx,
            rx,
            running: JoinSet::new(),
            stops: HashMap::new(),
            results: VecDeque::new(),
            policy: TaskPolicy::default(),
        }
    }

    /// Where the stream reader puts delivered tasks and cancels.
    pub fn sender(&self) -> mpsc::Sender<pb::StreamEvent> {
        self.tx.clone()
    }

    /// The next task delivered or finished.
    pub async fn next_event(&mut self) -> TaskEvent {
        loop {
            tokio::select! {
                Some(event) = self.rx.recv() => {
                    if let Some(task) = event.task {
                        return TaskEvent::Delivered(task);
                    }
                    if let Ok(id) = <[u8; 16]>::try_from(event.cancel_task_id.as_ref()) {
                        return TaskEvent::Cancelled(id);
                    }
                }
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    return TaskEvent::Finished(done);
                }
                else => std::future::pending::<()>().await,
            }
        }
    }

    pub fn finished(&mut self, done: Result<pb::TaskResultBody, JoinError>) {
        match done {
            Ok(body) => {
                if let Ok(id) = <[u8; 16]>::try_from(body.task_id.as_ref()) {
                    self.stops.remove(&id);
                }
                self.queue(body)
            }
            Err(e) => warn!(error = %e, "a task stopped without a result"),
        }
    }

    /// A task cancelled at the hub: if it runs here, it is stopped.
    pub fn cancel(&mut self, id: [u8; 16]) {
        if let Some(stop) = self.stops.get(&id) {
            info!(task = %hex::encode(id), "task cancelled: stopping it");
            stop.store(true, Ordering::Relaxed);
        }
    }

    fn queue(&mut self, body: pb::TaskResultBody) {
        if self.results.len() >= MAX_RESULTS {
            self.results.pop_front();
        }
        self.results.push_back(body);
    }
}

/// Refusals after which sending the same result again cannot succeed.
fn permanent(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::Unimplemented
    ) && vigo_common::net::shedding::retry_after(status).is_none()
}

impl Agent {
    /// Takes a task from the stream; true when the agent should check in now (to send
    /// its traits afresh).
    pub(crate) async fn take_task(&mut self, signed: pb::SignedTask) -> bool {
        let ctx = TaskContext {
            envoy: self.identity.envoy_id,
            hostname: self.identity.hostname.clone(),
            trusted: self.identity.bundle_keys.clone(),
            policy: self.tasks.policy,
            local: self.local.clone(),
        };
        match take(&ctx, signed).await {
            Taken::Run { id, work } => {
                let stop = Arc::new(AtomicBool::new(false));
                self.tasks.stops.insert(id, stop.clone());
                self.tasks.running.spawn_blocking(move || work(&stop));
                false
            }
            Taken::Answer(body) => {
                self.tasks.queue(body);
                false
            }
            Taken::RefreshTraits(body) => {
                self.traits_known = false;
                self.tasks.queue(body);
                true
            }
            Taken::Dropped => false,
        }
    }

    /// Sends the results waiting, oldest first, each signed; stops at the first the
    /// spoke cannot take now (the next round sends it again).
    pub(crate) async fn send_task_results(&mut self) {
        while let Some(front) = self.tasks.results.front() {
            let mut body = front.clone();
            body.envoy_id = self.identity.envoy_id.get();
            body.sequence = self.sequence.advance();
            body.timestamp_ms = now_ms();
            let mut request =
                tonic::Request::new(client::seal(&self.identity.key, Domain::TaskResult, &body));
            request.set_timeout(RESULT_DEADLINE);
            match self.gateway.report_task(request).await {
                Ok(_) => {
                    self.tasks.results.pop_front();
                }
                Err(s) if permanent(&s) => {
                    warn!(task = %hex::encode(&body.task_id), code = ?s.code(), "task result refused: {}", s.message());
                    self.tasks.results.pop_front();
                }
                Err(s) => {
                    tracing::debug!(code = ?s.code(), "task result not sent yet: {}", s.message());
                    return;
                }
            }
        }
    }
}
