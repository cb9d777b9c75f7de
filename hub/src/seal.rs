//! The hub signs bundles (DESIGN §9): every bundle of a config version is signed on the
//! leader when the version becomes current (publish, rollback) and again when the
//! bundle-signing keys change, at a new generation. Spokes receive the signatures with
//! the version and serve them; they hold no signing key.
//!
//! Key rotation is `add` (envoys learn the new key with their next bundle), `use` (the
//! new key signs), `retire` (the old key is dropped from every envoy's trusted set).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use vigo_common::policy::CompiledPolicy;
use vigo_common::policy::bundle::Seal;
use vigo_common::time::now_ms;

use crate::error::HubError;
use crate::node::Node;
use crate::state::{BundleKeys, Command, ConfigSeal, KeyChange, RequestTag, Resign};

/// Signs every bundle of `compiled` at `generation` under `keys`.
pub fn seal(
    compiled: &CompiledPolicy,
    keys: &BundleKeys,
    generation: u64,
) -> Result<ConfigSeal, HubError> {
    let signer = keys
        .signer()
        .ok_or_else(|| HubError::Internal("the cluster has no bundle-signing key".into()))?;
    let seal = Seal {
        policy_version: compiled.version,
        generation,
        signing_key: signer.verifying_key(),
        trusted: keys.trusted(),
    };
    Ok(ConfigSeal {
        key: signer.verifying_key().to_bytes(),
        trusted: seal.trusted.clone(),
        signatures: seal
            .sign_all(compiled, &signer)
            .into_iter()
            .map(|s| s.to_vec())
            .collect(),
    })
}

/// Compiles a tree as every spoke will, off the async workers, and seals it.
pub async fn compile_and_seal(
    files: BTreeMap<String, String>,
    keys: BundleKeys,
    generation: u64,
) -> Result<(CompiledPolicy, ConfigSeal), HubError> {
    tokio::task::spawn_blocking(move || {
        let tree: BTreeMap<PathBuf, String> = files
            .into_iter()
            .map(|(k, v)| (PathBuf::from(k), v))
            .collect();
        let compiled = vigo_common::policy::validate(&tree).map_err(vigo_common::Error::Policy)?;
        let sealed = seal(&compiled, &keys, generation)?;
        Ok((compiled, sealed))
    })
    .await
    .map_err(|e| HubError::Internal(format!("policy compilation stopped: {e}")))?
}

/// Changes the key set on the leader: the current version is re-signed under the new
/// set at a new generation and committed with the change, then pushed to the spokes.
pub async fn change_keys(
    node: &Arc<Node>,
    tag: &RequestTag,
    change: KeyChange,
) -> Result<(), HubError> {
    let (mut keys, current, generation) = node.read(|s| {
        (
            s.bundle_keys.clone(),
            s.config("").cloned(),
            s.next_config_generation(now_ms()),
        )
    });
    // A change that cannot apply goes to the state machine unsigned: it refuses it
    // with the reason, or answers a retried request with its first outcome.
    let resign = match (keys.apply(&change), current) {
        (Ok(()), Some(entry)) => {
            let (_, seal) = compile_and_seal(entry.files, keys, generation).await?;
            Some(Resign {
                version: entry.version,
                generation,
                seal,
            })
        }
        _ => None,
    };
    node.propose_ok(Command::ChangeBundleKeys { change, resign }.once(tag, "bundle-keys"))
        .await?;
    if let Some(entry) = node.read(|s| s.config("").cloned()) {
        crate::publish::push(node, &entry).await;
    }
    Ok(())
}
