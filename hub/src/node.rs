//! One hub node: its raft handle, the replicated view it reads, and the channels it
//! uses to reach other hub nodes (forwarding writes to the leader) and spokes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use rustls::ClientConfig;
use tonic::transport::Channel;
use vigo_common::pki::CertAuthority;
use vigo_common::tls;

use crate::error::HubError;
use crate::raft::network::Isolation;
use crate::raft::state_machine::SharedView;
use crate::raft::{HubRaft, NodeId};
use crate::state::{Applied, ClusterState, Command};

/// Response header of a write answered by the leader: the log index it had applied.
pub const APPLIED_INDEX_HEADER: &str = "vigo-applied-index";
/// How long a follower waits to apply a write it forwarded before answering anyway.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where writes go.
pub enum Leader {
    /// This node leads: handle the write here.
    Here,
    /// Forward the call to this address.
    There(String),
}

/// Cached gRPC channels to peers (hub nodes and spokes), over mTLS with this node's
/// hub certificate.
pub struct Peers {
    to_hubs: Arc<ClientConfig>,
    to_spokes: Arc<ClientConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// `to_hubs` and `to_spokes` each accept only that role's server certificates.
    pub fn new(to_hubs: Arc<ClientConfig>, to_spokes: Arc<ClientConfig>) -> Self {
        Self {
            to_hubs,
            to_spokes,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A channel to the hub node at `address` (the leader, to forward to).
    pub fn hub(&self, address: &str) -> Result<Channel, HubError> {
        self.channel(address, &self.to_hubs, "hub")
    }

    /// A channel to the spoke at `address`.
    pub fn spoke(&self, address: &str) -> Result<Channel, HubError> {
        self.channel(address, &self.to_spokes, "spoke")
    }

    fn channel(
        &self,
        address: &str,
        tls: &Arc<ClientConfig>,
        role: &str,
    ) -> Result<Channel, HubError> {
        let key = format!("{role} {address}");
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let c = tls::channel(address, tls.clone(), Duration::from_secs(3))?;
        channels.insert(key, c.clone());
        Ok(c)
    }
}

pub struct Node {
    pub id: NodeId,
    pub advertise: String,
    pub raft: HubRaft,
    pub view: SharedView,
    pub peers: Peers,
    pub ca: CertAuthority,
    pub isolation: Isolation,
    pub commit_timeout: Duration,
    /// Config versions the replicated state keeps (`keep_config_versions`).
    pub keep_configs: u32,
    /// Certificates this node's servers refuse (kept by the state machine).
    pub revoked: Arc<vigo_common::net::RevokedCerts>,
}

impl Node {
    /// Reads the replicated state (this node's copy: possibly a little behind).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()).state)
    }

    /// Where a write must be handled now.
    pub fn leader(&self) -> Result<Leader, HubError> {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(id) if id == self.id => Ok(Leader::Here),
            Some(id) => metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| Leader::There(n.addr.clone()))
                .ok_or(HubError::NoLeader),
            None => Err(HubError::NoLeader),
        }
    }

    /// Commits a command through raft (this node must lead) and returns how it applied.
    pub async fn propose(&self, command: Command) -> Result<Applied, HubError> {
        let write = tokio::time::timeout(self.commit_timeout, self.raft.client_write(command));
        match write.await {
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(HubError::NoLeader)
            }
            Ok(Err(e)) => Err(HubError::Raft(e.to_string())),
            // Proposed and not answered: the entry may still commit.
            Err(_) => Err(HubError::OutcomeUnknown {
                waited_ms: self.commit_timeout.as_millis() as u64,
            }),
        }
    }

    /// Runs `here` when this node leads; otherwise calls `there` with a channel to the
    /// leader (the caller sends the same request there) and returns its answer.
    pub async fn on_leader<T, ThereFut>(
        &self,
        here: impl std::future::Future<Output = Result<T, HubError>>,
        there: impl FnOnce(Channel) -> ThereFut,
    ) -> Result<T, HubError>
    where
        ThereFut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.leader()? {
            Leader::Here => here.await,
            Leader::There(addr) => {
                let response = there(self.peers.hub(&addr)?)
                    .await
                    .map_err(HubError::Forward)?;
                self.catch_up(response.metadata()).await;
                Ok(response.into_inner())
            }
        }
    }

    /// The index this node has applied up to, for a forwarded write's answer.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Read-your-writes after a forwarded write: waits (briefly) until this node has
    /// applied what the leader had when it answered, so the caller's next read here sees
    /// its write.
    async fn catch_up(&self, metadata: &tonic::metadata::MetadataMap) {
        let Some(index) = metadata
            .get(APPLIED_INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        let _ = self
            .raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .applied_index_at_least(Some(index), "a forwarded write")
            .await;
    }

    /// As [`Node::propose`], expecting plain success.
    pub async fn propose_ok(&self, command: Command) -> Result<(), HubError> {
        match self.propose(command).await? {
            Applied::Refused(why) => Err(HubError::Rejected(why)),
            _ => Ok(()),
        }
    }
}
