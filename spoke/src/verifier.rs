//! Signature verification in batches across concurrent requests, without a thread hop.
//!
//! A request puts its (key, message, signature) in a shared queue. If no request is
//! combining, it becomes the combiner: it yields once — so every request that is ready to
//! run reaches the queue too — then verifies the whole queue with one `verify_batch` and
//! hands each waiting request its verdict. There is no thread hop (wake-ups cost more
//! than the verification on a virtual machine); batches grow with the load, and
//! `verify_batch` costs less than half as much per signature as single verification
//! from about 64 up. When the spoke is quiet the batch is the request alone and the yield
//! costs one more `epoll_wait` per request; verifying inline then was tried (BENCHMARKS,
//! 2026-12-02) and saved that syscall but no measurable CPU.
//!
//! `verify_batch` is all-or-nothing, so a failed batch is bisected to find the bad
//! signatures (and an envoy whose signature failed is verified apart from the others
//! for a while: `crate::fairness`). It also skips the weak-key check: keys are refused at enrollment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use tokio::sync::oneshot;
use vigo_common::signing::Domain;

/// Below this many signatures, one-by-one verification is cheaper than a batch
/// (measured: a batch of 2 costs 51.6 µs a signature against 48.6 µs single).
const BATCH_FROM: usize = 3;

struct Job {
    key: VerifyingKey,
    domain: Domain,
    body: Bytes,
    signature: Signature,
    verdict: oneshot::Sender<bool>,
}

pub struct BatchVerifier {
    queue: Mutex<Vec<Job>>,
    combining: AtomicBool,
    max_batch: usize,
    batch_size: metrics::Histogram,
    /// Batches verified so far.
    batches: std::sync::atomic::AtomicU64,
}

/// Buffers a combiner reuses from batch to batch.
#[derive(Default)]
struct Scratch {
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
    keys: Vec<VerifyingKey>,
    signatures: Vec<Signature>,
}

impl BatchVerifier {
    /// Batches hold at most `max_batch` signatures (a batch of 128 takes ~3 ms).
    pub fn new(max_batch: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Vec::with_capacity(max_batch)),
            combining: AtomicBool::new(false),
            max_batch: max_batch.max(1),
            batch_size: metrics::histogram!("vigo_verify_batch_size"),
            batches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// True when `signature` is `key`'s over the domain prefix and `body`.
    pub async fn verify(
        self: &Arc<Self>,
        key: VerifyingKey,
        domain: Domain,
        body: Bytes,
        signature: Signature,
    ) -> bool {
        let (verdict, rx) = oneshot::channel();
        self.lock().push(Job {
            key,
            domain,
            body,
            signature,
            verdict,
        });
        if self.try_become_combiner() {
            let role = CombinerRole(Some(self.clone()));
            // Let every request that can run now reach the queue before verifying. (A
            // second yield gathers bigger batches but measured costlier overall.)
            tokio::task::yield_now().await;
            role.combine();
        }
        rx.await.unwrap_or(false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_become_combiner(&self) -> bool {
        self.combining
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Verifies one batch from the queue, then passes the combiner's role on: jobs left
    /// behind (more than a batch, or arrived meanwhile) get a combiner task of their own.
    fn combine_once(self: &Arc<Self>) {
        let batch: Vec<Job> = {
            let mut queue = self.lock();
            let take = queue.len().min(self.max_batch);
            queue.drain(..take).collect()
        };
        if !batch.is_empty() {
            self.batch_size.record(batch.len() as f64);
            self.batches.fetch_add(1, Ordering::Relaxed);
            SCRATCH.with(|s| verify_batch(batch, &mut s.borrow_mut()));
        }
        self.combining.store(false, Ordering::Release);
        if !self.lock().is_empty() && self.try_become_combiner() {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                this.combine_once();
            });
        }
    }
}

/// The combiner's role, held across the yield. A request can be cancelled right there
/// (its client went away); the role must not die with it, or the queue would wait for a
/// combiner forever. Dropping the role hands it to a task of its own.
struct CombinerRole(Option<Arc<BatchVerifier>>);

impl CombinerRole {
    fn combine(mut self) {
        if let Some(v) = self.0.take() {
            v.combine_once();
        }
    }
}

impl Drop for CombinerRole {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move { v.combine_once() });
                }
                Err(_) => v.combine_once(),
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

fn verify_batch(batch: Vec<Job>, s: &mut Scratch) {
    s.arena.clear();
    s.spans.clear();
    s.keys.clear();
    s.signatures.clear();
    for job in &batch {
        let start = s.arena.len();
        s.arena.extend_from_slice(job.domain.prefix());
        s.arena.extend_from_slice(&job.body);
        s.spans.push((start, s.arena.len()));
        s.keys.push(job.key);
        s.signatures.push(job.signature);
    }
    let mut verdicts = vec![false; batch.len()];
    settle(s, 0..batch.len(), false, &mut verdicts);
    for (job, ok) in batch.into_iter().zip(verdicts) {
        let _ = job.verdict.send(ok);
    }
}

