//! Putting a hub node together: storage, raft, the services on one TLS port, metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tracing::info;
use vigo_common::pki::CertAuthority;
use vigo_common::tls::{self, AcceptLimits, ClientAuth};
use vigo_common::{fsutil, signing};
use vigo_proto::v1 as pb;

use crate::config::HubConfig;
use crate::enroll::{Enroller, EnrollmentService};
use crate::error::HubError;
use crate::node::{Node, Peers};
use crate::raft::HubRaft;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Isolation, Network, RaftService};
use crate::raft::state_machine::StateMachineStore;
use crate::services::{AdminService, LocateService, SpokesService};
use crate::state::Command;

/// Largest message between hub nodes (snapshot chunks) and from admins (policy trees).
const MAX_MESSAGE: usize = 32 << 20;

/// A running hub node.
pub struct HubNode {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    config: HubConfig,
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    serving: tokio::sync::Mutex<Option<JoinHandle<Result<(), tonic::transport::Error>>>>,
}

fn raft_config(c: &HubConfig) -> Result<Arc<Config>, HubError> {
    let config = Config {
        cluster_name: "vigo-hub".into(),
        heartbeat_interval: c.raft.heartbeat.as_millis() as u64,
        election_timeout_min: c.raft.election_timeout_min.as_millis() as u64,
        election_timeout_max: c.raft.election_timeout_max.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.raft.snapshot_every),
        max_in_snapshot_log_to_keep: c.raft.keep_logs,
        snapshot_max_chunk_size: 4 << 20,
        ..Default::default()
    };
    Ok(Arc::new(
        config
            .validate()
            .map_err(|e| HubError::Raft(e.to_string()))?,
    ))
}

