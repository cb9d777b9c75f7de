//! Where a spoke's policy comes from, and how a new one takes over: its own directory
//! (a standalone spoke; SIGHUP reloads it) or the versions its hub publishes (pushed by
//! the hub, or pulled at a heartbeat). Either way a new policy is compiled off the async
//! workers, its bundle generation made durable, and only then swapped in; a policy that
//! does not compile changes nothing, not even the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use tracing::{error, info};
use vigo_common::policy::{CompiledPolicy, PolicyErrors};
use vigo_proto::v1 as pb;

use crate::admin::Admin;
use crate::error::SpokeError;
use crate::grpc::detach;
use crate::policy_cache::{
    HubSeal, InstallError, PolicyCache, PolicySource, Sealing, compile_dir, compile_files,
    empty_policy,
};
use crate::store::{Store, WriteOp};

fn policy_error(e: PolicyErrors) -> SpokeError {
    SpokeError::Common(vigo_common::Error::Policy(e))
}

/// Compiles off the async workers.
async fn compile_blocking(
    work: impl FnOnce() -> Result<CompiledPolicy, PolicyErrors> + Send + 'static,
) -> Result<Result<CompiledPolicy, PolicyErrors>, SpokeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| SpokeError::ShuttingDown)
}

/// The record a spoke keeps of the policy it serves: the version and generation (and,
/// from a hub, the files; a standalone spoke's files are its directory).
async fn remember(store: &Store, record: &pb::ConfigVersion) -> Result<(), SpokeError> {
    store
        .write(WriteOp::PutConfig {
            version: prost::Message::encode_to_vec(record),
        })
        .await?;
    Ok(())
}

/// The policy a spoke starts with. Standalone: its directory, signed with its own key
/// at the stored generation if the stored version is the same, else at a new one made
/// durable first. With a hub: the last version the hub sent, with the hub's signatures,
/// or nothing signed; a stored version that no longer compiles or verifies (only a
/// build with different rules can do that) must not keep the spoke from starting: it
/// serves no bundle until its first heartbeat brings the hub's version.
pub async fn starting_policy(
    policy_dir: Option<&Path>,
    stored: Option<pb::ConfigVersion>,
    key: Option<SigningKey>,
    store: &Store,
) -> Result<PolicyCache, SpokeError> {
    let Some(dir) = policy_dir else {
        return Ok(hub_policy_at_start(stored));
    };
    let compiled = compile_dir(dir).map_err(policy_error)?;
    let version = hex::encode(compiled.version);
    let generation = match &stored {
        Some(s) if s.version == version => s.generation,
        other => {
            let after = other.as_ref().map_or(0, |s| s.generation);
            let generation = after.saturating_add(1).max(vigo_common::time::now_ms());
            remember(store, &standalone_record(&version, generation)).await?;
            generation
        }
    };
    let source = PolicySource::Directory(dir.to_path_buf());
    PolicyCache::new(source, compiled, key, &Sealing::Own { generation })
        .map_err(|e| SpokeError::malformed("bundle_signing_key", e))
}

/// A spoke under a hub starts with the version it stored, sealed by the hub.
fn hub_policy_at_start(stored: Option<pb::ConfigVersion>) -> PolicyCache {
    let unsigned = || {
        let empty = compile_files(&empty_policy()).expect("the empty policy compiles");
        PolicyCache::new(PolicySource::Hub, empty, None, &Sealing::Unsigned)
            .expect("nothing to seal")
    };
    let Some(stored) = stored else {
        return unsigned();
    };
    let sealing = match HubSeal::of(&stored) {
        Ok(Some(seal)) => Sealing::Hub(Box::new(seal)),
        Ok(None) => {
            info!(
                "the stored policy version carries no hub signatures; serving no bundle until the hub sends one"
            );
            return unsigned();
        }
        Err(e) => {
            error!(error = %e, "the stored policy version's signatures do not decode; serving no bundle until the hub sends one");
            return unsigned();
        }
    };
    let files: BTreeMap<PathBuf, String> = stored
        .files
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
    let sealed = compile_files(&files)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            PolicyCache::new(PolicySource::Hub, c, None, &sealing).map_err(|e| e.to_string())
        });
    sealed.unwrap_or_else(|e| {
        error!(error = %e, "the stored policy version cannot be served; serving no bundle until the hub sends one");
        unsigned()
    })
}

