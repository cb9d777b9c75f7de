//! The envoy side of the protocol: enrolling, and signing check-ins and run reports.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::client::danger::ServerCertVerifier;
use tonic::transport::Channel;
use vigo_common::pki::Role;
use vigo_common::signing::{self, Domain};
use vigo_common::time::now_ms;
use vigo_common::tls::direct::DirectChannel;
use vigo_common::traits::{TraitMap, traits_hash};
use vigo_common::{EnvoyId, limits, pki, tls};
use vigo_proto::v1 as pb;

/// Session tickets an envoy keeps to resume with: rustls keeps up to 8 per server, so
/// room for two servers (its spoke, and the next after a move).
const SESSIONS_REMEMBERED: usize = 16;

/// Deadline of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Common(#[from] vigo_common::Error),
    #[error("{call} refused: {}: {}", .status.code(), .status.message())]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("the server's answer is unusable: {0}")]
    BadAnswer(String),
}

/// What an envoy knows about itself after enrolling.
#[derive(Clone)]
pub struct Identity {
    pub envoy_id: EnvoyId,
    pub hostname: String,
    pub key: SigningKey,
    /// The TLS client key (PKCS#8 PEM) its certificate is issued on: P-256, or for an
    /// envoy enrolled by an earlier release the identity key itself.
    pub tls_key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub spoke_address: String,
    pub bundle_keys: Vec<VerifyingKey>,
}

impl Identity {
    /// TLS client config presenting this envoy's certificate to spokes (and only to
    /// spokes).
    pub fn tls_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        self.tls_config_for(&[Role::Spoke])
    }

    /// The same, to servers of `roles` (a hub, to locate its spoke).
    pub fn tls_config_for(&self, roles: &'static [Role]) -> Result<Arc<ClientConfig>, ClientError> {
        self.tls_config_verified_by(tls::server_verifier(&self.ca_pem, roles)?)
    }

    /// The same with a server check built once for many envoys (the simulator's).
    /// Sessions are remembered for two servers, not rustls' default 32: the store is
    /// allocated at its full size with every config.
    pub fn tls_config_verified_by(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<ClientConfig>, ClientError> {
        let mut config =
            tls::client_config_verified_by(verifier, Some((&self.cert_pem, &self.tls_key_pem)))?;
        config.resumption = Resumption::in_memory_sessions(SESSIONS_REMEMBERED);
        Ok(Arc::new(config))
    }
}

/// Who may answer an enrollment: a hub (which routes it to a spoke) or a standalone spoke.
pub const ENROLL_AT: &[Role] = &[Role::Hub, Role::Spoke];

/// Enrolls `hostname` with `key` at `server` (TLS, server authentication only).
pub async fn enroll(
    server: &str,
    ca_pem: &str,
    token: &str,
    hostname: &str,
    key: SigningKey,
) -> Result<(Identity, pb::EnrollResponse), ClientError> {
    let config = Arc::new(tls::client_config(ca_pem, None, ENROLL_AT)?);
    let channel = tls::channel(server, config, CONNECT_TIMEOUT)?;
    enroll_over(channel, ca_pem, token, hostname, key).await
}

