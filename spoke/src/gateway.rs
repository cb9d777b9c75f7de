//! Check-ins and run reports: the envoy-facing hot path.
//!
//! A check-in touches only memory. Before it gets here, the admission table
//! (`crate::admission`) has checked the caller's certificate role, held the message to
//! its limit and shed the call if the spoke is saturated — all before the body was read.
//! Then, in order, cheapest refusal first: the body's size, its decoding, the client
//! certificate against the envoy id, the FleetIndex lookup, the certificate's key
//! against the enrolled key, the timestamp window — then the (batched) signature check —
//! and finally, under the envoy's own lock, the replay check and the state update.
//! Nothing changes unless every check passed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};
use vigo_common::EnvoyId;
use vigo_common::pki::{Peer, Role};
use vigo_common::signing::{self, Domain};
use vigo_common::time::now_ms;
use vigo_common::traits::traits_hash;
use vigo_proto::v1 as pb;

use crate::error::SpokeError;
use crate::fleet::{EnvoyRecord, EnvoyState, FleetIndex};
use crate::forwards::Forwards;
use crate::grpc::peer;
use crate::metrics::{CheckinMetrics, CheckinResult, count_call};
use crate::policy_cache::PolicyCache;
use crate::store::Store;
use crate::streams::{EnvoyStream, Streams};
use crate::tasks::SpokeTasks;

mod reports;
mod tasks;
use crate::traits_store::TraitsStore;
use crate::verifier::BatchVerifier;

const MAX_TRAIT_KEY: usize = 128;
const MAX_TRAIT_VALUE: usize = 4096;

#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub interval_ms: u32,
    pub jitter_ms: u32,
    pub timestamp_window_ms: u64,
    pub max_checkin_body: usize,
    pub max_report_body: usize,
    pub max_traits: usize,
    pub allow_relay: bool,
    pub keep_runs: usize,
}

pub struct Gateway {
    pub fleet: Arc<FleetIndex>,
    pub traits: Arc<TraitsStore>,
    pub policy: Arc<PolicyCache>,
    pub verifier: Arc<BatchVerifier>,
    pub store: Store,
    pub settings: GatewaySettings,
    pub streams: Arc<Streams>,
    pub forwards: Arc<Forwards>,
    /// Tasks waiting for envoys, and their results (`crate::tasks`).
    pub tasks: Arc<SpokeTasks>,
    /// Each envoy's share, and who is a suspect after a bad signature.
    pub shares: Arc<crate::fairness::Shares>,
    checkins: CheckinMetrics,
}

/// How envoys' signatures are checked: in batches across requests, and apart for an
/// envoy whose signature failed lately (its share says so).
pub struct Checking {
    pub verifier: Arc<BatchVerifier>,
    pub shares: Arc<crate::fairness::Shares>,
}

/// How envoys not reachable through their check-ins are reached: the open streams (to
/// wake them) and the forwarding addresses of envoys handed off to other spokes.
#[derive(Clone, Default)]
pub struct Reach {
    pub streams: Arc<Streams>,
    pub forwards: Arc<Forwards>,
}

/// The signed header every envoy request body carries.
trait SignedBody: Message + Default {
    const DOMAIN: Domain;
    const CALL: &'static str;
    fn header(&self) -> (u64, u64, u64);
}

impl SignedBody for pb::CheckInBody {
    const DOMAIN: Domain = Domain::CheckIn;
    const CALL: &'static str = "CheckIn";
    fn header(&self) -> (u64, u64, u64) {
        (self.envoy_id, self.sequence, self.timestamp_ms)
    }
}

impl SignedBody for pb::StreamBody {
    const DOMAIN: Domain = Domain::Stream;
    const CALL: &'static str = "OpenStream";
    fn header(&self) -> (u64, u64, u64) {
        (self.envoy_id, self.sequence, self.timestamp_ms)
    }
}

impl SignedBody for pb::RunReportBody {
    const DOMAIN: Domain = Domain::ReportRun;
    const CALL: &'static str = "ReportRun";
    fn header(&self) -> (u64, u64, u64) {
        (self.envoy_id, self.sequence, self.timestamp_ms)
    }
}

/// A request whose signature verified, not yet checked for replay.
struct Authenticated<B> {
    record: Arc<EnvoyRecord>,
    body: B,
    raw: Bytes,
    now_ms: u64,
}

