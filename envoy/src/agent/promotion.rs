//! Adaptive promotion (DESIGN §3), the envoy's half. An idle envoy only polls. When a
//! check-in answer says `open_stream` — work is flowing to it — the envoy opens a
//! stream to its spoke and holds it for `linger` after the last such answer; while it
//! is open, the spoke can tell it to check in at once (a force-push) instead of waiting
//! for the next interval, and tasks reach it on the stream (`super::tasks`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use vigo_common::signing::Domain;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use super::Gateway;
use crate::client::{self, Identity};

pub const DEFAULT_LINGER: Duration = Duration::from_secs(600);

pub struct Promotion {
    linger: Duration,
    until: Option<Instant>,
    wake: Arc<Notify>,
    reader: Option<JoinHandle<()>>,
    /// Where tasks and cancels from the stream go (the agent's loop takes them).
    tasks: mpsc::Sender<pb::StreamEvent>,
}

impl Promotion {
    pub fn new(linger: Duration, tasks: mpsc::Sender<pb::StreamEvent>) -> Self {
        Self {
            linger,
            until: None,
            wake: Arc::new(Notify::new()),
            reader: None,
            tasks,
        }
    }

    /// The spoke has work flowing to this envoy: hold a stream for a while.
    pub fn promote(&mut self) {
        if !self.linger.is_zero() {
            self.until = Some(Instant::now() + self.linger);
        }
    }

    pub fn is_open(&self) -> bool {
        self.reader.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Resolves when the spoke asks for a check-in now (a wake-up that arrived while
    /// nobody waited is kept).
    pub fn woken(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// When the stream is due to close, if one is held.
    pub fn closes_at(&self) -> Option<Instant> {
        self.until.filter(|_| self.is_open())
    }

    /// Opens the stream if promoted and none is open; closes it once idle past the
    /// linger. A stream that cannot open is left for the next run: polling goes on.
    pub async fn maintain(&mut self, gateway: &mut Gateway, identity: &Identity, sequence: u64) {
        let now = Instant::now();
        match self.until {
            Some(until) if until <= now => {
                self.until = None;
                if let Some(r) = self.reader.take() {
                    r.abort();
                    info!("idle: stream closed, polling only");
                }
            }
            Some(_) if !self.is_open() => self.open(gateway, identity, sequence).await,
            _ => {}
        }
    }

    async fn open(&mut self, gateway: &mut Gateway, identity: &Identity, sequence: u64) {
        let body = pb::StreamBody {
            envoy_id: identity.envoy_id.get(),
            sequence,
            timestamp_ms: now_ms(),
        };
        let request = client::seal(&identity.key, Domain::Stream, &body);
        let mut stream = match gateway.open_stream(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                debug!(code = ?status.code(), "stream not opened: {}", status.message());
                return;
            }
        };
        info!("work is flowing: stream to the spoke open");
        let wake = self.wake.clone();
        let tasks = self.tasks.clone();
        self.reader = Some(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if event.check_in_now {
                    info!("spoke asks for a check-in now");
                    wake.notify_one();
                }
                if event.task.is_some() || !event.cancel_task_id.is_empty() {
                    // A full queue drops it: the spoke sends a task again on the next
                    // stream, and the envoy runs a task id once.
                    if tasks.try_send(event).is_err() {
                        warn!("too many tasks waiting to start; one is left for later");
                    }
                }
            }
            debug!("stream ended");
        }));
    }
}

impl Drop for Promotion {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}
