//! Enrollment through the hub, run by the leader.
//!
//! In order: check the request and the token (reserving one use), pick the spoke (the
//! first matching pattern override, else the ring), sign the envoy's certificate,
//! register the envoy on that spoke, and only then commit the pin. A spoke that cannot
//! be reached fails the enrollment with UNAVAILABLE before any pin exists; a retry with
//! the same hostname and key lands on the same envoy. Pins from concurrent enrollments
//! are committed together, one raft entry for a whole batch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use vigo_common::signing::parse_public_key;
use vigo_common::time::now_ms;
use vigo_common::{EnvoyId, hostname};
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::node::Node;
use crate::state::{Applied, ClusterState, Command, EnrollEntry};

const MAX_TOKEN: usize = 256;
const MAX_CSR: usize = 16 << 10;
const SPOKE_TIMEOUT: Duration = Duration::from_secs(5);

type PinReply = oneshot::Sender<Result<u64, HubError>>;

/// Collects pins to commit and proposes them in batches.
pub struct Proposer {
    tx: mpsc::Sender<(EnrollEntry, PinReply)>,
}

impl Proposer {
    /// Starts the batching task; it proposes through `node` whatever is queued, up to
    /// `max` entries at a time, without waiting to fill a batch.
    pub fn start(node: Arc<Node>, max: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<(EnrollEntry, PinReply)>(max * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (entries, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                metrics::histogram!("vigo_hub_enroll_batch_size").record(entries.len() as f64);
                match node.propose(Command::Enroll(entries)).await {
                    Ok(Applied::Enrolled(results)) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result.map_err(classify));
                        }
                    }
                    Ok(other) => {
                        for reply in replies {
                            let _ =
                                reply.send(Err(HubError::Raft(format!("unexpected {other:?}"))));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(HubError::Raft(why.clone())));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    async fn commit(&self, entry: EnrollEntry) -> Result<u64, HubError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((entry, reply))
            .await
            .map_err(|_| HubError::Raft("proposer stopped".into()))?;
        rx.await
            .map_err(|_| HubError::Raft("proposer stopped".into()))?
    }
}

/// Maps a refusal from the state machine to the error an envoy sees.
fn classify(why: String) -> HubError {
    if why == "unknown token" {
        HubError::UnknownToken
    } else if why.contains("expired") || why.contains("used up") {
        HubError::TokenRefused(why)
    } else if why.contains("another key") {
        HubError::HostnameTaken(why)
    } else {
        HubError::Raft(why)
    }
}

pub struct Enroller {
    pub node: Arc<Node>,
    pub proposer: Proposer,
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
            proposer: Proposer::start(node.clone(), batch),
            node,
            interval_ms,
            jitter_ms,
            reserved: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
        }
    }

    /// Runs an enrollment on the leader.
    pub async fn enroll(&self, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, HubError> {
        if req.token.is_empty() || req.token.len() > MAX_TOKEN {
            return Err(HubError::malformed(
                "token",
                format!("must be 1..{MAX_TOKEN} bytes"),
            ));
        }
        if req.csr_der.len() > MAX_CSR {
            return Err(HubError::malformed(
                "certificate signing request",
                "too large",
            ));
        }
        let hostname = hostname::normalize(&req.hostname)?;
        let key = parse_public_key(&req.public_key)?;
        let token = vigo_common::traits::sha256(req.token.as_bytes());
        let now = now_ms();

        let mut held = self.hold(&hostname)?;
        let plan = self
            .node
            .read(|s| plan(s, &hostname, key.as_bytes(), &token, now))?;
        let retry = matches!(plan, Plan::Retry { .. });
        let (envoy_id, spoke) = match plan {
            Plan::Retry { envoy_id, spoke } => (envoy_id, spoke),
            Plan::New { spoke } => {
                self.reserve(&token, &mut held)?;
                let id = loop {
                    let id = EnvoyId::random().get();
                    if !self.node.read(|s| s.pins.contains_key(&id)) {
                        break id;
                    }
                };
                (id, spoke)
            }
        };
        let (spoke_id, address) = spoke;
        let token_name = self
            .node
            .read(|s| s.tokens.get(&token).map(|t| t.name.clone()))
            .unwrap_or_default();
        // Registered on the spoke first: no pin may point at a spoke that does not know
        // the envoy. The spoke answers with the envoy it already has for a retry.
        let registered = self
            .register_on_spoke(
                &spoke_id,
                &address,
                envoy_id,
                &hostname,
                key.as_bytes(),
                &token_name,
            )
            .await?;
        let pinned = self
            .proposer
            .commit(EnrollEntry {
                envoy_id: registered,
                hostname: hostname.clone(),
                key: key.to_bytes(),
                spoke: spoke_id.clone(),
                token,
                at_ms: now,
            })
            .await?;
        let id = EnvoyId::new(pinned).ok_or_else(|| HubError::Raft("envoy id zero".into()))?;
        let cert = self.node.ca.issue_envoy(id, key.as_bytes(), &req.csr_der)?;
        metrics::counter!("vigo_hub_enrollments_total").increment(1);
        info!(envoy = %id, %hostname, spoke = %spoke_id, "envoy enrolled");
        let bundle_keys = self.node.read(|s| {
            s.bundle_keys
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
            already_enrolled: registered != envoy_id || retry,
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

    /// Holds one use of the token for this enrollment: concurrent enrollments can never
    /// spend more uses than the token has.
    fn reserve(&self, token: &[u8; 32], held: &mut Held<'_>) -> Result<(), HubError> {
        let (uses, used, name) = self.node.read(|s| {
            s.tokens
                .get(token)
                .map(|t| (t.uses, t.used, t.name.clone()))
                .ok_or(HubError::UnknownToken)
        })?;
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let taken = used + reserved.get(token).copied().unwrap_or(0);
        if taken >= uses {
            return Err(HubError::TokenRefused(format!("token {name:?} is used up")));
        }
        *reserved.entry(*token).or_default() += 1;
        held.token = Some(*token);
        Ok(())
    }

    async fn register_on_spoke(
        &self,
        spoke: &str,
        address: &str,
        envoy_id: u64,
        hostname: &str,
        key: &[u8; 32],
        token_name: &str,
    ) -> Result<u64, HubError> {
        let unreachable = |why: String| HubError::SpokeUnreachable {
            spoke: spoke.to_string(),
            why,
        };
        let channel = self.node.peers.spoke(address)?;
        let mut client = pb::spoke_admin_client::SpokeAdminClient::new(channel)
            .max_decoding_message_size(vigo_common::limits::MAX_SMALL_ANSWER);
        let mut request = tonic::Request::new(pb::RegisterEnvoyRequest {
            envoy_id,
            hostname: hostname.to_string(),
            public_key: Bytes::copy_from_slice(key),
            token_name: token_name.to_string(),
        });
        request.set_timeout(SPOKE_TIMEOUT);
        match client.register_envoy(request).await {
            Ok(r) => Ok(r.into_inner().envoy_id),
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
                Err(unreachable(s.message().to_string()))
            }
            Err(s) => Err(HubError::SpokeRefused {
                spoke: spoke.to_string(),
                why: s.message().to_string(),
            }),
        }
    }
}

enum Plan {
    /// This hostname is pinned with this key already: the same envoy again.
    Retry {
        envoy_id: u64,
        spoke: (String, String),
    },
    New {
        spoke: (String, String),
    },
}

/// Decides, from the replicated state, what an enrollment will do.
fn plan(
    s: &ClusterState,
    hostname: &str,
    key: &[u8; 32],
    token: &[u8; 32],
    now: u64,
) -> Result<Plan, HubError> {
    let t = s.tokens.get(token).ok_or(HubError::UnknownToken)?;
    if t.revoked {
        return Err(HubError::TokenRefused(format!(
            "token {:?} is revoked",
            t.name
        )));
    }
    if t.expires_ms != 0 && now >= t.expires_ms {
        return Err(HubError::TokenRefused(format!(
            "token {:?} has expired",
            t.name
        )));
    }
    if !t.admits(hostname) {
        return Err(HubError::TokenRefused(format!(
            "token {:?} enrolls only hostnames matching {}",
            t.name,
            t.hostnames.join(", ")
        )));
    }
    let spoke_of = |id: &str| {
        s.spokes
            .get(id)
            .map(|sp| (sp.id.clone(), sp.address.clone()))
            .ok_or(HubError::NoActiveSpoke)
    };
    if let Some(&id) = s.hostnames.get(hostname) {
        let pin = &s.pins[&id];
        if &pin.key == key {
            return Ok(Plan::Retry {
                envoy_id: id,
                spoke: spoke_of(&pin.spoke)?,
            });
        }
        if !t.allow_rekey {
            return Err(HubError::HostnameTaken(format!(
                "hostname {hostname} is enrolled as envoy {id:016x} with another key; re-enrolling it needs a token with allow_rekey"
            )));
        }
    }
    let chosen = s
        .place(hostname, &s.ring())
        .ok_or(HubError::NoActiveSpoke)?;
    Ok(Plan::New {
        spoke: spoke_of(&chosen)?,
    })
}

/// The envoy-facing service on every hub node: the leader enrolls, followers forward.
pub struct EnrollmentService {
    pub enroller: Arc<Enroller>,
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
            Ok(crate::node::Leader::There(addr)) => {
                let channel = self.enroller.node.peers.hub(&addr)?;
                let mut client = pb::enrollment_client::EnrollmentClient::new(channel)
                    .max_decoding_message_size(vigo_common::limits::MAX_SMALL_ANSWER);
                let mut request = tonic::Request::new(req);
                request.set_timeout(Duration::from_secs(15));
                client
                    .enroll(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(HubError::Forward)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            metrics::counter!("vigo_hub_enrollment_refusals_total").increment(1);
            info!(error = %e, "enrollment refused");
        }
        result.map(tonic::Response::new).map_err(Into::into)
    }
}