impl Gateway {
    pub fn new(
        fleet: Arc<FleetIndex>,
        traits: Arc<TraitsStore>,
        policy: Arc<PolicyCache>,
        checking: Checking,
        store: Store,
        settings: GatewaySettings,
        reach: Reach,
    ) -> Self {
        let Checking { verifier, shares } = checking;
        let tasks = Arc::new(SpokeTasks::new(store.clone(), reach.streams.clone()));
        Self {
            fleet,
            traits,
            policy,
            verifier,
            store,
            settings,
            tasks,
            streams: reach.streams,
            forwards: reach.forwards,
            shares,
            checkins: CheckinMetrics::default(),
        }
    }

    async fn authenticate<B: SignedBody>(
        &self,
        peer: &Peer,
        request: pb::SignedRequest,
        max_body: usize,
    ) -> Result<Authenticated<B>, SpokeError> {
        let pb::SignedRequest {
            body: raw,
            signature,
        } = request;
        if raw.len() > max_body {
            return Err(SpokeError::TooLarge {
                what: "request body",
                size: raw.len(),
                limit: max_body,
            });
        }
        let signature = signing::parse_signature(&signature)?;
        let body = B::decode(raw.clone()).map_err(|e| SpokeError::malformed("request body", e))?;
        let (envoy_id, _, timestamp_ms) = body.header();
        let id = EnvoyId::new(envoy_id)
            .ok_or_else(|| SpokeError::malformed("request body", "envoy_id is zero"))?;
        self.authorize_peer(peer, id, B::CALL)?;
        let Some(record) = self.fleet.get(id) else {
            return Err(self.moved_or_unknown(id, &raw, &signature).await);
        };
        if let Peer::Envoy { key, .. } = peer
            && key != record.key.as_bytes()
        {
            return Err(SpokeError::StaleCertificate(id));
        }
        if record.read(|st| st.revoked) {
            return Err(SpokeError::Revoked(id));
        }
        let now_ms = now_ms();
        let skew_ms = vigo_common::time::skew_ms(timestamp_ms, now_ms);
        if skew_ms.unsigned_abs() > self.settings.timestamp_window_ms {
            return Err(SpokeError::StaleTimestamp {
                skew_ms,
                window_ms: self.settings.timestamp_window_ms,
            });
        }
        let Some(key) = record.key.verifying() else {
            return Err(SpokeError::BadSignature);
        };
        // An envoy whose signature failed lately is verified alone: its bad signatures
        // never spoil a batch of honest envoys' (`crate::fairness`).
        let good = if self.shares.suspect(id.get()) {
            verify_alone(&key, B::DOMAIN, &raw, &signature)
        } else {
            self.verifier
                .verify(key, B::DOMAIN, raw.clone(), signature)
                .await
        };
        if !good {
            self.shares.bad_signature(id.get());
            return Err(SpokeError::BadSignature);
        }
        Ok(Authenticated {
            record,
            body,
            raw,
            now_ms,
        })
    }

    /// An envoy this spoke does not hold: if it was handed off, a request it really
    /// signed learns where it went; anything else is unknown.
    async fn moved_or_unknown(
        &self,
        id: EnvoyId,
        raw: &Bytes,
        signature: &ed25519_dalek::Signature,
    ) -> SpokeError {
        let Some((key, address)) = self.forwards.get(id) else {
            return SpokeError::UnknownEnvoy(id);
        };
        let signed = [
            Domain::CheckIn,
            Domain::ReportRun,
            Domain::Stream,
            Domain::TaskResult,
        ]
        .into_iter()
        .any(|d| signing::verify(&key, d, raw, signature).is_ok());
        if signed {
            SpokeError::Moved {
                id,
                address: address.to_string(),
            }
        } else {
            SpokeError::BadSignature
        }
    }

    /// Envoy certificates speak for their own envoy only; relay certificates for any,
    /// when the spoke allows them.
    fn authorize_peer(
        &self,
        peer: &Peer,
        id: EnvoyId,
        call: &'static str,
    ) -> Result<(), SpokeError> {
        match peer {
            Peer::Envoy { id: cert, .. } if *cert == id => Ok(()),
            Peer::Envoy { id: cert, .. } => Err(SpokeError::CertificateMismatch {
                cert: *cert,
                body: id,
            }),
            Peer::Node {
                role: Role::Relay, ..
            } if self.settings.allow_relay => Ok(()),
            Peer::Node { role, .. } => Err(SpokeError::WrongRole {
                role: role.as_str(),
                call,
            }),
            Peer::Anonymous => Err(SpokeError::NoClientCertificate),
        }
    }

