//! Task results on the spoke's disk (DESIGN §10): each envoy's result of each task,
//! written durably before the envoy is answered, and the outcome alone in a table of
//! its own, so a restart rebuilds the counts without reading any output.
//! Keys are (task id as a big-endian u128, envoy id): one task's results in envoy order.

use prost::Message;
use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition};
use vigo_proto::admin::v1 as api;

use super::{Store, StoreError, db_err, decode};

/// Encoded `vigo.admin.v1.TaskResult` rows.
pub(super) const TASK_RESULTS: TableDefinition<(u128, u64), &[u8]> =
    TableDefinition::new("task_results");
/// The outcome of each stored result (`crate::tasks::Outcome` as a byte).
pub(super) const TASK_OUTCOMES: TableDefinition<(u128, u64), u8> =
    TableDefinition::new("task_outcomes");

/// Stores a result; false when one was stored for this envoy and task already.
pub(super) fn put(
    results: &mut Table<(u128, u64), &[u8]>,
    outcomes: &mut Table<(u128, u64), u8>,
    key: (u128, u64),
    outcome: u8,
    row: &[u8],
) -> Result<bool, StoreError> {
    if outcomes.get(key).map_err(db_err)?.is_some() {
        return Ok(false);
    }
    results.insert(key, row).map_err(db_err)?;
    outcomes.insert(key, outcome).map_err(db_err)?;
    Ok(true)
}

/// Deletes every result of these tasks.
pub(super) fn drop_tasks(
    results: &mut Table<(u128, u64), &[u8]>,
    outcomes: &mut Table<(u128, u64), u8>,
    tasks: &[u128],
) -> Result<(), StoreError> {
    for &task in tasks {
        let range = (task, 0)..=(task, u64::MAX);
        results
            .retain_in(range.clone(), |_, _| false)
            .map_err(db_err)?;
        outcomes.retain_in(range, |_, _| false).map_err(db_err)?;
    }
    Ok(())
}

impl Store {
    /// Every stored outcome: (task, envoy, outcome byte).
    pub fn task_outcomes(&self) -> Result<Vec<(u128, u64, u8)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TASK_OUTCOMES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (task, envoy) = k.value();
            out.push((task, envoy, v.value()));
        }
        Ok(out)
    }

    /// One stored result.
    pub fn task_result(
        &self,
        task: u128,
        envoy: u64,
    ) -> Result<Option<api::TaskResult>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TASK_RESULTS).map_err(db_err)?;
        match table.get((task, envoy)).map_err(db_err)? {
            Some(row) => Ok(Some(decode("task_results", (task, envoy), row.value())?)),
            None => Ok(None),
        }
    }
}

/// A result row as stored.
pub fn encode_row(row: &api::TaskResult) -> Vec<u8> {
    row.encode_to_vec()
}
