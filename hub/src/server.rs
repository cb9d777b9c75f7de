//! Putting a hub node together: storage, raft, the services on one TLS port, metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;
use vigo_common::net::RevokedCerts;
use vigo_common::net::health::Health;
use vigo_common::net::{Guarded, Http1Limits, Serving, serve_grpc};
use vigo_common::pki::{CertAuthority, Role};
use vigo_common::time::now_ms;
use vigo_common::tls::{self, ClientAuth};
use vigo_common::{fsutil, signing};
use vigo_proto::v1 as pb;

use crate::admin::grpc::AdminGrpc;
use crate::admin::{AdminApi, Caller};
use crate::admission;
use crate::config::HubConfig;
use crate::enroll::{Enroller, EnrollmentService};
use crate::error::HubError;
use crate::node::{Node, Peers};
use crate::raft::HubRaft;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Isolation, Network, RaftService};
use crate::raft::state_machine::StateMachineStore;
use crate::services::{LocateService, SpokesService};
use crate::state::{ApiRole, ApiToken, BundleKeys, Command};

/// A running hub node.
pub struct HubNode {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the REST admin API listens, if it does.
    pub admin_addr: Option<SocketAddr>,
    pub api: Arc<AdminApi>,
    background: Vec<JoinHandle<()>>,
    health: Health,
    config: HubConfig,
    /// The hub port's server, then the REST port's when there is one.
    servers: tokio::sync::Mutex<Vec<Serving>>,
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
        mut config: HubConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, HubError> {
        // The hub port and the admin listener each hold up to the connection cap.
        let listeners = 1 + u64::from(config.admin_listen.is_some());
        config.connections.fit_descriptors(listeners)?;
        // The replicated state holds the bundle-signing keys and token hashes: the data
        // directory is the hub's alone (0700).
        fsutil::create_private_dir(&config.data_dir)?;
        let log = LogStore::open(&config.data_dir.join("raft-log.redb"))
            .map_err(|e| HubError::Raft(e.to_string()))?;
        let revoked = Arc::new(RevokedCerts::default());
        let (sm, view) =
            StateMachineStore::open(&config.data_dir.join("raft-snapshot.redb"), revoked.clone())
                .map_err(HubError::Raft)?;

        let ca_pem = fsutil::read_to_string(&config.tls.ca_cert)?;
        let cert_pem = fsutil::read_to_string(&config.tls.cert)?;
        let key_pem = fsutil::read_to_string(&config.tls.key)?;
        let identity = Some((cert_pem.as_str(), key_pem.as_str()));
        // A node whose certificate was revoked serves no other node.
        let refusing = |role| tls::client_config_refusing(&ca_pem, identity, role, revoked.clone());
        let to_hubs = Arc::new(refusing(&[Role::Hub])?);
        let to_spokes = Arc::new(refusing(&[Role::Spoke])?);
        let server_tls = tls::server_config(&ca_pem, &cert_pem, &key_pem, ClientAuth::Optional)?;
        let isolation = Isolation::default();
        let liveness = Arc::new(crate::liveness::Liveness::default());
        let network = Network {
            tls: to_hubs.clone(),
            isolation: isolation.clone(),
            liveness: liveness.clone(),
        };
        let raft = HubRaft::new(config.node_id, raft_config(&config)?, network, log, sm)
            .await
            .map_err(|e| HubError::Raft(e.to_string()))?;
        let node = Arc::new(Node {
            id: config.node_id,
            advertise: config.advertise_address(),
            raft: raft.clone(),
            view,
            peers: Peers::new(to_hubs, to_spokes),
            ca: CertAuthority::load(&config.tls.ca_cert, &config.tls.ca_key)?,
            isolation: isolation.clone(),
            commit_timeout: config.raft.commit_timeout,
            keep_configs: config.keep_config_versions,
            compliance_sample_every: config.compliance.sample_every,
            revoked: revoked.clone(),
            liveness,
            moving: tokio::sync::Mutex::new(()),
        });
        let enroller = Arc::new(Enroller::new(
            node.clone(),
            config.raft.enroll_batch,
            60_000,
            6_000,
        ));

        let api = Arc::new(AdminApi::new(node.clone()));
        let background = vec![
            tokio::spawn(roll_up_compliance(api.clone(), config.compliance.clone())),
            tokio::spawn(resume_moves(node.clone())),
            tokio::spawn(crate::dispatch::run(node.clone())),
        ];
        let rest = match config.admin_listen {
            None => None,
            Some(addr) => Some(
                serve_rest(
                    addr,
                    api.clone(),
                    server_tls.clone(),
                    config.connections.accept_limits(),
                    Http1Limits {
                        header_read: config.connections.first_request_timeout,
                        ..Default::default()
                    },
                )
                .await?,
            ),
        };
        let admin_addr = rest.as_ref().map(|r| r.local);

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
        let admin_table: Arc<dyn vigo_common::net::Admit> =
            Arc::new(admission::HubAdmin(node.clone()));
        let (health, health_service) =
            vigo_common::net::health::service(HUB_SERVICES, revoked.clone()).await;
        let mut background = background;
        background.push(tokio::spawn(report_health(node.clone(), health.clone())));
        let (reflection, reflection_alpha) = crate::admin::reflection::services();
        let routes = tonic::service::Routes::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                Guarded::new(
                    pb::hub_raft_server::HubRaftServer::new(RaftService {
                        raft: raft.clone(),
                        isolation,
                    })
                    .max_decoding_message_size(admission::MAX_RAFT_MESSAGE),
                    Arc::new(admission::Raft),
                )
                .refusing(revoked.clone()),
            )
            .add_service(
                Guarded::new(
                    pb::enrollment_server::EnrollmentServer::new(EnrollmentService { enroller })
                        .max_decoding_message_size(64 << 10),
                    Arc::new(admission::Enrollment),
                )
                .refusing(revoked.clone()),
            )
            .add_service(
                Guarded::new(
                    pb::hub_locate_server::HubLocateServer::new(LocateService {
                        node: node.clone(),
                    })
                    .max_decoding_message_size(4 << 10),
                    Arc::new(admission::Locate),
                )
                .refusing(revoked.clone()),
            )
            .add_service(
                Guarded::new(
                    pb::hub_spokes_server::HubSpokesServer::new(SpokesService {
                        node: node.clone(),
                    })
                    .max_decoding_message_size(64 << 10),
                    Arc::new(admission::Spokes),
                )
                .refusing(revoked.clone()),
            )
            .add_service(
                Guarded::new(
                    vigo_proto::admin::v1::hub_admin_server::HubAdminServer::new(AdminGrpc {
                        api: api.clone(),
                    })
                    .max_decoding_message_size(vigo_common::limits::MAX_CONFIG_MESSAGE),
                    admin_table,
                )
                .refusing(revoked.clone()),
            )
            .clone()
            .routes();
        let serving = serve_grpc(
            listener,
            Arc::new(server_tls),
            config.connections.accept_limits(),
            config.http2_limits(),
            routes,
            "hub",
        )
        .map_err(|e| HubError::Raft(e.to_string()))?;
        let servers = std::iter::once(serving).chain(rest).collect();
        info!(node = config.node_id, %addr, advertise = %config.advertise_address(), "hub node serving");
        Ok(Self {
            node,
            addr,
            metrics_addr,
            admin_addr,
            api,
            background,
            health,
            config,
            servers: tokio::sync::Mutex::new(servers),
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
            let bundle = match &self.config.bundle_signing_key {
                Some(path) => signing::read_key_file(path)?,
                None => signing::generate_key(),
            };
            self.node
                .propose_ok(Command::Found {
                    ca_cert_pem: self.node.ca.cert_pem().to_string(),
                    bundle_keys: BundleKeys::founding(bundle.to_bytes(), now_ms()),
                })
                .await?;
            info!(key = %hex::encode(bundle.verifying_key().as_bytes()), "bundle-signing key in force");
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
        self.health.set(false).await;
        for serving in self.servers.lock().await.drain(..) {
            serving.stop(Duration::from_secs(5)).await;
        }
        for task in &self.background {
            task.abort();
        }
        let _ = self.node.raft.shutdown().await;
        info!(node = self.node.id, "hub node stopped");
    }

    /// Waits until the server stops on its own (its accept loop ended: a bug).
    pub async fn serving(&self) -> Result<(), HubError> {
        let mut servers = self.servers.lock().await;
        match servers.first_mut() {
            Some(grpc) => {
                grpc.ended().await;
                Err(HubError::Internal("the hub port stopped accepting".into()))
            }
            None => Ok(()),
        }
    }
}

/// Serves the REST admin API over HTTPS with this node's certificate.
async fn serve_rest(
    addr: SocketAddr,
    api: Arc<AdminApi>,
    mut tls: rustls::ServerConfig,
    accept: vigo_common::net::AcceptLimits,
    http: Http1Limits,
) -> Result<Serving, HubError> {
    let bind_err = |e: std::io::Error| {
        HubError::Common(vigo_common::Error::Bind {
            what: "admin API",
            addr,
            why: e.to_string(),
        })
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let app = crate::admin::rest::router(api.clone()).merge(crate::console::router(api));
    let serving = vigo_common::net::serve_http1(
        listener,
        Some(Arc::new(tls)),
        accept,
        http,
        app,
        "admin-api",
    )
    .map_err(bind_err)?;
    let local = serving.local;
    info!(%local, "admin API at https://{local}/api/v1/ (document: /api/v1/openapi.json), web console at https://{local}/console/");
    Ok(serving)
}

/// The gRPC services of the hub port, as the health service names them.
const HUB_SERVICES: &[&str] = &[
    vigo_proto::admin::v1::hub_admin_server::SERVICE_NAME,
    pb::hub_spokes_server::SERVICE_NAME,
    pb::enrollment_server::SERVICE_NAME,
    pb::hub_locate_server::SERVICE_NAME,
    pb::hub_raft_server::SERVICE_NAME,
];

/// Ready (SERVING) while this node is a member of a cluster that has a leader.
async fn report_health(node: Arc<Node>, health: Health) {
    let mut metrics = node.raft.metrics();
    let mut reported = None;
    loop {
        let ready = {
            let m = metrics.borrow_and_update();
            m.current_leader.is_some()
                && m.membership_config
                    .membership()
                    .get_node(&node.id)
                    .is_some()
        };
        if reported != Some(ready) {
            health.set(ready).await;
            info!(ready, "health");
            reported = Some(ready);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// On the leader, finishes the moves a previous leader (or a failed step) left open.
async fn resume_moves(node: Arc<Node>) {
    let mut tick = tokio::time::interval(RESUME_MOVES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leads = matches!(node.leader(), Ok(crate::node::Leader::Here));
        if !leads || node.read(|s| s.moves.is_empty()) {
            continue;
        }
        match crate::admin::moves::resume(&node).await {
            Ok(n) => info!(envoys = n, "open moves finished"),
            Err(e) => tracing::warn!(error = %e, "open moves not finished yet; trying again"),
        }
    }
}

/// How often the leader looks for moves left open.
const RESUME_MOVES_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the fleet compliance gauges from the spokes' counters, on the leader, and
/// keeps one roll-up every `sample_every` in the replicated history.
async fn roll_up_compliance(api: Arc<AdminApi>, config: crate::config::ComplianceConfig) {
    let caller = Caller::hub(ApiRole::Viewer);
    // The first roll-up waits a period: at start-up the spokes are still registering.
    let period = config.roll_up_every;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !matches!(api.node.leader(), Ok(crate::node::Leader::Here)) {
            crate::metrics::withdraw_compliance();
            continue;
        }
        if api.node.read(|s| s.spokes.is_empty()) {
            continue;
        }
        let Ok(report) = api.compliance(&caller, Default::default()).await else {
            continue;
        };
        let now = vigo_common::time::now_ms();
        let due = api.node.read(|s| {
            s.compliance_history
                .last_at()
                .is_none_or(|at| now >= at + config.sample_every.as_millis() as u64)
        });
        if due {
            let fleet = report.fleet.unwrap_or_default();
            let sample = crate::state::ComplianceSample {
                at_ms: now,
                by_status: fleet.by_status.into_iter().collect(),
                total: fleet.total,
                missing: report.missing.into_iter().map(|m| m.spoke).collect(),
            };
            if let Err(e) = api.node.propose_ok(Command::SampleCompliance(sample)).await {
                tracing::warn!(error = %e, "keeping a compliance sample failed; the next roll-up tries again");
            }
        }
    }
}
