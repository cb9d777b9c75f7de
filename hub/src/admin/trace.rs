//! `config trace` (viewer): what the policy gives one host, read from a compiled
//! version. Compiling a tree of up to 16 MiB is the costly part, so the compiled form
//! of the version traced last is kept, and at most one compile runs at a time on a node:
//! a viewer looping over traces costs one compile per version, not one per call, and
//! nothing of the tree is copied under the state lock but on a miss.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vigo_common::policy::{CompiledPolicy, PolicyTree};
use vigo_proto::admin::v1 as api;

use super::cluster::find_config;
use super::{AdminApi, Caller};
use crate::error::HubError;
use crate::state::ApiRole;

type Compiled = Arc<(PolicyTree, CompiledPolicy)>;

/// The compiled form of the version traced last.
#[derive(Default)]
pub struct TraceCache {
    last: Mutex<Option<(String, Compiled)>>,
    /// Held by the one compile in progress.
    compiling: tokio::sync::Mutex<()>,
}

impl TraceCache {
    fn get(&self, version: &str) -> Option<Compiled> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(v, _)| v == version)
            .map(|(_, c)| c.clone())
    }

    fn put(&self, version: String, compiled: Compiled) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, compiled));
    }
}

impl AdminApi {
    pub async fn trace_config(
        &self,
        caller: &Caller,
        req: api::TraceConfigRequest,
    ) -> Result<api::ConfigTrace, HubError> {
        caller.require(ApiRole::Viewer, "TraceConfig")?;
        let hostname = vigo_common::hostname::normalize(&req.hostname).map_err(|_| {
            HubError::malformed("hostname", format!("{:?} is not a host name", req.hostname))
        })?;
        let version = self.node.read(|s| {
            let wanted = if req.version.is_empty() {
                if s.current_config.is_empty() {
                    return Err(HubError::NotFound("no config has been published".into()));
                }
                s.current_config.as_str()
            } else {
                req.version.as_str()
            };
            find_config(s, wanted).map(|c| c.version.clone())
        })?;
        let compiled = self.compiled(&version).await?;
        let shown = hostname.clone();
        let traced = tokio::task::spawn_blocking(move || {
            vigo_common::policy::trace::trace(&compiled.0, &compiled.1, &hostname)
        })
        .await
        .map_err(|e| HubError::Internal(format!("tracing the config: {e}")))?;
        Ok(traced.into_api(version, shown))
    }

    /// `version` compiled: from the cache, or compiled now (one compile at a time).
    async fn compiled(&self, version: &str) -> Result<Compiled, HubError> {
        if let Some(hit) = self.traces.get(version) {
            return Ok(hit);
        }
        let _turn = self.traces.compiling.lock().await;
        if let Some(hit) = self.traces.get(version) {
            return Ok(hit);
        }
        let files: BTreeMap<std::path::PathBuf, String> = self
            .node
            .read(|s| {
                s.configs.iter().find(|c| c.version == version).map(|c| {
                    c.files
                        .iter()
                        .map(|(k, v)| (std::path::PathBuf::from(k), v.clone()))
                        .collect()
                })
            })
            .ok_or_else(|| HubError::NotFound(format!("no config version {version:?}")))?;
        // Parsing and compiling a tree is CPU work: off the async workers.
        let compiled = tokio::task::spawn_blocking(move || {
            let tree = vigo_common::policy::parse_tree(&files)?;
            let compiled = vigo_common::policy::compile(&tree)?;
            Ok::<_, vigo_common::policy::PolicyErrors>(Arc::new((tree, compiled)))
        })
        .await
        .map_err(|e| HubError::Internal(format!("compiling the config: {e}")))?
        .map_err(|e| {
            HubError::Internal(format!("the published config no longer validates: {e}"))
        })?;
        self.traces.put(version.to_string(), compiled.clone());
        Ok(compiled)
    }
}
