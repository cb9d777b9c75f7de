//! An in-process cluster on loopback: hub nodes and spokes in hub mode, each with its own
//! data directory (real redb files), all talking real gRPC over mutual TLS. Nodes can be
//! stopped, restarted and cut off from raft traffic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::transport::Channel;
use vigo_common::pki::{PkiLayout, Role};
use vigo_common::signing::generate_key;
use vigo_common::tls;
use vigo_envoy::client::{self, ClientError, Identity};
use vigo_hub::state::ClusterState;
use vigo_hub::{HubConfig, HubNode};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_spoke::{Spoke, SpokeConfig};

use crate::{TestEnvoy, free_port, init};

/// The admin API client of a bearer token holder.
pub type TokenAdmin = api::hub_admin_client::HubAdminClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    hubs: Vec<std::sync::Mutex<Option<Arc<HubNode>>>>,
    hub_ports: Vec<u16>,
    pub spokes: Vec<Option<Spoke>>,
    spoke_ports: Vec<u16>,
    pub spoke_ids: Vec<String>,
    /// A secret the hub accepts (100,000 uses).
    pub token: String,
    /// The spokes' `checkin:` section (YAML).
    checkin: String,
    /// Lines added to every hub's config file.
    hub_extra: String,
}

pub type Admin = api::hub_admin_client::HubAdminClient<Channel>;

impl Cluster {
    /// Raft timings for tests: quick elections.
    pub const FAST_RAFT: &str = "{heartbeat: 100ms, election_timeout_min: 500ms, election_timeout_max: 1000ms, commit_timeout: 3s}";

    /// `hubs` hub nodes (ids 1..=hubs, the first founds the cluster, the others join as
    /// voters) and `spokes` spokes registered with them.
    pub async fn start(hubs: usize, spokes: &[&str]) -> Cluster {
        Self::start_with(hubs, spokes, Self::FAST_RAFT).await
    }

    /// As [`Cluster::start`] with the hubs' `raft:` section given as YAML ("{}" for the
    /// defaults).
    pub async fn start_with(hubs: usize, spokes: &[&str], raft: &str) -> Cluster {
        Self::start_tuned(hubs, spokes, raft, "{interval: 5m}").await
    }

    /// As [`Cluster::start_with`] with the spokes' `checkin:` section given as YAML.
    pub async fn start_tuned(hubs: usize, spokes: &[&str], raft: &str, checkin: &str) -> Cluster {
        Self::start_custom(hubs, spokes, raft, checkin, "").await
    }

