//! Enrollment through the hub, run by the leader.
//!
//! In order: the shared request checks (`vigo_common::enrollment`), hold the hostname,
//! check the token and the hostname guard against the replicated state (reserving one
//! use), pick the spoke (the first matching pattern override, else the ring), commit
//! the pin — the state machine applies the same rules again, so a refusal there leaves
//! every state as it was — then register the envoy on its spoke and sign its
//! certificate. Nothing outside raft changes before the commit: a refused enrollment
//! changes nothing anywhere. A spoke that cannot be reached after the commit fails the
//! enrollment with UNAVAILABLE; the envoy's retry (same hostname and key) is the same
//! pinned envoy, registers it and spends no second token use. Concurrent enrollments
//! are batched twice (`crate::batch`): their pins are committed as one raft entry, and
//! their registrations reach each spoke as one RegisterEnvoys call (one fsync there).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};
use vigo_common::enrollment::{Checked, Denied, Terms, check_request, guard_hostname};
use vigo_common::limits::MAX_REGISTER_BATCH;
use vigo_common::time::now_ms;
use vigo_common::{EnvoyId, hostname};
use vigo_proto::v1 as pb;
use vigo_proto::v1::register_envoy_outcome::Outcome;

use crate::batch::Batcher;
use crate::error::HubError;
use crate::node::Node;
use crate::state::{Applied, ClusterState, Command, EnrollEntry, Rejection};

const SPOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Registers envoys on one spoke, in batches.
type Registrar = Batcher<pb::RegisterEnvoyRequest, u64>;

/// Starts the batching task that commits pins, up to `max` per raft entry.
fn pin_batcher(node: Arc<Node>, max: usize) -> Batcher<EnrollEntry, u64> {
    Batcher::start(max, "vigo_hub_enroll_batch_size", move |entries| {
        let node = node.clone();
        async move {
            match node.propose(Command::Enroll(entries)).await? {
                Applied::Enrolled(results) => Ok(results
                    .into_iter()
                    .map(|r| r.map_err(HubError::Rejected))
                    .collect()),
                other => Err(HubError::Internal(format!("unexpected {other:?}"))),
            }
        }
    })
}

/// Starts the batching task that registers envoys on one spoke: one RegisterEnvoys
/// call (one group commit there) for what concurrent enrollments queued.
fn registration_batcher(node: Arc<Node>, spoke: String, address: String) -> Registrar {
    Batcher::start(
        MAX_REGISTER_BATCH,
        "vigo_hub_register_batch_size",
        move |envoys: Vec<pb::RegisterEnvoyRequest>| {
            let (node, spoke, address) = (node.clone(), spoke.clone(), address.clone());
            async move { register_on_spoke(&node, &spoke, &address, envoys).await }
        },
    )
}

async fn register_on_spoke(
    node: &Node,
    spoke: &str,
    address: &str,
    envoys: Vec<pb::RegisterEnvoyRequest>,
) -> Result<Vec<Result<u64, HubError>>, HubError> {
    let refused = |why: String| HubError::SpokeRefused {
        spoke: spoke.to_string(),
        why,
    };
    let channel = node.peers.spoke(address)?;
    let mut client = pb::spoke_admin_client::SpokeAdminClient::new(channel)
        .max_decoding_message_size(vigo_common::limits::MAX_SMALL_ANSWER);
    let count = envoys.len();
    let mut request = tonic::Request::new(pb::RegisterEnvoysRequest { envoys });
    request.set_timeout(SPOKE_TIMEOUT);
    let outcomes = match client.register_envoys(request).await {
        Ok(r) => r.into_inner().outcomes,
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) =>
        {
            warn!(%spoke, %address, "spoke unreachable during enrollment: {}", s.message());
            return Err(HubError::SpokeUnreachable {
                spoke: spoke.to_string(),
                why: s.message().to_string(),
            });
        }
        Err(s) => return Err(refused(s.message().to_string())),
    };
    if outcomes.len() != count {
        return Err(refused(format!(
            "{} outcomes for {count} registrations",
            outcomes.len()
        )));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| match o.outcome {
            Some(Outcome::Registered(r)) => Ok(r.envoy_id),
            Some(Outcome::Refused(r)) => Err(refused(r.message)),
            None => Err(refused("an empty outcome".into())),
        })
        .collect())
}

pub struct Enroller {
    pub node: Arc<Node>,
    pins: Batcher<EnrollEntry, u64>,
    /// One registration batcher per spoke (by id and address), made at first use.
    registrars: Mutex<HashMap<(String, String), Arc<Registrar>>>,
    /// Told to envoys at enrollment; spokes set the real interval at check-in.
    pub interval_ms: u32,
    pub jitter_ms: u32,
    /// Token uses held by enrollments in flight (leader-local).
    reserved: Mutex<HashMap<[u8; 32], u64>>,
    /// Hostnames with an enrollment in flight.
    pending: Mutex<HashSet<String>>,
}

