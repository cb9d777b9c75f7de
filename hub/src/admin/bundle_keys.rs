//! Bundle-signing key rotation through the admin API (admin role; listing: viewer).
//! Each change re-signs the current config version under the new key set on the
//! leader (`crate::seal`), so every envoy's next bundle carries the set it trusts.
//!
//! The REST face: `GET /api/v1/bundle-keys`, `POST /api/v1/bundle-keys` (add),
//! `POST /api/v1/bundle-keys/{key}/use`, `DELETE /api/v1/bundle-keys/{key}` (retire).

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use tracing::warn;
use vigo_common::time::now_ms;
use vigo_proto::admin::v1 as api;

use super::rest::{Api, ApiError, answer};
use super::{AdminApi, Caller};
use crate::error::HubError;
use crate::state::{ApiRole, ClusterState, KeyChange, Secret};

fn list(s: &ClusterState) -> api::BundleKeyList {
    let current = s.config("");
    api::BundleKeyList {
        keys: s
            .bundle_keys
            .keys()
            .iter()
            .map(|k| api::BundleKeyInfo {
                key: hex::encode(k.public),
                state: if k.signing { "signing" } else { "trusted" }.into(),
                added_ms: k.added_ms,
                added_by: k.added_by.clone(),
            })
            .collect(),
        config_version: s.current_config.clone(),
        generation: current.map_or(0, |c| c.generation),
    }
}

impl AdminApi {
    pub async fn list_bundle_keys(
        &self,
        caller: &Caller,
        _req: api::ListBundleKeysRequest,
    ) -> Result<api::BundleKeyList, HubError> {
        caller.require(ApiRole::Viewer, "ListBundleKeys")?;
        Ok(self.node.read(list))
    }

    /// A new key, trusted by envoys from their next bundle on; nothing signs with it
    /// until `UseBundleKey`.
    pub async fn add_bundle_key(
        &self,
        caller: &Caller,
        req: api::AddBundleKeyRequest,
    ) -> Result<api::BundleKeyList, HubError> {
        caller.require(ApiRole::Admin, "AddBundleKey")?;
        self.change_bundle_keys(
            caller,
            req,
            "added",
            |_| {
                Ok(KeyChange::Add {
                    secret: Secret(vigo_common::signing::generate_key().to_bytes()),
                    at_ms: now_ms(),
                    by: caller.name.clone(),
                })
            },
            |mut c, r| async move { c.add_bundle_key(r).await },
        )
        .await
    }

    /// Bundles are signed with this key from now on.
    pub async fn use_bundle_key(
        &self,
        caller: &Caller,
        req: api::BundleKeyRef,
    ) -> Result<api::BundleKeyList, HubError> {
        caller.require(ApiRole::Admin, "UseBundleKey")?;
        self.change_bundle_keys(
            caller,
            req,
            "in use",
            |r: &api::BundleKeyRef| Ok(KeyChange::Use(self.named_key(r)?)),
            |mut c, r| async move { c.use_bundle_key(r).await },
        )
        .await
    }

    /// Envoys stop trusting this key with their next bundle. The signing key cannot be
    /// retired.
    pub async fn retire_bundle_key(
        &self,
        caller: &Caller,
        req: api::BundleKeyRef,
    ) -> Result<api::BundleKeyList, HubError> {
        caller.require(ApiRole::Admin, "RetireBundleKey")?;
        self.change_bundle_keys(
            caller,
            req,
            "retired",
            |r: &api::BundleKeyRef| Ok(KeyChange::Retire(self.named_key(r)?)),
            |mut c, r| async move { c.retire_bundle_key(r).await },
        )
        .await
    }

    /// The key a request names (its public half, or a prefix of 8 hex digits or more).
    fn named_key(&self, r: &api::BundleKeyRef) -> Result<[u8; 32], HubError> {
        Ok(self.node.read(|s| s.bundle_keys.find(&r.key))?)
    }

    /// Runs a key change on the leader (forwarding it there), and answers the key set
    /// after it.
    async fn change_bundle_keys<R, F, Fut>(
        &self,
        caller: &Caller,
        req: R,
        done: &'static str,
        change: impl FnOnce(&R) -> Result<KeyChange, HubError>,
        forward: F,
    ) -> Result<api::BundleKeyList, HubError>
    where
        R: Clone,
        F: Fn(super::AdminClient, tonic::Request<R>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<api::BundleKeyList>, tonic::Status>>,
    {
        self.on_leader(
            caller,
            req,
            |req| async move {
                let change = change(&req)?;
                let key = match &change {
                    KeyChange::Add { secret, .. } => hex::encode(
                        ed25519_dalek::SigningKey::from_bytes(&secret.0)
                            .verifying_key()
                            .as_bytes(),
                    ),
                    KeyChange::Use(k) | KeyChange::Retire(k) => hex::encode(k),
                };
                crate::seal::change_keys(&self.node, &caller.tag(), change).await?;
                warn!(%key, by = %caller.name, "bundle-signing key {done}; the current config is re-signed");
                Ok(self.node.read(list))
            },
            forward,
        )
        .await
    }
}

#[utoipa::path(get, path = "/api/v1/bundle-keys", tag = "bundle-keys",
    responses((status = 200, body = api::BundleKeyList), (status = 401, body = ApiError)))]
pub async fn list_bundle_keys(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /bundle-keys",
        c,
        Ok(api::ListBundleKeysRequest {}),
        |a, c, r| async move { a.list_bundle_keys(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/bundle-keys", tag = "bundle-keys",
    responses((status = 200, body = api::BundleKeyList), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 409, body = ApiError), (status = 412, body = ApiError), (status = 503, body = ApiError)))]
pub async fn add_bundle_key(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "POST /bundle-keys",
        c,
        Ok(api::AddBundleKeyRequest {}),
        |a, c, r| async move { a.add_bundle_key(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/bundle-keys/{key}/use", tag = "bundle-keys", params(("key" = String, Path)),
    responses((status = 200, body = api::BundleKeyList), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub async fn use_bundle_key(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(key): Path<String>,
) -> Response {
    answer(
        &a,
        "POST /bundle-keys/{key}/use",
        c,
        Ok(api::BundleKeyRef { key }),
        |a, c, r| async move { a.use_bundle_key(&c, r).await },
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/bundle-keys/{key}", tag = "bundle-keys", params(("key" = String, Path)),
    responses((status = 200, body = api::BundleKeyList), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 412, body = ApiError), (status = 503, body = ApiError)))]
pub async fn retire_bundle_key(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(key): Path<String>,
) -> Response {
    answer(
        &a,
        "DELETE /bundle-keys/{key}",
        c,
        Ok(api::BundleKeyRef { key }),
        |a, c, r| async move { a.retire_bundle_key(&c, r).await },
    )
    .await
}
