//! Signed bundles: the server side signs a manifest once per hostcrate; the envoy side
//! checks the signature and every module body against the hashes the manifest lists,
//! then that the bundle is meant for it (its hostname, first match) and is not older
//! than the one it holds ([`check_applicable`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use vigo_proto::v1 as pb;

use super::compile::{CompiledHostcrate, CompiledModule, CompiledPolicy};
use crate::signing::{self, Domain};
use crate::traits::sha256;

/// What every manifest of one policy is stamped with besides its hostcrate.
#[derive(Clone, Debug)]
pub struct Seal {
    pub policy_version: [u8; 32],
    /// Grows with every policy served (DESIGN §9).
    pub generation: u64,
    /// The key that signs.
    pub signing_key: VerifyingKey,
    /// The keys envoys trust from this bundle on (`signing_key` among them); empty:
    /// envoys keep the keys they hold.
    pub trusted: Vec<[u8; 32]>,
}

impl Seal {
    /// The seal of a server that signs with `key` and leaves its envoys' key sets alone
    /// (a standalone spoke).
    pub fn own(policy_version: [u8; 32], generation: u64, key: &SigningKey) -> Self {
        Seal {
            policy_version,
            generation,
            signing_key: key.verifying_key(),
            trusted: Vec::new(),
        }
    }

    /// The manifest of `hostcrate` under this seal, encoded: the exact bytes signed.
    /// Deterministic, so a hub and a spoke that compiled the same tree build the same.
    pub fn manifest(&self, hostcrate: &CompiledHostcrate) -> Bytes {
        let manifest = pb::BundleManifest {
            hostcrate: hostcrate.name.clone(),
            policy_version: Bytes::copy_from_slice(&self.policy_version),
            modules: hostcrate
                .modules
                .iter()
                .zip(&hostcrate.conditions)
                .map(|(m, when)| pb::ModuleRef {
                    name: m.name.clone(),
                    sha256: Bytes::copy_from_slice(&m.sha256),
                    when: when.clone(),
                })
                .collect(),
            variables: hostcrate.variables.clone(),
            signing_key: Bytes::copy_from_slice(self.signing_key.as_bytes()),
            generation: self.generation,
            hostname_patterns: hostcrate.patterns.clone(),
            earlier_patterns: hostcrate.earlier_patterns.clone(),
            trusted_keys: self
                .trusted
                .iter()
                .map(|k| Bytes::copy_from_slice(k))
                .collect(),
        };
        Bytes::from(manifest.encode_to_vec())
    }

