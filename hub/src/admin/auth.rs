//! Who is calling the admin API. A bearer token (looked up by the SHA-256 of its secret
//! in the replicated state), an admin client certificate (admin role: the break-glass
//! credential `vigo-hub init` issues), or a hub node forwarding a call it authenticated
//! itself (the caller's name and role ride in headers, trusted from hub certificates
//! only).
//!
//! Every call also has a request id: the caller's `vigo-request-id` (gRPC) or
//! `Idempotency-Key` (REST) header, else a fresh one. A write is applied once per id, so
//! a retry after "outcome unknown" gets the first outcome (`crate::state::Requests`).
//!
//! Admission checks the credential against this node's copy of the state; before an
//! operation runs, [`crate::node::Node::read_fresh`] brings that copy up to the leader's
//! and the credential is checked again, so a token or certificate revoked a moment ago
//! is refused by a lagging follower too.

use tonic::codegen::http::HeaderMap;
use tonic::metadata::{MetadataMap, MetadataValue};
use vigo_common::pki::{Peer, Role};
use vigo_common::time::now_ms;

use crate::error::HubError;
use crate::node::Node;
use crate::state::ApiRole;

const CALLER_HEADER: &str = "vigo-caller";
const ROLE_HEADER: &str = "vigo-caller-role";
/// The request id header, on both faces (REST also takes `Idempotency-Key`).
pub const REQUEST_ID_HEADER: &str = "vigo-request-id";
const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Prefix of every API token secret, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "vgt_";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or the certificate's.
    pub name: String,
    pub role: ApiRole,
    /// What it proved itself with, to check again against fresh state.
    pub credential: Credential,
    /// This call's request id (the caller's, or a fresh one).
    pub request_id: String,
    /// When the call must be answered by, when it says (`grpc-timeout`): a forward to
    /// the leader never outlives it.
    pub deadline: Option<std::time::Instant>,
    /// SHA-256 of the request message (`Caller::asking`): a request id names one request.
    pub request_digest: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The SHA-256 of a bearer token's secret.
    Token([u8; 32]),
    /// An admin certificate's serial.
    Certificate(String),
    /// A hub forwarding a call it checked, or the hub itself.
    Hub,
}

impl Caller {
    /// The hub acting on its own (background jobs).
    pub fn hub(role: ApiRole) -> Self {
        Caller {
            name: "hub".into(),
            role,
            credential: Credential::Hub,
            request_id: fresh_request_id(),
            deadline: None,
            request_digest: [0; 32],
        }
    }

    /// The holder of an API token (`hash`: the SHA-256 of its secret), as the web
    /// console knows it from a session.
    pub fn token_holder(token: &crate::state::ApiToken, hash: [u8; 32]) -> Self {
        Caller {
            name: token.name.clone(),
            role: token.role,
            credential: Credential::Token(hash),
            request_id: fresh_request_id(),
            deadline: None,
            request_digest: [0; 32],
        }
    }

    /// The tag its writes are committed under (each made once per request id).
    pub fn tag(&self) -> crate::state::RequestTag {
        crate::state::RequestTag {
            request: self.request_id.clone(),
            by: self.name.clone(),
            digest: self.request_digest,
        }
    }

    /// This caller, making `request` (its digest goes with the request id).
    pub fn asking(mut self, request: &impl prost::Message) -> Self {
        self.request_digest = vigo_common::traits::sha256(&request.encode_to_vec());
        self
    }

