//! What an envoy keeps on its machine, in its state directory (0700):
//!
//! ```text
//! identity.json  envoy id, hostname, spoke address, trusted bundle keys
//! key.pem        Ed25519 identity key: signs every request (0600)
//! tls.key        P-256 TLS key its client certificate is issued on (0600; absent for
//!                an envoy enrolled by an earlier release: its certificate is on key.pem)
//! cert.pem       client certificate; ca.pem: the cluster CA
//! state.redb     last good bundle, queued reports, sequence, last run
//! ```
//!
//! Queued reports are committed (fsynced) before the agent tries to send them, so a
//! crash never loses one.

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use vigo_common::policy::bundle::VerifiedBundle;
use vigo_common::{EnvoyId, fsutil, signing};
use vigo_proto::v1 as pb;

use crate::client::Identity;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("pending_reports");
/// Task ids this envoy has admitted, with the instant each task expires.
const TASKS_SEEN: TableDefinition<&[u8], u64> = TableDefinition::new("tasks_seen");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no envoy identity in {0}: run `vigo-envoy enroll` first")]
    NotEnrolled(PathBuf),
    #[error("an envoy identity already exists in {0}; pass --force to replace it")]
    AlreadyEnrolled(PathBuf),
    #[error(transparent)]
    Common(#[from] vigo_common::Error),
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("local state: {0}")]
    Redb(#[from] redb::Error),
}

fn db_err(e: impl Into<redb::Error>) -> StateError {
    StateError::Redb(e.into())
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    envoy_id: String,
    hostname: String,
    spoke_address: String,
    /// Hex Ed25519 public keys whose bundle signatures this envoy accepts.
    bundle_keys: Vec<String>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn is_enrolled(&self) -> bool {
        self.file("identity.json").exists()
    }

    pub fn db_path(&self) -> PathBuf {
        self.file("state.redb")
    }

    /// Writes a new identity; an existing one is kept unless `force`.
    pub fn save_identity(&self, id: &Identity, force: bool) -> Result<(), StateError> {
        if self.is_enrolled() && !force {
            return Err(StateError::AlreadyEnrolled(self.root.clone()));
        }
        fsutil::create_private_dir(&self.root)?;
        fsutil::write_atomic(
            &self.file("key.pem"),
            signing::key_to_pkcs8_pem(&id.key).as_bytes(),
            0o600,
        )?;
        fsutil::write_atomic(&self.file("tls.key"), id.tls_key_pem.as_bytes(), 0o600)?;
        fsutil::write_atomic(&self.file("cert.pem"), id.cert_pem.as_bytes(), 0o600)?;
        fsutil::write_atomic(&self.file("ca.pem"), id.ca_pem.as_bytes(), 0o600)?;
        if force {
            // A new identity starts from a clean slate: old reports are not its own.
            let _ = std::fs::remove_file(self.db_path());
        }
        self.write_identity_file(id)
    }

    /// Records a changed identity file: where the envoy checks in (after a redirect),
    /// the bundle keys it trusts (after a bundle carried a new set).
    pub fn update_identity(&self, id: &Identity) -> Result<(), StateError> {
        self.write_identity_file(id)
    }

    fn write_identity_file(&self, id: &Identity) -> Result<(), StateError> {
        let file = IdentityFile {
            envoy_id: id.envoy_id.to_string(),
            hostname: id.hostname.clone(),
            spoke_address: id.spoke_address.clone(),
            bundle_keys: id
                .bundle_keys
                .iter()
                .map(|k| hex::encode(k.as_bytes()))
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("identity serializes");
        fsutil::write_atomic(&self.file("identity.json"), &json, 0o600)?;
        Ok(())
    }

    pub fn load_identity(&self) -> Result<Identity, StateError> {
        if !self.is_enrolled() {
            return Err(StateError::NotEnrolled(self.root.clone()));
        }
        let path = self.file("identity.json");
        let corrupt = |why: String| StateError::Corrupt {
            path: path.clone(),
            why,
        };
        let file: IdentityFile =
            serde_json::from_slice(&fsutil::read(&path)?).map_err(|e| corrupt(e.to_string()))?;
        let bundle_keys = file
            .bundle_keys
            .iter()
            .map(|k| {
                let raw = hex::decode(k).map_err(|e| corrupt(e.to_string()))?;
                signing::parse_public_key(&raw).map_err(|e| corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key = signing::read_key_file(&self.file("key.pem"))?;
        // Enrolled by an earlier release: its certificate is on the identity key.
        let tls_key_pem = match fsutil::read_to_string(&self.file("tls.key")) {
            Ok(pem) => pem,
            Err(_) if !self.file("tls.key").exists() => signing::key_to_pkcs8_pem(&key),
            Err(e) => return Err(e.into()),
        };
        Ok(Identity {
            envoy_id: file
                .envoy_id
                .parse::<EnvoyId>()
                .map_err(|e| corrupt(e.to_string()))?,
            hostname: file.hostname,
            tls_key_pem,
            key,
            cert_pem: fsutil::read_to_string(&self.file("cert.pem"))?,
            ca_pem: fsutil::read_to_string(&self.file("ca.pem"))?,
            spoke_address: file.spoke_address,
            bundle_keys,
        })
    }
}

/// The last good bundle, as received: re-verified whenever it is loaded.
#[derive(Clone, PartialEq, Message)]
struct StoredBundle {
    #[prost(bytes = "bytes", tag = "1")]
    manifest: bytes::Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    signature: bytes::Bytes,
    #[prost(message, repeated, tag = "3")]
    modules: Vec<pb::ModuleBody>,
}

/// What `vigo-envoy status` shows, written after every run to `status.json` (the
/// running agent holds the redb file's lock, so `status` cannot open it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub finished_at_ms: u64,
    pub last_check_in_ms: u64,
    pub ok: u32,
    pub changed: u32,
    pub would_change: u32,
    pub failed: u32,
    pub skipped: u32,
    pub dry_run: bool,
    pub error: Option<String>,
    pub bundle_fingerprint: Option<String>,
    pub reports_queued: u64,
}

impl StateDir {
    pub fn save_status(&self, status: &RunStatus) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(status).expect("status serializes");
        fsutil::write_atomic(&self.file("status.json"), &json, 0o600)?;
        Ok(())
    }

    pub fn load_status(&self) -> Result<Option<RunStatus>, StateError> {
        let path = self.file("status.json");
        if !path.exists() {
            return Ok(None);
        }
        serde_json::from_slice(&fsutil::read(&path)?)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                why: e.to_string(),
            })
    }
}

