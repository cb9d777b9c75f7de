//! The bundle-signing keys, in the replicated state: hub nodes sign every bundle of a
//! config version with the key in force (spokes hold no signing key, DESIGN §9), and
//! envoys trust the set listed here, which each bundle carries.
//!
//! Rotation is three changes, each re-signing the current version at a new generation
//! so every envoy fetches a bundle and learns the set: `Add` (a new key, trusted, not
//! signing), `Use` (bundles are signed with it from now on), `Retire` (the old key is
//! trusted no more). A config version's seal records the key and set it was signed
//! under; the state machine refuses a seal that is not the one in force, so a publish
//! racing a key change cannot commit stale signatures.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::{ClusterState, Rejection};

/// A bundle-signing key's private half. Kept only in the hub's replicated state (its
/// log and snapshots on hub nodes, never sent to spokes or in any API answer).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleKey {
    pub public: [u8; 32],
    secret: Secret,
    /// The one key bundles are signed with; the others are trusted only.
    pub signing: bool,
    pub added_ms: u64,
    pub added_by: String,
}

/// At most this many keys are trusted at once (the envoy's bound is
/// `vigo_common::policy::bundle::MAX_TRUSTED_KEYS`).
pub const MAX_KEYS: usize = 4;

/// Every trusted key, in the order added; exactly one signs once the cluster is founded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleKeys {
    keys: Vec<BundleKey>,
}

/// A change of the key set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyChange {
    Add {
        secret: Secret,
        at_ms: u64,
        by: String,
    },
    Use([u8; 32]),
    Retire([u8; 32]),
}

/// What a config version's bundles were signed under, and the signatures (in compiled
/// hostcrate order, the fallback last).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSeal {
    pub key: [u8; 32],
    pub trusted: Vec<[u8; 32]>,
    pub signatures: Vec<Vec<u8>>,
}

/// A re-signed current version, committed with the key change that required it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resign {
    pub version: String,
    pub generation: u64,
    pub seal: ConfigSeal,
}

impl BundleKeys {
    /// The key set a cluster is founded with.
    pub fn founding(secret: [u8; 32], at_ms: u64) -> Self {
        let mut keys = Self::default();
        keys.push(Secret(secret), at_ms, "founding".into(), true);
        keys
    }

    fn push(&mut self, secret: Secret, at_ms: u64, by: String, signing: bool) {
        let public = SigningKey::from_bytes(&secret.0).verifying_key().to_bytes();
        self.keys.push(BundleKey {
            public,
            secret,
            signing,
            added_ms: at_ms,
            added_by: by,
        });
    }

    pub fn keys(&self) -> &[BundleKey] {
        &self.keys
    }

    /// The key bundles are signed with.
    pub fn signer(&self) -> Option<SigningKey> {
        self.keys
            .iter()
            .find(|k| k.signing)
            .map(|k| SigningKey::from_bytes(&k.secret.0))
    }

    /// The public halves envoys trust.
    pub fn trusted(&self) -> Vec<[u8; 32]> {
        self.keys.iter().map(|k| k.public).collect()
    }

    /// Whether `seal` was made under this key set: signed by the signing key, carrying
    /// the trusted set as it is now. Refused otherwise, so a publish racing a key change
    /// cannot commit stale signatures.
    pub fn check(&self, seal: &ConfigSeal) -> Result<(), Rejection> {
        let signer = self.keys.iter().find(|k| k.signing).map(|k| k.public);
        if signer == Some(seal.key) && seal.trusted == self.trusted() {
            Ok(())
        } else {
            Err(Rejection::StaleSeal)
        }
    }

    /// The key named by its public half in hex or a prefix of at least 8 digits.
    pub fn find(&self, named: &str) -> Result<[u8; 32], Rejection> {
        let named = named.to_ascii_lowercase();
        let found: Vec<[u8; 32]> = self
            .keys
            .iter()
            .map(|k| k.public)
            .filter(|p| named.len() >= 8 && hex::encode(p).starts_with(&named))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            _ => Err(Rejection::NoSuchBundleKey(named)),
        }
    }

    /// Applies a change, or says why not and changes nothing.
    pub fn apply(&mut self, change: &KeyChange) -> Result<(), Rejection> {
        let position = |public: &[u8; 32]| {
            self.keys
                .iter()
                .position(|k| &k.public == public)
                .ok_or_else(|| Rejection::NoSuchBundleKey(hex::encode(public)))
        };
        match change {
            KeyChange::Add { secret, at_ms, by } => {
                if self.keys.len() >= MAX_KEYS {
                    return Err(Rejection::TooManyBundleKeys(MAX_KEYS));
                }
                let public = SigningKey::from_bytes(&secret.0).verifying_key().to_bytes();
                if self.keys.iter().any(|k| k.public == public) {
                    return Err(Rejection::BundleKeyExists(hex::encode(public)));
                }
                self.push(secret.clone(), *at_ms, by.clone(), false);
            }
            KeyChange::Use(public) => {
                let at = position(public)?;
                for (i, k) in self.keys.iter_mut().enumerate() {
                    k.signing = i == at;
                }
            }
            KeyChange::Retire(public) => {
                let at = position(public)?;
                if self.keys[at].signing {
                    return Err(Rejection::BundleKeySigning(hex::encode(public)));
                }
                self.keys.remove(at);
            }
        }
        Ok(())
    }
}

impl ClusterState {
    /// A key change and the re-signed current version, both or neither.
    pub(super) fn change_bundle_keys(
        &mut self,
        change: KeyChange,
        resign: Option<Resign>,
    ) -> Result<(), Rejection> {
        let mut keys = self.bundle_keys.clone();
        keys.apply(&change)?;
        match (self.current_config.is_empty(), resign) {
            (true, None) => {}
            (false, Some(r)) if r.version == self.current_config && keys.check(&r.seal).is_ok() => {
                let entry = self
                    .configs
                    .iter_mut()
                    .find(|c| c.version == r.version)
                    .ok_or_else(|| Rejection::NoConfigVersion(r.version.clone()))?;
                entry.generation = r.generation;
                entry.seal = r.seal;
            }
            _ => return Err(Rejection::StaleSeal),
        }
        self.bundle_keys = keys;
        Ok(())
    }
}
