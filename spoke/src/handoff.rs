//! Moving envoys between spokes (reassign, drain), the spoke's half. The hub exports
//! the records from the old spoke, imports them durably on the new one, moves the pins
//! through raft, and only then hands them off here: the old spoke forgets them and
//! keeps a durable forwarding address, so an envoy's next check-in is redirected and
//! it never re-enrolls. Every step is idempotent, so the hub can simply retry.

use std::sync::Arc;

use tracing::info;
use vigo_common::EnvoyId;
use vigo_common::signing::parse_public_key;
use vigo_proto::v1 as pb;

use crate::admin::Admin;
use crate::compliance::Compliance;
use crate::error::SpokeError;
use crate::fleet::{EnvoyKey, EnvoyRecord, EnvoyState};
use crate::grpc::detach;
use crate::store::{
    ImportedEnvoy, StoredEnvoy, StoredForward, StoredLastRun, StoredRun, StoredState, WriteOp,
};
use crate::traits_store;

/// Largest batch of envoys one export, import or hand-off carries.
pub const MAX_BATCH: usize = 2000;
/// The run histories one export carries at most (half of what the hub decodes: the
/// rest of each record and the encoding fit in the other half).
pub const MAX_EXPORT_BYTES: usize = vigo_common::limits::MAX_ADMIN_ANSWER / 2;

fn batch_size(n: usize) -> Result<(), SpokeError> {
    if n > MAX_BATCH {
        return Err(SpokeError::TooLarge {
            what: "envoy batch",
            size: n,
            limit: MAX_BATCH,
        });
    }
    Ok(())
}

fn envoy_id(raw: u64) -> Result<EnvoyId, SpokeError> {
    EnvoyId::new(raw).ok_or_else(|| SpokeError::malformed("envoy_id", "is zero"))
}

impl Admin {
    /// The full records of some envoys. All or nothing: an unknown id exports none.
    pub fn export_envoys(&self, ids: &[u64]) -> Result<pb::EnvoyExport, SpokeError> {
        batch_size(ids.len())?;
        let mut envoys = Vec::with_capacity(ids.len());
        // Bounded by bytes as it is built, not after: an export over what the hub takes
        // is refused (RESOURCE_EXHAUSTED) as soon as it is, and the hub halves the batch.
        let mut bytes = 0usize;
        for raw in ids {
            let id = envoy_id(*raw)?;
            let record = self.fleet.get(id).ok_or(SpokeError::UnknownEnvoy(id))?;
            let st = record.state();
            let row = self.store.envoy(id.get())?.unwrap_or_default();
            let runs = self
                .store
                .runs(id.get())?
                .into_iter()
                .map(|(run_id, r)| pb::ExportedRun {
                    run_id,
                    received_at_ms: r.received_at_ms,
                    status: r.status,
                    report: r.report.into(),
                })
                .collect::<Vec<_>>();
            bytes += runs.iter().map(|r| r.report.len() + 32).sum::<usize>();
            if bytes > MAX_EXPORT_BYTES {
                return Err(SpokeError::TooLarge {
                    what: "envoy export",
                    size: bytes,
                    limit: MAX_EXPORT_BYTES,
                });
            }
            envoys.push(pb::ExportedEnvoy {
                envoy_id: id.get(),
                hostname: record.hostname.to_string(),
                public_key: record.key.as_bytes().to_vec().into(),
                enrolled_at_ms: record.enrolled_at_ms,
                token_name: row.token_name,
                sequence: st.sequence,
                last_seen_ms: st.last_seen_ms,
                traits: self
                    .traits
                    .get(&st.traits_hash)
                    .map(|t| (*t).clone())
                    .unwrap_or_default(),
                run_status: st.run_status.index() as u32,
                last_run_id: st.last_run_id,
                last_run_bundle: st.last_run_bundle,
                change_streak: st.change_streak,
                runs,
                revoked: st.revoked,
                revoked_reason: row.revoked_reason,
            });
        }
        Ok(pb::EnvoyExport { envoys })
    }

