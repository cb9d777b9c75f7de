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
use vigo_proto::v1 as pb;

/// Response header of a write answered by the leader: the log index it had applied.
pub const APPLIED_INDEX_HEADER: &str = "vigo-applied-index";
/// How long a follower waits to apply a write it forwarded before answering anyway.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before asking again when the node taken for the leader says it is not.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

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
        let c = tls::peer_channel(address, tls.clone(), Duration::from_secs(3))?;
        channels.insert(key, c.clone());
        Ok(c)
    }

    /// Drops the channel to the spoke at `address` after a call to it failed: the next
    /// call connects afresh instead of queueing on a connection that may be dead.
    pub fn forget_spoke(&self, address: &str) {
        let key = format!("spoke {address}");
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
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
    /// How often a compliance roll-up is kept in the history.
    pub compliance_sample_every: std::time::Duration,
    /// Certificates this node's servers refuse (kept by the state machine).
    pub revoked: Arc<vigo_common::net::RevokedCerts>,
    /// Spokes and hub nodes heard from lately (not replicated).
    pub liveness: Arc<crate::liveness::Liveness>,
    /// Held while this node moves envoys (one move at a time: an operator's, or the
    /// resumer finishing one a previous leader left open).
    pub moving: tokio::sync::Mutex<()>,
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
    /// leader (the caller sends the same request there) and returns its answer — all
    /// within `budget`, the caller's own deadline.
    ///
    /// The leader may change while a forward is in flight (a frozen or cut-off leader
    /// answers nothing): when this node sees a new leader, it drops the forward and
    /// sends the request to the new one, or runs `here` if it leads now. That is safe
    /// because admin writes are applied once per request id. Without a leader, it waits
    /// for one until the budget runs out.
    pub async fn on_leader<T, ThereFut>(
        &self,
        budget: Duration,
        here: impl std::future::Future<Output = Result<T, HubError>>,
        mut there: impl FnMut(Channel, Duration) -> ThereFut,
    ) -> Result<T, HubError>
    where
        ThereFut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let mut metrics = self.raft.metrics();
        loop {
            let seen = metrics.borrow_and_update().current_leader;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let leader = match self.leader() {
                Ok(l) => l,
                Err(HubError::NoLeader) if !left.is_zero() => {
                    let _ = tokio::time::timeout(left, metrics.changed()).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let addr = match leader {
                Leader::Here => return here.await,
                Leader::There(addr) => addr,
            };
            if left.is_zero() {
                return Err(HubError::OutcomeUnknown {
                    waited_ms: budget.as_millis() as u64,
                });
            }
            let forward = there(self.peers.hub(&addr)?, left);
            let changed = async {
                loop {
                    if metrics.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    if metrics.borrow_and_update().current_leader != seen {
                        return;
                    }
                }
            };
            tokio::select! {
                answer = forward => match answer {
                    Ok(response) => {
                        self.catch_up(response.metadata()).await;
                        return Ok(response.into_inner());
                    }
                    // The node we took for the leader is not (any more), or could not
                    // commit in time: ask again, of whoever leads — the request id makes
                    // a write that did commit answer its first outcome.
                    Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
                        && tokio::time::Instant::now() < deadline =>
                    {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let _ = tokio::time::timeout(left.min(RETRY_PAUSE), metrics.changed()).await;
                    }
                    Err(s) => return Err(HubError::Forward(s)),
                },
                () = changed => {
                    tracing::info!(from = %addr, "the leader changed during a forwarded call; sending it to the new leader");
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(HubError::OutcomeUnknown {
                        waited_ms: budget.as_millis() as u64,
                    });
                }
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

    /// Brings this node's copy of the state up to what the leader had committed when
    /// asked (raft's read index), so a read here sees every write acknowledged before
    /// it: a token revoked a moment ago through another node is revoked here too. A
    /// leader that does not answer is asked again once another node leads, within
    /// `within`.
    pub async fn read_fresh(&self, within: Duration) -> Result<(), HubError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut metrics = self.raft.metrics();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_index(left).await {
                Ok(Some(index)) => {
                    return self
                        .raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(index), "a fresh read")
                        .await
                        .map(|_| ())
                        .map_err(|e| HubError::Raft(format!("catching up to the leader: {e}")));
                }
                Ok(None) => return Ok(()),
                Err(e) if left.is_zero() => return Err(e),
                Err(_) => {
                    let pause = left.min(RETRY_PAUSE);
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                    metrics.borrow_and_update();
                }
            }
        }
    }

    /// The leader's read index (`None` when this node leads and has confirmed it).
    async fn read_index(&self, within: Duration) -> Result<Option<u64>, HubError> {
        match self.leader()? {
            Leader::Here => {
                tokio::time::timeout(within, self.raft.ensure_linearizable())
                    .await
                    .map_err(|_| HubError::NoLeader)?
                    .map_err(|e| HubError::Raft(e.to_string()))?;
                Ok(None)
            }
            Leader::There(_) if self.isolation.is_set() => Err(HubError::Raft(
                "this node is cut off from the other hubs".into(),
            )),
            Leader::There(addr) => {
                let mut client = pb::hub_raft_client::HubRaftClient::new(self.peers.hub(&addr)?);
                let mut request = tonic::Request::new(pb::ReadIndexRequest {});
                request.set_timeout(within.max(Duration::from_millis(1)));
                let index = client
                    .read_index(request)
                    .await
                    .map_err(|s| {
                        HubError::Raft(format!("read index from the leader: {}", s.message()))
                    })?
                    .into_inner()
                    .index;
                Ok(Some(index))
            }
        }
    }

    /// As [`Node::propose`], expecting plain success.
    pub async fn propose_ok(&self, command: Command) -> Result<(), HubError> {
        match self.propose(command).await? {
            Applied::Refused(why) => Err(HubError::Rejected(why)),
            _ => Ok(()),
        }
    }
}
