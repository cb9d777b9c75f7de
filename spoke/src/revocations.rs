//! The cluster's revocations as this spoke holds them: the hub's list, in order, durable
//! in redb, applied to the FleetIndex (revoked envoys are refused at check-in) and to
//! the certificates every server of the spoke refuses.
//!
//! The list only grows, one sequence number at a time: a batch that does not follow the
//! last one held is not applied (the caller learns where the spoke is and sends what is
//! missing). Envoys that arrive later — imported in a hand-off, registered by the hub —
//! are checked against it, so a revocation that crossed a move still holds; and a spoke
//! restarted from an old copy of its data catches up from the hub before it serves.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tracing::warn;
use vigo_common::EnvoyId;
use vigo_common::net::RevokedCerts;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::error::SpokeError;
use crate::fleet::FleetIndex;
use crate::store::{Store, StoredEnvoy, WriteOp};

pub struct Revocations {
    fleet: Arc<FleetIndex>,
    store: Store,
    pub certs: Arc<RevokedCerts>,
    envoys: RwLock<HashSet<u64>>,
    seq: AtomicU64,
    /// One batch applied at a time, so sequence numbers stay in order.
    applying: tokio::sync::Mutex<()>,
}

impl Revocations {
    /// The list as the store had it at start-up, applied to the FleetIndex just loaded.
    pub fn load(fleet: Arc<FleetIndex>, store: Store, list: &[pb::Revocation]) -> Self {
        let this = Self {
            fleet,
            store,
            certs: Arc::default(),
            envoys: RwLock::default(),
            seq: AtomicU64::new(0),
            applying: tokio::sync::Mutex::new(()),
        };
        for r in list {
            this.take(r);
        }
        this
    }

    /// The last revocation held.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn is_envoy_revoked(&self, id: EnvoyId) -> bool {
        self.envoys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id.get())
    }

    /// Applies a batch from the hub: durable, then in force. Answers the last sequence
    /// number held afterwards (unchanged when the batch does not follow it).
    pub async fn apply(&self, list: &pb::RevocationList) -> Result<u64, SpokeError> {
        let _one = self.applying.lock().await;
        let held = self.seq();
        if list.after > held {
            return Ok(held);
        }
        let fresh: Vec<pb::Revocation> = list
            .revocations
            .iter()
            .filter(|r| r.seq > held)
            .cloned()
            .collect();
        for (i, r) in fresh.iter().enumerate() {
            if r.seq != held + 1 + i as u64 {
                return Err(SpokeError::malformed(
                    "revocations",
                    format!(
                        "sequence numbers skip from {} to {}",
                        held + i as u64,
                        r.seq
                    ),
                ));
            }
            if r.target.is_none() {
                return Err(SpokeError::malformed(
                    "revocations",
                    format!("{} has no target", r.seq),
                ));
            }
        }
        if fresh.is_empty() {
            return Ok(held);
        }
        let envoys = fresh
            .iter()
            .filter_map(|r| self.revoked_row(r).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        self.store
            .write(WriteOp::PutRevocations {
                revocations: fresh.clone(),
                envoys,
            })
            .await?;
        for r in &fresh {
            self.take(r);
        }
        Ok(self.seq())
    }

    /// The stored row of an envoy here that `r` revokes, marked revoked.
    fn revoked_row(&self, r: &pb::Revocation) -> Result<Option<StoredEnvoy>, SpokeError> {
        let Some(pb::revocation::Target::EnvoyId(id)) = r.target else {
            return Ok(None);
        };
        let Some(record) = EnvoyId::new(id).and_then(|id| self.fleet.get(id)) else {
            return Ok(None);
        };
        let mut row = self.store.envoy(id)?.unwrap_or_else(|| StoredEnvoy {
            id,
            hostname: record.hostname.to_string(),
            public_key: record.key.as_bytes().to_vec(),
            enrolled_at_ms: record.enrolled_at_ms,
            ..Default::default()
        });
        row.revoked = true;
        row.revoked_at_ms = if r.at_ms == 0 { now_ms() } else { r.at_ms };
        row.revoked_reason = r.reason.clone();
        Ok(Some(row))
    }

    /// Puts one revocation in force in memory (it is durable already).
    fn take(&self, r: &pb::Revocation) {
        match &r.target {
            Some(pb::revocation::Target::EnvoyId(id)) => {
                self.envoys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*id);
                if let Some(record) = EnvoyId::new(*id).and_then(|id| self.fleet.get(id))
                    && !record.read(|st| st.revoked)
                {
                    self.fleet.update(&record, |st| st.revoked = true);
                    warn!(envoy = %record.id, hostname = %record.hostname, reason = %r.reason, by = %r.by, "envoy revoked by the hub");
                }
            }
            Some(pb::revocation::Target::CertificateSerial(serial)) => {
                self.certs.extend([serial.as_str()]);
            }
            None => {}
        }
        self.seq.fetch_max(r.seq, Ordering::AcqRel);
    }
}
