//! The hub cluster itself: status and membership, API and enrollment tokens, and
//! published config versions.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, ChangeMembers};
use vigo_common::time::now_ms;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use super::auth::request_secret;
use super::spokes::spoke_infos;
use super::{AdminApi, Caller};
use crate::error::HubError;
use crate::publish;
use crate::state::{ApiRole, ApiToken, Command, ConfigEntry, Token};

fn version_info(c: &ConfigEntry, current: &str) -> api::ConfigVersionInfo {
    api::ConfigVersionInfo {
        version: c.version.clone(),
        author: c.author.clone(),
        published_ms: c.published_ms,
        message: c.message.clone(),
        files: c.files.len() as u32,
        current: c.version == current,
    }
}

fn published_info(v: &pb::ConfigVersion) -> api::ConfigVersionInfo {
    api::ConfigVersionInfo {
        version: v.version.clone(),
        author: v.author.clone(),
        published_ms: v.published_ms,
        message: v.message.clone(),
        files: v.files.len() as u32,
        current: true,
    }
}

/// How long Status waits for the leader's view before answering with its own.
const STATUS_FROM_LEADER: std::time::Duration = std::time::Duration::from_secs(2);

impl AdminApi {
    fn members(&self) -> api::MemberList {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let leader = metrics.current_leader.unwrap_or(0);
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = |id: &u64| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map(|l| l.index)
        };
        api::MemberList {
            members: membership
                .nodes()
                .map(|(id, n)| {
                    let myself = *id == self.node.id;
                    let silent = self.node.liveness.peer_silent_for(*id);
                    api::Member {
                        node_id: *id,
                        address: n.addr.clone(),
                        voter: voters.contains(id),
                        leader: *id == leader,
                        reachable: myself
                            || silent.is_some_and(|d| d < crate::liveness::PEER_REACHABLE_WITHIN),
                        lag: if myself {
                            0
                        } else {
                            matched(id).map_or(0, |m| last.saturating_sub(m))
                        },
                        silent_ms: if myself {
                            0
                        } else {
                            silent.map_or(0, |d| d.as_millis() as u64)
                        },
                    }
                })
                .collect(),
            leader_id: leader,
        }
    }

    pub async fn status(
        &self,
        caller: &Caller,
        _req: api::StatusRequest,
    ) -> Result<api::ClusterStatus, HubError> {
        caller.require(ApiRole::Viewer, "Status")?;
        // The leader's view (reachability, lag, spokes' health from every heartbeat);
        // without a leader within a moment, this node's own.
        let budget = STATUS_FROM_LEADER.min(caller.deadline.map_or(STATUS_FROM_LEADER, |d| {
            d.saturating_duration_since(std::time::Instant::now()) / 2
        }));
        let forward = api::StatusRequest {};
        let from_leader = self
            .node
            .on_leader(
                budget,
                async { Ok(self.local_status(true)) },
                |channel, left| {
                    let mut request = tonic::Request::new(forward);
                    request.set_timeout(left);
                    caller.stamp(request.metadata_mut());
                    async move {
                        super::AdminClient::new(channel)
                            .max_decoding_message_size(crate::fanout::MAX_SPOKE_MESSAGE)
                            .status(request)
                            .await
                    }
                },
            )
            .await;
        Ok(from_leader.unwrap_or_else(|_| self.local_status(false)))
    }

    fn local_status(&self, from_leader: bool) -> api::ClusterStatus {
        let metrics = self.node.raft.metrics().borrow().clone();
        let members = self.members();
        let now = now_ms();
        self.node.read(|s| api::ClusterStatus {
            node_id: self.node.id,
            leader_id: members.leader_id,
            term: metrics.current_term,
            commit_index: crate::metrics::commit_index(&self.node),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            members: members.members,
            spokes: spoke_infos(s, &self.node.liveness, now),
            pins: s.pins.len() as u64,
            config_version: s.current_config.clone(),
            from_leader,
        })
    }

    pub async fn list_members(
        &self,
        caller: &Caller,
        _req: api::MembersRequest,
    ) -> Result<api::MemberList, HubError> {
        caller.require(ApiRole::Viewer, "Members")?;
        Ok(self.members())
    }

    pub async fn add_hub(
        &self,
        caller: &Caller,
        req: api::AddHubRequest,
    ) -> Result<api::MemberList, HubError> {
        caller.require(ApiRole::Admin, "AddHub")?;
        if req.node_id == 0 {
            return Err(HubError::malformed("node_id", "is zero"));
        }
        vigo_common::tls::split_address(&req.address).map_err(HubError::from)?;
        self.on_leader(
            caller,
            req,
            |req| async move {
                let raft = &self.node.raft;
                raft.add_learner(req.node_id, BasicNode::new(&req.address), true)
                    .await
                    .map_err(|e| HubError::Raft(e.to_string()))?;
                tracing::info!(node = req.node_id, address = %req.address, by = %caller.name, "hub node added as learner");
                if req.voter {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id])), false)
                        .await
                        .map_err(|e| HubError::Raft(e.to_string()))?;
                    tracing::info!(node = req.node_id, "hub node promoted to voter");
                }
                Ok(self.members())
            },
            |mut c, r| async move { c.add_hub(r).await },
        )
        .await
    }

    pub async fn remove_hub(
        &self,
        caller: &Caller,
        req: api::RemoveHubRequest,
    ) -> Result<api::MemberList, HubError> {
        caller.require(ApiRole::Admin, "RemoveHub")?;
        if !self
            .members()
            .members
            .iter()
            .any(|m| m.node_id == req.node_id)
        {
            return Err(HubError::NotFound(format!(
                "hub node {} is not a member",
                req.node_id
            )));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                self.node
                    .raft
                    .change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([req.node_id])),
                        false,
                    )
                    .await
                    .map_err(|e| HubError::Raft(e.to_string()))?;
                tracing::info!(node = req.node_id, by = %caller.name, "hub node removed");
                Ok(self.members())
            },
            |mut c, r| async move { c.remove_hub(r).await },
        )
        .await
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        req: api::CreateTokenRequest,
    ) -> Result<api::CreatedToken, HubError> {
        caller.require(ApiRole::Admin, "CreateToken")?;
        if req.name.is_empty() || req.name.len() > 128 {
            return Err(HubError::malformed("name", "must be 1..128 characters"));
        }
        let api_role = match req.role.as_str() {
            "enroll" => None,
            other => Some(ApiRole::parse(other).ok_or_else(|| {
                HubError::malformed(
                    "role",
                    format!("{other:?}: admin, operator, viewer or enroll"),
                )
            })?),
        };
        if api_role.is_some() && (req.uses != 0 || req.allow_rekey || !req.hostnames.is_empty()) {
            return Err(HubError::malformed(
                "uses",
                "uses, allow_rekey and hostnames are for enroll tokens",
            ));
        }
        vigo_common::hostname::Scope::new(&req.hostnames)
            .map_err(|why| HubError::malformed("hostnames", why))?;
        let retry = self.node.read(|s| {
            s.requests
                .get(&format!("{}/token", caller.request_id))
                .is_some()
        });
        // A retry of a creation that committed gets its first outcome, expired or not.
        if !retry && req.expires_ms != 0 && req.expires_ms <= vigo_common::time::now_ms() {
            return Err(HubError::malformed(
                "expires_ms",
                format!(
                    "{} is in the past: a token must expire later than now (0: never)",
                    req.expires_ms
                ),
            ));
        }
        if self.token_exists(&req.name) && !retry {
            return Err(HubError::AlreadyExists(format!(
                "a token named {:?} exists",
                req.name
            )));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                let (secret, hash) = request_secret(&self.node.ca, caller);
                let command = match api_role {
                    Some(role) => Command::CreateApiToken {
                        hash,
                        token: ApiToken {
                            name: req.name.clone(),
                            role,
                            expires_ms: req.expires_ms,
                            revoked: false,
                        },
                    },
                    None => Command::CreateToken {
                        hash,
                        token: Token {
                            name: req.name.clone(),
                            uses: req.uses.max(1),
                            used: 0,
                            expires_ms: req.expires_ms,
                            allow_rekey: req.allow_rekey,
                            revoked: false,
                            hostnames: req.hostnames.clone(),
                        },
                    },
                };
                self.node.propose_ok(command.once(&caller.tag(), "token")).await?;
                tracing::info!(token = %req.name, role = %req.role, by = %caller.name, "token created");
                Ok(api::CreatedToken {
                    token: self.token_info(&req.name),
                    secret,
                })
            },
            |mut c, r| async move { c.create_token(r).await },
        )
        .await
    }

    fn token_exists(&self, name: &str) -> bool {
        self.node.read(|s| {
            s.tokens.values().any(|t| t.name == name)
                || s.api_tokens.values().any(|t| t.name == name)
        })
    }

    fn all_tokens(&self) -> Vec<api::TokenInfo> {
        self.node.read(|s| {
            let mut out: Vec<api::TokenInfo> = s
                .tokens
                .values()
                .map(|t| api::TokenInfo {
                    name: t.name.clone(),
                    role: "enroll".into(),
                    uses: t.uses,
                    used: t.used,
                    expires_ms: t.expires_ms,
                    revoked: t.revoked,
                    hostnames: t.hostnames.clone(),
                })
                .chain(s.api_tokens.values().map(|t| api::TokenInfo {
                    name: t.name.clone(),
                    role: t.role.as_str().into(),
                    uses: 0,
                    used: 0,
                    expires_ms: t.expires_ms,
                    revoked: t.revoked,
                    hostnames: Vec::new(),
                }))
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        })
    }

    fn token_info(&self, name: &str) -> Option<api::TokenInfo> {
        self.all_tokens().into_iter().find(|t| t.name == name)
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        _req: api::ListTokensRequest,
    ) -> Result<api::TokenList, HubError> {
        caller.require(ApiRole::Admin, "ListTokens")?;
        Ok(api::TokenList {
            tokens: self.all_tokens(),
        })
    }

    pub async fn revoke_token(
        &self,
        caller: &Caller,
        req: api::RevokeTokenRequest,
    ) -> Result<api::TokenInfo, HubError> {
        caller.require(ApiRole::Admin, "RevokeToken")?;
        if !self.token_exists(&req.name) {
            return Err(HubError::NotFound(format!("no token named {:?}", req.name)));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                self.node
                    .propose_ok(
                        Command::RevokeToken {
                            name: req.name.clone(),
                        }
                        .once(&caller.tag(), "revoke"),
                    )
                    .await?;
                tracing::warn!(token = %req.name, by = %caller.name, "token revoked");
                self.token_info(&req.name)
                    .ok_or_else(|| HubError::NotFound(format!("no token named {:?}", req.name)))
            },
            |mut c, r| async move { c.revoke_token(r).await },
        )
        .await
    }

    pub async fn publish_config(
        &self,
        caller: &Caller,
        req: api::PublishConfigRequest,
    ) -> Result<api::ConfigVersionInfo, HubError> {
        caller.require(ApiRole::Operator, "PublishConfig")?;
        if req.files.is_empty() {
            return Err(HubError::malformed("files", "is empty"));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                let files: BTreeMap<String, String> = req.files.into_iter().collect();
                let v = publish::publish(&self.node, &caller.tag(), req.message, files).await?;
                Ok(published_info(&v))
            },
            |mut c, r| async move { c.publish_config(r).await },
        )
        .await
    }

    pub async fn config_history(
        &self,
        caller: &Caller,
        _req: api::ConfigHistoryRequest,
    ) -> Result<api::ConfigVersions, HubError> {
        caller.require(ApiRole::Viewer, "ConfigHistory")?;
        Ok(self.node.read(|s| api::ConfigVersions {
            versions: s
                .configs
                .iter()
                .rev()
                .map(|c| version_info(c, &s.current_config))
                .collect(),
            current: s.current_config.clone(),
        }))
    }

    pub async fn rollback_config(
        &self,
        caller: &Caller,
        req: api::RollbackConfigRequest,
    ) -> Result<api::ConfigVersionInfo, HubError> {
        caller.require(ApiRole::Operator, "RollbackConfig")?;
        if req.version.is_empty() {
            return Err(HubError::malformed("version", "is empty"));
        }
        // A unique prefix is enough, as with git.
        let full = self
            .node
            .read(|s| find_config(s, &req.version).map(|c| c.version.clone()))?;
        self.on_leader(
            caller,
            api::RollbackConfigRequest { version: full },
            |req| async move {
                let v = publish::rollback(&self.node, &caller.tag(), req.version).await?;
                tracing::info!(version = %v.version, by = %caller.name, "config rolled back");
                Ok(published_info(&v))
            },
            |mut c, r| async move { c.rollback_config(r).await },
        )
        .await
    }
}

/// The published version that `prefix` names uniquely (as with git, a unique prefix of
/// the hash is enough).
pub(super) fn find_config<'s>(
    s: &'s crate::state::ClusterState,
    prefix: &str,
) -> Result<&'s crate::state::ConfigEntry, HubError> {
    let found: Vec<&crate::state::ConfigEntry> = s
        .configs
        .iter()
        .filter(|c| c.version.starts_with(prefix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(HubError::NotFound(format!("no config version {prefix:?}"))),
        _ => Err(HubError::malformed(
            "version",
            format!("{prefix:?} is ambiguous"),
        )),
    }
}
