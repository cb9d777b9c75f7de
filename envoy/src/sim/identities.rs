//! The simulator's enrolled identities, kept in a file so later runs skip enrollment.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vigo_common::{EnvoyId, fsutil, signing};

use crate::client::Identity;

#[derive(Serialize, Deserialize, Default)]
pub struct IdentityFile {
    /// SHA-256 of the CA certificate: identities of another cluster are not reused.
    pub ca_sha256: String,
    pub spoke_address: String,
    /// Hex Ed25519 public keys that sign bundles.
    pub bundle_keys: Vec<String>,
    pub envoys: Vec<StoredIdentity>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct StoredIdentity {
    pub envoy_id: String,
    pub hostname: String,
    /// Hex Ed25519 secret key.
    pub key: String,
    pub cert_pem: String,
    /// The TLS key (PKCS#8 PEM) its certificate is issued on; empty: the identity key
    /// (identities stored by an earlier release).
    #[serde(default)]
    pub tls_key: String,
    /// The spoke this envoy checks in at (envoys enrolled through a hub differ).
    #[serde(default)]
    pub spoke_address: String,
}

pub fn ca_fingerprint(ca_pem: &str) -> String {
    hex::encode(vigo_common::traits::sha256(ca_pem.as_bytes()))
}

impl IdentityFile {
    /// Reads the file; a missing file or one for another CA is an empty set.
    pub fn load(path: &Path, ca_pem: &str) -> Self {
        let Ok(bytes) = std::fs::read(path) else {
            return Self::default();
        };
        match serde_json::from_slice::<IdentityFile>(&bytes) {
            Ok(f) if f.ca_sha256 == ca_fingerprint(ca_pem) => f,
            _ => Self::default(),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), vigo_common::Error> {
        let bytes = serde_json::to_vec(self).map_err(|e| vigo_common::Error::File {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        fsutil::write_atomic(path, &bytes, 0o600)
    }

    pub fn push(&mut self, id: &Identity) {
        self.spoke_address = id.spoke_address.clone();
        self.bundle_keys = id
            .bundle_keys
            .iter()
            .map(|k| hex::encode(k.as_bytes()))
            .collect();
        self.envoys.push(StoredIdentity {
            envoy_id: id.envoy_id.to_string(),
            hostname: id.hostname.clone(),
            key: hex::encode(id.key.to_bytes()),
            cert_pem: id.cert_pem.clone(),
            tls_key: id.tls_key_pem.clone(),
            spoke_address: id.spoke_address.clone(),
        });
    }

    /// The stored identities as usable ones; unreadable entries are skipped.
    pub fn identities(&self, ca_pem: &str) -> Vec<Identity> {
        let bundle_keys: Vec<_> = self
            .bundle_keys
            .iter()
            .filter_map(|k| hex::decode(k).ok())
            .filter_map(|k| signing::parse_public_key(&k).ok())
            .collect();
        self.envoys
            .iter()
            .filter_map(|e| {
                let mut secret = [0u8; 32];
                hex::decode_to_slice(&e.key, &mut secret).ok()?;
                let key = ed25519_dalek::SigningKey::from_bytes(&secret);
                Some(Identity {
                    envoy_id: e.envoy_id.parse::<EnvoyId>().ok()?,
                    hostname: e.hostname.clone(),
                    tls_key_pem: if e.tls_key.is_empty() {
                        signing::key_to_pkcs8_pem(&key)
                    } else {
                        e.tls_key.clone()
                    },
                    key,
                    cert_pem: e.cert_pem.clone(),
                    ca_pem: ca_pem.to_string(),
                    spoke_address: if e.spoke_address.is_empty() {
                        self.spoke_address.clone()
                    } else {
                        e.spoke_address.clone()
                    },
                    bundle_keys: bundle_keys.clone(),
                })
            })
            .collect()
    }
}