impl HubNode {
    /// Opens this node's raft storage and serves. `metrics` is the process's Prometheus
    /// handle, when it exports metrics.
    pub async fn start(
        config: HubConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, HubError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            HubError::Common(vigo_common::Error::File {
                path: config.data_dir.clone(),
                why: e.to_string(),
            })
        })?;
        let log = LogStore::open(&config.data_dir.join("raft-log.redb"))
            .map_err(|e| HubError::Raft(e.to_string()))?;
        let (sm, view) = StateMachineStore::open(&config.data_dir.join("raft-snapshot.redb"))
            .map_err(HubError::Raft)?;

        let ca_pem = fsutil::read_to_string(&config.tls.ca_cert)?;
        let cert_pem = fsutil::read_to_string(&config.tls.cert)?;
        let key_pem = fsutil::read_to_string(&config.tls.key)?;
        let client_tls = Arc::new(tls::client_config(&ca_pem, Some((&cert_pem, &key_pem)))?);
        let server_tls = tls::server_config(&ca_pem, &cert_pem, &key_pem, ClientAuth::Optional)?;
        let isolation = Isolation::default();
        let network = Network {
            tls: client_tls.clone(),
            isolation: isolation.clone(),
        };
        let raft = HubRaft::new(config.node_id, raft_config(&config)?, network, log, sm)
            .await
            .map_err(|e| HubError::Raft(e.to_string()))?;
        let node = Arc::new(Node {
            id: config.node_id,
            advertise: config.advertise_address(),
            raft: raft.clone(),
            view,
            peers: Peers::new(client_tls),
            ca: CertAuthority::load(&config.tls.ca_cert, &config.tls.ca_key)?,
            isolation: isolation.clone(),
            commit_timeout: config.raft.commit_timeout,
        });
        let enroller = Arc::new(Enroller::new(
            node.clone(),
            config.raft.enroll_batch,
            60_000,
            6_000,
        ));

        let metrics_addr = match (metrics, config.metrics_listen) {
            (Some(handle), Some(addr)) => {
                let n = node.clone();
                let refresh = Arc::new(move || publish_metrics(&n));
                Some(vigo_common::telemetry::serve_metrics(addr, handle, refresh).await?)
            }
            _ => None,
        };

        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            HubError::Common(vigo_common::Error::Bind {
                what: "hub",
                addr: config.listen,
                why: e.to_string(),
            })
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| HubError::Raft(e.to_string()))?;
        let incoming = tls::tls_incoming(listener, Arc::new(server_tls), AcceptLimits::default());
        let router = Server::builder()
            .timeout(Duration::from_secs(30))
            .add_service(
                pb::hub_raft_server::HubRaftServer::new(RaftService {
                    raft: raft.clone(),
                    isolation,
                })
                .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                pb::enrollment_server::EnrollmentServer::new(EnrollmentService { enroller })
                    .max_decoding_message_size(64 << 10),
            )
            .add_service(pb::hub_locate_server::HubLocateServer::new(LocateService {
                node: node.clone(),
            }))
            .add_service(pb::hub_spokes_server::HubSpokesServer::new(SpokesService {
                node: node.clone(),
            }))
            .add_service(
                pb::hub_admin_server::HubAdminServer::new(AdminService { node: node.clone() })
                    .max_decoding_message_size(MAX_MESSAGE),
            );
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = shutdown_rx.await;
        }));
        info!(node = config.node_id, %addr, advertise = %config.advertise_address(), "hub node serving");
        Ok(Self {
            node,
            addr,
            metrics_addr,
            config,
            shutdown: std::sync::Mutex::new(Some(shutdown)),
            serving: tokio::sync::Mutex::new(Some(serving)),
        })
    }

    /// Founds the cluster with this node as its only member (a no-op on a node that is
    /// already part of one), then records the CA and the bundle-signing key.
    pub async fn found(&self) -> Result<(), HubError> {
        let raft = &self.node.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| HubError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(self.node.id, BasicNode::new(&self.node.advertise))]);
            raft.initialize(members)
                .await
                .map_err(|e| HubError::Raft(e.to_string()))?;
            info!(node = self.node.id, "cluster founded");
        }
        raft.wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| HubError::Raft(e.to_string()))?;
        if self.node.read(|s| s.ca_cert_pem.is_empty())
            && matches!(self.node.leader()?, crate::node::Leader::Here)
        {
            let bundle = signing::read_key_file(&self.config.bundle_signing_key)?;
            self.node
                .propose_ok(Command::Found {
                    ca_cert_pem: self.node.ca.cert_pem().to_string(),
                    bundle_keys: vec![bundle.verifying_key().to_bytes()],
                })
                .await?;
        }
        Ok(())
    }

    /// Cuts this node off from (or back into) raft traffic: partition tests.
    pub fn isolate(&self, isolated: bool) {
        self.node.isolation.set(isolated);
    }

    /// Stops serving and shuts raft down; storage is closed when the node is dropped.
    pub async fn shutdown(&self) {
        if let Some(s) = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = s.send(());
        }
        if let Some(mut serving) = self.serving.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut serving)
                .await
                .is_err()
        {
            serving.abort();
        }
        let _ = self.node.raft.shutdown().await;
        info!(node = self.node.id, "hub node stopped");
    }

    /// Waits until the server stops on its own.
    pub async fn serving(&self) -> Result<(), HubError> {
        let Some(serving) = self.serving.lock().await.take() else {
            return Ok(());
        };
        match serving.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HubError::Raft(e.to_string())),
            Err(_) => Ok(()),
        }
    }
}

fn publish_metrics(node: &Node) {
    let m = node.raft.metrics().borrow().clone();
    metrics::gauge!("vigo_hub_raft_term").set(m.current_term as f64);
    metrics::gauge!("vigo_hub_raft_leader").set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("vigo_hub_raft_is_leader").set(if m.current_leader == Some(node.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("vigo_hub_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("vigo_hub_raft_applied_index")
        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
    node.read(|s| {
        metrics::gauge!("vigo_hub_pins").set(s.pins.len() as f64);
        for (spoke, n) in s.pin_counts() {
            metrics::gauge!("vigo_hub_spoke_pins", "spoke" => spoke.to_string()).set(n as f64);
        }
    });
}
