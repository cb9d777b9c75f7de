//! The spoke's durable state: one redb file.
//!
//! All writes go through one writer thread, which gathers whatever jobs are queued into a
//! single transaction and commits (fsyncs) once for all of them — group commit. Callers
//! get their answer only after the commit, so an acknowledged enrollment or report is on
//! disk; and no async worker ever blocks on an fsync.
//!
//! Run reports come from many envoys at once (a config storm: every envoy of the spoke
//! within an interval), each on its own: a report commits at most once per
//! [`REPORT_PACE`] after the last commit started, so reports arriving meanwhile share
//! its fsync instead of paying one each (a commit costs ~0.2–0.4 ms of CPU on a virtual
//! machine's disk). After a quiet spell a report commits at once; any other write
//! (enrollments, which the hub batches already, flushes, imports, revocations) commits
//! at once with whatever waits.
//!
//! Tables, each written by one kind of job so that no two writers race on a row:
//! `envoys` (identity, write-through), `envoy_states` (last seen, sequence, traits hash:
//! the flushers), `last_runs` and `runs` (reports, write-through), `traits`
//! (content-addressed, with the flushers), `token_uses` (with enrollments), `forwards`
//! (envoys handed off to another spoke: where to redirect them), `revocations` (the
//! cluster's revocation list by sequence number, as the hub sent it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::flush_rows::StateRows;

mod task_results;
mod writer;

pub use task_results::encode_row as encode_task_result;

const ENVOYS: TableDefinition<u64, &[u8]> = TableDefinition::new("envoys");
const STATES: TableDefinition<u64, &[u8]> = TableDefinition::new("envoy_states");
const LAST_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("last_runs");
const RUNS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("runs");
const TRAITS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("traits");
const TOKEN_USES: TableDefinition<&[u8], u64> = TableDefinition::new("token_uses");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const FORWARDS: TableDefinition<u64, &[u8]> = TableDefinition::new("forwards");
const REVOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");

const SCHEMA_VERSION: u64 = 1;
/// Jobs folded into one transaction at most.
const MAX_GROUP: usize = 512;

/// How long after the start of the last commit a group of run reports waits for more
/// before it commits: while reports keep coming, at most 20 of their commits a second,
/// each report answered at most this much later.
pub const REPORT_PACE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("{table} row {key} does not decode: {why}")]
    Corrupt {
        table: &'static str,
        key: String,
        why: String,
    },
    #[error("database schema {found} is newer than this spoke understands ({SCHEMA_VERSION})")]
    SchemaTooNew { found: u64 },
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is closed")]
    Closed,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb(e.into())
}

/// An envoy's identity row.
#[derive(Clone, PartialEq, Message)]
pub struct StoredEnvoy {
    #[prost(fixed64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(bytes = "vec", tag = "3")]
    pub public_key: Vec<u8>,
    #[prost(fixed64, tag = "4")]
    pub enrolled_at_ms: u64,
    #[prost(bool, tag = "5")]
    pub revoked: bool,
    #[prost(fixed64, tag = "6")]
    pub revoked_at_ms: u64,
    #[prost(string, tag = "7")]
    pub revoked_reason: String,
    /// The token it enrolled with (by name), for audit.
    #[prost(string, tag = "8")]
    pub token_name: String,
}

/// The flushed part of an envoy's state.
#[derive(Clone, PartialEq, Message)]
pub struct StoredState {
    #[prost(fixed64, tag = "1")]
    pub sequence: u64,
    #[prost(fixed64, tag = "2")]
    pub last_seen_ms: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub traits_hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub bundle_fingerprint: Vec<u8>,
}

/// What the latest run established, written with the run.
#[derive(Clone, PartialEq, Message)]
pub struct StoredLastRun {
    #[prost(fixed64, tag = "1")]
    pub run_id: u64,
    /// `Compliance` index.
    #[prost(uint32, tag = "2")]
    pub status: u32,
    #[prost(fixed64, optional, tag = "3")]
    pub bundle_prefix: Option<u64>,
    /// The sequence of the report: a restart never accepts it again.
    #[prost(fixed64, tag = "4")]
    pub sequence: u64,
    /// Consecutive runs, up to this one, that made changes (`compliance::History`).
    #[prost(uint32, tag = "5")]
    pub change_streak: u32,
}

/// One stored run: the report body exactly as the envoy signed it.
#[derive(Clone, PartialEq, Message)]
pub struct StoredRun {
    #[prost(fixed64, tag = "1")]
    pub received_at_ms: u64,
    #[prost(uint32, tag = "2")]
    pub status: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub report: Vec<u8>,
}