/// As [`enroll`], over an existing channel (the simulator shares a few).
pub async fn enroll_over(
    channel: Channel,
    ca_pem: &str,
    token: &str,
    hostname: &str,
    key: SigningKey,
) -> Result<(Identity, pb::EnrollResponse), ClientError> {
    let mut client = pb::enrollment_client::EnrollmentClient::new(channel)
        .max_decoding_message_size(limits::MAX_SMALL_ANSWER);
    let tls = pki::envoy_tls_request(&key)?;
    let mut request = tonic::Request::new(pb::EnrollRequest {
        token: token.to_string(),
        hostname: hostname.to_string(),
        public_key: Bytes::copy_from_slice(key.verifying_key().as_bytes()),
        csr_der: tls.csr_der.into(),
        key_proof: tls.key_proof.into(),
    });
    request.set_timeout(REQUEST_TIMEOUT);
    let response = client
        .enroll(request)
        .await
        .map_err(|status| ClientError::Rpc {
            call: "Enroll",
            status,
        })?
        .into_inner();
    let envoy_id = EnvoyId::new(response.envoy_id)
        .ok_or_else(|| ClientError::BadAnswer("envoy id is zero".into()))?;
    let bundle_keys = response
        .bundle_signing_keys
        .iter()
        .map(|k| signing::parse_public_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity {
        envoy_id,
        hostname: hostname.to_string(),
        key,
        tls_key_pem: tls.tls_key_pem,
        cert_pem: pki::cert_der_to_pem(&response.client_certificate_der),
        ca_pem: ca_pem.to_string(),
        spoke_address: response.spoke_address.clone(),
        bundle_keys,
    };
    Ok((identity, response))
}

/// Strictly increasing sequence numbers that survive restarts without being stored:
/// each is at least the wall clock in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    pub fn starting_after(last: u64) -> Self {
        Self { last }
    }

    pub fn advance(&mut self) -> u64 {
        self.last = (self.last + 1).max(now_ms().saturating_mul(1000));
        self.last
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

/// Signs `body` for `domain` into a request envelope.
pub fn seal(key: &SigningKey, domain: Domain, body: &impl Message) -> pb::SignedRequest {
    let body = Bytes::from(body.encode_to_vec());
    let signature = signing::sign(key, domain, &body);
    pb::SignedRequest {
        body,
        signature: Bytes::copy_from_slice(&signature.to_bytes()),
    }
}

/// A signed check-in. `traits` go along only when `send_traits` is set.
pub fn check_in_request(
    id: EnvoyId,
    key: &SigningKey,
    sequence: u64,
    bundle_fingerprint: Option<&[u8; 32]>,
    traits: &TraitMap,
    send_traits: bool,
) -> pb::SignedRequest {
    let body = pb::CheckInBody {
        envoy_id: id.get(),
        sequence,
        timestamp_ms: now_ms(),
        bundle_fingerprint: bundle_fingerprint
            .map(|f| Bytes::copy_from_slice(f))
            .unwrap_or_default(),
        traits_hash: Bytes::copy_from_slice(&traits_hash(traits)),
        traits: send_traits.then(|| pb::Traits {
            values: traits.clone(),
        }),
    };
    seal(key, Domain::CheckIn, &body)
}

/// A signed run report; the header fields of `report` are filled in here.
pub fn report_request(
    id: EnvoyId,
    key: &SigningKey,
    sequence: u64,
    mut report: pb::RunReportBody,
) -> pb::SignedRequest {
    report.envoy_id = id.get();
    report.sequence = sequence;
    report.timestamp_ms = now_ms();
    seal(key, Domain::ReportRun, &report)
}

/// A gateway client over our TLS to `address`: the agent's, on one connection with
/// nothing in front of it (`gateway_direct`). A tonic `Channel` puts a queue before
/// its connection whose second 32-slot block (~18 KB) is allocated on the 33rd call
/// and kept: a connection would cost that much more after half an hour of check-ins
/// than after one (tests/tests/idle_connections.rs).
pub fn gateway(
    address: &str,
    tls: Arc<ClientConfig>,
) -> Result<pb::envoy_gateway_client::EnvoyGatewayClient<DirectChannel>, ClientError> {
    gateway_direct(address, tls, None)
}

/// A gateway client on one connection with no task or queue in front of it
/// (`tls::direct`), connecting from `local` when given: the simulator's, one per envoy.
pub fn gateway_direct(
    address: &str,
    tls: Arc<ClientConfig>,
    local: Option<std::net::IpAddr>,
) -> Result<pb::envoy_gateway_client::EnvoyGatewayClient<DirectChannel>, ClientError> {
    let channel = DirectChannel::new(address, tls, CONNECT_TIMEOUT, local)?;
    let origin =
        format!("https://{address}")
            .parse()
            .map_err(|e| vigo_common::Error::Malformed {
                what: "server address",
                why: format!("{address:?}: {e}"),
            })?;
    Ok(
        pb::envoy_gateway_client::EnvoyGatewayClient::with_origin(channel, origin)
            .max_decoding_message_size(limits::MAX_CHECKIN_ANSWER)
            .max_encoding_message_size(limits::MAX_CHECKIN_ANSWER),
    )
}

/// How many times a shed request is sent again within one attempt.
pub const SHED_RETRIES: u32 = 4;
/// How long one attempt waits out retry hints in all. A spoke that asks for longer is
/// overloaded for a while: the attempt gives up (a run converges from its cached
/// bundle, a report stays queued) and the next one comes at its usual time.
pub const SHED_PATIENCE: Duration = Duration::from_secs(30);

/// The retries of one request that a busy server sheds (RESOURCE_EXHAUSTED with a retry
/// hint): each hint is waited out with jitter, at most [`SHED_RETRIES`] times and
/// [`SHED_PATIENCE`] in all. The caller signs the request anew for every attempt (a
/// fresh sequence number and timestamp).
#[derive(Debug, Default)]
pub struct Patience {
    retries: u32,
    waited: Duration,
}

impl Patience {
    /// After a failed attempt: how long to wait before the next one, or `None` when the
    /// failure is not a shed request or the patience is spent.
    pub fn wait_after(&mut self, status: &tonic::Status) -> Option<Duration> {
        let hint = vigo_common::net::shedding::retry_after(status)?;
        let wait = vigo_common::net::shedding::jittered(hint);
        if self.retries >= SHED_RETRIES || self.waited + wait > SHED_PATIENCE {
            return None;
        }
        self.retries += 1;
        self.waited += wait;
        Some(wait)
    }
}

/// What a gateway client can run on: a tonic `Channel`, or a [`DirectChannel`].
pub trait Transport:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<tonic::codegen::StdError>,
        ResponseBody: tonic::codegen::Body<
            Data = Bytes,
            Error: Into<tonic::codegen::StdError> + Send,
        > + Send
                          + 'static,
    >
{
}

impl<T> Transport for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
            ResponseBody: tonic::codegen::Body<
                Data = Bytes,
                Error: Into<tonic::codegen::StdError> + Send,
            > + Send
                              + 'static,
        >
{
}

/// Sends a check-in with the standard deadline.
pub async fn send_check_in<T: Transport>(
    client: &mut pb::envoy_gateway_client::EnvoyGatewayClient<T>,
    request: pb::SignedRequest,
) -> Result<pb::CheckInResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(REQUEST_TIMEOUT);
    client.check_in(request).await.map(|r| r.into_inner())
}

