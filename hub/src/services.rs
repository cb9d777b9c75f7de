//! The hub's gRPC services. Reads are answered from this node's copy of the state;
//! writes run on the leader — a follower forwards the same call there, and the leader
//! trusts a forwarding hub certificate to have checked the original caller.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use vigo_common::EnvoyId;
use vigo_common::net::{Deadline, PeerInfo};
use vigo_common::pki::{Peer, Role};
use vigo_common::signing::{self, Domain};
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::node::Node;
use crate::publish;
use crate::state::{Command, SpokeState};

/// How long a forwarded call of this service may take when its caller set no deadline.
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

fn forwarded<T>(msg: T) -> Request<T> {
    crate::fanout::within(msg, FORWARD_TIMEOUT)
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
        let (config_version, config_generation, revocation_seq) = self.node.read(|s| {
            let generation = s.config("").map_or(0, |c| c.generation);
            (s.current_config.clone(), generation, s.revocations.seq())
        });
        pb::SpokeDirective {
            config_version,
            spoke_id,
            config_generation,
            revocation_seq,
        }
    }
}

/// What is left of a call's deadline, for the forward to the leader it makes.
fn budget(deadline: &Option<Deadline>) -> Duration {
    deadline.map_or(Duration::from_secs(30), |d| {
        d.0.saturating_duration_since(std::time::Instant::now())
    })
}

/// A spoke's weight as it asks for it (0: the default, 1), within the ring's bounds.
pub fn spoke_weight(asked: u32) -> Result<u32, HubError> {
    match asked {
        0 => Ok(1),
        w if w <= vigo_common::limits::MAX_SPOKE_WEIGHT => Ok(w),
        w => Err(HubError::malformed(
            "weight",
            format!(
                "{w}; a spoke's weight is 1..={}",
                vigo_common::limits::MAX_SPOKE_WEIGHT
            ),
        )),
    }
}

/// The policy version a heartbeat reports: none yet (empty) or a version as the hub
/// publishes them (64 hex digits). Anything else would be written through raft as is.
fn config_version(version: &str) -> Result<(), HubError> {
    let is_version = version.len() == 64 && version.bytes().all(|b| b.is_ascii_hexdigit());
    if version.is_empty() || is_version {
        return Ok(());
    }
    let shown: String = version.chars().take(16).collect();
    Err(HubError::malformed(
        "config_version",
        format!("{shown:?}… ({} bytes) is no policy version", version.len()),
    ))
}

fn with_spoke_id<T>(msg: T, id: &str) -> Request<T> {
    let mut r = forwarded(msg);
    if let Ok(v) = MetadataValue::try_from(id) {
        r.metadata_mut().insert(SPOKE_ID_HEADER, v);
    }
    r
}

/// A spoke's call forwarded to the leader: a client there, and the request stamped with
/// the spoke's id and what is left of the caller's deadline.
fn to_leader<T>(
    channel: tonic::transport::Channel,
    msg: T,
    spoke: &str,
    left: Duration,
) -> (
    pb::hub_spokes_client::HubSpokesClient<tonic::transport::Channel>,
    Request<T>,
) {
    let mut request = with_spoke_id(msg, spoke);
    request.set_timeout(left);
    let client = pb::hub_spokes_client::HubSpokesClient::new(channel)
        .max_decoding_message_size(vigo_common::limits::MAX_SMALL_ANSWER);
    (client, request)
}