/// Where an envoy that was handed off to another spoke went, and the key its
/// redirected check-ins are still verified with.
#[derive(Clone, PartialEq, Message)]
pub struct StoredForward {
    #[prost(bytes = "vec", tag = "1")]
    pub public_key: Vec<u8>,
    #[prost(string, tag = "2")]
    pub address: String,
}

/// An envoy taken over from another spoke: every row it needs here.
#[derive(Clone, Debug, Default)]
pub struct ImportedEnvoy {
    pub envoy: StoredEnvoy,
    pub state: StoredState,
    pub last: Option<StoredLastRun>,
    pub runs: Vec<(u64, StoredRun)>,
    pub traits: Option<([u8; 32], Vec<u8>)>,
}

pub enum WriteOp {
    /// Enrollment, re-key or revocation, in one transaction; `token` counts one use.
    PutEnvoys {
        envoys: Vec<StoredEnvoy>,
        token: Option<[u8; 32]>,
    },
    /// A run report; keeps the newest `keep` runs of the envoy.
    PutRun {
        envoy: u64,
        run_id: u64,
        run: StoredRun,
        last: StoredLastRun,
        keep: usize,
    },
    /// The policy version the hub published (encoded `vigo.v1.ConfigVersion`).
    PutConfig { version: Vec<u8> },
    /// Envoys taken over from another spoke (reassign, drain); replaces what is there.
    Import { envoys: Vec<ImportedEnvoy> },
    /// Envoys given up to another spoke: their rows go, a forwarding row stays.
    HandOff { forwards: Vec<(u64, StoredForward)> },
    /// Revocations from the hub, and the rows of the envoys here they revoke.
    PutRevocations {
        revocations: Vec<vigo_proto::v1::Revocation>,
        envoys: Vec<StoredEnvoy>,
    },
    /// An envoy's result of a task (outcome byte, encoded `vigo.admin.v1.TaskResult`);
    /// `Duplicate` when one is stored already.
    PutTaskResult {
        task: u128,
        envoy: u64,
        outcome: u8,
        row: Vec<u8>,
    },
    /// Every result of these tasks goes (the oldest tasks, beyond what is kept).
    DropTaskResults { tasks: Vec<u128> },
    /// Dirty states from a flusher, with trait sets not yet on disk.
    Flush {
        states: StateRows,
        traits: Vec<([u8; 32], Vec<u8>)>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    /// The run was already stored (a retried report); nothing changed.
    DuplicateRun,
    /// The task result was already stored (a retried report); nothing changed.
    DuplicateResult,
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, String>>,
}

/// Handle to the store: reads go straight to redb, writes to the writer thread.
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Database>,
    jobs: mpsc::Sender<Job>,
}

/// Everything needed to rebuild the FleetIndex at start-up.
#[derive(Default)]
pub struct Loaded {
    pub envoys: Vec<StoredEnvoy>,
    pub states: HashMap<u64, StoredState>,
    pub last_runs: HashMap<u64, StoredLastRun>,
    pub traits: HashMap<[u8; 32], Vec<u8>>,
    pub token_uses: HashMap<[u8; 32], u64>,
    /// The last policy version the hub published, if any.
    pub config: Option<vigo_proto::v1::ConfigVersion>,
    pub forwards: HashMap<u64, StoredForward>,
    /// The cluster's revocations this spoke has, in order.
    pub revocations: Vec<vigo_proto::v1::Revocation>,
}

