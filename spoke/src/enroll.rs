//! Enrollment: a token traded for an identity, durable before the answer.
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
use vigo_common::pki::CertAuthority;
use vigo_common::signing::parse_public_key;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::error::SpokeError;
use crate::fleet::{EnvoyRecord, EnvoyState, FleetIndex};
use crate::grpc::detach;
use crate::metrics::count_call;
use crate::store::{Store, StoredEnvoy, WriteOp};
use crate::tokens::{Reservation, TokenBook};

const MAX_TOKEN: usize = 256;
const MAX_CSR: usize = 16 << 10;
const MAX_HOSTNAME: usize = 253;

pub struct Enroller {
    pub fleet: Arc<FleetIndex>,
    pub store: Store,
    pub tokens: TokenBook,
    pub ca: CertAuthority,
    /// What envoys are told about where to check in and how often.
    pub advertise: String,
    pub interval_ms: u32,
    pub jitter_ms: u32,
    pub bundle_keys: Vec<Bytes>,
    /// Hostnames with an enrollment in flight.
    pending: Mutex<HashSet<String>>,
}

/// Releases a pending hostname however the enrollment ends.
struct PendingGuard {
    enroller: Arc<Enroller>,
    hostname: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.enroller
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hostname);
    }
}

/// Lowercases and checks a hostname: 1–253 characters of letters, digits, '-', '_' and
/// dots separating non-empty labels.
pub fn normalize_hostname(raw: &str) -> Result<String, SpokeError> {
    let h = raw.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= MAX_HOSTNAME
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(h)
    } else {
        Err(SpokeError::malformed(
            "hostname",
            format!("{raw:?} is not a valid host name"),
        ))
    }
}

impl Enroller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fleet: Arc<FleetIndex>,
        store: Store,
        tokens: TokenBook,
        ca: CertAuthority,
        advertise: String,
        interval_ms: u32,
        jitter_ms: u32,
        bundle_keys: Vec<Bytes>,
    ) -> Self {
        Self {
            fleet,
            store,
            tokens,
            ca,
            advertise,
            interval_ms,
            jitter_ms,
            bundle_keys,
            pending: Mutex::new(HashSet::new()),
        }
    }

    pub async fn enroll(
        self: &Arc<Self>,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, SpokeError> {
        if req.token.is_empty() || req.token.len() > MAX_TOKEN {
            return Err(SpokeError::malformed(
                "token",
                format!("must be 1..{MAX_TOKEN} bytes"),
            ));
        }
        if req.csr_der.len() > MAX_CSR {
            return Err(SpokeError::TooLarge {
                what: "certificate signing request",
                size: req.csr_der.len(),
                limit: MAX_CSR,
            });
        }
        let hostname = normalize_hostname(&req.hostname)?;
        let key = parse_public_key(&req.public_key)?;
        let now = SystemTime::now();

        if let Some(existing) = self.fleet.by_hostname(&hostname) {
            let revoked = existing.read(|st| st.revoked);
            if existing.key == key && !revoked {
                // A retry of an enrollment that succeeded: same envoy, fresh certificate.
                self.tokens.check(&req.token, now)?;
                let cert = self
                    .ca
                    .issue_envoy(existing.id, key.as_bytes(), &req.csr_der)?;
                return Ok(self.response(existing.id, cert, true));
            }
            let token = self.tokens.check(&req.token, now)?;
            if !token.allow_rekey {
                return Err(SpokeError::HostnameTaken {
                    hostname,
                    id: existing.id,
                });
            }
        }

        let pending = self.hold_hostname(&hostname)?;
        let token = self.tokens.reserve(&req.token, now)?;
        let this = self.clone();
        // The enrollment runs to its end even if the caller leaves; the hostname stays
        // held until then.
        let result = detach(async move {
            let _pending = pending;
            let outcome = this
                .enroll_reserved(&hostname, key, &req.csr_der, &token)
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

    fn hold_hostname(self: &Arc<Self>, hostname: &str) -> Result<PendingGuard, SpokeError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.insert(hostname.to_string()) {
            return Err(SpokeError::EnrollmentInProgress(hostname.to_string()));
        }
        Ok(PendingGuard {
            enroller: self.clone(),
            hostname: hostname.to_string(),
        })
    }

    /// Issues the certificate, writes the envoy (and the revocation of the envoy it
    /// replaces) in one durable transaction, then publishes it in the FleetIndex.
    async fn enroll_reserved(
        &self,
        hostname: &str,
        key: ed25519_dalek::VerifyingKey,
        csr_der: &[u8],
        token: &Reservation,
    ) -> Result<(EnvoyId, Vec<u8>), SpokeError> {
        let id = loop {
            let candidate = EnvoyId::random();
            if self.fleet.get(candidate).is_none() {
                break candidate;
            }
        };
        let cert = self.ca.issue_envoy(id, key.as_bytes(), csr_der)?;
        let enrolled_at_ms = now_ms();
        let replaced = self.fleet.by_hostname(hostname);
        let mut rows = vec![StoredEnvoy {
            id: id.get(),
            hostname: hostname.to_string(),
            public_key: key.as_bytes().to_vec(),
            enrolled_at_ms,
            token_name: token.name.clone(),
            ..Default::default()
        }];
        if let Some(old) = &replaced {
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
                token: Some(token.hash),
            })
            .await?;
        if let Some(old) = &replaced {
            self.fleet.update(old, |st| st.revoked = true);
            warn!(%hostname, old = %old.id, new = %id, token = %token.name, "hostname re-enrolled with a new key; old envoy revoked");
        }
        self.fleet.insert(
            EnvoyRecord::new(id, key, hostname, enrolled_at_ms),
            EnvoyState::new(enrolled_at_ms),
        );
        info!(envoy = %id, %hostname, token = %token.name, "envoy enrolled");
        Ok((id, cert))
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

pub struct EnrollmentService(pub Arc<Enroller>);

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let result = self.0.enroll(request.into_inner()).await;
        count_call("vigo_enrollments_total", result.as_ref().map(|_| ()));
        if let Err(e) = &result {
            info!(error = %e, "enrollment refused");
        }
        result.map(Response::new).map_err(Status::from)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_hostname;

    #[test]
    fn hostnames_are_normalized_and_checked() {
        assert_eq!(
            normalize_hostname(" Web-01.Example.COM ").unwrap(),
            "web-01.example.com"
        );
        for bad in ["", "a..b", ".a", "a b", "a/b", &"x".repeat(64)] {
            assert!(normalize_hostname(bad).is_err(), "{bad:?} accepted");
        }
    }
}