fn standalone_record(version: &str, generation: u64) -> pb::ConfigVersion {
    pb::ConfigVersion {
        version: version.to_string(),
        author: "policy directory".into(),
        published_ms: vigo_common::time::now_ms(),
        generation,
        ..Default::default()
    }
}

/// Recompiles a standalone spoke's directory and serves it; the serving policy stays if
/// the new one is invalid. A spoke whose policy comes from its hub has nothing to reload.
pub async fn reload(policy: &Arc<PolicyCache>, store: &Store) -> Result<(), SpokeError> {
    let PolicySource::Directory(dir) = policy.source().clone() else {
        info!("policy comes from the hub; nothing to reload");
        return Ok(());
    };
    let origin = dir.display().to_string();
    let compiled = compile_blocking(move || compile_dir(&dir)).await?;
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => {
            // Counted and logged as a rejected policy; the serving one stays.
            policy.reject(&origin, &InstallError::Policy(e.clone()));
            return Err(policy_error(e));
        }
    };
    let current = policy.current();
    let version = hex::encode(compiled.version);
    if current.version_hex() == version {
        info!(%version, "policy unchanged");
        return Ok(());
    }
    let generation = policy.next_generation();
    drop(current);
    let sealed = policy
        .seal(compiled, &Sealing::Own { generation }, &origin)
        .map_err(|e| SpokeError::malformed("policy", e))?;
    remember(store, &standalone_record(&version, generation)).await?;
    policy.install(sealed, &origin);
    Ok(())
}

impl Admin {
    /// Serves a policy version the hub published: compiled, its hub signatures checked
    /// over the manifests built here, durable, then in force. The same version with
    /// the same generation is a no-op.
    pub async fn apply_config(
        self: &Arc<Self>,
        version: pb::ConfigVersion,
    ) -> Result<pb::ApplyConfigResponse, SpokeError> {
        let seal = HubSeal::of(&version)
            .map_err(|e| SpokeError::malformed("config version", e))?
            .ok_or_else(|| {
                SpokeError::malformed(
                    "config version",
                    "it carries no bundle signatures: a spoke under a hub serves only bundles the hub signed",
                )
            })?;
        let files: BTreeMap<PathBuf, String> = version
            .files
            .iter()
            .map(|(k, v)| (k.into(), v.clone()))
            .collect();
        let compiled = compile_blocking(move || compile_files(&files))
            .await?
            .map_err(|e| SpokeError::malformed("policy", e))?;
        let computed = hex::encode(compiled.version);
        if computed != version.version {
            return Err(SpokeError::malformed(
                "policy",
                format!(
                    "version {} does not match its files ({computed})",
                    version.version
                ),
            ));
        }
        let current = self.policy.current();
        if current.version_hex() == computed && current.bundle_generation == version.generation {
            return Ok(pb::ApplyConfigResponse { version: computed });
        }
        drop(current);
        // Sealed (the hub's signatures verified) before anything is stored: a version
        // that cannot be served changes nothing.
        let sealed = self
            .policy
            .seal(compiled, &Sealing::Hub(Box::new(seal)), "hub")
            .map_err(|e| SpokeError::malformed("config version", e))?;
        let this = self.clone();
        detach(async move {
            remember(&this.store, &version).await?;
            this.policy.install(sealed, "hub");
            info!(version = %computed, generation = version.generation, author = %version.author, "policy version from the hub in force");
            Ok(pb::ApplyConfigResponse { version: computed })
        })
        .await
    }
}
