//! Open envoy streams (adaptive promotion, DESIGN §3): an envoy opens one only when a
//! check-in answer tells it work is flowing, and closes it when idle. While it is open
//! the spoke can reach the envoy at once — a force-push wakes it instead of waiting for
//! its next check-in, and a task reaches it at once (`crate::tasks`).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;
use vigo_common::EnvoyId;
use vigo_proto::v1 as pb;

/// Events queued per stream before a slow envoy loses the oldest ones (a wake-up is
/// idempotent: one pending is as good as many).
const QUEUE: usize = 4;

#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<u64, (u64, mpsc::Sender<pb::StreamEvent>)>>,
    next: AtomicU64,
}

impl Streams {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, mpsc::Sender<pb::StreamEvent>)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new stream for `id`, replacing any older one (whose envoy has
    /// reconnected); `EnvoyStream::send_first` puts events ahead of what is queued. The
    /// returned stream unregisters itself when dropped.
    pub fn open(self: &std::sync::Arc<Self>, id: EnvoyId) -> EnvoyStream {
        let (tx, rx) = mpsc::channel(QUEUE);
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id.get(), (generation, tx));
        metrics::gauge!("vigo_open_streams").set(self.len() as f64);
        EnvoyStream {
            first: VecDeque::new(),
            rx,
            id,
            generation,
            streams: self.clone(),
        }
    }

    /// The generation of the envoy's open stream, if it holds one (a new stream gets a
    /// new one: what was sent on an older stream may not have arrived).
    pub fn generation(&self, id: EnvoyId) -> Option<u64> {
        self.lock().get(&id.get()).map(|(g, _)| *g)
    }

    /// Queues `event` on the envoy's stream: the stream's generation when queued, `None`
    /// when the envoy holds no stream or its queue is full.
    pub fn send(&self, id: EnvoyId, event: pb::StreamEvent) -> Option<u64> {
        let open = self.lock();
        let (generation, tx) = open.get(&id.get())?;
        tx.try_send(event).ok().map(|()| *generation)
    }

    /// Tells the envoy to check in now; false when it holds no open stream.
    pub fn wake(&self, id: EnvoyId) -> bool {
        let open = self.lock();
        match open.get(&id.get()) {
            Some((_, tx)) => {
                // A full queue already holds a wake-up.
                let _ = tx.try_send(pb::StreamEvent {
                    check_in_now: true,
                    ..Default::default()
                });
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every stream (shutdown): envoys fall back to polling.
    pub fn close_all(&self) {
        self.lock().clear();
    }
}

/// The server side of one envoy's stream.
pub struct EnvoyStream {
    first: VecDeque<pb::StreamEvent>,
    rx: mpsc::Receiver<pb::StreamEvent>,
    id: EnvoyId,
    generation: u64,
    streams: std::sync::Arc<Streams>,
}

impl EnvoyStream {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Events sent before anything queued.
    pub fn send_first(&mut self, events: Vec<pb::StreamEvent>) {
        self.first.extend(events);
    }
}

impl Stream for EnvoyStream {
    type Item = Result<pb::StreamEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = self.first.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        self.rx.poll_recv(cx).map(|e| e.map(Ok))
    }
}

impl Drop for EnvoyStream {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if open
            .get(&self.id.get())
            .is_some_and(|(g, _)| *g == self.generation)
        {
            open.remove(&self.id.get());
        }
        metrics::gauge!("vigo_open_streams").set(open.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn wake_reaches_the_newest_stream_and_dropping_unregisters() {
        let streams = Arc::new(Streams::default());
        let id = EnvoyId::new(7).unwrap();
        assert!(!streams.wake(id));
        let old = streams.open(id);
        let mut new = streams.open(id);
        drop(old);
        assert_eq!(streams.len(), 1, "an old stream's drop keeps the new one");
        assert!(streams.wake(id));
        assert!(new.next().await.unwrap().unwrap().check_in_now);
        drop(new);
        assert!(streams.is_empty());
        assert!(!streams.wake(id));
    }

    #[tokio::test]
    async fn a_stream_sends_its_first_events_then_what_is_queued() {
        let streams = Arc::new(Streams::default());
        let id = EnvoyId::new(7).unwrap();
        let first = |n| pb::StreamEvent {
            task: Some(pb::SignedTask {
                body: vec![n].into(),
                signature: Default::default(),
            }),
            ..Default::default()
        };
        assert_eq!(streams.send(id, first(0)), None, "no stream");
        let mut stream = streams.open(id);
        stream.send_first(vec![first(1), first(2)]);
        let generation = streams.generation(id).unwrap();
        assert_eq!(streams.send(id, first(3)), Some(generation));
        for n in 1..=3 {
            let event = stream.next().await.unwrap().unwrap();
            assert_eq!(event.task.unwrap().body.as_ref(), [n]);
        }
        let newer = streams.open(id);
        assert_ne!(streams.generation(id), Some(generation));
        drop(newer);
    }
}
