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
use crate::policy_cache::{PolicyCache, PolicySource, compile_dir, compile_files, empty_policy};
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

/// The policy a spoke starts with. Standalone: its directory, signed with the stored
/// generation if the stored version is the same, else with a new one made durable
/// first. With a hub: the last version the hub sent, or the empty policy; a stored
/// version that no longer compiles (only a build with different rules can do that) must
/// not keep the spoke from starting: it serves the empty policy until its first
/// heartbeat brings the hub's.
pub async fn starting_policy(
    policy_dir: Option<&Path>,
    stored: Option<pb::ConfigVersion>,
    key: SigningKey,
    store: &Store,
) -> Result<PolicyCache, SpokeError> {
    let Some(dir) = policy_dir else {
        let generation = stored.as_ref().map_or(0, |v| v.generation);
        let files: BTreeMap<PathBuf, String> = stored
            .map(|v| v.files.into_iter().map(|(k, v)| (k.into(), v)).collect())
            .unwrap_or_else(empty_policy);
        return match compile_files(&files) {
            Ok(compiled) => Ok(PolicyCache::new(
                PolicySource::Hub,
                compiled,
                key,
                generation,
            )),
            Err(e) => {
                error!(errors = %e, "the stored policy version does not compile; serving the empty policy until the hub sends one");
                let empty = compile_files(&empty_policy()).map_err(policy_error)?;
                Ok(PolicyCache::new(PolicySource::Hub, empty, key, 0))
            }
        };
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
    Ok(PolicyCache::new(source, compiled, key, generation))
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
            let _ = policy.install(Err(e.clone()), &origin, 0);
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
    remember(store, &standalone_record(&version, generation)).await?;
    policy
        .install(Ok(compiled), &origin, generation)
        .map_err(policy_error)?;
    Ok(())
}

impl Admin {
    /// Serves a policy version the hub published: compiled first, durable, then in
    /// force. The same version with the same generation is a no-op.
    pub async fn apply_config(
        self: &Arc<Self>,
        version: pb::ConfigVersion,
    ) -> Result<pb::ApplyConfigResponse, SpokeError> {
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
        let this = self.clone();
        detach(async move {
            remember(&this.store, &version).await?;
            this.policy
                .install(Ok(compiled), "hub", version.generation)
                .map_err(|e| SpokeError::malformed("policy", e))?;
            info!(version = %computed, generation = version.generation, author = %version.author, "policy version from the hub in force");
            Ok(pb::ApplyConfigResponse { version: computed })
        })
        .await
    }
}
