//! The hub's raft: openraft with a redb log store, the cluster state as state machine
//! (snapshots on redb), and gRPC between hub nodes.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use crate::state::{Applied, Command};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The hub's raft types.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type HubRaft = openraft::Raft<TypeConfig>;

/// Writes one key of a string-keyed table inside a write transaction.
fn put(
    txn: &redb::WriteTransaction,
    table: redb::TableDefinition<&str, &[u8]>,
    key: &str,
    bytes: &[u8],
) -> Result<(), String> {
    let mut t = txn.open_table(table).map_err(|e| e.to_string())?;
    t.insert(key, bytes).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod suite {
    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::StateMachineStore;
    use super::{NodeId, TypeConfig};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("log store");
            let (sm, _) =
                StateMachineStore::open(&dir.path().join("raft-snapshot.redb"), Default::default())
                    .expect("sm store");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite, on our redb log store and state machine.
    #[test]
    fn openraft_storage_suite_passes() {
        Suite::test_all(Builder).expect("storage suite");
    }
}
