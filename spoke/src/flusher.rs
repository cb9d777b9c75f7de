//! Flushers: move dirty envoy state from memory to redb in batched transactions.
//!
//! Each flusher owns a slice of the FleetIndex shards and wakes once per interval,
//! offset from the others so their writes spread over the interval instead of arriving
//! together. They run on plain threads: a flush waits for an fsync, never on an async
//! worker.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, error};

use crate::fleet::FleetIndex;
use crate::flush_rows::{StateRows, StateRowsBuilder};
use crate::store::{Store, WriteOp};
use crate::traits_store::TraitsStore;

pub struct Flusher {
    pub fleet: Arc<FleetIndex>,
    pub traits: Arc<TraitsStore>,
    pub store: Store,
    pub batch_rows: usize,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FlushStats {
    pub rows: usize,
    pub transactions: usize,
    pub elapsed: Duration,
}

impl Flusher {
    /// Writes every dirty envoy of `shards`, `batch_rows` per transaction.
    pub fn flush(&self, shards: impl Iterator<Item = usize>) -> FlushStats {
        let started = Instant::now();
        // States first, trait sets second: a state naming a new set was staged before it
        // was adopted, so the set is in this flush or an earlier one.
        let mut rows = StateRowsBuilder::default();
        for shard in shards {
            self.fleet
                .take_dirty_states(shard, |id, st| rows.push_state(id.get(), st));
        }
        let mut traits = self.traits.take_unpersisted();
        let mut stats = FlushStats {
            rows: rows.len(),
            ..Default::default()
        };
        if rows.is_empty() && traits.is_empty() {
            return stats;
        }
        let mut chunks = rows.into_chunks(self.batch_rows).into_iter().peekable();
        while chunks.peek().is_some() || !traits.is_empty() {
            let chunk = chunks.next().unwrap_or_default();
            let sets = std::mem::take(&mut traits);
            let set_hashes: Vec<[u8; 32]> = sets.iter().map(|(h, _)| *h).collect();
            let op = WriteOp::Flush {
                states: chunk.clone(),
                traits: sets,
            };
            stats.transactions += 1;
            if let Err(e) = self.store.write_blocking(op) {
                error!(error = %e, rows = chunk.len(), "flush failed; envoys stay dirty for the next one");
                self.remark(&chunk);
                self.traits.requeue(set_hashes);
            }
        }
        stats.elapsed = started.elapsed();
        metrics::histogram!("vigo_flush_duration_seconds").record(stats.elapsed.as_secs_f64());
        metrics::counter!("vigo_flush_rows_total").increment(stats.rows as u64);
        debug!(rows = stats.rows, txns = stats.transactions, elapsed = ?stats.elapsed, "flushed");
        stats
    }

    fn remark(&self, rows: &StateRows) {
        for id in rows.ids() {
            if let Some(r) = vigo_common::EnvoyId::new(id).and_then(|id| self.fleet.get(id)) {
                self.fleet.update(&r, |st| st.mark_dirty());
            }
        }
    }

    /// Everything dirty, now (shutdown, benchmarks).
    pub fn flush_all(&self) -> FlushStats {
        self.flush(0..FleetIndex::shard_count())
    }
}

/// Running flusher threads; dropping the handle does not stop them, [`Flushers::stop`] does.
pub struct Flushers {
    stops: Vec<mpsc::Sender<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Flushers {
    /// Starts `count` flushers, flusher k owning the shards ≡ k (mod count) and first
    /// waking at k/count of the interval.
    pub fn start(flusher: Arc<Flusher>, count: usize, interval: Duration) -> Self {
        let count = count.max(1);
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for k in 0..count {
            let (stop, stopped) = mpsc::channel::<()>();
            let flusher = flusher.clone();
            let offset = interval.mul_f64(k as f64 / count as f64);
            let handle = thread::Builder::new()
                .name(format!("flusher-{k}"))
                .spawn(move || {
                    let mut next = Instant::now() + offset;
                    loop {
                        let wait = next.saturating_duration_since(Instant::now());
                        match stopped.recv_timeout(wait) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        flusher.flush((k..FleetIndex::shard_count()).step_by(count));
                        next += interval;
                    }
                })
                .expect("spawn flusher thread");
            stops.push(stop);
            threads.push(handle);
        }
        Self { stops, threads }
    }

    pub fn stop(self) {
        for s in &self.stops {
            let _ = s.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
