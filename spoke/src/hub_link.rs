//! A spoke's tie to its hub: it registers (its certificate says which spoke it is),
//! heartbeats, and serves the policy version the hub says every spoke should serve —
//! pulling it when it missed a push (it was down, or the push failed). The same for the
//! cluster's revocations: when the hub's last one is above the spoke's, the spoke
//! fetches the rest.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tonic::transport::Channel;
use tracing::{info, warn};
use vigo_common::tls;
use vigo_proto::v1 as pb;

use crate::admin::Admin;
use crate::config::HubLink;

type HubClient = pb::hub_spokes_client::HubSpokesClient<Channel>;

pub struct Link {
    pub hub: HubLink,
    /// The address envoys and the hub reach this spoke at.
    pub advertise: String,
    pub tls: Arc<ClientConfig>,
    pub admin: Arc<Admin>,
    /// Set once the spoke holds every revocation the hub had at a heartbeat.
    pub synced: tokio::sync::watch::Sender<bool>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Link {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        let clients: Vec<(String, HubClient)> = self
            .hub
            .addresses
            .iter()
            .filter_map(|a| {
                tls::peer_channel(a, self.tls.clone(), CALL_TIMEOUT)
                    .map(|c| {
                        // GetConfig answers with a whole policy tree.
                        let client = pb::hub_spokes_client::HubSpokesClient::new(c)
                            .max_decoding_message_size(vigo_common::limits::MAX_CONFIG_MESSAGE);
                        (a.clone(), client)
                    })
                    .map_err(|e| warn!(hub = %a, error = %e, "bad hub address"))
                    .ok()
            })
            .collect();
        if clients.is_empty() {
            return;
        }
        let mut registered = false;
        let mut next = 0usize;
        let mut tick = tokio::time::interval(self.hub.heartbeat);
        loop {
            tick.tick().await;
            let (address, client) = &mut clients[next % clients.len()].clone();
            let directive = if registered {
                self.heartbeat(client).await
            } else {
                self.register(client).await
            };
            match directive {
                Ok(d) => {
                    if !registered {
                        info!(hub = %address, spoke = %d.spoke_id, "registered with the hub");
                        registered = true;
                    }
                    match self.catch_up(client, d.revocation_seq).await {
                        Ok(()) => {
                            self.synced.send_replace(true);
                        }
                        Err(e) => {
                            warn!(hub = %address, error = %e, "cannot take the hub's revocations")
                        }
                    }
                    if let Err(e) = self.follow(client, &d).await {
                        warn!(hub = %address, error = %e, "cannot take the hub's policy version");
                    }
                }
                Err(status) => {
                    warn!(hub = %address, code = ?status.code(), "hub call failed: {}", status.message());
                    // Try the next hub node; a restarted hub needs a new registration.
                    next += 1;
                    if status.code() == tonic::Code::NotFound {
                        registered = false;
                    }
                }
            }
        }
    }

    async fn register(&self, client: &mut HubClient) -> Result<pb::SpokeDirective, tonic::Status> {
        let mut req = tonic::Request::new(pb::RegisterSpokeRequest {
            address: self.advertise.clone(),
            weight: self.hub.weight,
        });
        req.set_timeout(CALL_TIMEOUT);
        client.register_spoke(req).await.map(|r| r.into_inner())
    }

    async fn heartbeat(&self, client: &mut HubClient) -> Result<pb::SpokeDirective, tonic::Status> {
        let mut req = tonic::Request::new(pb::HeartbeatRequest {
            config_version: self.admin.policy.current().version_hex(),
            envoys: self.admin.fleet.len(),
        });
        req.set_timeout(CALL_TIMEOUT);
        client.heartbeat(req).await.map(|r| r.into_inner())
    }

    /// Fetches and applies revocations until the spoke holds the hub's `last`.
    async fn catch_up(&self, client: &mut HubClient, last: u64) -> Result<(), String> {
        let book = &self.admin.revocations;
        while book.seq() < last {
            let held = book.seq();
            let mut req = tonic::Request::new(pb::GetRevocationsRequest { after: held });
            req.set_timeout(CALL_TIMEOUT);
            let list = client
                .get_revocations(req)
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let now = book.apply(&list).await.map_err(|e| e.to_string())?;
            if now == held {
                // This hub node is behind the leader: the next heartbeat tries again.
                return Err(format!("the hub sent nothing after revocation {held}"));
            }
            info!(from = held, to = now, "revocations taken from the hub");
        }
        Ok(())
    }

    /// Pulls and applies the version the hub wants, if it is not the one in force.
    async fn follow(&self, client: &mut HubClient, d: &pb::SpokeDirective) -> Result<(), String> {
        let current = self.admin.policy.current();
        if d.config_version.is_empty()
            || (d.config_version == current.version_hex()
                && d.config_generation == current.bundle_generation)
        {
            return Ok(());
        }
        drop(current);
        let mut req = tonic::Request::new(pb::GetConfigRequest {
            version: d.config_version.clone(),
        });
        req.set_timeout(CALL_TIMEOUT);
        let version = client
            .get_config(req)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        info!(version = %version.version, "pulling the hub's policy version");
        self.admin
            .apply_config(version)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
