//! The hub's gRPC services. Reads are answered from this node's copy of the state;
//! writes run on the leader — a follower forwards the same call there, and the leader
//! trusts a forwarding hub certificate to have checked the original caller.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::ChangeMembers;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vigo_common::EnvoyId;
use vigo_common::pki::{Peer, Role};
use vigo_common::signing::{self, Domain};
use vigo_common::time::now_ms;
use vigo_common::tls::PeerInfo;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::node::{Leader, Node};
use crate::publish;
use crate::state::{Command, Override, SpokeState, Token};

/// How often a heartbeat is written through raft at most, per spoke.
const HEARTBEAT_WRITE_EVERY_MS: u64 = 30_000;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
const LOCATE_WINDOW_MS: u64 = 300_000;
const SPOKE_ID_HEADER: &str = "vigo-spoke-id";

fn peer<T>(request: &Request<T>) -> Peer {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.peer.clone())
        .unwrap_or(Peer::Anonymous)
}

/// The caller holds one of `roles` (or is a hub node forwarding the call).
fn require(peer: &Peer, roles: &[Role], call: &'static str) -> Result<(), HubError> {
    match peer.role() {
        Some(r) if roles.contains(&r) || r == Role::Hub => Ok(()),
        Some(r) => Err(HubError::WrongRole {
            role: r.as_str(),
            call,
        }),
        None => Err(HubError::NoClientCertificate),
    }
}

/// Runs `here` on the leader, or forwards with `there` to the leader's address.
async fn on_leader<T, Here, There, ThereFut>(
    node: &Node,
    here: Here,
    there: There,
) -> Result<T, HubError>
where
    Here: Future<Output = Result<T, HubError>>,
    There: FnOnce(Channel) -> ThereFut,
    ThereFut: Future<Output = Result<Response<T>, Status>>,
{
    match node.leader()? {
        Leader::Here => here.await,
        Leader::There(addr) => there(node.peers.channel(&addr)?)
            .await
            .map(Response::into_inner)
            .map_err(HubError::Forward),
    }
}

fn forwarded<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(FORWARD_TIMEOUT);
    r
}

// ---------------------------------------------------------------- spokes

pub struct SpokesService {
    pub node: Arc<Node>,
}

impl SpokesService {
    /// The calling spoke's id: its certificate name, or the header a forwarding hub set.
    fn spoke_id<T>(request: &Request<T>) -> Result<String, HubError> {
        match peer(request) {
            Peer::Node {
                role: Role::Spoke,
                name,
            } => Ok(name.to_string()),
            Peer::Node {
                role: Role::Hub, ..
            } => request
                .metadata()
                .get(SPOKE_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| HubError::malformed("forwarded call", "no spoke id")),
            Peer::Node { role, .. } => Err(HubError::WrongRole {
                role: role.as_str(),
                call: "spoke calls",
            }),
            Peer::Envoy { .. } => Err(HubError::WrongRole {
                role: "envoy",
                call: "spoke calls",
            }),
            Peer::Anonymous => Err(HubError::NoClientCertificate),
        }
    }

    fn directive(&self, spoke_id: String) -> pb::SpokeDirective {
        pb::SpokeDirective {
            config_version: self.node.read(|s| s.current_config.clone()),
            spoke_id,
        }
    }
}

fn with_spoke_id<T>(msg: T, id: &str) -> Request<T> {
    let mut r = forwarded(msg);
    if let Ok(v) = MetadataValue::try_from(id) {
        r.metadata_mut().insert(SPOKE_ID_HEADER, v);
    }
    r
}

