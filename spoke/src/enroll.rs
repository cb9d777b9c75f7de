//! Enrollment: a token traded for an identity, durable before the answer; and the
//! registry both enrollment paths (standalone, or through the hub) record envoys with.
//!
//! The same hostname with the same key is a retried enrollment and gets the same envoy
//! back (a fresh certificate, no token use spent). The same hostname with a new key is a
//! rebuilt machine: only a token marked `allow_rekey` may do that, and it is logged; the
//! new key gets a new envoy id and the old one is revoked, so an id is bound to one key
//! for life.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use vigo_common::EnvoyId;
use vigo_common::enrollment::{Checked, Guard, check_request, guard_hostname};
use vigo_common::pki::CertAuthority;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::error::SpokeError;
use crate::fleet::{EnvoyKey, EnvoyRecord, EnvoyState, FleetIndex};
use crate::grpc::detach;
use crate::metrics::count_call;
use crate::store::{Store, StoredEnvoy, WriteOp};
use crate::tokens::TokenBook;

/// Records envoys: durable first, then published in the FleetIndex. Standalone
/// enrollment and the hub's registrations both go through here.
pub struct Registry {
    pub fleet: Arc<FleetIndex>,
    pub store: Store,
    /// Hostnames with a registration in flight.
    pending: Mutex<HashSet<String>>,
}

/// Releases a pending hostname however the registration ends.
pub struct PendingGuard {
    registry: Arc<Registry>,
    hostname: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.registry
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hostname);
    }
}

impl Registry {
    pub fn new(fleet: Arc<FleetIndex>, store: Store) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            store,
            pending: Mutex::new(HashSet::new()),
        })
    }

    /// An id no envoy of this spoke has.
    pub fn fresh_id(&self) -> EnvoyId {
        loop {
            let candidate = EnvoyId::random();
            if self.fleet.get(candidate).is_none() {
                return candidate;
            }
        }
    }

    /// Holds `hostname` for one registration; a second one at once is refused.
    pub fn hold(self: &Arc<Self>, hostname: &str) -> Result<PendingGuard, SpokeError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.insert(hostname.to_string()) {
            return Err(SpokeError::EnrollmentInProgress(hostname.to_string()));
        }
        Ok(PendingGuard {
            registry: self.clone(),
            hostname: hostname.to_string(),
        })
    }

    /// Writes the envoy — and the revocation of the envoy it `replaces`, in the same
    /// transaction — then publishes it. `token` counts one use of that token.
    pub async fn record(
        &self,
        id: EnvoyId,
        hostname: &str,
        key: ed25519_dalek::VerifyingKey,
        token_name: &str,
        token: Option<[u8; 32]>,
        replaces: Option<Arc<EnvoyRecord>>,
    ) -> Result<(), SpokeError> {
        let enrolled_at_ms = now_ms();
        let mut rows = vec![StoredEnvoy {
            id: id.get(),
            hostname: hostname.to_string(),
            public_key: key.as_bytes().to_vec(),
            enrolled_at_ms,
            token_name: token_name.to_string(),
            ..Default::default()
        }];
        if let Some(old) = &replaces {
            let mut row = self
                .store
                .envoy(old.id.get())?
                .unwrap_or_else(|| StoredEnvoy {
                    id: old.id.get(),
                    hostname: old.hostname.to_string(),
                    public_key: old.key.as_bytes().to_vec(),
                    enrolled_at_ms: old.enrolled_at_ms,
                    ..Default::default()
                });
            row.revoked = true;
            row.revoked_at_ms = enrolled_at_ms;
            row.revoked_reason = format!("re-enrolled with a new key as {id}");
            rows.push(row);
        }
        self.store
            .write(WriteOp::PutEnvoys {
                envoys: rows,
                token,
            })
            .await?;
        if let Some(old) = &replaces {
            self.fleet.update(old, |st| st.revoked = true);
            warn!(%hostname, old = %old.id, new = %id, token = %token_name, "hostname re-enrolled with a new key; old envoy revoked");
        }
        self.fleet.insert(
            EnvoyRecord::new(id, EnvoyKey::parsed(key), hostname, enrolled_at_ms),
            EnvoyState::new(enrolled_at_ms),
        );
        info!(envoy = %id, %hostname, token = %token_name, "envoy enrolled");
        Ok(())
    }
}

