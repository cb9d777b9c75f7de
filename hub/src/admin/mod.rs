//! The fleet-wide admin API: one set of operations (this module and its children),
//! served twice — as gRPC (`grpc`) and as REST/JSON with an OpenAPI document (`rest`).
//! Every operation takes the authenticated [`Caller`] and checks its role first.
//!
//! Reads are answered by any hub node, from its copy of the replicated state or by
//! fanning out to the spokes. Writes that go through raft run on the leader: a follower
//! forwards the same call there over hub mTLS, stamping who the caller is; the leader
//! trusts that stamp only from a hub certificate.

mod auth;
mod bundle_keys;
mod cluster;
mod envoys;
pub mod grpc;
pub mod moves;
mod openapi;
pub mod reflection;
pub mod rest;
mod rest_revocations;
mod rest_runs;
mod rest_tasks;
mod revocations;
mod runs;
mod spokes;
mod tasks;
mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use vigo_common::EnvoyId;
use vigo_common::fleet_query::QueryError;
use vigo_proto::admin::v1 as api;

pub use auth::{Caller, Credential, authenticate, new_secret, request_secret};

use crate::error::HubError;
use crate::node::Node;
use crate::state::ApiRole;

pub type AdminClient = api::hub_admin_client::HubAdminClient<Channel>;

/// How long a forwarded admin write may take on the leader when the caller set no
/// deadline (a drain moves thousands of envoys).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(600);

pub struct AdminApi {
    pub node: Arc<Node>,
    /// The compiled form of the config version traced last (`trace`).
    traces: trace::TraceCache,
}

impl From<QueryError> for HubError {
    fn from(e: QueryError) -> Self {
        HubError::Malformed {
            what: e.field,
            why: e.why,
        }
    }
}

/// An envoy id as the admin API spells it (16 hex digits).
fn parse_envoy_id(field: &'static str, text: &str) -> Result<EnvoyId, HubError> {
    text.parse::<EnvoyId>()
        .map_err(|e| HubError::malformed(field, e))
}

/// How long the freshness check of a caller's credential may take at most (an election
/// takes 1–4 s with the default timings; more on a loaded machine).
const FRESH_WITHIN: Duration = Duration::from_secs(10);

impl AdminApi {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            traces: Default::default(),
        }
    }

    /// Checks the caller's credential again against state at least as new as the
    /// leader's (admission checked it against this node's copy, which may lag).
    pub async fn check_fresh(&self, caller: &Caller) -> Result<(), HubError> {
        if caller.credential == Credential::Hub {
            return Ok(());
        }
        // Long enough for a leader change under load, never past the caller's deadline;
        // a node cut off from the others refuses after that.
        let within = caller.deadline.map_or(FRESH_WITHIN, |d| {
            d.saturating_duration_since(std::time::Instant::now())
                .min(FRESH_WITHIN)
        });
        self.node.read_fresh(within).await?;
        let now = vigo_common::time::now_ms();
        if self.node.read(|s| caller.still_valid(s, now)) {
            Ok(())
        } else {
            Err(HubError::Unauthenticated(format!(
                "the credential of {} was revoked or expired",
                caller.name
            )))
        }
    }

    /// Runs `here` on the leader, or forwards the call there with `there`, stamped
    /// with who the caller is.
    async fn on_leader<Req, Resp, HereFut, There, ThereFut>(
        &self,
        caller: &Caller,
        req: Req,
        here: impl FnOnce(Req) -> HereFut,
        there: There,
    ) -> Result<Resp, HubError>
    where
        Req: Clone,
        HereFut: Future<Output = Result<Resp, HubError>>,
        There: Fn(AdminClient, tonic::Request<Req>) -> ThereFut,
        ThereFut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let forward = req.clone();
        let budget = caller.deadline.map_or(FORWARD_TIMEOUT, |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        self.node
            .on_leader(budget, here(req), |channel, left| {
                let client = AdminClient::new(channel)
                    .max_decoding_message_size(crate::fanout::MAX_SPOKE_MESSAGE)
                    .max_encoding_message_size(crate::fanout::MAX_SPOKE_MESSAGE);
                let mut request = tonic::Request::new(forward.clone());
                request.set_timeout(left);
                caller.stamp(request.metadata_mut());
                there(client, request)
            })
            .await
    }
}

impl Caller {
    /// The caller holds `needs` (or a role above it).
    pub fn require(&self, needs: ApiRole, call: &'static str) -> Result<(), HubError> {
        if self.role >= needs {
            Ok(())
        } else {
            Err(HubError::Forbidden {
                call,
                needs: needs.as_str(),
                has: self.role.as_str(),
            })
        }
    }
}