impl Store {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Store, thread::JoinHandle<()>), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| db_err(redb::StorageError::Io(e)))?;
        }
        let db = std::sync::Arc::new(Database::create(path).map_err(db_err)?);
        Self::init_schema(&db)?;
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let handle = thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer::writer_loop(&writer_db, rx))
            .expect("spawn redb writer thread");
        Ok((Store { db, jobs: tx }, handle))
    }

    fn init_schema(db: &Database) -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = meta.get("schema").map_err(db_err)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaTooNew { found: v }),
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION).map_err(db_err)?;
                }
            }
            // Create every table so readers never meet a missing one.
            txn.open_table(ENVOYS).map_err(db_err)?;
            txn.open_table(STATES).map_err(db_err)?;
            txn.open_table(LAST_RUNS).map_err(db_err)?;
            txn.open_table(RUNS).map_err(db_err)?;
            txn.open_table(TRAITS).map_err(db_err)?;
            txn.open_table(TOKEN_USES).map_err(db_err)?;
            txn.open_table(CONFIG).map_err(db_err)?;
            txn.open_table(FORWARDS).map_err(db_err)?;
            txn.open_table(REVOCATIONS).map_err(db_err)?;
            txn.open_table(task_results::TASK_RESULTS).map_err(db_err)?;
            txn.open_table(task_results::TASK_OUTCOMES)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Queues a write and waits for its commit.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Commit)
    }

    /// As [`Store::write`], from a plain thread (flushers).
    pub fn write_blocking(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv()
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Commit)
    }

    /// Reads everything the FleetIndex is rebuilt from.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut out = Loaded::default();
        for row in txn
            .open_table(ENVOYS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            out.envoys.push(decode("envoys", k.value(), v.value())?);
        }
        for row in txn
            .open_table(STATES)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            out.states
                .insert(k.value(), decode("envoy_states", k.value(), v.value())?);
        }
        for row in txn
            .open_table(LAST_RUNS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            out.last_runs
                .insert(k.value(), decode("last_runs", k.value(), v.value())?);
        }
        for row in txn
            .open_table(TRAITS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            if let Ok(hash) = <[u8; 32]>::try_from(k.value()) {
                out.traits.insert(hash, v.value().to_vec());
            }
        }
        for row in txn
            .open_table(FORWARDS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            out.forwards
                .insert(k.value(), decode("forwards", k.value(), v.value())?);
        }
        for row in txn
            .open_table(REVOCATIONS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            out.revocations
                .push(decode("revocations", k.value(), v.value())?);
        }
        if let Some(current) = txn
            .open_table(CONFIG)
            .map_err(db_err)?
            .get("current")
            .map_err(db_err)?
        {
            out.config = Some(decode("config", "current", current.value())?);
        }
        for row in txn
            .open_table(TOKEN_USES)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            if let Ok(hash) = <[u8; 32]>::try_from(k.value()) {
                out.token_uses.insert(hash, v.value());
            }
        }
        Ok(out)
    }

    /// One envoy's identity row.
    pub fn envoy(&self, id: u64) -> Result<Option<StoredEnvoy>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(ENVOYS).map_err(db_err)?;
        match table.get(id).map_err(db_err)? {
            Some(row) => Ok(Some(decode("envoys", id, row.value())?)),
            None => Ok(None),
        }
    }

    /// Stored runs of one envoy, oldest first.
    pub fn runs(&self, envoy: u64) -> Result<Vec<(u64, StoredRun)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RUNS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table
            .range((envoy, 0)..=(envoy, u64::MAX))
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            let (_, run_id) = k.value();
            out.push((run_id, decode("runs", run_id, v.value())?));
        }
        Ok(out)
    }

    /// Deletes trait sets no envoy refers to (start-up housekeeping).
    pub fn delete_traits(&self, hashes: &[[u8; 32]]) -> Result<(), StoreError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(TRAITS).map_err(db_err)?;
            for h in hashes {
                t.remove(h.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn decode<M: Message + Default>(
    table: &'static str,
    key: impl std::fmt::Debug,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: format!("{key:?}"),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn group_committed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.redb");
        {
            let (store, writer) = Store::open(&path).unwrap();
            let envoy = StoredEnvoy {
                id: 9,
                hostname: "h".into(),
                public_key: vec![1; 32],
                ..Default::default()
            };
            let token = [3u8; 32];
            let put = || WriteOp::PutEnvoys {
                envoys: vec![envoy.clone()],
                token: Some(token),
            };
            // Three concurrent writers: folded into one or more group commits.
            let (a, b, c) =
                tokio::join!(store.write(put()), store.write(put()), store.write(put()));
            for r in [a, b, c] {
                assert_eq!(r.unwrap(), WriteOutcome::Done);
            }
            let run = |id| WriteOp::PutRun {
                envoy: 9,
                run_id: id,
                run: StoredRun::default(),
                last: StoredLastRun {
                    run_id: id,
                    ..Default::default()
                },
                keep: 2,
            };
            for id in 1..=3 {
                assert_eq!(store.write(run(id)).await.unwrap(), WriteOutcome::Done);
            }
            assert_eq!(
                store.write(run(3)).await.unwrap(),
                WriteOutcome::DuplicateRun
            );
            let kept: Vec<u64> = store.runs(9).unwrap().into_iter().map(|r| r.0).collect();
            assert_eq!(kept, [2, 3], "only the newest runs are kept");
            drop(store);
            writer.join().unwrap();
        }
        let (store, _writer) = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.envoys.len(), 1);
        assert_eq!(loaded.token_uses[&[3u8; 32]], 3);
        assert_eq!(loaded.last_runs[&9].run_id, 3);
    }
}
