//! Revocation through the admin API: an envoy (operator) or a hub, spoke or admin
//! certificate (admin) becomes an entry of the replicated state, then is pushed to the
//! spokes (`crate::revocations`). Nothing is revoked on one spoke alone, so a hand-off
//! or a restored backup cannot bring a revoked peer back.

use vigo_common::time::now_ms;
use vigo_proto::admin::v1 as api;

use super::{AdminApi, Caller, parse_envoy_id};
use crate::error::HubError;
use crate::state::{ApiRole, Command, Revocation, Revoked};

const DEFAULT_PAGE: u32 = 1000;

fn info(r: &Revocation) -> api::RevocationInfo {
    let (envoy_id, certificate_serial) = match &r.target {
        Revoked::Envoy(id) => (format!("{id:016x}"), String::new()),
        Revoked::Certificate(serial) => (String::new(), serial.clone()),
    };
    api::RevocationInfo {
        seq: r.seq,
        envoy_id,
        certificate_serial,
        at_ms: r.at_ms,
        reason: r.reason.clone(),
        by: r.by.clone(),
    }
}

fn reason(given: &str) -> Result<String, HubError> {
    if given.len() > 512 {
        return Err(HubError::malformed("reason", "is longer than 512 bytes"));
    }
    Ok(given.to_string())
}

impl AdminApi {
    /// Revokes an envoy cluster-wide; its spoke refuses it within seconds.
    pub async fn revoke_envoy(
        &self,
        caller: &Caller,
        req: api::RevokeEnvoyRequest,
    ) -> Result<api::RevokeEnvoyResult, HubError> {
        caller.require(ApiRole::Operator, "RevokeEnvoy")?;
        let id = parse_envoy_id("envoy_id", &req.envoy_id)?.get();
        let why = reason(&req.reason)?;
        self.on_leader(
            caller,
            req,
            |req| async move {
                let already = self.node.read(|s| s.is_envoy_revoked(id));
                self.revoke(Revoked::Envoy(id), why, caller).await?;
                tracing::warn!(envoy = %req.envoy_id, by = %caller.name, reason = %req.reason, "envoy revoked");
                Ok(api::RevokeEnvoyResult {
                    envoy_id: format!("{id:016x}"),
                    revoked_now: !already,
                })
            },
            |mut c, r| async move { c.revoke_envoy(r).await },
        )
        .await
    }

    /// Revokes a hub, spoke or admin certificate by serial: every hub and spoke
    /// refuses its calls from then on, on connections already open too.
    pub async fn revoke_certificate(
        &self,
        caller: &Caller,
        req: api::RevokeCertificateRequest,
    ) -> Result<api::RevocationInfo, HubError> {
        caller.require(ApiRole::Admin, "RevokeCertificate")?;
        let serial = vigo_common::pki::serial_hex(&req.serial)?;
        let why = reason(&req.reason)?;
        self.on_leader(
            caller,
            req,
            |_| async move {
                let target = Revoked::Certificate(serial.clone());
                self.revoke(target.clone(), why, caller).await?;
                tracing::warn!(%serial, by = %caller.name, "certificate revoked");
                self.node
                    .read(|s| s.revocations.find(&target).map(info))
                    .ok_or_else(|| HubError::Internal("a committed revocation is missing".into()))
            },
            |mut c, r| async move { c.revoke_certificate(r).await },
        )
        .await
    }

    async fn revoke(
        &self,
        target: Revoked,
        reason: String,
        caller: &Caller,
    ) -> Result<(), HubError> {
        let revoke = Command::Revoke {
            target,
            at_ms: now_ms(),
            reason,
            by: caller.name.clone(),
        };
        self.node
            .propose_ok(revoke.once(&caller.tag(), "revoke"))
            .await?;
        crate::revocations::push(self.node.clone());
        Ok(())
    }

    pub async fn list_revocations(
        &self,
        caller: &Caller,
        req: api::ListRevocationsRequest,
    ) -> Result<api::RevocationPage, HubError> {
        caller.require(ApiRole::Viewer, "ListRevocations")?;
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n => n.min(DEFAULT_PAGE),
        };
        Ok(self.node.read(|s| api::RevocationPage {
            revocations: s
                .revocations
                .since(req.after, limit as usize)
                .iter()
                .map(info)
                .collect(),
            last_seq: s.revocations.seq(),
        }))
    }
}
