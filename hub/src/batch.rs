//! Batching of concurrent requests into one call: callers submit one item each and
//! await its own answer; a task takes whatever is queued (up to a maximum, never
//! waiting to fill a batch), makes one call for all of it and hands each caller its
//! answer. While a call is out the next batch gathers, so the batch size follows the
//! load: one item when it is light, the maximum under a storm. Enrollment uses it for
//! the raft proposals of pins and for the registrations on each spoke.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::HubError;

type Reply<R> = oneshot::Sender<Result<R, HubError>>;

/// Submits items to one batching task.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the task. `call` gets a batch and answers with one result per item, in
    /// order; an error for the whole call (`Err`) is every item's answer. Fewer results
    /// than items is a broken invariant, answered as an internal error for the rest.
    pub fn start<F, Fut>(max: usize, metric: &'static str, call: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<R, HubError>>, HubError>> + Send,
    {
        let max = max.max(1);
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(max * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                metrics::histogram!(metric).record(items.len() as f64);
                match call(items).await {
                    Ok(results) => {
                        let mut results = results.into_iter();
                        for reply in replies {
                            let result = results.next().unwrap_or_else(|| {
                                Err(HubError::Internal("a batch answered short".into()))
                            });
                            let _ = reply.send(result);
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.relay()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queues `item` and waits for its answer.
    pub async fn submit(&self, item: T) -> Result<R, HubError> {
        let stopped = || HubError::Internal("batching task stopped".into());
        let (reply, rx) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_items_share_calls_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let batcher = Arc::new(Batcher::start(
            8,
            "test_batch_size",
            move |items: Vec<u32>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::task::yield_now().await;
                    Ok(items
                        .into_iter()
                        .map(|i| {
                            if i % 5 == 0 {
                                Err(HubError::Internal(format!("{i} refused")))
                            } else {
                                Ok(i * 10)
                            }
                        })
                        .collect())
                }
            },
        ));
        let waits: Vec<_> = (1..=40u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for w in waits {
            let (i, answer) = w.await.unwrap();
            match answer {
                Ok(v) => assert_eq!(v, i * 10),
                Err(e) => {
                    assert_eq!(i % 5, 0);
                    assert_eq!(
                        e.to_string(),
                        HubError::Internal(format!("{i} refused")).to_string()
                    );
                }
            }
        }
        let made = calls.load(Ordering::SeqCst);
        assert!(
            (5..40).contains(&made),
            "{made} calls for 40 items, at most 8 each"
        );
    }

    #[tokio::test]
    async fn a_failed_call_answers_every_item_and_a_short_answer_the_rest() {
        let failing = Batcher::start(4, "test_batch_size", |_: Vec<u8>| async {
            Err::<Vec<Result<u8, HubError>>, _>(HubError::Internal("down".into()))
        });
        assert!(failing.submit(1).await.is_err());
        let short: Batcher<u8, u8> =
            Batcher::start(4, "test_batch_size", |_: Vec<u8>| async { Ok(vec![]) });
        let e = short.submit(1).await.unwrap_err();
        assert!(matches!(e, HubError::Internal(_)), "{e}");
    }
}