/// The verdicts of the signatures in `range`: one batch when it passes; when it fails
/// (or is `known_bad`), its halves in turn — and a half after a good one is known bad
/// without a check of its own — down to single checks below [`BATCH_FROM`]. One bad
/// signature among n costs about 2·n batch-verifications' worth instead of n single
/// ones after the failed batch.
fn settle(s: &Scratch, range: std::ops::Range<usize>, known_bad: bool, out: &mut [bool]) {
    let message = |i: usize| &s.arena[s.spans[i].0..s.spans[i].1];
    if range.len() < BATCH_FROM {
        for i in range {
            out[i] = s.keys[i].verify(message(i), &s.signatures[i]).is_ok();
        }
        return;
    }
    if !known_bad {
        let messages: Vec<&[u8]> = range.clone().map(message).collect();
        let (sigs, keys) = (&s.signatures[range.clone()], &s.keys[range.clone()]);
        if ed25519_dalek::verify_batch(&messages, sigs, keys).is_ok() {
            out[range].fill(true);
            return;
        }
    }
    let mid = range.start + range.len() / 2;
    let (left, right) = (range.start..mid, mid..range.end);
    settle(s, left.clone(), false, out);
    let left_good = out[left].iter().all(|ok| *ok);
    // The whole failed and the left half passed: the right half holds a bad one.
    settle(s, right, left_good, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigo_common::signing::{generate_key, sign};

    /// Bisection finds exactly the bad signatures, wherever they are, how many there are.
    #[test]
    fn bisection_finds_every_bad_signature() {
        for bad in [
            vec![],
            vec![0],
            vec![77],
            vec![0, 77, 127],
            (0..128).collect(),
        ] {
            let mut s = Scratch::default();
            for i in 0..128usize {
                let key = generate_key();
                let body = (i as u32).to_le_bytes();
                let mut sig = sign(&key, Domain::CheckIn, &body).to_bytes();
                if bad.contains(&i) {
                    sig[9] ^= 1;
                }
                let start = s.arena.len();
                s.arena.extend_from_slice(Domain::CheckIn.prefix());
                s.arena.extend_from_slice(&body);
                s.spans.push((start, s.arena.len()));
                s.keys.push(key.verifying_key());
                s.signatures.push(Signature::from_bytes(&sig));
            }
            let mut out = vec![false; 128];
            settle(&s, 0..128, false, &mut out);
            let found: Vec<usize> = (0..128).filter(|i| !out[*i]).collect();
            assert_eq!(found, bad);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_signature_in_a_batch_fails_alone() {
        let verifier = BatchVerifier::new(64);
        let mut tasks = Vec::new();
        for i in 0..300u32 {
            let verifier = verifier.clone();
            tasks.push(tokio::spawn(async move {
                let key = generate_key();
                let body = Bytes::from(i.to_le_bytes().to_vec());
                let mut sig = sign(&key, Domain::CheckIn, &body);
                if i % 17 == 0 {
                    let mut raw = sig.to_bytes();
                    raw[5] ^= 0x40;
                    sig = Signature::from_bytes(&raw);
                }
                let ok = verifier
                    .verify(key.verifying_key(), Domain::CheckIn, body, sig)
                    .await;
                (i, ok)
            }));
        }
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            assert_eq!(ok, i % 17 != 0, "signature {i}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_share_a_batch() {
        let verifier = BatchVerifier::new(64);
        let key = generate_key();
        let futures: Vec<_> = (0..40u32)
            .map(|i| {
                let body = Bytes::from(i.to_le_bytes().to_vec());
                let sig = sign(&key, Domain::CheckIn, &body);
                let verifier = verifier.clone();
                let vk = key.verifying_key();
                tokio::spawn(async move { verifier.verify(vk, Domain::CheckIn, body, sig).await })
            })
            .collect();
        for f in futures {
            assert!(f.await.unwrap());
        }
        assert_eq!(
            verifier.batches.load(Ordering::Relaxed),
            1,
            "40 requests ready together are verified as one batch"
        );
        assert!(verifier.lock().is_empty());
        assert!(
            !verifier.combining.load(Ordering::Acquire),
            "combiner role released"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_combiner_does_not_stall_the_queue() {
        let verifier = BatchVerifier::new(64);
        let key = generate_key();
        let body = Bytes::from_static(b"b");
        let sig = sign(&key, Domain::CheckIn, &body);
        let mut first =
            Box::pin(verifier.verify(key.verifying_key(), Domain::CheckIn, body.clone(), sig));
        // Poll once: it becomes the combiner and parks at its yield. Then its client leaves.
        tokio::select! {
            biased;
            _ = &mut first => panic!("cannot finish before yielding"),
            _ = std::future::ready(()) => {}
        }
        assert!(verifier.combining.load(Ordering::Acquire));
        drop(first);
        let next = verifier.verify(key.verifying_key(), Domain::CheckIn, body, sig);
        let verdict = tokio::time::timeout(std::time::Duration::from_secs(5), next).await;
        assert_eq!(verdict, Ok(true), "the queue kept moving");
    }

    #[tokio::test]
    async fn domain_is_part_of_what_is_verified() {
        let verifier = BatchVerifier::new(8);
        let key = generate_key();
        let body = Bytes::from_static(b"body");
        let sig = sign(&key, Domain::ReportRun, &body);
        assert!(
            !verifier
                .verify(key.verifying_key(), Domain::CheckIn, body.clone(), sig)
                .await
        );
        assert!(
            verifier
                .verify(key.verifying_key(), Domain::ReportRun, body, sig)
                .await
        );
    }
}