    /// Takes envoys over: durable first, then served. A record already here keeps the
    /// higher sequence number, so a repeated import never reopens a replay window.
    pub async fn import_envoys(
        self: &Arc<Self>,
        export: pb::EnvoyExport,
    ) -> Result<u32, SpokeError> {
        batch_size(export.envoys.len())?;
        let mut rows = Vec::with_capacity(export.envoys.len());
        let mut records = Vec::with_capacity(export.envoys.len());
        for e in export.envoys {
            let id = envoy_id(e.envoy_id)?;
            let key = parse_public_key(&e.public_key)?;
            let hostname = crate::enroll::normalize_hostname(&e.hostname)?;
            // The cluster's list wins over the export: a revocation that crossed the
            // move holds here.
            let revoked = e.revoked || self.revocations.is_envoy_revoked(id);
            let status = Compliance::from_index(e.run_status as u8).unwrap_or(Compliance::NoData);
            let sequence = self
                .fleet
                .get(id)
                .map_or(e.sequence, |r| r.read(|st| st.sequence.max(e.sequence)));
            let traits = (!e.traits.is_empty()).then(|| {
                let hash = vigo_common::traits::traits_hash(&e.traits);
                (hash, e.traits.clone())
            });
            let last = (e.last_run_id != 0).then_some(StoredLastRun {
                run_id: e.last_run_id,
                status: e.run_status,
                bundle_prefix: e.last_run_bundle,
                sequence,
                change_streak: e.change_streak,
            });
            rows.push(ImportedEnvoy {
                envoy: StoredEnvoy {
                    id: id.get(),
                    hostname: hostname.clone(),
                    public_key: key.as_bytes().to_vec(),
                    enrolled_at_ms: e.enrolled_at_ms,
                    revoked,
                    revoked_reason: e.revoked_reason.clone(),
                    token_name: e.token_name.clone(),
                    ..Default::default()
                },
                state: StoredState {
                    sequence,
                    last_seen_ms: e.last_seen_ms,
                    traits_hash: traits.as_ref().map(|t| t.0.to_vec()).unwrap_or_default(),
                    bundle_fingerprint: Vec::new(),
                },
                last,
                runs: e
                    .runs
                    .iter()
                    .map(|r| {
                        (
                            r.run_id,
                            StoredRun {
                                received_at_ms: r.received_at_ms,
                                status: r.status,
                                report: r.report.to_vec(),
                            },
                        )
                    })
                    .collect(),
                traits: traits.as_ref().map(|(h, t)| (*h, traits_store::encode(t))),
            });
            let mut st = EnvoyState::new(e.enrolled_at_ms);
            st.sequence = sequence;
            st.last_seen_ms = e.last_seen_ms;
            st.run_status = status;
            st.last_run_id = e.last_run_id;
            st.last_run_bundle = e.last_run_bundle;
            st.change_streak = e.change_streak;
            st.revoked = revoked;
            records.push((
                EnvoyRecord::new(id, EnvoyKey::parsed(key), &hostname, e.enrolled_at_ms),
                st,
                traits,
            ));
        }
        let this = self.clone();
        detach(async move {
            this.store.write(WriteOp::Import { envoys: rows }).await?;
            let policy = this.policy.current();
            let count = records.len() as u32;
            for (record, mut st, traits) in records {
                if let Some((hash, set)) = traits {
                    this.traits.stage(hash, set);
                    if this.traits.adopt(&[0; 32], &hash) {
                        st.traits_hash = hash;
                    }
                }
                st.hostcrate = policy.hostcrate_of(&record.hostname);
                st.policy_generation = policy.generation;
                this.forwards.clear(record.id.get());
                if let Some(old) = this.fleet.get(record.id) {
                    this.traits.release(&old.read(|s| s.traits_hash));
                }
                let id = record.id;
                this.fleet.insert(record, st);
                // A revocation applied while this import was being written found no
                // record to mark: mark it now.
                if this.revocations.is_envoy_revoked(id)
                    && let Some(r) = this.fleet.get(id)
                {
                    this.fleet.update(&r, |st| st.revoked = true);
                }
            }
            info!(envoys = count, "envoys taken over from another spoke");
            Ok(count)
        })
        .await
    }

    /// Gives envoys up: forwarding rows durable first, then forgotten in memory. Ids
    /// already handed off count as done; unknown ones are refused. Answers the records
    /// of the envoys still here as they stand now, for the new spoke: reports that came
    /// in while the move ran are not lost with them.
    pub async fn hand_off(
        self: &Arc<Self>,
        req: pb::HandOffRequest,
    ) -> Result<pb::HandOffResponse, SpokeError> {
        batch_size(req.envoy_ids.len())?;
        vigo_common::tls::split_address(&req.spoke_address)
            .map_err(|e| SpokeError::malformed("spoke_address", e))?;
        let mut forwards = Vec::new();
        let mut keys = Vec::new();
        for raw in &req.envoy_ids {
            let id = envoy_id(*raw)?;
            let key = match (self.fleet.get(id), self.forwards.get(id)) {
                (Some(r), _) => r
                    .key
                    .verifying()
                    .ok_or_else(|| SpokeError::malformed("stored envoy key", id))?,
                (None, Some((key, _))) => key,
                (None, None) => return Err(SpokeError::UnknownEnvoy(id)),
            };
            forwards.push((
                id.get(),
                StoredForward {
                    public_key: key.as_bytes().to_vec(),
                    address: req.spoke_address.clone(),
                },
            ));
            keys.push((id, key));
        }
        let here: Vec<u64> = keys
            .iter()
            .filter(|(id, _)| self.fleet.get(*id).is_some())
            .map(|(id, _)| id.get())
            .collect();
        let last = self.export_envoys(&here)?;
        let this = self.clone();
        detach(async move {
            this.store.write(WriteOp::HandOff { forwards }).await?;
            for (id, key) in &keys {
                this.forwards.set(id.get(), *key, &req.spoke_address);
                if let Some(record) = this.fleet.remove(*id) {
                    this.traits.release(&record.read(|s| s.traits_hash));
                }
            }
            info!(envoys = keys.len(), to = %req.spoke_address, "envoys handed off");
            Ok(pb::HandOffResponse {
                handed_off: keys.len() as u32,
                last: Some(last),
            })
        })
        .await
    }
}