/// Enrollment on a standalone spoke: tokens checked here, certificates signed here.
pub struct Enroller {
    pub registry: Arc<Registry>,
    pub tokens: TokenBook,
    pub ca: CertAuthority,
    /// What envoys are told about where to check in and how often.
    pub advertise: String,
    pub interval_ms: u32,
    pub jitter_ms: u32,
    pub bundle_keys: Vec<Bytes>,
}

/// Lowercases and checks a hostname (see `vigo_common::hostname`).
pub fn normalize_hostname(raw: &str) -> Result<String, SpokeError> {
    Ok(vigo_common::hostname::normalize(raw)?)
}

impl Enroller {
    /// The order of checks is the shared one (`vigo_common::enrollment`); the hostname
    /// is held before its envoy is looked up, so two enrollments of one hostname with
    /// different keys can never both pass the guard.
    pub async fn enroll(
        self: &Arc<Self>,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, SpokeError> {
        let Checked { hostname, key, .. } =
            check_request(&req.token, &req.hostname, &req.public_key, &req.csr_der)?;
        let now = SystemTime::now();
        let pending = self.registry.hold(&hostname)?;

        let existing = self.registry.fleet.by_hostname(&hostname);
        if let Some(e) = existing.as_ref().filter(|e| e.key == key)
            && e.read(|st| st.revoked)
        {
            // That key was revoked: it never enrolls again, under any token.
            return Err(SpokeError::Revoked(e.id));
        }
        let active = existing.as_ref().filter(|e| !e.read(|st| st.revoked));
        let terms = self.tokens.check(&req.token, &hostname, now)?;
        let replaces = match guard_hostname(
            &hostname,
            active.map(|e| (e.id.get(), e.key.as_bytes())),
            key.as_bytes(),
            terms.allow_rekey,
        )? {
            Guard::Retry(_) => {
                // A retry of an enrollment that succeeded: same envoy, fresh certificate.
                let existing = active.expect("a retry has an active envoy");
                let cert = self.ca.issue_envoy(
                    existing.id,
                    key.as_bytes(),
                    &req.csr_der,
                    &req.key_proof,
                )?;
                return Ok(self.response(existing.id, cert, true));
            }
            Guard::Rekey(_) => active.cloned(),
            Guard::Fresh => None,
        };
        let token = self.tokens.reserve(&req.token, &hostname, now)?;
        let this = self.clone();
        // The enrollment runs to its end even if the caller leaves; the hostname stays
        // held until then.
        let result = detach(async move {
            let _pending = pending;
            let id = this.registry.fresh_id();
            let outcome = async {
                let cert = this
                    .ca
                    .issue_envoy(id, key.as_bytes(), &req.csr_der, &req.key_proof)?;
                this.registry
                    .record(id, &hostname, key, &token.name, Some(token.hash), replaces)
                    .await?;
                Ok::<_, SpokeError>((id, cert))
            }
            .await;
            match &outcome {
                Ok(_) => this.tokens.commit(&token),
                Err(_) => this.tokens.release(&token),
            }
            outcome
        })
        .await;
        result.map(|(id, cert)| self.response(id, cert, false))
    }

    fn response(&self, id: EnvoyId, cert: Vec<u8>, already_enrolled: bool) -> pb::EnrollResponse {
        pb::EnrollResponse {
            envoy_id: id.get(),
            spoke_address: self.advertise.clone(),
            client_certificate_der: cert.into(),
            ca_certificate_der: Bytes::copy_from_slice(self.ca.cert_der()),
            bundle_signing_keys: self.bundle_keys.clone(),
            interval_ms: self.interval_ms,
            jitter_ms: self.jitter_ms,
            already_enrolled,
        }
    }
}

/// Enrollment as the spoke serves it: itself when standalone, or a pointer to the hub.
pub enum EnrollmentService {
    Standalone(Arc<Enroller>),
    /// Enrollment goes through the hub at these addresses.
    ThroughHub(Vec<String>),
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let result = match self {
            EnrollmentService::Standalone(enroller) => enroller.enroll(request.into_inner()).await,
            EnrollmentService::ThroughHub(hubs) => {
                Err(SpokeError::EnrollThroughHub(hubs.join(", ")))
            }
        };
        count_call("vigo_enrollments_total", result.as_ref().map(|_| ()));
        if let Err(e) = &result {
            // Anyone can be refused: the metric counts each, the log a bounded few.
            static LOGGED: vigo_common::telemetry::sampled::Sampled =
                vigo_common::telemetry::sampled::Sampled::new();
            if let Some(left_out) = LOGGED.admit() {
                info!(error = %e, left_out, "enrollment refused");
            }
        }
        result.map(Response::new).map_err(Status::from)
    }
}