#[tonic::async_trait]
impl pb::hub_spokes_server::HubSpokes for SpokesService {
    async fn register_spoke(
        &self,
        request: Request<pb::RegisterSpokeRequest>,
    ) -> Result<Response<pb::SpokeDirective>, Status> {
        let id = Self::spoke_id(&request)?;
        let msg = request.into_inner();
        vigo_common::tls::split_address(&msg.address).map_err(HubError::from)?;
        let weight = msg.weight.max(1);
        let node = &self.node;
        let fwd = msg.clone();
        let fwd_id = id.clone();
        let result = on_leader(
            node,
            async {
                let unchanged = node.read(|s| {
                    s.spokes.get(&id).is_some_and(|sp| {
                        sp.address == msg.address
                            && sp.weight == weight
                            && sp.state == SpokeState::Active
                    })
                });
                if !unchanged {
                    node.propose_ok(Command::RegisterSpoke {
                        id: id.clone(),
                        address: msg.address.clone(),
                        weight,
                        at_ms: now_ms(),
                    })
                    .await?;
                    tracing::info!(spoke = %id, address = %msg.address, weight, "spoke registered");
                }
                Ok(self.directive(id.clone()))
            },
            |c| async move {
                pb::hub_spokes_client::HubSpokesClient::new(c)
                    .register_spoke(with_spoke_id(fwd, &fwd_id))
                    .await
            },
        )
        .await;
        Ok(Response::new(result?))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::SpokeDirective>, Status> {
        let id = Self::spoke_id(&request)?;
        let msg = request.into_inner();
        let node = &self.node;
        let fwd = msg.clone();
        let fwd_id = id.clone();
        let result = on_leader(
            node,
            async {
                let now = now_ms();
                let due = node.read(|s| match s.spokes.get(&id) {
                    None => Err(HubError::NotFound(format!("spoke {id} is not registered"))),
                    Some(sp) => Ok(sp.config_version != msg.config_version
                        || now.saturating_sub(sp.last_heartbeat_ms) >= HEARTBEAT_WRITE_EVERY_MS),
                })?;
                if due {
                    node.propose_ok(Command::Heartbeat {
                        id: id.clone(),
                        config_version: msg.config_version.clone(),
                        at_ms: now,
                    })
                    .await?;
                }
                Ok(self.directive(id.clone()))
            },
            |c| async move {
                pb::hub_spokes_client::HubSpokesClient::new(c)
                    .heartbeat(with_spoke_id(fwd, &fwd_id))
                    .await
            },
        )
        .await;
        Ok(Response::new(result?))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigVersion>, Status> {
        Self::spoke_id(&request)?;
        let version = request.into_inner().version;
        let entry = self
            .node
            .read(|s| s.config(&version).cloned())
            .ok_or_else(|| HubError::NotFound(format!("no config version {version:?}")))?;
        Ok(Response::new(publish::to_proto(&entry, true)))
    }
}

// ---------------------------------------------------------------- locate

pub struct LocateService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl pb::hub_locate_server::HubLocate for LocateService {
    async fn locate(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::LocateResponse>, Status> {
        let signed = request.into_inner();
        let body: pb::LocateBody = prost::Message::decode(signed.body.clone())
            .map_err(|e| HubError::malformed("locate body", e))?;
        let signature = signing::parse_signature(&signed.signature).map_err(HubError::from)?;
        let id = EnvoyId::new(body.envoy_id)
            .ok_or_else(|| HubError::malformed("envoy_id", "is zero"))?;
        let (key, spoke) = self
            .node
            .read(|s| {
                s.pins.get(&id.get()).map(|p| {
                    let address = s.spokes.get(&p.spoke).map(|sp| sp.address.clone());
                    (p.key, (p.spoke.clone(), address.unwrap_or_default()))
                })
            })
            .ok_or_else(|| HubError::NotFound(format!("envoy {id} is not pinned")))?;
        let skew = body.timestamp_ms as i64 - now_ms() as i64;
        if skew.unsigned_abs() > LOCATE_WINDOW_MS {
            return Err(HubError::StaleTimestamp { skew_ms: skew }.into());
        }
        let key = signing::parse_public_key(&key).map_err(HubError::from)?;
        signing::verify(&key, Domain::Locate, &signed.body, &signature)
            .map_err(|_| HubError::BadSignature)?;
        Ok(Response::new(pb::LocateResponse {
            spoke_id: spoke.0,
            spoke_address: spoke.1,
        }))
    }
}

// ---------------------------------------------------------------- admin

pub struct AdminService {
    pub node: Arc<Node>,
}

impl AdminService {
    fn status(&self) -> pb::HubStatus {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::HubMember {
                node_id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        self.node.read(|s| {
            let counts = s.pin_counts();
            pb::HubStatus {
                node_id: self.node.id,
                leader_id: metrics.current_leader.unwrap_or(0),
                term: metrics.current_term,
                last_applied: metrics.last_applied.map(|l| l.index).unwrap_or(0),
                members,
                spokes: s
                    .spokes
                    .values()
                    .map(|sp| pb::SpokeEntry {
                        spoke_id: sp.id.clone(),
                        address: sp.address.clone(),
                        weight: sp.weight,
                        state: sp.state.as_str().into(),
                        last_heartbeat_ms: sp.last_heartbeat_ms,
                        pins: counts.get(sp.id.as_str()).copied().unwrap_or(0),
                        config_version: sp.config_version.clone(),
                    })
                    .collect(),
                pins: s.pins.len() as u64,
                config_version: s.current_config.clone(),
            }
        })
    }

    fn admin<T>(request: &Request<T>, call: &'static str) -> Result<(), HubError> {
        require(&peer(request), &[Role::Admin], call)
    }
}

#[tonic::async_trait]
impl pb::hub_admin_server::HubAdmin for AdminService {
    async fn status(
        &self,
        request: Request<pb::HubStatusRequest>,
    ) -> Result<Response<pb::HubStatus>, Status> {
        Self::admin(&request, "Status")?;
        Ok(Response::new(self.status()))
    }

    async fn add_hub(
        &self,
        request: Request<pb::AddHubRequest>,
    ) -> Result<Response<pb::HubStatus>, Status> {
        Self::admin(&request, "AddHub")?;
        let msg = request.into_inner();
        if msg.node_id == 0 {
            return Err(HubError::malformed("node_id", "is zero").into());
        }
        vigo_common::tls::split_address(&msg.address).map_err(HubError::from)?;
        let node = &self.node;
        let fwd = msg.clone();
        on_leader(
            node,
            async {
                let raft_err = |e: String| HubError::Raft(e);
                node.raft
                    .add_learner(msg.node_id, BasicNode::new(&msg.address), true)
                    .await
                    .map_err(|e| raft_err(e.to_string()))?;
                tracing::info!(node = msg.node_id, address = %msg.address, "hub node added as learner");
                if msg.voter {
                    node.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([msg.node_id])), false)
                        .await
                        .map_err(|e| raft_err(e.to_string()))?;
                    tracing::info!(node = msg.node_id, "hub node promoted to voter");
                }
                Ok(self.status())
            },
            |c| async move { pb::hub_admin_client::HubAdminClient::new(c).add_hub(forwarded(fwd)).await },
        )
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn remove_hub(
        &self,
        request: Request<pb::RemoveHubRequest>,
    ) -> Result<Response<pb::HubStatus>, Status> {
        Self::admin(&request, "RemoveHub")?;
        let msg = request.into_inner();
        let node = &self.node;
        let fwd = msg;
        on_leader(
            node,
            async {
                node.raft
                    .change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([msg.node_id])),
                        false,
                    )
                    .await
                    .map_err(|e| HubError::Raft(e.to_string()))?;
                tracing::info!(node = msg.node_id, "hub node removed");
                Ok(self.status())
            },
            |c| async move {
                pb::hub_admin_client::HubAdminClient::new(c)
                    .remove_hub(forwarded(fwd))
                    .await
            },
        )
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        Self::admin(&request, "CreateToken")?;
        let msg = request.into_inner();
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&msg.sha256, &mut hash)
            .map_err(|_| HubError::malformed("sha256", "must be 64 hex digits"))?;
        if msg.name.is_empty() {
            return Err(HubError::malformed("name", "is empty").into());
        }
        if msg.uses == 0 {
            return Err(HubError::malformed("uses", "must be at least 1").into());
        }
        let node = &self.node;
        let fwd = msg.clone();
        on_leader(
            node,
            node.propose_ok(Command::CreateToken {
                hash,
                token: Token {
                    name: msg.name.clone(),
                    uses: msg.uses,
                    used: 0,
                    expires_ms: msg.expires_ms,
                    allow_rekey: msg.allow_rekey,
                },
            }),
            |c| async move {
                pb::hub_admin_client::HubAdminClient::new(c)
                    .create_token(forwarded(fwd))
                    .await
                    .map(|r| r.map(|_| ()))
            },
        )
        .await?;
        Ok(Response::new(pb::CreateTokenResponse {}))
    }

