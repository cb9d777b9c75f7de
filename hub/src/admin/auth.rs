//! Who is calling the admin API. A bearer token (looked up by the SHA-256 of its secret
//! in the replicated state), an admin client certificate (admin role: the break-glass
//! credential `vigo-hub init` issues), or a hub node forwarding a call it authenticated
//! itself (the caller's name and role ride in headers, trusted from hub certificates
//! only).

use tonic::codegen::http::HeaderMap;
use tonic::metadata::{MetadataMap, MetadataValue};
use vigo_common::pki::{Peer, Role};
use vigo_common::time::now_ms;

use crate::error::HubError;
use crate::node::Node;
use crate::state::ApiRole;

const CALLER_HEADER: &str = "vigo-caller";
const ROLE_HEADER: &str = "vigo-caller-role";
/// Prefix of every API token secret, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "vgt_";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or the certificate's.
    pub name: String,
    pub role: ApiRole,
}

impl Caller {
    /// Marks a call forwarded to the leader with who made it.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        if let Ok(v) = MetadataValue::try_from(self.name.as_str()) {
            metadata.insert(CALLER_HEADER, v);
        }
        metadata.insert(ROLE_HEADER, MetadataValue::from_static(self.role.as_str()));
    }
}

/// A fresh API token secret and its SHA-256.
pub fn new_secret() -> (String, [u8; 32]) {
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let hash = vigo_common::traits::sha256(secret.as_bytes());
    (secret, hash)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The caller of an admin request, from its headers and TLS peer.
pub fn authenticate(node: &Node, headers: &HeaderMap, peer: &Peer) -> Result<Caller, HubError> {
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
            })
        }
        _ => Err(HubError::Unauthenticated(
            "the admin API needs \"authorization: Bearer <token>\" (or an admin certificate)"
                .into(),
        )),
    }
}