struct Held<'a> {
    enroller: &'a Enroller,
    hostname: String,
    token: Option<[u8; 32]>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.enroller
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hostname);
        if let Some(t) = self.token {
            let mut reserved = self
                .enroller
                .reserved
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = reserved.get_mut(&t) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Enroller {
    pub fn new(node: Arc<Node>, batch: usize, interval_ms: u32, jitter_ms: u32) -> Self {
        Self {
            pins: pin_batcher(node.clone(), batch),
            registrars: Mutex::new(HashMap::new()),
            node,
            interval_ms,
            jitter_ms,
            reserved: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
        }
    }

    /// Runs an enrollment on the leader.
    pub async fn enroll(&self, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, HubError> {
        let Checked {
            hostname,
            key,
            token,
        } = check_request(&req.token, &req.hostname, &req.public_key, &req.csr_der)?;
        let now = now_ms();

        let mut held = self.hold(&hostname)?;
        let reserved = self.reserved(&token);
        let plan = self
            .node
            .read(|s| plan(s, &hostname, key.as_bytes(), &token, reserved, now))?;
        let retry = matches!(plan, Plan::Retry { .. });
        let (envoy_id, (spoke_id, address), token_name) = match plan {
            Plan::Retry {
                envoy_id,
                spoke,
                token_name,
            } => (envoy_id, spoke, token_name),
            Plan::New { spoke, token_name } => {
                self.reserve(&token, &mut held);
                let id = loop {
                    let id = EnvoyId::random().get();
                    if !self.node.read(|s| s.pins.contains_key(&id)) {
                        break id;
                    }
                };
                let pinned = self
                    .pins
                    .submit(EnrollEntry {
                        envoy_id: id,
                        hostname: hostname.clone(),
                        key: key.to_bytes(),
                        spoke: spoke.0.clone(),
                        token,
                        at_ms: now,
                    })
                    .await?;
                (pinned, spoke, token_name)
            }
        };
        let id =
            EnvoyId::new(envoy_id).ok_or_else(|| HubError::Internal("envoy id zero".into()))?;
        let registered = self
            .registrar(&spoke_id, &address)
            .submit(pb::RegisterEnvoyRequest {
                envoy_id,
                hostname: hostname.clone(),
                public_key: Bytes::copy_from_slice(key.as_bytes()),
                token_name,
            })
            .await?;
        if registered != envoy_id {
            return Err(HubError::Internal(format!(
                "spoke {spoke_id} holds hostname {hostname} with this key as envoy {registered:016x}, the hub pinned it as {envoy_id:016x}"
            )));
        }
        let cert = self
            .node
            .ca
            .issue_envoy(id, key.as_bytes(), &req.csr_der, &req.key_proof)?;
        metrics::counter!("vigo_hub_enrollments_total").increment(1);
        info!(envoy = %id, %hostname, spoke = %spoke_id, retry, "envoy enrolled");
        let bundle_keys = self.node.read(|s| {
            s.bundle_keys
                .trusted()
                .iter()
                .map(|k| Bytes::copy_from_slice(k))
                .collect()
        });
        Ok(pb::EnrollResponse {
            envoy_id: id.get(),
            spoke_address: address,
            client_certificate_der: cert.into(),
            ca_certificate_der: Bytes::copy_from_slice(self.node.ca.cert_der()),
            bundle_signing_keys: bundle_keys,
            interval_ms: self.interval_ms,
            jitter_ms: self.jitter_ms,
            already_enrolled: retry,
        })
    }

    fn hold(&self, hostname: &str) -> Result<Held<'_>, HubError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.insert(hostname.to_string()) {
            return Err(HubError::InProgress(hostname.to_string()));
        }
        Ok(Held {
            enroller: self,
            hostname: hostname.to_string(),
            token: None,
        })
    }

    /// Uses of `token` held by enrollments in flight.
    fn reserved(&self, token: &[u8; 32]) -> u64 {
        let reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        reserved.get(token).copied().unwrap_or(0)
    }

    /// Holds one use of the token for this enrollment (the plan saw one left counting
    /// those held; the hostname hold keeps this enrollment's own count stable), so
    /// concurrent enrollments can never spend more uses than the token has.
    fn reserve(&self, token: &[u8; 32], held: &mut Held<'_>) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        *reserved.entry(*token).or_default() += 1;
        held.token = Some(*token);
    }

    fn registrar(&self, spoke: &str, address: &str) -> Arc<Registrar> {
        let mut registrars = self.registrars.lock().unwrap_or_else(|p| p.into_inner());
        registrars
            .entry((spoke.to_string(), address.to_string()))
            .or_insert_with(|| {
                Arc::new(registration_batcher(
                    self.node.clone(),
                    spoke.to_string(),
                    address.to_string(),
                ))
            })
            .clone()
    }
}

enum Plan {
    /// This hostname's active envoy has this key: the same envoy again.
    Retry {
        envoy_id: u64,
        spoke: (String, String),
        token_name: String,
    },
    New {
        spoke: (String, String),
        token_name: String,
    },
}