/// The envoy's redb file.
pub struct LocalState {
    db: Database,
    path: PathBuf,
}

impl LocalState {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(REPORTS).map_err(db_err)?;
        txn.open_table(TASKS_SEEN).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn put_meta(&self, entries: &[(&str, &[u8])]) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(META).map_err(db_err)?;
            for (k, v) in entries {
                table.insert(*k, *v).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Records that task `id`, valid until `not_after_ms`, is about to run; committed
    /// (fsynced) before it returns. `false`: the id was recorded before — the task ran or
    /// is running and must not run again, also after a restart. Tasks that expired
    /// before `forget_before_ms` are forgotten in the same commit (the caller refuses an
    /// expired task before it gets here), so the ledger holds only tasks near their
    /// window.
    pub fn record_task(
        &self,
        id: &[u8],
        not_after_ms: u64,
        forget_before_ms: u64,
    ) -> Result<bool, StateError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let first = {
            let mut seen = txn.open_table(TASKS_SEEN).map_err(db_err)?;
            seen.retain(|_, not_after| not_after >= forget_before_ms)
                .map_err(db_err)?;
            let first = seen.get(id).map_err(db_err)?.is_none();
            if first {
                seen.insert(id, not_after_ms).map_err(db_err)?;
            }
            first
        };
        txn.commit().map_err(db_err)?;
        Ok(first)
    }

