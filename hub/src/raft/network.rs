//! Raft between hub nodes: openraft's three RPCs over tonic with mutual TLS (hub
//! certificates), requests and replies encoded with postcard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vigo_common::net::PeerInfo;
use vigo_common::pki::Role;
use vigo_common::tls;
use vigo_proto::v1 as pb;

use super::{HubRaft, NodeId, TypeConfig};

type Client = pb::hub_raft_client::HubRaftClient<Channel>;

/// Cuts a node off from raft traffic in both directions: its RPCs to peers fail and
/// peers' RPCs to it are refused. Used to test partitions on one machine.
#[derive(Clone, Default)]
pub struct Isolation(Arc<AtomicBool>);

impl Isolation {
    pub fn set(&self, isolated: bool) {
        self.0.store(isolated, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// Makes clients to peer hub nodes.
pub struct Network {
    pub tls: Arc<ClientConfig>,
    pub isolation: Isolation,
    /// Told of every peer that answers.
    pub liveness: Arc<crate::liveness::Liveness>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            liveness: self.liveness.clone(),
            client: tls::peer_channel(&node.addr, self.tls.clone(), Duration::from_secs(3))
                .map(|c| {
                    Client::new(c)
                        .max_decoding_message_size(crate::admission::MAX_RAFT_MESSAGE)
                        .max_encoding_message_size(crate::admission::MAX_RAFT_MESSAGE)
                })
                .map_err(|e| e.to_string()),
            isolation: self.isolation.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    liveness: Arc<crate::liveness::Liveness>,
    client: Result<Client, String>,
    isolation: Isolation,
}

impl Peer {
    /// Sends one RPC; `entries` is how many log entries it carries (0 but for
    /// AppendEntries), so a batch over the message limit is answered
    /// `PayloadTooLarge` and openraft sends it again in smaller parts.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &Req,
        entries: u64,
        ttl: Duration,
        method: impl AsyncFnOnce(
            &mut Client,
            Request<pb::RaftPayload>,
        ) -> Result<Response<pb::RaftPayload>, Status>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable =
            |why: String| RPCError::Unreachable(Unreachable::new(&TransportError(why)));
        if self.isolation.is_set() {
            return Err(unreachable("this node is isolated".into()));
        }
        let client = self.client.as_mut().map_err(|e| unreachable(e.clone()))?;
        let data = postcard::to_allocvec(rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        if let Some(hint) = split_hint(entries, data.len()) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let mut request = Request::new(pb::RaftPayload { data: data.into() });
        request.set_timeout(ttl);
        let reply = method(client, request)
            .await
            .map_err(|s| match s.code() {
                // The peer's limit is smaller than ours (another build): halve.
                tonic::Code::ResourceExhausted | tonic::Code::OutOfRange if entries > 1 => {
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2))
                }
                _ => unreachable(format!("{}: {}", s.code(), s.message())),
            })?
            .into_inner();
        self.liveness.heard_from(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        self.call(&rpc, entries, option.hard_ttl(), async |c, r| {
            c.append_entries(r).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, 0, option.hard_ttl(), async |c, r| {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, 0, option.hard_ttl(), async |c, r| c.vote(r).await)
            .await
    }
}

/// Room in a raft message for the gRPC envelope around the payload.
const ENVELOPE: usize = 1024;

/// When `encoded` bytes carrying `entries` log entries exceed the message limit: how
/// many entries to send instead (a proportional share, at most half, at least one).
/// `None` when the message fits, or is one entry (which admission keeps under the
/// limit: a config is at most 16 MiB).
fn split_hint(entries: u64, encoded: usize) -> Option<u64> {
    let limit = crate::admission::MAX_RAFT_MESSAGE - ENVELOPE;
    if encoded <= limit || entries <= 1 {
        return None;
    }
    let share = (entries as u128 * limit as u128 / encoded as u128) as u64;
    Some(share.clamp(1, entries / 2))
}

/// The receiving side: peers' RPCs handed to the local raft node.
pub struct RaftService {
    pub raft: HubRaft,
    pub isolation: Isolation,
}

impl RaftService {
    fn check(&self, request: &Request<pb::RaftPayload>) -> Result<(), Status> {
        let role = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.peer.role());
        if role != Some(Role::Hub) {
            return Err(Status::permission_denied(
                "raft traffic needs a hub certificate",
            ));
        }
        if self.isolation.is_set() {
            return Err(Status::unavailable("this node is isolated"));
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(r: Request<pb::RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&r.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("raft payload: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    postcard::to_allocvec(v)
        .map(|d| Response::new(pb::RaftPayload { data: d.into() }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::hub_raft_server::HubRaft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&request)?;
        reply(&self.raft.append_entries(decode(request)?).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&request)?;
        reply(&self.raft.vote(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&request)?;
        reply(&self.raft.install_snapshot(decode(request)?).await)
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        if self.isolation.is_set() {
            return Err(Status::unavailable("this node is isolated"));
        }
        let role = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.peer.role());
        if role != Some(Role::Hub) {
            return Err(Status::permission_denied("needs a hub certificate"));
        }
        match self.raft.ensure_linearizable().await {
            Ok(read) => Ok(Response::new(pb::ReadIndexResponse {
                index: read.map_or(0, |l| l.index),
            })),
            Err(e) => Err(Status::unavailable(format!("not the leader now: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 16 MiB entries for a lagging follower once stalled replication for good
    /// (every failure was "unreachable", which openraft only backs off on): now the
    /// batch is split until each part fits.
    #[test]
    fn a_batch_over_the_limit_is_split_until_it_fits() {
        let mib = 1 << 20;
        assert_eq!(split_hint(2, 33 * mib), Some(1));
        assert_eq!(split_hint(100, 64 * mib), Some(49));
        assert_eq!(split_hint(1000, 20 * mib), None, "fits");
        assert_eq!(split_hint(1, 40 * mib), None, "one entry cannot be split");
        assert_eq!(split_hint(3, usize::MAX), Some(1));
    }
}
