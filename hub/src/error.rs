//! Every way a hub call can fail, and — in one place — the gRPC status each maps to.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("{0}")]
    TokenRefused(String),
    #[error("{0}")]
    HostnameTaken(String),
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
    #[error("{0}")]
    NotFound(String),
    #[error("a {role} certificate may not call {call}")]
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

impl HubError {
    pub fn code(&self) -> Code {
        use HubError::*;
        match self {
            Malformed { .. } => Code::InvalidArgument,
            UnknownToken | NoClientCertificate | BadSignature | Unauthenticated(_) => {
                Code::Unauthenticated
            }
            TokenRefused(_) | WrongRole { .. } | Forbidden { .. } => Code::PermissionDenied,
            HostnameTaken(_) | StaleTimestamp { .. } | SpokeRefused { .. } | Precondition(_) => {
                Code::FailedPrecondition
            }
            AlreadyExists(_) => Code::AlreadyExists,
            NoActiveSpoke | SpokeUnreachable { .. } | NoLeader | Raft(_) => Code::Unavailable,
            NotFound(_) => Code::NotFound,
            InProgress(_) => Code::Aborted,
            Forward(status) => status.code(),
            Common(vigo_common::Error::Malformed { .. } | vigo_common::Error::Policy(_)) => {
                Code::InvalidArgument
            }
            Common(vigo_common::Error::BadSignature) => Code::Unauthenticated,
            Internal(_) | Common(_) => Code::Internal,
        }
    }

    pub fn malformed(what: &'static str, why: impl std::fmt::Display) -> Self {
        HubError::Malformed {
            what,
            why: why.to_string(),
        }
    }
}

/// The HTTP status of a gRPC code, for the REST face of the admin API.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::FailedPrecondition => 412,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Status {
        match e {
            HubError::Forward(status) => status,
            other => Status::new(other.code(), other.to_string()),
        }
    }
}