    /// How many task ids the ledger holds.
    pub fn tasks_recorded(&self) -> Result<u64, StateError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let seen = txn.open_table(TASKS_SEEN).map_err(db_err)?;
        redb::ReadableTableMetadata::len(&seen).map_err(db_err)
    }

    /// The highest sequence number this envoy has used.
    pub fn sequence(&self) -> Result<u64, StateError> {
        Ok(self
            .meta("sequence")?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }

    pub fn save_sequence(&self, sequence: u64) -> Result<(), StateError> {
        self.put_meta(&[("sequence", &sequence.to_le_bytes())])
    }

    /// The last good bundle as a delivery with every module body, to re-verify.
    pub fn bundle(&self) -> Result<Option<pb::BundleDelivery>, StateError> {
        let Some(bytes) = self.meta("bundle")? else {
            return Ok(None);
        };
        let stored = StoredBundle::decode(bytes.as_slice()).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            why: format!("stored bundle: {e}"),
        })?;
        Ok(Some(pb::BundleDelivery {
            manifest: stored.manifest,
            signature: stored.signature,
            modules: stored.modules,
        }))
    }

    /// Keeps a verified bundle as the one in force.
    pub fn save_bundle(&self, bundle: &VerifiedBundle) -> Result<(), StateError> {
        let stored = StoredBundle {
            manifest: bundle.manifest_bytes.clone(),
            signature: bundle.signature.clone(),
            modules: bundle
                .manifest
                .modules
                .iter()
                .zip(&bundle.modules)
                .map(|(r, (_, body))| pb::ModuleBody {
                    name: r.name.clone(),
                    body: body.clone(),
                })
                .collect(),
        };
        self.put_meta(&[("bundle", &stored.encode_to_vec())])
    }

    /// Queues a run report durably, with the sequence reached so far.
    pub fn queue_report(
        &self,
        report: &pb::RunReportBody,
        sequence: u64,
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut reports = txn.open_table(REPORTS).map_err(db_err)?;
            reports
                .insert(report.run_id, report.encode_to_vec().as_slice())
                .map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert("sequence", sequence.to_le_bytes().as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Queued reports, oldest first.
    pub fn pending_reports(&self) -> Result<Vec<pb::RunReportBody>, StateError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(REPORTS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(
                pb::RunReportBody::decode(v.value()).map_err(|e| StateError::Corrupt {
                    path: self.path.clone(),
                    why: format!("queued report: {e}"),
                })?,
            );
        }
        Ok(out)
    }

    pub fn pending_count(&self) -> Result<u64, StateError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(REPORTS).map_err(db_err)?;
        redb::ReadableTableMetadata::len(&table).map_err(db_err)
    }

    /// A report the spoke acknowledged (or refused for good) leaves the queue.
    pub fn remove_report(&self, run_id: u64, sequence: u64) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            txn.open_table(REPORTS)
                .map_err(db_err)?
                .remove(run_id)
                .map_err(db_err)?;
            txn.open_table(META)
                .map_err(db_err)?
                .insert("sequence", sequence.to_le_bytes().as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_reports_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let state = LocalState::open(&path).unwrap();
            for run_id in [30, 10, 20] {
                let report = pb::RunReportBody {
                    run_id,
                    ..Default::default()
                };
                state.queue_report(&report, run_id * 100).unwrap();
            }
            state.remove_report(20, 2500).unwrap();
        }
        let state = LocalState::open(&path).unwrap();
        let ids: Vec<u64> = state
            .pending_reports()
            .unwrap()
            .iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, [10, 30], "oldest first, acknowledged ones gone");
        assert_eq!(state.sequence().unwrap(), 2500);
    }

    #[test]
    fn identity_files_are_private_and_not_overwritten_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("envoy"));
        let key = signing::generate_key();
        let id = Identity {
            envoy_id: EnvoyId::new(7).unwrap(),
            hostname: "h".into(),
            key: key.clone(),
            tls_key_pem: "tls key".into(),
            cert_pem: "cert".into(),
            ca_pem: "ca".into(),
            spoke_address: "127.0.0.1:1".into(),
            bundle_keys: vec![signing::generate_key().verifying_key()],
        };
        state.save_identity(&id, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(state.root()), 0o700);
        for f in ["identity.json", "key.pem", "tls.key", "cert.pem", "ca.pem"] {
            assert_eq!(mode(&state.root().join(f)), 0o600, "{f}");
        }
        assert!(matches!(
            state.save_identity(&id, false),
            Err(StateError::AlreadyEnrolled(_))
        ));
        let loaded = state.load_identity().unwrap();
        assert_eq!(loaded.envoy_id, id.envoy_id);
        assert_eq!(loaded.key.to_bytes(), key.to_bytes());
        assert_eq!(loaded.bundle_keys, id.bundle_keys);
        assert_eq!(loaded.tls_key_pem, "tls key");
        // Enrolled by an earlier release: no tls.key, the certificate is on key.pem.
        std::fs::remove_file(state.root().join("tls.key")).unwrap();
        let legacy = state.load_identity().unwrap();
        assert_eq!(legacy.tls_key_pem, signing::key_to_pkcs8_pem(&key));
    }
}