/// Decides, from the replicated state, what an enrollment will do: the same rules the
/// state machine applies at commit (`ClusterState::enroll`).
fn plan(
    s: &ClusterState,
    hostname: &str,
    key: &[u8; 32],
    token: &[u8; 32],
    reserved: u64,
    now: u64,
) -> Result<Plan, HubError> {
    let spoke_of = |id: &str| {
        s.spokes
            .get(id)
            .map(|sp| (sp.id.clone(), sp.address.clone()))
            .ok_or(HubError::NoActiveSpoke)
    };
    let active = s
        .hostnames
        .get(hostname)
        .copied()
        .filter(|id| !s.is_envoy_revoked(*id));
    if let Some(id) = active
        && &s.pins[&id].key == key
    {
        return Ok(Plan::Retry {
            envoy_id: id,
            spoke: spoke_of(&s.pins[&id].spoke)?,
            token_name: s
                .tokens
                .get(token)
                .map(|t| t.name.clone())
                .unwrap_or_default(),
        });
    }
    if let Some(&id) = s.hostnames.get(hostname)
        && s.is_envoy_revoked(id)
        && &s.pins[&id].key == key
    {
        return Err(Rejection::EnvoyRevoked(id).into());
    }
    let t = s.tokens.get(token).ok_or(Denied::UnknownToken)?;
    let scope = hostname::Scope::new(&t.hostnames).ok();
    Terms {
        name: &t.name,
        uses: t.uses,
        taken: t.used + reserved,
        expires_ms: t.expires_ms,
        revoked: t.revoked,
        scope: scope.as_ref(),
    }
    .admit_new(hostname, now)?;
    guard_hostname(
        hostname,
        active.map(|id| (id, &s.pins[&id].key)),
        key,
        t.allow_rekey,
    )?;
    let chosen = s
        .place(hostname, &s.ring())
        .ok_or(HubError::NoActiveSpoke)?;
    Ok(Plan::New {
        spoke: spoke_of(&chosen)?,
        token_name: t.name.clone(),
    })
}

/// The envoy-facing service on every hub node: the leader enrolls, followers forward.
pub struct EnrollmentService {
    pub enroller: Arc<Enroller>,
}

/// Attempts at forwarding one enrollment to the leader.
const FORWARD_ATTEMPTS: u32 = 3;

impl EnrollmentService {
    /// Sends an enrollment to the leader. One the leader never answered — its
    /// connection refused the stream (HTTP/2 REFUSED_STREAM, as a new connection's first
    /// streams can be before its settings arrive) or broke — is sent again: enrollment
    /// is idempotent (the same hostname and key are the same pinned envoy), so a retry
    /// is safe whether or not the first one reached the leader. A refusal the leader
    /// sent (its status, no transport error under it) is the answer.
    async fn forward(
        &self,
        leader: &str,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, HubError> {
        let mut attempt = 1;
        loop {
            let channel = self.enroller.node.peers.hub(leader)?;
            let mut client = pb::enrollment_client::EnrollmentClient::new(channel)
                .max_decoding_message_size(vigo_common::limits::MAX_SMALL_ANSWER);
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(Duration::from_secs(15));
            match client.enroll(request).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if never_answered(&s) && attempt < FORWARD_ATTEMPTS => {
                    warn!(%leader, attempt, "forwarded enrollment got no answer, sending it again: {}", s.message());
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(s) => return Err(HubError::Forward(s)),
            }
        }
    }
}

/// A call that failed in the transport (connection or stream refused or broken), not
/// one the peer answered with a status.
fn never_answered(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && std::error::Error::source(s).is_some()
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: tonic::Request<pb::EnrollRequest>,
    ) -> Result<tonic::Response<pb::EnrollResponse>, tonic::Status> {
        let req = request.into_inner();
        let result = match self.enroller.node.leader() {
            Ok(crate::node::Leader::Here) => self.enroller.enroll(req).await,
            Ok(crate::node::Leader::There(addr)) => self.forward(&addr, req).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            // Anyone can be refused: the metric counts each, the log a bounded few.
            static LOGGED: vigo_common::telemetry::sampled::Sampled =
                vigo_common::telemetry::sampled::Sampled::new();
            metrics::counter!("vigo_hub_enrollment_refusals_total").increment(1);
            if let Some(left_out) = LOGGED.admit() {
                info!(error = %e, left_out, "enrollment refused");
            }
        }
        result.map(tonic::Response::new).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_call_the_transport_failed_counts_as_never_answered() {
        // Nothing listens on this port: the transport fails, nothing was answered.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let failed = pb::enrollment_client::EnrollmentClient::new(channel)
            .enroll(pb::EnrollRequest::default())
            .await
            .unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable);
        assert!(never_answered(&failed));
        // The leader's own answer (no leader elected, a spoke down) is final.
        assert!(!never_answered(&tonic::Status::unavailable("no leader")));
        assert!(!never_answered(&tonic::Status::invalid_argument("bad")));
    }
}