    pub async fn check_in(
        &self,
        peer: &Peer,
        request: pb::SignedRequest,
    ) -> Result<pb::CheckInResponse, SpokeError> {
        match self
            .authenticate::<pb::CheckInBody>(peer, request, self.settings.max_checkin_body)
            .await
        {
            Ok(Authenticated {
                record,
                body,
                now_ms,
                ..
            }) => self.answer_check_in(&record, body, now_ms),
            Err(SpokeError::Moved { id, address }) => {
                tracing::debug!(envoy = %id, %address, "redirecting a handed-off envoy");
                Ok(self.redirect(address))
            }
            Err(e) => Err(e),
        }
    }

    fn redirect(&self, spoke_address: String) -> pb::CheckInResponse {
        pb::CheckInResponse {
            answer: Some(pb::check_in_response::Answer::Redirect(pb::Redirect {
                spoke_address,
            })),
            interval_ms: self.settings.interval_ms,
            jitter_ms: self.settings.jitter_ms,
            open_stream: false,
            send_traits: false,
            server_time_ms: now_ms(),
        }
    }

    /// Opens the envoy's stream: authenticated like any request, consuming a sequence
    /// number, then registered so a force-push can wake the envoy. Tasks waiting for
    /// the envoy go first on it.
    pub async fn open_stream(
        &self,
        peer: &Peer,
        request: pb::SignedRequest,
    ) -> Result<EnvoyStream, SpokeError> {
        let Authenticated {
            record,
            body,
            now_ms,
            ..
        } = self
            .authenticate::<pb::StreamBody>(peer, request, self.settings.max_checkin_body)
            .await?;
        self.fleet.update(&record, |st| {
            accept_fresh(st, record.id, body.sequence, now_ms)?;
            st.mark_dirty();
            Ok::<_, SpokeError>(())
        })?;
        let mut stream = self.streams.open(record.id);
        stream.send_first(self.tasks.unsent(record.id, Some(stream.generation())));
        Ok(stream)
    }

    /// Everything after the signature check: replay check, state update, and the answer.
    /// Memory only; on the no-change path it allocates nothing but the response.
    pub fn answer_check_in(
        &self,
        record: &EnvoyRecord,
        body: pb::CheckInBody,
        now_ms: u64,
    ) -> Result<pb::CheckInResponse, SpokeError> {
        let reported_traits = fixed_hash(&body.traits_hash, "traits_hash")?;
        let fingerprint = optional_hash(&body.bundle_fingerprint, "bundle_fingerprint")?;
        if let Some(traits) = body.traits {
            self.stage_traits(reported_traits, traits.values)?;
        }
        let policy = self.policy.current();
        let (hostcrate, force, send_traits) = self.fleet.update(record, |st| {
            accept_fresh(st, record.id, body.sequence, now_ms)?;
            st.bundle_fingerprint = fingerprint;
            let mut send_traits = false;
            if reported_traits != st.traits_hash {
                if self.traits.adopt(&st.traits_hash, &reported_traits) {
                    st.traits_hash = reported_traits;
                } else {
                    send_traits = true;
                }
            }
            if st.policy_generation != policy.generation {
                st.hostcrate = policy.hostcrate_of(&record.hostname);
                st.policy_generation = policy.generation;
            }
            let force = std::mem::take(&mut st.force_push);
            st.mark_dirty();
            Ok::<_, SpokeError>((st.hostcrate, force, send_traits))
        })?;

        // Nothing signed to serve (a spoke under a hub before its first version): the
        // envoy keeps what it holds.
        let bundle = policy.bundle(hostcrate);
        let unchanged = bundle.is_none_or(|b| !force && fingerprint == b.fingerprint);
        let answer = match bundle {
            Some(bundle) if !unchanged => {
                let held = policy.modules_of(&fingerprint).unwrap_or(&[]);
                pb::check_in_response::Answer::Bundle(bundle.delivery(|h| held.contains(h)))
            }
            _ => pb::check_in_response::Answer::NoChange(pb::NoChange {}),
        };
        // Tasks wait for this envoy: it opens a stream to take them (or, holding one,
        // gets what its stream has not carried yet).
        let tasks = self.tasks.has_waiting(record.id);
        if tasks {
            self.tasks.resend(record.id);
        }
        Ok(pb::CheckInResponse {
            answer: Some(answer),
            interval_ms: self.settings.interval_ms,
            jitter_ms: self.settings.jitter_ms,
            // Work is flowing to this envoy (a new bundle, a force-push, a task): more
            // may follow soon, so it holds a stream until it has been idle a while.
            open_stream: !unchanged || tasks,
            send_traits,
            server_time_ms: now_ms,
        })
    }

