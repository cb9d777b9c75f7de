//! Every way a hub call can fail. What each case means to the caller is its refusal
//! kind (`vigo_common::refusal`), which alone fixes the gRPC code, HTTP status and
//! metric label.

use tonic::{Code, Status};
use vigo_common::enrollment::Denied;
use vigo_common::refusal::{Kind, Refusal};

use crate::state::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("no active spoke to place the envoy on")]
    NoActiveSpoke,
    #[error("spoke {spoke} is unreachable: {why}")]
    SpokeUnreachable { spoke: String, why: String },
    #[error("spoke {spoke} refused: {why}")]
    SpokeRefused { spoke: String, why: String },
    #[error("no hub leader is elected right now; retry")]
    NoLeader,
    #[error("raft: {0}")]
    Raft(String),
    #[error(
        "the write was sent for commit and no answer came within {waited_ms} ms: it may or may not have taken effect; retry with the same request id to learn which"
    )]
    OutcomeUnknown { waited_ms: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("the {what} is {size} bytes; at most {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{} may not call {call}", vigo_common::pki::a_certificate(role))]
    WrongRole {
        role: &'static str,
        call: &'static str,
    },
    #[error("this call needs a client certificate")]
    NoClientCertificate,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{call} needs the {needs} role; this token has {has}")]
    Forbidden {
        call: &'static str,
        needs: &'static str,
        has: &'static str,
    },
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("timestamp is {skew_ms} ms off the hub's clock")]
    StaleTimestamp { skew_ms: i64 },
    #[error("an enrollment for hostname {0:?} is in progress; retry")]
    InProgress(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("forwarding to the leader: {0}")]
    Forward(Status),
    #[error(transparent)]
    Common(#[from] vigo_common::Error),
}

impl Refusal for HubError {
    fn kind(&self) -> Kind {
        use HubError::*;
        match self {
            Malformed { .. } => Kind::Malformed,
            NoClientCertificate | BadSignature | Unauthenticated(_) => Kind::Unauthenticated,
            WrongRole { .. } | Forbidden { .. } => Kind::Forbidden,
            StaleTimestamp { .. } | SpokeRefused { .. } | Precondition(_) => Kind::Precondition,
            AlreadyExists(_) => Kind::Exists,
            NoActiveSpoke | SpokeUnreachable { .. } | NoLeader | Raft(_) => Kind::Unavailable,
            OutcomeUnknown { .. } => Kind::OutcomeUnknown,
            NotFound(_) => Kind::NotFound,
            TooLarge { .. } => Kind::TooLarge,
            InProgress(_) => Kind::Conflict,
            Denied(d) => d.kind(),
            Rejected(r) => r.kind(),
            Forward(status) => Kind::of_code(status.code()),
            Common(e) => e.kind(),
            Internal(_) => Kind::Internal,
        }
    }
}

impl HubError {
    pub fn code(&self) -> Code {
        match self {
            // A relayed answer keeps the exact code the leader gave.
            HubError::Forward(status) => status.code(),
            other => other.kind().grpc_code(),
        }
    }

    /// The same failure again, for each of the callers a batched write answers.
    pub fn relay(&self) -> HubError {
        match self {
            HubError::NoLeader => HubError::NoLeader,
            HubError::Raft(why) => HubError::Raft(why.clone()),
            HubError::OutcomeUnknown { waited_ms } => HubError::OutcomeUnknown {
                waited_ms: *waited_ms,
            },
            HubError::Rejected(r) => HubError::Rejected(r.clone()),
            HubError::SpokeUnreachable { spoke, why } => HubError::SpokeUnreachable {
                spoke: spoke.clone(),
                why: why.clone(),
            },
            HubError::SpokeRefused { spoke, why } => HubError::SpokeRefused {
                spoke: spoke.clone(),
                why: why.clone(),
            },
            other => HubError::Internal(other.to_string()),
        }
    }

    pub fn malformed(what: &'static str, why: impl std::fmt::Display) -> Self {
        HubError::Malformed {
            what,
            why: why.to_string(),
        }
    }
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Status {
        match e {
            HubError::Forward(status) => status,
            other => other.to_status(),
        }
    }
}