    /// Marks a call forwarded to the leader with who made it and its request id.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        if let Ok(v) = MetadataValue::try_from(self.name.as_str()) {
            metadata.insert(CALLER_HEADER, v);
        }
        metadata.insert(ROLE_HEADER, MetadataValue::from_static(self.role.as_str()));
        if let Ok(v) = MetadataValue::try_from(self.request_id.as_str()) {
            metadata.insert(REQUEST_ID_HEADER, v);
        }
    }

    /// Whether the credential is still good in `state` (not revoked or expired since
    /// admission looked at it).
    pub fn still_valid(&self, state: &crate::state::ClusterState, now_ms: u64) -> bool {
        match &self.credential {
            Credential::Token(hash) => state.api_token(hash, now_ms).is_some(),
            Credential::Certificate(serial) => !state.is_certificate_revoked(serial),
            Credential::Hub => true,
        }
    }
}

fn fresh_request_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The request id a call carries, checked: 1..=128 visible ASCII characters.
fn request_id(headers: &HeaderMap) -> Result<String, HubError> {
    let given = header(headers, REQUEST_ID_HEADER).or_else(|| header(headers, IDEMPOTENCY_HEADER));
    match given {
        None => Ok(fresh_request_id()),
        Some(id)
            if !id.is_empty()
                && id.len() <= crate::state::requests::MAX_ID
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(id.to_string())
        }
        Some(_) => Err(HubError::malformed(
            "request id",
            format!(
                "must be 1..={} visible ASCII characters",
                crate::state::requests::MAX_ID
            ),
        )),
    }
}

/// A fresh API token secret and its SHA-256.
pub fn new_secret() -> (String, [u8; 32]) {
    secret_of(rand::random::<[u8; 32]>())
}

fn secret_of(bytes: [u8; 32]) -> (String, [u8; 32]) {
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let hash = vigo_common::traits::sha256(secret.as_bytes());
    (secret, hash)
}

/// The secret of the token `caller` creates with this request: derived from the CA key
/// and (caller, request id), so a retry of the same request gets the same secret —
/// the one whose hash the first attempt committed.
pub fn request_secret(ca: &vigo_common::pki::CertAuthority, caller: &Caller) -> (String, [u8; 32]) {
    let context = format!("vigo token secret\0{}\0{}", caller.name, caller.request_id);
    secret_of(ca.derive_secret(context.as_bytes()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The caller of an admin request, from its headers and TLS peer (`serial`: its
/// certificate's).
pub fn authenticate(
    node: &Node,
    headers: &HeaderMap,
    peer: &Peer,
    serial: &str,
) -> Result<Caller, HubError> {
    let request_id = request_id(headers)?;
    if let Some(value) = header(headers, "authorization") {
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                HubError::Unauthenticated(
                    "the authorization header must be \"Bearer <token>\"".into(),
                )
            })?
            .trim();
        let hash = vigo_common::traits::sha256(secret.as_bytes());
        return node
            .read(|s| s.api_token(&hash, now_ms()).cloned())
            .map(|t| Caller {
                name: t.name,
                role: t.role,
                credential: Credential::Token(hash),
                request_id,
                deadline: None,
                request_digest: [0; 32],
            })
            .ok_or_else(|| {
                HubError::Unauthenticated("unknown, revoked or expired API token".into())
            });
    }
    match peer {
        Peer::Node {
            role: Role::Admin,
            name,
        } => Ok(Caller {
            name: format!("cert:{name}"),
            role: ApiRole::Admin,
            credential: Credential::Certificate(serial.to_string()),
            request_id,
            deadline: None,
            request_digest: [0; 32],
        }),
        Peer::Node {
            role: Role::Hub, ..
        } => {
            let role = header(headers, ROLE_HEADER)
                .and_then(ApiRole::parse)
                .ok_or_else(|| {
                    HubError::Unauthenticated("forwarded call without a caller role".into())
                })?;
            Ok(Caller {
                name: header(headers, CALLER_HEADER).unwrap_or("hub").to_string(),
                role,
                credential: Credential::Hub,
                request_id,
                deadline: None,
                request_digest: [0; 32],
            })
        }
        _ => Err(HubError::Unauthenticated(
            "the admin API needs \"authorization: Bearer <token>\" (or an admin certificate)"
                .into(),
        )),
    }
}