    async fn set_overrides(
        &self,
        request: Request<pb::SetOverridesRequest>,
    ) -> Result<Response<pb::SetOverridesResponse>, Status> {
        Self::admin(&request, "SetOverrides")?;
        let msg = request.into_inner();
        let mut overrides = Vec::new();
        for o in &msg.overrides {
            globset::Glob::new(&o.pattern)
                .map_err(|e| HubError::malformed("pattern", format!("{:?}: {e}", o.pattern)))?;
            if !self.node.read(|s| s.spokes.contains_key(&o.spoke_id)) {
                return Err(HubError::NotFound(format!("unknown spoke {:?}", o.spoke_id)).into());
            }
            overrides.push(Override {
                pattern: o.pattern.clone(),
                spoke: o.spoke_id.clone(),
            });
        }
        let node = &self.node;
        on_leader(
            node,
            node.propose_ok(Command::SetOverrides(overrides)),
            |c| async move {
                pb::hub_admin_client::HubAdminClient::new(c)
                    .set_overrides(forwarded(msg))
                    .await
                    .map(|r| r.map(|_| ()))
            },
        )
        .await?;
        Ok(Response::new(pb::SetOverridesResponse {}))
    }

    async fn publish_config(
        &self,
        request: Request<pb::PublishConfigRequest>,
    ) -> Result<Response<pb::ConfigVersion>, Status> {
        Self::admin(&request, "PublishConfig")?;
        let msg = request.into_inner();
        let node = &self.node;
        let fwd = msg.clone();
        let files: BTreeMap<String, String> = msg.files.into_iter().collect();
        on_leader(
            node,
            publish::publish(node, msg.author, msg.message, files),
            |c| async move {
                pb::hub_admin_client::HubAdminClient::new(c)
                    .publish_config(forwarded(fwd))
                    .await
            },
        )
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn config_history(
        &self,
        request: Request<pb::ConfigHistoryRequest>,
    ) -> Result<Response<pb::ConfigHistoryResponse>, Status> {
        Self::admin(&request, "ConfigHistory")?;
        Ok(Response::new(self.node.read(|s| {
            pb::ConfigHistoryResponse {
                versions: s
                    .configs
                    .iter()
                    .rev()
                    .map(|c| publish::to_proto(c, false))
                    .collect(),
                current: s.current_config.clone(),
            }
        })))
    }

    async fn rollback_config(
        &self,
        request: Request<pb::RollbackConfigRequest>,
    ) -> Result<Response<pb::ConfigVersion>, Status> {
        Self::admin(&request, "RollbackConfig")?;
        let msg = request.into_inner();
        let node = &self.node;
        let fwd = msg.clone();
        on_leader(node, publish::rollback(node, msg.version), |c| async move {
            pb::hub_admin_client::HubAdminClient::new(c)
                .rollback_config(forwarded(fwd))
                .await
        })
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn get_pin(
        &self,
        request: Request<pb::GetPinRequest>,
    ) -> Result<Response<pb::Pin>, Status> {
        Self::admin(&request, "GetPin")?;
        let id = request.into_inner().envoy_id;
        let pin = self
            .node
            .read(|s| s.pins.get(&id).cloned())
            .ok_or_else(|| HubError::NotFound(format!("envoy {id:016x} is not pinned")))?;
        Ok(Response::new(pb::Pin {
            envoy_id: id,
            hostname: pin.hostname,
            spoke_id: pin.spoke,
            public_key: pin.key.to_vec().into(),
        }))
    }
}