#[tonic::async_trait]
impl pb::hub_spokes_server::HubSpokes for SpokesService {
    async fn register_spoke(
        &self,
        request: Request<pb::RegisterSpokeRequest>,
    ) -> Result<Response<pb::SpokeDirective>, Status> {
        let id = Self::spoke_id(&request)?;
        self.node.liveness.saw_spoke(&id);
        let request_deadline = request.extensions().get::<Deadline>().copied();
        let msg = request.into_inner();
        vigo_common::tls::split_address(&msg.address).map_err(HubError::from)?;
        let weight = spoke_weight(msg.weight)?;
        let node = &self.node;
        let fwd = msg.clone();
        let fwd_id = id.clone();
        let result = node.on_leader(
            budget(&request_deadline),
            async {
                let removed = node.read(|s| {
                    s.spokes
                        .get(&id)
                        .is_some_and(|sp| sp.state == SpokeState::Removed)
                });
                if removed {
                    return Err(HubError::Precondition(format!(
                        "spoke {id} was removed from the cluster; an operator adds it again \
                         with `vigocli spoke add {id}`"
                    )));
                }
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
            |c, left| {
                let (mut leader, request) = to_leader(c, fwd.clone(), &fwd_id, left);
                async move { leader.register_spoke(request).await }
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
        self.node.liveness.saw_spoke(&id);
        let request_deadline = request.extensions().get::<Deadline>().copied();
        let msg = request.into_inner();
        config_version(&msg.config_version)?;
        let node = &self.node;
        let fwd = msg.clone();
        let fwd_id = id.clone();
        let result = node
            .on_leader(
                budget(&request_deadline),
                async {
                    let now = now_ms();
                    // Liveness is this node's observation (`crate::liveness`); the log
                    // is written only when what the spoke serves changed.
                    let (changed, published) = node.read(|s| match s.spokes.get(&id) {
                        None => Err(HubError::NotFound(format!("spoke {id} is not registered"))),
                        Some(sp) => Ok((
                            sp.config_version != msg.config_version,
                            msg.config_version.is_empty()
                                || s.configs.iter().any(|c| c.version == msg.config_version),
                        )),
                    })?;
                    // What a spoke says it serves is a claim: a version the cluster
                    // never published is not recorded (the directive still tells the
                    // spoke what to serve), and changes are written at a bounded rate.
                    if changed && !published {
                        crate::metrics::claim_refused(&id, crate::metrics::Claim::ConfigVersion);
                    }
                    if changed && published && node.liveness.config_record_due(&id) {
                        node.propose_ok(Command::Heartbeat {
                            id: id.clone(),
                            config_version: msg.config_version.clone(),
                            at_ms: now,
                        })
                        .await?;
                    }
                    Ok(self.directive(id.clone()))
                },
                |c, left| {
                    let (mut leader, request) = to_leader(c, fwd.clone(), &fwd_id, left);
                    async move { leader.heartbeat(request).await }
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

    async fn get_revocations(
        &self,
        request: Request<pb::GetRevocationsRequest>,
    ) -> Result<Response<pb::RevocationList>, Status> {
        Self::spoke_id(&request)?;
        let after = request.into_inner().after;
        Ok(Response::new(
            self.node.read(|s| crate::revocations::list(s, after)),
        ))
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
        let caller = peer(&request);
        let signed = request.into_inner();
        let body: pb::LocateBody = prost::Message::decode(signed.body.clone())
            .map_err(|e| HubError::malformed("locate body", e))?;
        let signature = signing::parse_signature(&signed.signature).map_err(HubError::from)?;
        let id = EnvoyId::new(body.envoy_id)
            .ok_or_else(|| HubError::malformed("envoy_id", "is zero"))?;
        // Only the envoy itself asks where it is pinned.
        if !matches!(caller, Peer::Envoy { id: cert, .. } if cert == id) {
            return Err(Status::permission_denied(format!(
                "only envoy {id}'s own certificate may locate it"
            )));
        }
        let (key, spoke) = self
            .node
            .read(|s| {
                s.pins.get(&id.get()).map(|p| {
                    let address = s.spokes.get(&p.spoke).map(|sp| sp.address.clone());
                    (p.key, (p.spoke.clone(), address.unwrap_or_default()))
                })
            })
            .ok_or_else(|| HubError::NotFound(format!("envoy {id} is not pinned")))?;
        let skew = vigo_common::time::skew_ms(body.timestamp_ms, now_ms());
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
