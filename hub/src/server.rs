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

use crate::admin::grpc::AdminGrpc;
use crate::admin::{AdminApi, Caller};
use crate::config::HubConfig;
use crate::enroll::{Enroller, EnrollmentService};
use crate::error::HubError;
use crate::node::{Node, Peers};
use crate::raft::HubRaft;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Isolation, Network, RaftService};
use crate::raft::state_machine::StateMachineStore;
use crate::services::{LocateService, SpokesService};
use crate::state::{ApiRole, ApiToken, Command};

/// Largest message between hub nodes (snapshot chunks) and from admins (policy trees).
const MAX_MESSAGE: usize = 32 << 20;

/// A running hub node.
pub struct HubNode {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the REST admin API listens, if it does.
    pub admin_addr: Option<SocketAddr>,
    pub api: Arc<AdminApi>,
    background: Vec<JoinHandle<()>>,
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

        let api = Arc::new(AdminApi::new(node.clone()));
        let mut background = vec![tokio::spawn(roll_up_compliance(api.clone()))];
        let admin_addr = match config.admin_listen {
            None => None,
            Some(addr) => {
                let (local, task) = serve_rest(addr, api.clone(), server_tls.clone()).await?;
                background.push(task);
                Some(local)
            }
        };

        let metrics_addr = match (metrics, config.metrics_listen) {
            (Some(handle), Some(addr)) => {
                let n = node.clone();
                let refresh = Arc::new(move || crate::metrics::publish_raft(&n));
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
                vigo_proto::admin::v1::hub_admin_server::HubAdminServer::new(AdminGrpc {
                    api: api.clone(),
                })
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
            admin_addr,
            api,
            background,
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
        if self.node.read(|s| s.api_tokens.is_empty())
            && matches!(self.node.leader()?, crate::node::Leader::Here)
        {
            self.bootstrap_admin_token().await?;
        }
        Ok(())
    }

    /// The first admin API token, so an operator can start: its secret goes to
    /// `<data_dir>/admin.token` (0600) on the founding node, and only there.
    async fn bootstrap_admin_token(&self) -> Result<(), HubError> {
        let (secret, hash) = crate::admin::new_secret();
        let path = self.config.data_dir.join("admin.token");
        vigo_common::fsutil::write_atomic(&path, format!("{secret}\n").as_bytes(), 0o600)?;
        self.node
            .propose_ok(Command::CreateApiToken {
                hash,
                token: ApiToken {
                    name: "bootstrap-admin".into(),
                    role: ApiRole::Admin,
                    expires_ms: 0,
                    revoked: false,
                },
            })
            .await?;
        info!(path = %path.display(), "admin API token written (role admin); create others with `vigocli token create`");
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
        for task in &self.background {
            task.abort();
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

/// Serves the REST admin API over HTTPS with this node's certificate.
async fn serve_rest(
    addr: SocketAddr,
    api: Arc<AdminApi>,
    tls: rustls::ServerConfig,
) -> Result<(SocketAddr, JoinHandle<()>), HubError> {
    let bind_err = |e: std::io::Error| {
        HubError::Common(vigo_common::Error::Bind {
            what: "admin API",
            addr,
            why: e.to_string(),
        })
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let listener = tls::HttpsListener::new(listener, tls).map_err(bind_err)?;
    let local = axum::serve::Listener::local_addr(&listener).map_err(bind_err)?;
    let app = crate::admin::rest::router(api);
    info!(%local, "admin API at https://{local}/api/v1/ (document: /api/v1/openapi.json)");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API server stopped");
        }
    });
    Ok((local, task))
}

/// Refreshes the fleet compliance gauges from the spokes' counters.
async fn roll_up_compliance(api: Arc<AdminApi>) {
    let caller = Caller {
        name: "hub".into(),
        role: ApiRole::Viewer,
    };
    // The first roll-up waits a period: at start-up the spokes are still registering.
    let period = Duration::from_secs(15);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        if api.node.read(|s| s.spokes.is_empty()) {
            continue;
        }
        let _ = api.compliance(&caller, Default::default()).await;
    }
}
