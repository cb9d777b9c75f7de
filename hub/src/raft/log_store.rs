//! The raft log on redb (`raft-log.redb`): entries by index, plus vote, committed and
//! last-purged ids. Every write is committed with fsync on a blocking thread before
//! openraft is told it is durable.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeId, TypeConfig, put};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn io(subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> impl Fn(String) -> StorageError<NodeId> {
    move |e| StorageIOError::new(subject.clone(), verb, AnyError::error(e)).into()
}

fn encode<T: Serialize>(v: &T) -> std::result::Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> std::result::Result<T, String> {
    postcard::from_bytes(b).map_err(|e| e.to_string())
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> std::result::Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Bytes of the log file (for benchmarks and status).
    pub fn file_bytes(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Entries held and their encoded bytes.
    pub fn entry_stats(&self) -> std::result::Result<(u64, u64), String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOGS).map_err(|e| e.to_string())?;
        let (mut count, mut bytes) = (0, 0);
        for row in table.iter().map_err(|e| e.to_string())? {
            let (_, v) = row.map_err(|e| e.to_string())?;
            count += 1;
            bytes += v.value().len() as u64;
        }
        Ok((count, bytes))
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> std::result::Result<Option<T>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(META).map_err(|e| e.to_string())?;
        match table.get(key).map_err(|e| e.to_string())? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Runs a write transaction on a blocking thread and commits it with fsync.
    async fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), String> + Send + 'static,
    ) -> std::result::Result<(), String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| e.to_string())?;
            f(&txn)?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), String> {
        let bytes = encode(value)?;
        self.write(move |txn| put(txn, META, key, &bytes)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let read = || -> std::result::Result<Vec<Entry<TypeConfig>>, String> {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for row in table.range(range).map_err(|e| e.to_string())? {
                let (_, v) = row.map_err(|e| e.to_string())?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        };
        read().map_err(io(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let read = || -> std::result::Result<LogState<TypeConfig>, String> {
            let last_purged: Option<LogId<NodeId>> = self.read_meta("last_purged")?;
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            let last = match table.last().map_err(|e| e.to_string())? {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(io(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write_meta("vote", vote)
            .await
            .map_err(io(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta("vote")
            .map_err(io(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.write_meta("committed", &committed)
            .await
            .map_err(io(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.read_meta::<Option<LogId<NodeId>>>("committed")
            .map(Option::flatten)
            .map_err(io(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| encode(&e).map(|b| (e.log_id.index, b)))
            .collect::<std::result::Result<_, _>>()
            .map_err(io(ErrorSubject::Logs, ErrorVerb::Write))?;
        let result = self
            .write(move |txn| {
                let mut table = txn.open_table(LOGS).map_err(|e| e.to_string())?;
                for (index, bytes) in &rows {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(io(ErrorSubject::Logs, ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.write(move |txn| {
            let mut table = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(io(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = encode(&log_id).map_err(io(ErrorSubject::Logs, ErrorVerb::Delete))?;
        self.write(move |txn| {
            put(txn, META, "last_purged", &bytes)?;
            let mut table = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(io(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
