//! Config versions: validated with the same code spokes use, committed through raft,
//! then pushed to every active spoke. A spoke that misses a push pulls the version at
//! its next heartbeat, told by the directive which version to serve.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tracing::{info, warn};
use vigo_common::limits::MAX_POLICY_BYTES;
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::node::Node;
use crate::seal;
use crate::state::{Command, ConfigEntry, RequestTag, SpokeState};

const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub fn to_proto(c: &ConfigEntry, with_files: bool) -> pb::ConfigVersion {
    pb::ConfigVersion {
        version: c.version.clone(),
        author: c.author.clone(),
        published_ms: c.published_ms,
        message: c.message.clone(),
        files: if with_files {
            c.files.clone().into_iter().collect()
        } else {
            Default::default()
        },
        generation: c.generation,
        bundle_key: Bytes::copy_from_slice(&c.seal.key),
        trusted_bundle_keys: c
            .seal
            .trusted
            .iter()
            .map(|k| Bytes::copy_from_slice(k))
            .collect(),
        bundle_signatures: c.seal.signatures.iter().map(|s| s.clone().into()).collect(),
    }
}

/// Validates and commits a policy tree (on the leader), then pushes it.
pub async fn publish(
    node: &Arc<Node>,
    tag: &RequestTag,
    message: String,
    files: BTreeMap<String, String>,
) -> Result<pb::ConfigVersion, HubError> {
    let size: usize = files.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_POLICY_BYTES {
        return Err(HubError::malformed(
            "policy",
            format!("{size} bytes; the limit is {MAX_POLICY_BYTES}"),
        ));
    }
    // Compiled as every spoke will compile it (what is published can be served), and
    // its bundles signed with the key in force.
    let (generation, keys) =
        node.read(|s| (s.next_config_generation(now_ms()), s.bundle_keys.clone()));
    let (tree, seal) = seal::compile_and_seal(files.clone(), keys, generation).await?;
    let entry = ConfigEntry {
        version: hex::encode(tree.version),
        author: tag.by.clone(),
        published_ms: now_ms(),
        message,
        files,
        generation,
        seal,
    };
    node.propose_ok(
        Command::PublishConfig {
            entry: entry.clone(),
            keep: node.keep_configs,
        }
        .once(tag, "publish"),
    )
    .await?;
    // What committed (a retried request committed the first attempt's entry).
    let entry = node
        .read(|s| s.config(&entry.version).cloned())
        .unwrap_or(entry);
    info!(version = %entry.version, author = %entry.author, "config version published");
    push(node, &entry).await;
    Ok(to_proto(&entry, false))
}

/// Makes an earlier version current again, then pushes it.
pub async fn rollback(
    node: &Arc<Node>,
    tag: &RequestTag,
    version: String,
) -> Result<pb::ConfigVersion, HubError> {
    let (mut entry, generation, keys) = node
        .read(|s| {
            s.config(&version)
                .cloned()
                .map(|e| (e, s.next_config_generation(now_ms()), s.bundle_keys.clone()))
        })
        .ok_or_else(|| {
            HubError::NotFound(format!(
                "no config version {version}: the hub keeps the {} versions made current \
                 last (keep_config_versions); older ones are pruned",
                node.keep_configs
            ))
        })?;
    let (_, seal) = seal::compile_and_seal(entry.files.clone(), keys, generation).await?;
    node.propose_ok(
        Command::Rollback {
            version: entry.version.clone(),
            generation,
            seal,
        }
        .once(tag, "rollback"),
    )
    .await?;
    // What committed (a retried request committed the first attempt's seal).
    if let Some(committed) = node.read(|s| s.config(&entry.version).cloned()) {
        entry = committed;
    }
    info!(version = %entry.version, "config rolled back");
    push(node, &entry).await;
    Ok(to_proto(&entry, false))
}

/// Sends a version to every active spoke at once; failures are logged, not fatal.
pub(crate) async fn push(node: &Arc<Node>, entry: &ConfigEntry) {
    let spokes: Vec<(String, String)> = node.read(|s| {
        s.spokes
            .values()
            .filter(|sp| sp.state == SpokeState::Active)
            .map(|sp| (sp.id.clone(), sp.address.clone()))
            .collect()
    });
    let version = to_proto(entry, true);
    let mut pushes = JoinSet::new();
    for (id, address) in spokes {
        let channel = match node.peers.spoke(&address) {
            Ok(c) => c,
            Err(e) => {
                warn!(spoke = %id, error = %e, "cannot push config");
                continue;
            }
        };
        let version = version.clone();
        pushes.spawn(async move {
            let mut client = pb::spoke_admin_client::SpokeAdminClient::new(channel)
                .max_encoding_message_size(vigo_common::limits::MAX_CONFIG_MESSAGE)
                .max_decoding_message_size(vigo_common::limits::MAX_SMALL_ANSWER);
            let mut request = tonic::Request::new(version);
            request.set_timeout(PUSH_TIMEOUT);
            (id, client.apply_config(request).await)
        });
    }
    while let Some(Ok((id, result))) = pushes.join_next().await {
        match result {
            Ok(_) => info!(spoke = %id, version = %entry.version, "config pushed"),
            Err(s) => {
                warn!(spoke = %id, "config push failed ({}); it will pull at its next heartbeat", s.message())
            }
        }
    }
}
