//! Administration of this spoke, for admin and hub certificates only (the admission
//! table, `crate::admission`, lets no one else reach these handlers).

use std::sync::Arc;

use prost::Message;

use tonic::{Request, Response, Status};
use tracing::{info, warn};
use vigo_common::EnvoyId;
use vigo_common::limits::MAX_REGISTER_BATCH;
use vigo_common::refusal::Refusal;
use vigo_common::signing::parse_public_key;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::compliance::Compliance;
use crate::enroll::{Registry, normalize_hostname};
use crate::error::SpokeError;
use crate::fleet::FleetIndex;
use crate::forwards::Forwards;
use crate::grpc::{detach, walk};
use crate::metrics::count_call;
use crate::policy_cache::PolicyCache;
use crate::revocations::Revocations;
use crate::store::{Store, StoreError, StoredEnvoy, WriteOp};
use crate::streams::Streams;
use crate::tasks::SpokeTasks;
use crate::traits_store::TraitsStore;

pub struct Admin {
    pub fleet: Arc<FleetIndex>,
    pub traits: Arc<TraitsStore>,
    pub store: Store,
    pub policy: Arc<PolicyCache>,
    pub registry: Arc<Registry>,
    pub streams: Arc<Streams>,
    pub forwards: Arc<Forwards>,
    pub revocations: Arc<Revocations>,
    pub tasks: Arc<SpokeTasks>,
    /// Envoys are enrolled and revoked through the hub.
    pub through_hub: bool,
}

fn envoy_id(raw: u64) -> Result<EnvoyId, SpokeError> {
    EnvoyId::new(raw).ok_or_else(|| SpokeError::malformed("envoy_id", "is zero"))
}

impl Admin {
    /// An envoy's stored runs, newest first (at most `limit`; 0: all).
    pub fn envoy_runs(&self, id: EnvoyId, limit: u32) -> Result<pb::EnvoyRunsAnswer, SpokeError> {
        self.fleet.get(id).ok_or(SpokeError::UnknownEnvoy(id))?;
        let mut runs = self.store.runs(id.get())?;
        runs.reverse();
        if limit > 0 {
            runs.truncate(limit as usize);
        }
        let runs = runs
            .into_iter()
            .map(|(run_id, run)| {
                let report = pb::RunReportBody::decode(run.report.as_slice()).map_err(|e| {
                    StoreError::Corrupt {
                        table: "runs",
                        key: format!("({id}, {run_id})"),
                        why: e.to_string(),
                    }
                })?;
                Ok(pb::StoredEnvoyRun {
                    received_at_ms: run.received_at_ms,
                    status: Compliance::from_index(run.status as u8)
                        .map_or(0, |s| s.to_proto() as i32),
                    report: Some(report),
                })
            })
            .collect::<Result<_, SpokeError>>()?;
        Ok(pb::EnvoyRunsAnswer { runs })
    }

    pub fn get_envoy(&self, id: EnvoyId) -> Result<pb::EnvoyInfo, SpokeError> {
        let record = self.fleet.get(id).ok_or(SpokeError::UnknownEnvoy(id))?;
        let st = record.state();
        let policy = self.policy.current();
        let hostcrate = if st.policy_generation == policy.generation {
            st.hostcrate
        } else {
            policy.hostcrate_of(&record.hostname)
        };
        let traits = self
            .traits
            .get(&st.traits_hash)
            .map(|t| (*t).clone())
            .unwrap_or_default();
        Ok(pb::EnvoyInfo {
            envoy_id: id.get(),
            hostname: record.hostname.to_string(),
            public_key: record.key.as_bytes().to_vec().into(),
            enrolled_at_ms: record.enrolled_at_ms,
            last_seen_ms: st.last_seen_ms,
            sequence: st.sequence,
            revoked: st.revoked,
            status: st
                .effective_status()
                .map(|s| s.to_proto() as i32)
                .unwrap_or(0),
            hostcrate: policy.hostcrate_name(hostcrate).to_string(),
            bundle_fingerprint: st.bundle_fingerprint.to_vec().into(),
            traits_hash: st.traits_hash.to_vec().into(),
            traits,
            stored_runs: self.store.runs(id.get())?.len() as u32,
        })
    }

    /// Revokes an envoy: durable first, then refused on its next request. A spoke under
    /// a hub refuses: there a revocation is the cluster's, so that a move or a restored
    /// backup cannot undo it.
    pub async fn revoke(self: &Arc<Self>, id: EnvoyId, reason: String) -> Result<bool, SpokeError> {
        if self.through_hub {
            return Err(SpokeError::RevokeThroughHub(id));
        }
        let record = self.fleet.get(id).ok_or(SpokeError::UnknownEnvoy(id))?;
        if record.read(|st| st.revoked) {
            return Ok(false);
        }
        let mut row = self.store.envoy(id.get())?.unwrap_or_else(|| StoredEnvoy {
            id: id.get(),
            hostname: record.hostname.to_string(),
            public_key: record.key.as_bytes().to_vec(),
            enrolled_at_ms: record.enrolled_at_ms,
            ..Default::default()
        });
        row.revoked = true;
        row.revoked_at_ms = now_ms();
        row.revoked_reason = reason.clone();
        let this = self.clone();
        detach(async move {
            this.store
                .write(WriteOp::PutEnvoys {
                    envoys: vec![row],
                    token: None,
                })
                .await?;
            this.fleet.update(&record, |st| st.revoked = true);
            warn!(envoy = %id, hostname = %record.hostname, %reason, "envoy revoked");
            Ok(true)
        })
        .await
    }

