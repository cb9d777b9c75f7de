//! Tasks in the simulator. An envoy whose check-in answer says `open_stream` opens a
//! stream and holds it (for the rest of the run); each task on it is checked as the
//! agent checks one (`crate::agent::tasks::check`: signature by a trusted key, this
//! envoy, its window), "runs" for `--task-run-time`, fails with probability
//! `--task-fail`, and its result goes back signed. Nothing is executed: the simulator
//! measures the hub and spokes, not this machine.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use vigo_common::signing::Domain;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use super::Gateway;
use crate::agent::tasks::{TaskPolicy, check};
use crate::client::{self, Identity, Sequencer};

/// A simulated envoy's sequence numbers, shared by its check-ins and its stream.
pub type SharedSequence = Arc<Mutex<Sequencer>>;

pub fn next(seq: &SharedSequence) -> u64 {
    seq.lock().unwrap_or_else(|p| p.into_inner()).advance()
}

/// How simulated envoys answer tasks.
#[derive(Clone, Copy, Debug)]
pub struct TaskBehaviour {
    pub run_time: Duration,
    /// Share of tasks answered "failed" (0..=1).
    pub fail: f64,
}

/// Task figures across the simulator.
#[derive(Default)]
pub struct TaskStats {
    pub streams_opened: AtomicU64,
    pub received: AtomicU64,
    pub refused: AtomicU64,
    pub results_sent: AtomicU64,
    pub results_failed: AtomicU64,
}

/// One envoy's stream, once the spoke asked for one.
#[derive(Default)]
pub struct Stream {
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    pub fn is_open(&self) -> bool {
        self.reader.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Opens the stream (if none is open) and answers the tasks that come on it.
    pub async fn open(
        &mut self,
        identity: &Arc<Identity>,
        gateway: &Gateway,
        seq: &SharedSequence,
        behaviour: TaskBehaviour,
        stats: &Arc<TaskStats>,
    ) {
        if self.is_open() {
            return;
        }
        let body = pb::StreamBody {
            envoy_id: identity.envoy_id.get(),
            sequence: next(seq),
            timestamp_ms: now_ms(),
        };
        let request = client::seal(&identity.key, Domain::Stream, &body);
        let Ok(response) = gateway.clone().open_stream(request).await else {
            return;
        };
        stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        let mut events = response.into_inner();
        let (identity, gateway, seq, stats) = (
            identity.clone(),
            gateway.clone(),
            seq.clone(),
            stats.clone(),
        );
        self.reader = Some(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while let Ok(Some(event)) = events.message().await {
                let Some(signed) = event.task else { continue };
                let admitted = match check(
                    &signed,
                    identity.envoy_id,
                    &identity.bundle_keys,
                    now_ms(),
                    TaskPolicy::default(),
                ) {
                    Ok(a) => a,
                    Err(_) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if !seen.insert(admitted.id) {
                    continue;
                }
                stats.received.fetch_add(1, Ordering::Relaxed);
                let (identity, gateway, seq, stats) = (
                    identity.clone(),
                    gateway.clone(),
                    seq.clone(),
                    stats.clone(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(behaviour.run_time).await;
                    let failed = rand::random::<f64>() < behaviour.fail;
                    answer(&identity, gateway, &seq, admitted.id, failed, &stats).await;
                });
            }
        }));
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

/// Sends a task's result, again on a passing failure (a few times).
async fn answer(
    identity: &Identity,
    mut gateway: Gateway,
    seq: &SharedSequence,
    task_id: [u8; 16],
    failed: bool,
    stats: &TaskStats,
) {
    for attempt in 0..5u32 {
        let body = pb::TaskResultBody {
            envoy_id: identity.envoy_id.get(),
            sequence: next(seq),
            timestamp_ms: now_ms(),
            task_id: bytes::Bytes::copy_from_slice(&task_id),
            status: if failed { "failed" } else { "ok" }.into(),
            exit_code: Some(i32::from(failed)),
            stdout: "simulated\n".into(),
            ..Default::default()
        };
        let request = client::seal(&identity.key, Domain::TaskResult, &body);
        match gateway.report_task(request).await {
            Ok(_) => {
                stats.results_sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // A check-in of this envoy signed after this result can reach the spoke
            // first and make this one's sequence look replayed: sign it anew.
            Err(s)
                if super::passing(&s)
                    || s.code() == tonic::Code::FailedPrecondition
                    || vigo_common::net::shedding::retry_after(&s).is_some() =>
            {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(_) => break,
        }
    }
    stats.results_failed.fetch_add(1, Ordering::Relaxed);
}
