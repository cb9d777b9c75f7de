//! Signed bundles: the server side signs a manifest once per hostcrate; the envoy side
//! checks the signature and every module body against the hashes the manifest lists.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use vigo_proto::v1 as pb;

use super::compile::{CompiledHostcrate, CompiledModule};
use crate::signing::{self, Domain};
use crate::traits::sha256;

/// One hostcrate's bundle, signed and ready to send.
#[derive(Debug)]
pub struct SignedBundle {
    pub hostcrate: String,
    /// SHA-256 of `manifest`: what envoys report holding.
    pub fingerprint: [u8; 32],
    pub manifest: Bytes,
    pub signature: Bytes,
    pub modules: Vec<Arc<CompiledModule>>,
}

impl SignedBundle {
    pub fn sign(
        hostcrate: &CompiledHostcrate,
        policy_version: &[u8; 32],
        key: &SigningKey,
    ) -> Self {
        let manifest = pb::BundleManifest {
            hostcrate: hostcrate.name.clone(),
            policy_version: Bytes::copy_from_slice(policy_version),
            modules: hostcrate
                .modules
                .iter()
                .map(|m| pb::ModuleRef {
                    name: m.name.clone(),
                    sha256: Bytes::copy_from_slice(&m.sha256),
                })
                .collect(),
            variables: hostcrate.variables.clone(),
            signing_key: Bytes::copy_from_slice(key.verifying_key().as_bytes()),
        };
        let manifest = Bytes::from(manifest.encode_to_vec());
        let signature = signing::sign(key, Domain::Bundle, &manifest);
        SignedBundle {
            hostcrate: hostcrate.name.clone(),
            fingerprint: sha256(&manifest),
            manifest,
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
            modules: hostcrate.modules.clone(),
        }
    }

    /// The delivery for an envoy that already holds the modules for which `held`
    /// answers true: those go as stubs (listed in the manifest, body omitted).
    pub fn delivery(&self, held: impl Fn(&[u8; 32]) -> bool) -> pb::BundleDelivery {
        pb::BundleDelivery {
            manifest: self.manifest.clone(),
            signature: self.signature.clone(),
            modules: self
                .modules
                .iter()
                .filter(|m| !held(&m.sha256))
                .map(|m| pb::ModuleBody {
                    name: m.name.clone(),
                    body: m.body.clone(),
                })
                .collect(),
        }
    }
}

/// Why an envoy refuses a bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("bundle manifest does not decode: {0}")]
    Manifest(String),
    #[error("bundle is signed by a key this envoy does not trust")]
    UntrustedKey,
    #[error("bundle signature is invalid")]
    BadSignature,
    #[error("module {0} does not match the hash in the signed manifest")]
    ModuleHash(String),
    #[error("module {0} is neither in the delivery nor held locally")]
    MissingModule(String),
    #[error("module {0} does not decode: {1}")]
    Module(String, String),
}

/// A bundle whose signature and module hashes were checked.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub fingerprint: [u8; 32],
    pub manifest: pb::BundleManifest,
    /// The raw signed pieces, for an envoy to store and re-verify later.
    pub manifest_bytes: Bytes,
    pub signature: Bytes,
    /// Module bodies in manifest order, with their hashes.
    pub modules: Vec<([u8; 32], Bytes)>,
}

impl VerifiedBundle {
    /// The decoded modules, in manifest order.
    pub fn decode_modules(&self) -> Result<Vec<pb::Module>, BundleError> {
        self.modules
            .iter()
            .zip(&self.manifest.modules)
            .map(|((_, body), r)| {
                pb::Module::decode(body.as_ref())
                    .map_err(|e| BundleError::Module(r.name.clone(), e.to_string()))
            })
            .collect()
    }
}

/// Checks a delivery: the manifest signature by a trusted key, then every module body
/// (from the delivery, else from `held`) against the manifest's hashes.
pub fn verify_delivery(
    delivery: &pb::BundleDelivery,
    trusted: &[VerifyingKey],
    held: impl Fn(&[u8; 32]) -> Option<Bytes>,
) -> Result<VerifiedBundle, BundleError> {
    let manifest = pb::BundleManifest::decode(delivery.manifest.as_ref())
        .map_err(|e| BundleError::Manifest(e.to_string()))?;
    let key = trusted
        .iter()
        .find(|k| k.as_bytes().as_slice() == manifest.signing_key.as_ref())
        .ok_or(BundleError::UntrustedKey)?;
    let signature =
        signing::parse_signature(&delivery.signature).map_err(|_| BundleError::BadSignature)?;
    signing::verify(key, Domain::Bundle, &delivery.manifest, &signature)
        .map_err(|_| BundleError::BadSignature)?;
    let sent: HashMap<&str, &Bytes> = delivery
        .modules
        .iter()
        .map(|m| (m.name.as_str(), &m.body))
        .collect();
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for r in &manifest.modules {
        let want: [u8; 32] = r.sha256.as_ref().try_into().map_err(|_| {
            BundleError::Manifest(format!("module {} hash is not 32 bytes", r.name))
        })?;
        let body = match sent.get(r.name.as_str()) {
            Some(body) => (*body).clone(),
            None => held(&want).ok_or_else(|| BundleError::MissingModule(r.name.clone()))?,
        };
        if sha256(&body) != want {
            return Err(BundleError::ModuleHash(r.name.clone()));
        }
        modules.push((want, body));
    }
    Ok(VerifiedBundle {
        fingerprint: sha256(&delivery.manifest),
        manifest,
        manifest_bytes: delivery.manifest.clone(),
        signature: delivery.signature.clone(),
        modules,
    })
}