    /// Marks envoys to receive their bundle on the next check-in, and wakes those
    /// holding an open stream so that check-in comes now. All or nothing: an unknown
    /// id marks none.
    pub fn force_push(
        &self,
        req: &pb::ForcePushRequest,
    ) -> Result<pb::ForcePushResponse, SpokeError> {
        let records = self.push_targets(req)?;
        let mut woken = 0;
        for r in &records {
            self.fleet.update(r, |st| st.force_push = true);
            woken += u32::from(self.streams.wake(r.id));
        }
        info!(marked = records.len(), woken, "force push");
        Ok(pb::ForcePushResponse {
            marked: records.len() as u32,
            woken,
        })
    }

    /// Records an envoy the hub enrolled and pinned here. The hub chose the id; a
    /// retried registration (same hostname and key) answers with the envoy recorded the
    /// first time, and a new key for a known hostname replaces (revokes) the old envoy,
    /// which the hub allows only with an allow_rekey token.
    pub async fn register_envoy(
        self: &Arc<Self>,
        req: pb::RegisterEnvoyRequest,
    ) -> Result<pb::RegisterEnvoyResponse, SpokeError> {
        let id = envoy_id(req.envoy_id)?;
        let hostname = normalize_hostname(&req.hostname)?;
        let key = parse_public_key(&req.public_key)?;
        if self.revocations.is_envoy_revoked(id) {
            return Err(SpokeError::Revoked(id));
        }
        if let Some(same_id) = self.fleet.get(id) {
            if same_id.hostname.as_ref() == hostname && same_id.key == key {
                return Ok(pb::RegisterEnvoyResponse {
                    envoy_id: id.get(),
                    already_registered: true,
                });
            }
            return Err(SpokeError::IdTaken {
                id,
                hostname: same_id.hostname.to_string(),
            });
        }
        let mut replaces = None;
        if let Some(existing) = self.fleet.by_hostname(&hostname) {
            if existing.key == key && !existing.read(|st| st.revoked) {
                return Ok(pb::RegisterEnvoyResponse {
                    envoy_id: existing.id.get(),
                    already_registered: true,
                });
            }
            replaces = Some(existing);
        }
        let pending = self.registry.hold(&hostname)?;
        let this = self.clone();
        detach(async move {
            let _pending = pending;
            this.registry
                .record(id, &hostname, key, &req.token_name, None, replaces)
                .await?;
            Ok(pb::RegisterEnvoyResponse {
                envoy_id: id.get(),
                already_registered: false,
            })
        })
        .await
    }

    /// Registers a batch of envoys, each as `register_envoy` would, concurrently: their
    /// records reach the store together and share one group commit.
    pub async fn register_envoys(
        self: &Arc<Self>,
        req: pb::RegisterEnvoysRequest,
    ) -> Result<pb::RegisterEnvoysResponse, SpokeError> {
        if req.envoys.len() > MAX_REGISTER_BATCH {
            return Err(SpokeError::malformed(
                "envoys",
                format!(
                    "{} in one call, at most {MAX_REGISTER_BATCH}",
                    req.envoys.len()
                ),
            ));
        }
        let each: Vec<_> = req
            .envoys
            .into_iter()
            .map(|one| {
                let this = self.clone();
                tokio::spawn(async move { this.register_envoy(one).await })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(each.len());
        for one in each {
            let result = one.await.unwrap_or(Err(SpokeError::ShuttingDown));
            count_call("vigo_enrollments_total", result.as_ref().map(|_| ()));
            let outcome = match result {
                Ok(registered) => pb::register_envoy_outcome::Outcome::Registered(registered),
                Err(e) => pb::register_envoy_outcome::Outcome::Refused(pb::Refused {
                    code: e.kind().grpc_code() as i32,
                    message: e.to_string(),
                }),
            };
            outcomes.push(pb::RegisterEnvoyOutcome {
                outcome: Some(outcome),
            });
        }
        Ok(pb::RegisterEnvoysResponse { outcomes })
    }

    pub fn stats(&self) -> pb::SpokeStats {
        let counts = self.fleet.counts();
        let policy = self.policy.current();
        pb::SpokeStats {
            envoys: counts.total,
            revoked: counts.revoked,
            by_status: Compliance::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), counts.status(*s)))
                .collect(),
            dirty: self.fleet.dirty_count() as u64,
            policy_version: policy.version_hex(),
            hostcrates: policy.hostcrate_count() as u32,
        }
    }
}

pub struct AdminService(pub Arc<Admin>);