    /// Signs every bundle of `policy` (in hostcrate order, the fallback last): what a
    /// hub ships with a config version.
    pub fn sign_all(&self, policy: &CompiledPolicy, key: &SigningKey) -> Vec<Bytes> {
        policy
            .hostcrates
            .iter()
            .map(|h| {
                let signature = signing::sign(key, Domain::Bundle, &self.manifest(h));
                Bytes::copy_from_slice(&signature.to_bytes())
            })
            .collect()
    }
}

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
    /// Signs `hostcrate`'s manifest under `seal` with `key` (the seal's signing key).
    pub fn sign(hostcrate: &CompiledHostcrate, seal: &Seal, key: &SigningKey) -> Self {
        debug_assert_eq!(key.verifying_key(), seal.signing_key);
        let manifest = seal.manifest(hostcrate);
        let signature = signing::sign(key, Domain::Bundle, &manifest);
        Self::assemble(hostcrate, manifest, signature.to_bytes().to_vec().into())
    }

    /// `hostcrate`'s bundle under `seal` with a signature made elsewhere (by the hub),
    /// which must verify over the manifest built here: a server holding no signing key
    /// serves only what the key's holder signed.
    pub fn sealed(
        hostcrate: &CompiledHostcrate,
        seal: &Seal,
        signature: &[u8],
    ) -> Result<Self, BundleError> {
        let manifest = seal.manifest(hostcrate);
        let parsed = signing::parse_signature(signature).map_err(|_| BundleError::BadSignature)?;
        signing::verify(&seal.signing_key, Domain::Bundle, &manifest, &parsed)
            .map_err(|_| BundleError::BadSignature)?;
        Ok(Self::assemble(
            hostcrate,
            manifest,
            Bytes::copy_from_slice(signature),
        ))
    }

    fn assemble(hostcrate: &CompiledHostcrate, manifest: Bytes, signature: Bytes) -> Self {
        SignedBundle {
            hostcrate: hostcrate.name.clone(),
            fingerprint: sha256(&manifest),
            manifest,
            signature,
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
    #[error("the bundle's trusted key set is invalid: {0}")]
    KeySet(String),
    #[error("module {0} does not match the hash in the signed manifest")]
    ModuleHash(String),
    #[error("module {0} is neither in the delivery nor held locally")]
    MissingModule(String),
    #[error("module {0} does not decode: {1}")]
    Module(String, String),
    #[error("bundle generation {got} is older than the one in force ({held}): refusing a replay")]
    Older { held: u64, got: u64 },
    #[error("the bundle of hostcrate {hostcrate:?} is not meant for hostname {hostname:?}")]
    NotForThisHost { hostcrate: String, hostname: String },
}

/// Whether a verified bundle may replace the one an envoy holds: the envoy's hostname
/// matches the hostcrate's patterns and none of an earlier hostcrate's (the fallback
/// has no patterns of its own), and the generation is not older than `held`.
pub fn check_applicable(
    manifest: &pb::BundleManifest,
    hostname: &str,
    held: Option<u64>,
) -> Result<(), BundleError> {
    if let Some(held) = held
        && manifest.generation < held
    {
        return Err(BundleError::Older {
            held,
            got: manifest.generation,
        });
    }
    let matches = |patterns: &[String]| -> Option<bool> {
        let mut set = globset::GlobSetBuilder::new();
        for p in patterns {
            set.add(super::compile::hostname_glob(p).ok()?);
        }
        Some(set.build().ok()?.is_match(hostname))
    };
    let own = manifest.hostcrate.is_empty() || matches(&manifest.hostname_patterns) == Some(true);
    // Patterns that do not build count as matching: refuse rather than guess.
    let earlier =
        !manifest.earlier_patterns.is_empty() && matches(&manifest.earlier_patterns) != Some(false);
    if own && !earlier {
        Ok(())
    } else {
        Err(BundleError::NotForThisHost {
            hostcrate: manifest.hostcrate.clone(),
            hostname: hostname.to_string(),
        })
    }
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
    /// The keys this bundle tells its envoy to trust from now on (`None`: keep the
    /// keys held), checked when the bundle verified.
    pub trusted_keys: Option<Vec<VerifyingKey>>,
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
    let trusted = trusted_keys(&manifest)?;
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
        trusted_keys: trusted,
    })
}

/// A manifest's trusted key set: every entry an Ed25519 public key, at most
/// [`MAX_TRUSTED_KEYS`], and the signing key among them (else an envoy adopting the set
/// would no longer trust the bundle it holds).
fn trusted_keys(manifest: &pb::BundleManifest) -> Result<Option<Vec<VerifyingKey>>, BundleError> {
    if manifest.trusted_keys.is_empty() {
        return Ok(None);
    }
    if manifest.trusted_keys.len() > MAX_TRUSTED_KEYS {
        return Err(BundleError::KeySet(format!(
            "{} keys; at most {MAX_TRUSTED_KEYS}",
            manifest.trusted_keys.len()
        )));
    }
    if !manifest.trusted_keys.contains(&manifest.signing_key) {
        return Err(BundleError::KeySet(
            "it does not include the key that signed the bundle".into(),
        ));
    }
    manifest
        .trusted_keys
        .iter()
        .map(|k| signing::parse_public_key(k).map_err(|e| BundleError::KeySet(e.to_string())))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// More trusted bundle keys than a rotation ever needs are refused.
pub const MAX_TRUSTED_KEYS: usize = 8;