    /// Checks a trait set against the hash the envoy signed, and makes it known.
    fn stage_traits(
        &self,
        claimed: [u8; 32],
        traits: vigo_common::traits::TraitMap,
    ) -> Result<(), SpokeError> {
        if traits.len() > self.settings.max_traits {
            return Err(SpokeError::TooLarge {
                what: "trait set",
                size: traits.len(),
                limit: self.settings.max_traits,
            });
        }
        if let Some((k, _)) = traits
            .iter()
            .find(|(k, v)| k.is_empty() || k.len() > MAX_TRAIT_KEY || v.len() > MAX_TRAIT_VALUE)
        {
            return Err(SpokeError::malformed(
                "traits",
                format!(
                    "trait {k:?}: keys are 1..{MAX_TRAIT_KEY} bytes, values at most {MAX_TRAIT_VALUE}"
                ),
            ));
        }
        if traits_hash(&traits) != claimed {
            return Err(SpokeError::malformed(
                "traits",
                "they do not match traits_hash",
            ));
        }
        self.traits.stage(claimed, traits);
        Ok(())
    }
}

/// The replay check and what every accepted request proves: the envoy is alive now.
/// Runs under the envoy's lock, after the signature check, so it is the single place
/// where a sequence number is consumed.
#[inline]
fn accept_fresh(
    st: &mut EnvoyState,
    id: EnvoyId,
    sequence: u64,
    now_ms: u64,
) -> Result<(), SpokeError> {
    if st.revoked {
        return Err(SpokeError::Revoked(id));
    }
    if sequence <= st.sequence {
        return Err(SpokeError::Replay {
            got: sequence,
            last: st.sequence,
        });
    }
    st.sequence = sequence;
    st.last_seen_ms = now_ms;
    st.offline = false;
    Ok(())
}

fn fixed_hash(bytes: &[u8], what: &'static str) -> Result<[u8; 32], SpokeError> {
    bytes
        .try_into()
        .map_err(|_| SpokeError::malformed(what, format!("must be 32 bytes, got {}", bytes.len())))
}

/// A hash that may be absent (empty): all zeroes then.
fn optional_hash(bytes: &[u8], what: &'static str) -> Result<[u8; 32], SpokeError> {
    if bytes.is_empty() {
        Ok([0; 32])
    } else {
        fixed_hash(bytes, what)
    }
}

/// The gRPC face of the gateway.
/// One signature checked on its own.
fn verify_alone(
    key: &ed25519_dalek::VerifyingKey,
    domain: Domain,
    body: &[u8],
    signature: &ed25519_dalek::Signature,
) -> bool {
    vigo_common::signing::verify(key, domain, body, signature).is_ok()
}

pub struct GatewayService(pub Arc<Gateway>);

#[tonic::async_trait]
impl pb::envoy_gateway_server::EnvoyGateway for GatewayService {
    async fn check_in(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::CheckInResponse>, Status> {
        let (_, extensions, message) = request.into_parts();
        // Timed from when the request reached the spoke: its wait for a worker counts.
        let started = extensions
            .get::<vigo_common::net::Received>()
            .map_or_else(Instant::now, |r| r.0);
        let result = self.0.check_in(peer(&extensions), message).await;
        let outcome = match &result {
            Ok(r) if matches!(r.answer, Some(pb::check_in_response::Answer::NoChange(_))) => {
                CheckinResult::NoChange
            }
            Ok(_) => CheckinResult::Bundle,
            Err(e) => CheckinResult::Rejected(e),
        };
        self.0.checkins.record(outcome, started.elapsed());
        result.map(Response::new).map_err(Status::from)
    }

    type OpenStreamStream = EnvoyStream;

    async fn open_stream(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<EnvoyStream>, Status> {
        let (_, extensions, message) = request.into_parts();
        let result = self.0.open_stream(peer(&extensions), message).await;
        count_call("vigo_streams_opened_total", result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(Status::from)
    }

    async fn report_run(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ReportRunResponse>, Status> {
        let (_, extensions, message) = request.into_parts();
        let result = self.0.report_run(peer(&extensions), message).await;
        count_call("vigo_reports_total", result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(Status::from)
    }

    async fn report_task(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ReportTaskResponse>, Status> {
        let (_, extensions, message) = request.into_parts();
        let result = self.0.report_task(peer(&extensions), message).await;
        count_call("vigo_task_reports_total", result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(Status::from)
    }
}