#[tonic::async_trait]
impl pb::spoke_admin_server::SpokeAdmin for AdminService {
    async fn get_envoy(
        &self,
        request: Request<pb::GetEnvoyRequest>,
    ) -> Result<Response<pb::EnvoyInfo>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(self.0.get_envoy(envoy_id(msg.envoy_id)?)?))
    }

    async fn envoy_runs(
        &self,
        request: Request<pb::EnvoyRunsQuery>,
    ) -> Result<Response<pb::EnvoyRunsAnswer>, Status> {
        let msg = request.into_inner();
        let id = envoy_id(msg.envoy_id)?;
        let admin = self.0.clone();
        let answer = tokio::task::spawn_blocking(move || admin.envoy_runs(id, msg.limit))
            .await
            .map_err(|e| Status::internal(format!("reading runs: {e}")))??;
        Ok(Response::new(answer))
    }

    async fn revoke_envoy(
        &self,
        request: Request<pb::RevokeEnvoyRequest>,
    ) -> Result<Response<pb::RevokeEnvoyResponse>, Status> {
        let msg = request.into_inner();
        let result = async { self.0.revoke(envoy_id(msg.envoy_id)?, msg.reason).await }.await;
        count_call("vigo_revocations_total", result.as_ref().map(|_| ()));
        Ok(Response::new(pb::RevokeEnvoyResponse {
            revoked_now: result?,
        }))
    }

    async fn force_push(
        &self,
        request: Request<pb::ForcePushRequest>,
    ) -> Result<Response<pb::ForcePushResponse>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(self.0.force_push(&msg)?))
    }

    async fn list_envoys(
        &self,
        request: Request<pb::SpokeListRequest>,
    ) -> Result<Response<pb::SpokeListResponse>, Status> {
        let msg = request.into_inner();
        let admin = self.0.clone();
        // A walk over the whole shard: off the async workers, stopped at the deadline.
        let page = walk(move |cancel| admin.list_envoys(msg, cancel)).await?;
        Ok(Response::new(page))
    }

    async fn compliance(
        &self,
        _request: Request<pb::SpokeComplianceRequest>,
    ) -> Result<Response<pb::SpokeCompliance>, Status> {
        Ok(Response::new(self.0.compliance()))
    }

    async fn trait_count(
        &self,
        request: Request<pb::SpokeTraitCountRequest>,
    ) -> Result<Response<pb::SpokeTraitCount>, Status> {
        let msg = request.into_inner();
        let admin = self.0.clone();
        let counts = walk(move |cancel| admin.trait_count(msg, cancel)).await?;
        Ok(Response::new(counts))
    }

    async fn export_envoys(
        &self,
        request: Request<pb::ExportEnvoysRequest>,
    ) -> Result<Response<pb::EnvoyExport>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(self.0.export_envoys(&msg.envoy_ids)?))
    }

    async fn import_envoys(
        &self,
        request: Request<pb::EnvoyExport>,
    ) -> Result<Response<pb::ImportEnvoysResponse>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(pb::ImportEnvoysResponse {
            imported: self.0.import_envoys(msg).await?,
        }))
    }

    async fn hand_off(
        &self,
        request: Request<pb::HandOffRequest>,
    ) -> Result<Response<pb::HandOffResponse>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(self.0.hand_off(msg).await?))
    }

    async fn register_envoys(
        &self,
        request: Request<pb::RegisterEnvoysRequest>,
    ) -> Result<Response<pb::RegisterEnvoysResponse>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(self.0.register_envoys(msg).await?))
    }

    async fn apply_revocations(
        &self,
        request: Request<pb::RevocationList>,
    ) -> Result<Response<pb::ApplyRevocationsResponse>, Status> {
        let list = request.into_inner();
        let seq = self.0.revocations.apply(&list).await?;
        Ok(Response::new(pb::ApplyRevocationsResponse { seq }))
    }

    async fn sync_tasks(
        &self,
        request: Request<pb::SyncTasksRequest>,
    ) -> Result<Response<pb::SyncTasksResponse>, Status> {
        let result = self.0.tasks.sync(request.into_inner()).await;
        count_call("vigo_task_syncs_total", result.as_ref().map(|_| ()));
        Ok(Response::new(result?))
    }

    async fn task_results(
        &self,
        request: Request<pb::SpokeTaskResultsRequest>,
    ) -> Result<Response<pb::SpokeTaskResults>, Status> {
        let msg = request.into_inner();
        let admin = self.0.clone();
        // Result rows are read from disk: off the async workers.
        let page = tokio::task::spawn_blocking(move || {
            let fleet = &admin.fleet;
            admin.tasks.results(&msg, |id| {
                EnvoyId::new(id)
                    .and_then(|e| fleet.get(e))
                    .map(|r| r.hostname.to_string())
                    .unwrap_or_default()
            })
        })
        .await
        .map_err(|_| SpokeError::ShuttingDown)?;
        Ok(Response::new(page?))
    }

    async fn apply_config(
        &self,
        request: Request<pb::ConfigVersion>,
    ) -> Result<Response<pb::ApplyConfigResponse>, Status> {
        let msg = request.into_inner();
        Ok(Response::new(self.0.apply_config(msg).await?))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::SpokeStats>, Status> {
        Ok(Response::new(self.0.stats()))
    }
}
