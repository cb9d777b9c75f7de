//! The state machine: the cluster state in memory, shared with the services that read
//! it, and its snapshots on redb (`raft-snapshot.redb`).
//!
//! The state is not written per command: a restarted node loads the last snapshot and
//! openraft replays the log entries after it (the log is purged only behind snapshots).

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use vigo_common::net::RevokedCerts;

use super::{NodeId, TypeConfig, put};
use crate::state::{Applied, ClusterState};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What readers see: the replicated state and how far it is applied.
#[derive(Default)]
pub struct View {
    pub state: ClusterState,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

pub type SharedView = Arc<RwLock<View>>;

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    view: SharedView,
    db: Arc<Database>,
    snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
    /// The revoked certificates this node's servers refuse, kept equal to the state's.
    revoked: Arc<RevokedCerts>,
}

fn sm_err(verb: ErrorVerb) -> impl Fn(String) -> StorageError<NodeId> {
    move |e| StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e)).into()
}

impl StateMachineStore {
    /// Opens the snapshot file and loads the last snapshot into a fresh view.
    /// `revoked` is kept equal to the state's revoked certificates from now on.
    pub fn open(
        path: &Path,
        revoked: Arc<RevokedCerts>,
    ) -> std::result::Result<(Self, SharedView), String> {
        let db = Database::create(path).map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        let store = Self {
            view: SharedView::default(),
            db: Arc::new(db),
            snapshot_seq: Arc::default(),
            revoked,
        };
        if let Some(snap) = store.stored()? {
            let state: ClusterState =
                postcard::from_bytes(&snap.data).map_err(|e| e.to_string())?;
            let mut v = store.view.write().unwrap_or_else(|p| p.into_inner());
            v.state = state;
            v.last_applied = snap.meta.last_log_id;
            v.membership = snap.meta.last_membership;
            store.revoked.replace(v.state.revocations.certificates());
        }
        let view = store.view.clone();
        Ok((store, view))
    }

    fn stored(&self) -> std::result::Result<Option<StoredSnapshot>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        match table.get("current").map_err(|e| e.to_string())? {
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    async fn store_snapshot(&self, snap: StoredSnapshot) -> std::result::Result<(), String> {
        let bytes = postcard::to_allocvec(&snap).map_err(|e| e.to_string())?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| e.to_string())?;
            put(&txn, SNAPSHOT, "current", &bytes)?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn view(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (data, last_applied, membership) = {
            let v = self.view.read().unwrap_or_else(|p| p.into_inner());
            let data = postcard::to_allocvec(&v.state)
                .map_err(|e| sm_err(ErrorVerb::Read)(e.to_string()))?;
            (data, v.last_applied, v.membership.clone())
        };
        let seq = self
            .snapshot_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .await
        .map_err(|e| {
            StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                AnyError::error(e),
            )
        })?;
        metrics::gauge!("vigo_hub_snapshot_bytes").set(data.len() as f64);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let v = self.view();
        Ok((v.last_applied, v.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut v = self.view();
        let revocations = v.state.revocations.seq();
        let mut out = Vec::new();
        for entry in entries {
            v.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Applied::Done,
                EntryPayload::Normal(command) => v.state.apply(command),
                EntryPayload::Membership(m) => {
                    v.membership = StoredMembership::new(Some(entry.log_id), m);
                    Applied::Done
                }
            });
        }
        if v.state.revocations.seq() != revocations {
            self.revoked.replace(v.state.revocations.certificates());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let state: ClusterState = postcard::from_bytes(&data).map_err(|e| {
            StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                AnyError::error(e.to_string()),
            )
        })?;
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await
        .map_err(sm_err(ErrorVerb::Write))?;
        let mut v = self.view();
        self.revoked.replace(state.revocations.certificates());
        v.state = state;
        v.last_applied = meta.last_log_id;
        v.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(self
            .stored()
            .map_err(sm_err(ErrorVerb::Read))?
            .map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }))
    }
}