/// Sends a run report with the standard deadline.
pub async fn send_report<T: Transport>(
    client: &mut pb::envoy_gateway_client::EnvoyGatewayClient<T>,
    request: pb::SignedRequest,
) -> Result<pb::ReportRunResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(REQUEST_TIMEOUT);
    client.report_run(request).await.map(|r| r.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_waits_out_retry_hints_a_few_times_and_nothing_else() {
        let shed = vigo_common::net::shedding::busy("busy", Duration::from_secs(2));
        let mut patience = Patience::default();
        for _ in 0..SHED_RETRIES {
            let wait = patience.wait_after(&shed).expect("a retry");
            assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(3));
        }
        assert_eq!(patience.wait_after(&shed), None, "retries are bounded");
        let too_large = tonic::Status::resource_exhausted("too large");
        assert_eq!(Patience::default().wait_after(&too_large), None);
        let down = tonic::Status::unavailable("down");
        assert_eq!(Patience::default().wait_after(&down), None);
        // A hint beyond the patience (a spoke overloaded for a while): give up at once.
        let long = vigo_common::net::shedding::busy("busy", Duration::from_secs(60));
        assert_eq!(Patience::default().wait_after(&long), None);
    }

    #[test]
    fn sequences_increase_and_follow_the_clock() {
        let mut s = Sequencer::starting_after(u64::MAX / 2);
        let a = s.advance();
        assert_eq!(a, u64::MAX / 2 + 1);
        let mut fresh = Sequencer::default();
        let b = fresh.advance();
        assert!(b >= now_ms() * 1000 - 1_000_000);
        assert!(fresh.advance() > b);
    }
}