    /// As [`Cluster::start_tuned`] with `hub_extra` (YAML lines) added to every hub's
    /// config.
    pub async fn start_custom(
        hubs: usize,
        spokes: &[&str],
        raft: &str,
        checkin: &str,
        hub_extra: &str,
    ) -> Cluster {
        init();
        let dir = tempfile::tempdir().expect("temp dir");
        let ids: Vec<u64> = (1..=hubs as u64).collect();
        let spoke_ids: Vec<String> = spokes.iter().map(|s| s.to_string()).collect();
        PkiLayout::new(dir.path().join("pki"))
            .init_cluster(&ids, &spoke_ids, &["localhost".into(), "127.0.0.1".into()])
            .expect("cluster pki");
        let mut cluster = Cluster {
            hub_ports: ids.iter().map(|_| free_port()).collect(),
            spoke_ports: spoke_ids.iter().map(|_| free_port()).collect(),
            hubs: ids.iter().map(|_| std::sync::Mutex::new(None)).collect(),
            spokes: spoke_ids.iter().map(|_| None).collect(),
            spoke_ids,
            token: vigo_spoke::tokens::new_secret(),
            checkin: checkin.to_string(),
            hub_extra: hub_extra.to_string(),
            dir,
        };
        for i in 0..hubs {
            cluster.write_hub_config(i, raft);
        }
        for j in 0..spokes.len() {
            cluster.write_spoke_config(j);
        }
        cluster.start_hub(0).await;
        cluster.hub(0).found().await.expect("found");
        for i in 1..hubs {
            cluster.start_hub(i).await;
            let id = i as u64 + 1;
            let address = cluster.hub_address(i);
            eventually(Duration::from_secs(30), || {
                let mut admin = cluster.admin(0);
                let address = address.clone();
                async move {
                    admin
                        .add_hub(api::AddHubRequest {
                            node_id: id,
                            address,
                            voter: true,
                        })
                        .await
                }
            })
            .await;
        }
        cluster.token = cluster
            .admin(0)
            .create_token(api::CreateTokenRequest {
                name: "fleet".into(),
                role: "enroll".into(),
                uses: 100_000,
                ..Default::default()
            })
            .await
            .expect("token")
            .into_inner()
            .secret;
        for j in 0..spokes.len() {
            cluster.start_spoke(j).await;
        }
        let expected = spokes.len();
        cluster
            .wait_until(Duration::from_secs(30), "every spoke registered", |s| {
                s.spokes.len() == expected
            })
            .await;
        cluster
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.dir.path().join("pki").join(file)
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.pki("ca.pem")).expect("ca.pem")
    }

    /// The admin API token `vigo-hub init` wrote on the founding node.
    pub fn api_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub-1").join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// A new admin API token `name` with `role` (admin, operator, viewer), made with
    /// the admin certificate through hub 0: its secret.
    pub async fn new_api_token(&self, name: &str, role: &str) -> String {
        self.admin(0)
            .create_token(api::CreateTokenRequest {
                name: name.into(),
                role: role.into(),
                ..Default::default()
            })
            .await
            .expect("token created")
            .into_inner()
            .secret
    }

    /// Where hub `i` serves the REST admin API.
    pub fn rest_address(&self, i: usize) -> std::net::SocketAddr {
        self.hub(i).admin_addr.expect("admin API enabled")
    }

    pub fn hub_address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.hub_ports[i])
    }

    pub fn spoke_address(&self, j: usize) -> String {
        format!("127.0.0.1:{}", self.spoke_ports[j])
    }

    fn hub_config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("hub-{}.yaml", i + 1))
    }

    fn write_hub_config(&self, i: usize, raft: &str) {
        let pki = self.dir.path().join("pki");
        let yaml = format!(
            "node_id: {id}\nlisten: 127.0.0.1:{port}\nmetrics_listen: null\nadmin_listen: 127.0.0.1:0\ndata_dir: hub-{id}\n\
             tls: {{ca_cert: {p}/ca.pem, ca_key: {p}/ca.key, cert: {p}/hub-{id}.pem, key: {p}/hub-{id}.key}}\n\
             raft: {raft}\n\
             {connections}{extra}",
            // A test may give the whole `connections:` section in `hub_extra`.
            connections = match self
                .hub_extra
                .lines()
                .any(|l| l.starts_with("connections:"))
            {
                true => "",
                false => "connections: {first_request_timeout: 2s}\n",
            },
            extra = self.hub_extra,
            id = i + 1,
            port = self.hub_ports[i],
            p = pki.display(),
        );
        std::fs::write(self.hub_config_path(i), yaml).expect("hub config");
    }

    /// Spoke `j`'s config file as written.
    pub fn spoke_config_text(&self, j: usize) -> String {
        std::fs::read_to_string(self.spoke_config_path(j)).expect("spoke config")
    }

    fn spoke_config_path(&self, j: usize) -> PathBuf {
        self.dir.path().join(format!("{}.yaml", self.spoke_ids[j]))
    }

    fn write_spoke_config(&self, j: usize) {
        let pki = self.dir.path().join("pki");
        let hubs: Vec<String> = (0..self.hub_ports.len())
            .map(|i| self.hub_address(i))
            .collect();
        let id = &self.spoke_ids[j];
        let yaml = format!(
            "name: {id}\nlisten: 127.0.0.1:{port}\nmetrics_listen: null\ndata_dir: {id}-data\n\
             tls: {{ca_cert: {p}/ca.pem, cert: {p}/{id}.pem, key: {p}/{id}.key}}\n\
             flush: {{interval: 500ms}}\n\
             checkin: {checkin}\n\
             hub: {{addresses: [{hubs}], spoke_id: {id}, heartbeat: 200ms}}\n",
            port = self.spoke_ports[j],
            p = pki.display(),
            hubs = hubs.join(", "),
            checkin = self.checkin,
        );
        std::fs::write(self.spoke_config_path(j), yaml).expect("spoke config");
    }

    pub async fn start_hub(&self, i: usize) {
        let config = HubConfig::load(&self.hub_config_path(i)).expect("hub config");
        let node = HubNode::start(config, None).await.expect("hub starts");
        *self.hubs[i].lock().unwrap() = Some(Arc::new(node));
    }

    /// Stops a hub node: it leaves the cluster's traffic at once.
    pub async fn stop_hub(&self, i: usize) {
        let node = self.hubs[i].lock().unwrap().take();
        if let Some(h) = node {
            h.shutdown().await;
        }
    }

    pub async fn start_spoke(&mut self, j: usize) {
        let config = SpokeConfig::load(&self.spoke_config_path(j)).expect("spoke config");
        self.spokes[j] = Some(Spoke::start(config, None).await.expect("spoke starts"));
    }

    pub async fn stop_spoke(&mut self, j: usize) {
        if let Some(s) = self.spokes[j].take() {
            s.shutdown().await.expect("spoke stops");
        }
    }

    pub fn hub(&self, i: usize) -> Arc<HubNode> {
        self.hubs[i]
            .lock()
            .unwrap()
            .clone()
            .expect("hub is running")
    }

    /// A copy of hub `i`'s replicated state.
    pub fn state(&self, i: usize) -> ClusterState {
        self.hub(i).node.read(|s| s.clone())
    }

    pub fn running_hubs(&self) -> Vec<usize> {
        (0..self.hubs.len())
            .filter(|i| self.hubs[*i].lock().unwrap().is_some())
            .collect()
    }

    /// The index of the hub node that leads now, as the running nodes see it.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in self.running_hubs() {
                let m = self.hub(i).node.raft.metrics().borrow().clone();
                if m.current_leader == Some(i as u64 + 1) && !self.hub(i).node.isolation.is_set() {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn admin(&self, i: usize) -> Admin {
        let cert = std::fs::read_to_string(self.pki("admin.pem")).expect("admin.pem");
        let key = std::fs::read_to_string(self.pki("admin.key")).expect("admin.key");
        let config = tls::client_config(
            &self.ca_pem(),
            Some((&cert, &key)),
            &[vigo_common::pki::Role::Hub],
        )
        .expect("admin tls");
        api::hub_admin_client::HubAdminClient::new(
            tls::channel(
                &self.hub_address(i),
                Arc::new(config),
                Duration::from_secs(5),
            )
            .expect("channel"),
        )
        .max_decoding_message_size(32 << 20)
    }

    /// The admin API on hub `i` as an API token holder: no client certificate, the
    /// bearer token `secret` on every call.
    pub fn admin_with_token(&self, i: usize, secret: &str) -> TokenAdmin {
        let bearer = format!("Bearer {secret}").parse().expect("a header value");
        api::hub_admin_client::HubAdminClient::with_interceptor(
            self.anonymous_channel(i),
            Bearer(bearer),
        )
    }

    /// A channel to hub `i` without a client certificate (what an envoy enrolling, or
    /// an API client with a bearer token, opens).
    pub fn anonymous_channel(&self, i: usize) -> Channel {
        let tls = tls::client_config(&self.ca_pem(), None, &[Role::Hub]).expect("client tls");
        tls::channel(&self.hub_address(i), Arc::new(tls), Duration::from_secs(5)).expect("channel")
    }

    /// A channel to `address` with the certificate `pki/{cert}.pem` (e.g. "admin",
    /// "hub-1", "spoke-a"), to a server of role `server`.
    pub fn channel_as(&self, cert: &str, address: &str, server: Role) -> Channel {
        let pem = std::fs::read_to_string(self.pki(&format!("{cert}.pem"))).expect("cert");
        let key = std::fs::read_to_string(self.pki(&format!("{cert}.key"))).expect("key");
        let roles: &'static [Role] = match server {
            Role::Hub => &[Role::Hub],
            Role::Spoke => &[Role::Spoke],
            other => panic!("no server has the {other:?} role"),
        };
        let tls =
            tls::client_config(&self.ca_pem(), Some((&pem, &key)), roles).expect("client tls");
        tls::channel(address, Arc::new(tls), Duration::from_secs(5)).expect("channel")
    }

    /// The redb file of spoke `j`.
    pub fn spoke_db(&self, j: usize) -> PathBuf {
        SpokeConfig::load(&self.spoke_config_path(j))
            .expect("spoke config")
            .db_path()
    }

    /// The hub's spoke service on hub `i`, called with `spoke`'s own certificate.
    pub fn as_spoke(
        &self,
        spoke: &str,
        i: usize,
    ) -> pb::hub_spokes_client::HubSpokesClient<Channel> {
        let cert = std::fs::read_to_string(self.pki(&format!("{spoke}.pem"))).expect("cert");
        let key = std::fs::read_to_string(self.pki(&format!("{spoke}.key"))).expect("key");
        let tls = tls::client_config(&self.ca_pem(), Some((&cert, &key)), &[Role::Hub])
            .expect("client tls");
        pb::hub_spokes_client::HubSpokesClient::new(
            tls::channel(&self.hub_address(i), Arc::new(tls), Duration::from_secs(5))
                .expect("channel"),
        )
    }

    /// Enrolls `hostname` through hub `i`.
    pub async fn enroll(
        &self,
        i: usize,
        hostname: &str,
    ) -> Result<(Identity, pb::EnrollResponse), ClientError> {
        client::enroll(
            &self.hub_address(i),
            &self.ca_pem(),
            &self.token,
            hostname,
            generate_key(),
        )
        .await
    }

    /// Waits until every running hub node's state satisfies `check`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&ClusterState) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .running_hubs()
                .iter()
                .all(|&i| self.hub(i).node.read(&check))
            {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Enrolls `n` envoys named `{prefix}-{i:04}` through the hubs and checks each in once
    /// (so their traits reach their spokes): `mem_mb` is 1024 × (i % 8 + 1).
    pub async fn enroll_fleet(self: &Arc<Self>, prefix: &str, n: usize) -> Vec<TestEnvoy> {
        self.checked_in_fleet(prefix, n, true).await
    }

    /// As [`Cluster::enroll_fleet`]; with `keep` false each envoy's connection closes
    /// after its check-in and nothing is returned (fleets too large to hold open).
    pub async fn checked_in_fleet(
        self: &Arc<Self>,
        prefix: &str,
        n: usize,
        keep: bool,
    ) -> Vec<TestEnvoy> {
        let mut tasks = JoinSet::new();
        let mut out = Vec::with_capacity(if keep { n } else { 0 });
        let mut collect = |joined: Result<(usize, TestEnvoy), tokio::task::JoinError>| {
            let envoy = joined.expect("envoy task");
            if keep {
                out.push(envoy);
            }
        };
        for i in 0..n {
            let c = self.clone();
            let host = format!("{prefix}-{i:04}");
            tasks.spawn(async move {
                let (identity, _) =
                    crate::eventually(Duration::from_secs(60), || c.enroll(i % 3, &host)).await;
                let address = identity.spoke_address.clone();
                let mut envoy = TestEnvoy::new(identity, &address);
                envoy
                    .traits
                    .insert("mem_mb".into(), (1024 * (i % 8 + 1)).to_string());
                envoy.check_in().await.expect("first check-in");
                (i, envoy)
            });
            if tasks.len() >= 32 {
                collect(tasks.join_next().await.expect("a task"));
            }
        }
        while let Some(r) = tasks.join_next().await {
            collect(r);
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Publishes the policy tree in `dir` through hub `i`.
    pub async fn publish(
        &self,
        i: usize,
        dir: &Path,
        message: &str,
    ) -> Result<api::ConfigVersionInfo, tonic::Status> {
        let files: BTreeMap<String, String> = vigo_common::policy::read_files(dir)
            .expect("policy files")
            .into_iter()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v))
            .collect();
        self.admin(i)
            .publish_config(api::PublishConfigRequest {
                message: message.into(),
                files: files.into_iter().collect(),
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// Retries `f` until it succeeds or `timeout` passes.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    crate::eventually(timeout, &mut f).await
}
